"""The DLP pool: scans run in real worker processes, awaited without blocking the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dlp.pool import DlpError, DlpPool, DlpTimeout, plan_jobs
from dlp.scanner import Scanner
from tests.test_dlp_corpus import load_corpus

RULES = Path(__file__).resolve().parent.parent / "rules"


@pytest.fixture(scope="module")
def pool():
    p = DlpPool(RULES / "recognizers.yaml", workers=2)
    asyncio.run(p.start())
    yield p
    p.close()


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.from_rules(RULES)


def test_findings_are_those_of_the_scanner(pool, scanner):
    texts = [s["text"] for s in load_corpus()[:30]] + [""]
    found = asyncio.run(pool.scan_parts(texts, timeout=60))
    assert found == scanner.scan_parts(texts) and {f.part for f in found} > {0, 1}


def test_a_long_text_is_scanned_in_chunks_across_workers(pool, scanner):
    filler = "Nothing to see in this sentence, it is only padding for the test. " * 9000  # ~600 KB
    key = "AKIA4QWE7RTY2UIO3PLK"
    text = filler[:150_000] + f" key {key} " + filler[150_000:400_000] + " mail jane.doe@acme-corp.com " + filler
    jobs = plan_jobs([text], scanner.rules.limits.chunk_chars, scanner.rules.limits.chunk_overlap, 2)
    assert len(jobs) == 2  # spread over both workers
    found = asyncio.run(pool.scan_parts(["short one", text], timeout=60))
    assert [(f.part, f.entity, text[f.start:f.end]) for f in found] == [
        (1, "AWS_ACCESS_KEY", key), (1, "EMAIL_ADDRESS", "jane.doe@acme-corp.com")]
    assert found == [f for f in scanner.scan_parts(["short one", text])]


def test_the_event_loop_runs_while_a_scan_is_in_a_worker(pool):
    """Another coroutine gets to run between the start and the end of a long scan: the loop never waits."""
    text = ("Padding text with an e-mail jane.doe@acme-corp.com now and then. " * 20_000)
    order: list[str] = []

    async def ticker():
        while True:
            order.append("tick")
            await asyncio.sleep(0)

    async def main():
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        order.append("scan starts")
        found = await pool.scan_parts([text], timeout=60)
        order.append("scan done")
        task.cancel()
        return found

    found = asyncio.run(main())
    assert len(found) == 20_000
    between = order[order.index("scan starts") + 1:order.index("scan done")]
    assert between.count("tick") > 10


def test_a_scan_that_takes_too_long_raises_and_the_pool_recovers():
    p = DlpPool(RULES, workers=1)
    try:
        asyncio.run(p.start())
        text = "mail jane.doe@acme-corp.com " * 200_000
        with pytest.raises(DlpTimeout, match="did not finish within"):
            asyncio.run(p.scan_parts([text], timeout=0.01))
        found = asyncio.run(p.scan_parts(["mail jane.doe@acme-corp.com"], timeout=60))
        assert [f.entity for f in found] == ["EMAIL_ADDRESS"]
    finally:
        p.close()


@pytest.mark.parametrize("recycle", [False, True])
def test_one_scan_timing_out_fails_other_scans_only_when_the_pool_recycles(recycle):
    """A scan that times out while queued behind another user's scan: with recycling, the other scan is killed
    (its request is then audited `errored` and the fail mode decides); without, it completes."""
    p = DlpPool(RULES, workers=2, recycle_on_timeout=recycle)

    async def main():
        await p.start()
        other = asyncio.create_task(p.scan_parts(["mail jane.doe@acme-corp.com " * 40_000], timeout=120))
        await asyncio.sleep(0.3)  # its jobs now occupy both workers
        with pytest.raises(DlpTimeout):
            await p.scan_parts(["call +1 415 555 0100"], timeout=0.01)
        return await asyncio.gather(other, return_exceptions=True)

    try:
        [result] = asyncio.run(main())
    finally:
        p.close()
    if recycle:
        assert isinstance(result, DlpError)
    else:
        assert len(result) == 40_000


def test_rules_that_do_not_load_are_a_clear_error(tmp_path):
    bad = tmp_path / "recognizers.yaml"
    bad.write_text("recognizers:\n  - name: EmailRecognizer\n    threshold: 2\n", encoding="utf-8")
    p = DlpPool(bad, workers=1)
    try:
        with pytest.raises(DlpError, match=rf"{bad}:3: .*threshold"):
            asyncio.run(p.start())
    finally:
        p.close()


def test_closed_pool_refuses():
    p = DlpPool(RULES, workers=1)
    p.close()
    with pytest.raises(DlpError, match="closed"):
        asyncio.run(p.scan_parts(["text"]))
