"""The DLP pool: scans run in real worker processes, awaited without blocking the event loop; a slow, queued or
dead worker fails only what it must, and says why."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from dlp.pool import DlpError, DlpOverloaded, DlpPool, DlpTimeout, plan_jobs
from dlp.scanner import Scanner
from tests.test_dlp_corpus import load_corpus

RULES = Path(__file__).resolve().parent.parent / "rules"
EMAIL = "jane.doe@acme-corp.com"
SLOW = f"mail {EMAIL} " * 60_000  # about 1.7 MB of findings: a second or more in one worker


@pytest.fixture(scope="module")
def one_job_rules(tmp_path_factory) -> Path:
    """The shipped recognizers with chunks large enough that every test text is one job (so one worker)."""
    rules = tmp_path_factory.mktemp("rules") / "recognizers.yaml"
    shipped = (RULES / "recognizers.yaml").read_text(encoding="utf-8")
    rules.write_text(shipped.replace("chunk_chars: 262144", "chunk_chars: 8388608"), encoding="utf-8")
    return rules


@pytest.fixture(scope="module")
def loop():
    """A pool belongs to the event loop that first uses it, as in the proxy: one loop for the module's pool."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pool(loop):
    p = DlpPool(RULES / "recognizers.yaml", workers=2)
    loop.run_until_complete(p.start())
    yield p
    p.close()


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.from_rules(RULES)


def run_with(workers: int, main, rules: Path = RULES):
    """`main(pool)` on a fresh pool of its own, in a fresh loop; the pool is closed afterwards."""
    async def go():
        p = DlpPool(rules, workers=workers)
        try:
            return await main(p)
        finally:
            p.close()
    return asyncio.run(go())


def test_findings_are_those_of_the_scanner(loop, pool, scanner):
    texts = [s["text"] for s in load_corpus()[:30]] + [""]
    found = loop.run_until_complete(pool.scan_parts(texts, timeout=60))
    assert found == scanner.scan_parts(texts) and {f.part for f in found} > {0, 1}


def test_a_long_text_is_scanned_in_chunks_across_workers(loop, pool, scanner):
    filler = "Nothing to see in this sentence, it is only padding for the test. " * 9000  # ~600 KB
    key = "AKIA4QWE7RTY2UIO3PLK"
    text = filler[:150_000] + f" key {key} " + filler[150_000:400_000] + f" mail {EMAIL} " + filler
    jobs = plan_jobs([text], scanner.rules.limits.chunk_chars, scanner.rules.limits.chunk_overlap, 2)
    assert len(jobs) == 2  # spread over both workers
    found = loop.run_until_complete(pool.scan_parts(["short one", text], timeout=60))
    assert [(f.part, f.entity, text[f.start:f.end]) for f in found] == [
        (1, "AWS_ACCESS_KEY", key), (1, "EMAIL_ADDRESS", EMAIL)]
    assert found == [f for f in scanner.scan_parts(["short one", text])]


def test_the_event_loop_runs_while_a_scan_is_in_a_worker(loop, pool):
    """Another coroutine gets to run between the start and the end of a long scan: the loop never waits."""
    text = (f"Padding text with an e-mail {EMAIL} now and then. " * 20_000)
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

    found = loop.run_until_complete(main())
    assert len(found) == 20_000
    between = order[order.index("scan starts") + 1:order.index("scan done")]
    assert between.count("tick") > 10


def test_a_job_that_runs_too_long_fails_and_only_its_worker_is_replaced(one_job_rules):
    """The slow scan fails with DlpTimeout and its worker is killed; the scan running on the other worker
    completes, and the pool scans again afterwards with a new worker."""
    async def main(p):
        await p.start()
        before = set(p.pids())
        other = asyncio.create_task(p.scan_parts([f"call +1 415 555 0100, mail {EMAIL} " * 20_000], timeout=120))
        await asyncio.sleep(0.05)  # one worker is busy with it
        with pytest.raises(DlpTimeout, match=r"DLP scan of \d+ characters in 1 part\(s\) did not finish within 0.2 s"):
            await p.scan_parts([SLOW], timeout=0.2)
        others = await other
        again = await p.scan_parts([f"mail {EMAIL}"], timeout=60)
        return before, set(p.pids()), others, again

    before, after, others, again = run_with(2, main, one_job_rules)
    assert len(others) == 40_000
    assert [f.entity for f in again] == ["EMAIL_ADDRESS"]
    assert len(after) == 2 and len(before & after) == 1  # one worker replaced, the other kept


def test_time_waiting_for_a_worker_does_not_count_against_the_timeout(one_job_rules):
    """A small scan queued behind a slow one on the only worker: it waits, then runs well within its own timeout.
    (With a timeout that counted queueing, a flood of long prompts would fail everyone else's scans.)"""
    async def main(p):
        await p.start()
        loop = asyncio.get_running_loop()
        slow = asyncio.create_task(p.scan_parts([SLOW], timeout=120))
        await asyncio.sleep(0.05)
        began = loop.time()  # one worker, first come first served: the small scan waits for the slow one
        small = await p.scan_parts([f"mail {EMAIL}"], timeout=0.5, wait=120)
        waited = loop.time() - began
        return small, await slow, waited

    small, slow, waited = run_with(1, main, one_job_rules)
    assert waited > 0.5, "precondition: the small scan must wait behind the slow one longer than its timeout"
    assert [f.entity for f in small] == ["EMAIL_ADDRESS"] and len(slow) == 60_000


def test_a_reply_that_came_while_the_loop_was_busy_is_not_late():
    """The worker answers within the timeout, but the event loop is busy (a large scan's findings resolved on it)
    past the deadline: the answer is already on the socket, so the scan succeeds and the worker is not replaced."""
    async def main(p):
        await p.start()
        await p.scan_parts([f"mail {EMAIL}"], timeout=60)  # warm: the worker has scanned once
        [pid] = p.pids()
        async def stall():  # once the job is with the worker, the loop is busy for longer than the timeout
            while p._queue.empty():
                await asyncio.sleep(0)
            while not p._queue.empty():
                await asyncio.sleep(0)
            for _ in range(3):  # the job is written, its reply not yet read
                await asyncio.sleep(0)
            time.sleep(0.8)

        staller = asyncio.create_task(stall())
        found = await p.scan_parts([f"write to {EMAIL}"], timeout=0.3)
        await staller
        return found, pid, p.pids()

    found, before, after = run_with(1, main)
    assert [f.entity for f in found] == ["EMAIL_ADDRESS"]
    assert after == [before], "a healthy worker was killed for the loop's delay"


def test_a_scan_that_cannot_get_a_worker_in_time_is_overloaded_and_leaves_the_queue(one_job_rules):
    async def main(p):
        await p.start()
        slow = asyncio.create_task(p.scan_parts([SLOW], timeout=120))
        await asyncio.sleep(0.05)
        with pytest.raises(DlpOverloaded, match=r"waited 0.1 s for a free worker \(1 job\(s\) queued for 1 worker"):
            await p.scan_parts([f"mail {EMAIL}"], timeout=60, wait=0.1)
        await slow
        return await p.scan_parts([f"mail {EMAIL}"], timeout=60, wait=0.1)  # the abandoned job was skipped

    assert [f.entity for f in run_with(1, main, one_job_rules)] == ["EMAIL_ADDRESS"]


def test_a_worker_that_dies_fails_its_scan_and_is_replaced(one_job_rules):
    async def main(p):
        await p.start()
        slow = asyncio.create_task(p.scan_parts([SLOW], timeout=120))
        await asyncio.sleep(0.3)
        [pid] = p.pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DlpError, match="a DLP worker died while scanning; it was restarted"):
            await slow
        found = await p.scan_parts([f"mail {EMAIL}"], timeout=60)
        return pid, p.pids(), found

    pid, pids, found = run_with(1, main, one_job_rules)
    assert [f.entity for f in found] == ["EMAIL_ADDRESS"] and pids and pids != [pid]


def test_a_worker_that_died_while_idle_costs_no_scan():
    async def main(p):
        await p.start()
        [pid] = p.pids()
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.3)  # the loop sees the socket close
        return pid, await p.scan_parts([f"mail {EMAIL}"], timeout=60), p.pids()

    pid, found, pids = run_with(1, main)
    assert [f.entity for f in found] == ["EMAIL_ADDRESS"] and pids and pids != [pid]


def test_rules_that_do_not_load_are_a_clear_error(tmp_path):
    bad = tmp_path / "recognizers.yaml"
    bad.write_text("recognizers:\n  - name: EmailRecognizer\n    threshold: 2\n", encoding="utf-8")

    async def main(p):
        with pytest.raises(DlpError, match=rf"{bad}:3: .*threshold"):
            await p.start()
        with pytest.raises(DlpError, match=rf"{bad}:3: .*threshold"):  # and every scan says so
            await p.scan_parts(["text"], timeout=5, wait=5)

    run_with(1, main, rules=bad)


def test_closed_pool_refuses():
    async def main():
        p = DlpPool(RULES, workers=1)
        p.close()
        with pytest.raises(DlpError, match="closed"):
            await p.scan_parts(["text"])
    asyncio.run(main())


def _exit_at_once(sock, rules) -> None:
    """A worker that dies while it starts (killed for memory while loading a model, say)."""
    os._exit(1)


def test_a_scan_waits_no_longer_than_wait_when_no_worker_ever_starts(monkeypatch):
    monkeypatch.setattr("dlp.pool._worker_main", _exit_at_once)

    async def main(p):
        with pytest.raises(DlpOverloaded, match="no DLP worker was ready within 1 s"):
            await p.scan_parts([f"mail {EMAIL}"], timeout=5, wait=1)

    run_with(1, main)


def test_a_worker_that_cannot_be_started_for_a_moment_is_started_again(monkeypatch):
    """Out of file descriptors under a connection flood, say: the slot retries instead of dying for good."""
    import socket as socket_module

    real, calls = socket_module.socketpair, []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return real()

    async def main(p):
        monkeypatch.setattr("dlp.pool.socket.socketpair", flaky)  # once the loop has its own socket pair
        return await p.scan_parts([f"mail {EMAIL}"], timeout=60, wait=60)

    assert [f.entity for f in run_with(1, main)] == ["EMAIL_ADDRESS"] and len(calls) == 2


def test_a_half_saved_rules_file_does_not_poison_a_replaced_worker(tmp_path):
    """A worker replaced while an admin's edit of the rules is half saved (the reloader refuses such an edit)
    must not turn its slot into one that fails every scan: it retries, and the other worker scans meanwhile."""
    rules = tmp_path / "recognizers.yaml"
    rules.write_text((RULES / "recognizers.yaml").read_text(encoding="utf-8"), encoding="utf-8")

    async def main(p):
        await p.start()
        with open(rules, "a", encoding="utf-8") as f:
            f.write("\n  this: [is: broken\n")
        os.kill(p.pids()[0], signal.SIGKILL)
        await asyncio.sleep(1)
        return [await p.scan_parts([f"mail jane{i}@acme-corp.com"], timeout=30, wait=30) for i in range(20)]

    assert all([f.entity for f in found] == ["EMAIL_ADDRESS"] for found in run_with(2, main, rules))


def test_closing_while_workers_start_leaves_none_running(monkeypatch):
    from dlp import pool as module

    started = []
    real = module._context

    class Recording:
        def __init__(self, context):
            self.context = context

        def Process(self, *args, **kwargs):
            started.append(self.context.Process(*args, **kwargs))
            return started[-1]

    monkeypatch.setattr(module, "_context", lambda: Recording(real()))

    async def main():
        p = DlpPool(RULES, workers=2)
        starting = asyncio.create_task(p.start())
        await asyncio.sleep(0.02)  # the fork server is still starting the workers
        p.close()
        with pytest.raises(DlpError):
            await starting
        await asyncio.sleep(0.5)  # killed as soon as they exist (left alone, they would build a scanner first)

    asyncio.run(main())
    assert started and not [w.pid for w in started if w.pid and os.path.exists(f"/proc/{w.pid}") and
                            open(f"/proc/{w.pid}/stat").read().split()[2] != "Z"]


def test_a_text_scanned_before_is_not_scanned_again_whatever_its_place_and_a_failed_scan_is_not_remembered(
        scanner):
    """A conversation's earlier turns come back with every turn: their findings are remembered per text (under
    the same rules), so a turn waits only for its new text. Proven with the only worker frozen."""
    first, second, new = f"mail {EMAIL}", "call +1 415 555 0100 about the invoice", f"new turn, {EMAIL} again"

    async def main(p):
        await p.start()
        before = await p.scan_parts([first, second], timeout=30, scope="alice")
        [pid] = p.pids()
        os.kill(pid, signal.SIGSTOP)
        try:
            # reordered, and an empty part
            again = await p.scan_parts([second, "", first], timeout=0.5, wait=0.5, scope="alice")
            with pytest.raises(DlpTimeout):  # what alice sent is not remembered for bob: his scan needs the worker
                await p.scan_parts([first], timeout=0.5, wait=5, scope="bob")
        finally:
            with contextlib.suppress(ProcessLookupError):  # the timeout has had it replaced
                os.kill(pid, signal.SIGCONT)
        [key] = p.known.digests([first], "bob")
        forgotten = p.known.get(key, 0)
        return before, again, forgotten, await p.scan_parts([first, new], timeout=30, scope="alice"), p.known.hits

    before, again, forgotten, later, hits = run_with(1, main)
    assert before == scanner.scan_parts([first, second]) and {f.part for f in before} == {0, 1}
    assert sorted(again, key=str) == sorted(scanner.scan_parts([second, "", first]), key=str)
    assert {f.part for f in again} == {0, 2}
    assert forgotten is None  # the scan that timed out left nothing behind
    assert sorted(later, key=str) == sorted(scanner.scan_parts([first, new]), key=str)
    assert hits == 3  # alice's first and second, then her first once more; never bob's, never the new text


def test_digests_are_keyed_per_start_and_scoped_per_user():
    from dlp.known import KnownTexts

    one, other = KnownTexts(), KnownTexts()
    assert one.digests(["same text"], "alice") == one.digests(["same text"], "alice")
    assert one.digests(["same text"], "alice") != one.digests(["same text"], "bob")
    assert one.digests(["same text"], "alice") != other.digests(["same text"], "alice")  # a key of its own


def test_known_texts_are_bounded_by_size_and_forget_the_least_recently_used_first():
    from dlp.known import MAX_FINDINGS, KnownTexts
    from dlp.scanner import Finding

    known = KnownTexts(size=10)
    a, b, c, crowd = known.digests(["a", "b", "c", "crowd"])
    three = [Finding("EMAIL_ADDRESS", i, i + 1, 1.0) for i in range(3)]
    known.put(a, three)  # 4 units
    known.put(b, three)  # 8
    assert known.get(a, 5) == [Finding("EMAIL_ADDRESS", i, i + 1, 1.0, 5) for i in range(3)]  # a is now the newest
    known.put(c, three)  # 12 > 10: b, the least recently used, goes
    assert known.get(b, 0) is None and known.get(a, 0) is not None and known.get(c, 0) is not None
    known.put(crowd, [Finding("EMAIL_ADDRESS", i, i + 1, 1.0) for i in range(MAX_FINDINGS + 1)])
    assert known.get(crowd, 0) is None  # too many to keep: it is scanned again next time
