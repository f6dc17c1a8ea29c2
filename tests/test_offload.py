"""core.offload: large work leaves the event loop's thread, small work does not, and few run at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.offload import MAX_CONCURRENT, OFFLOAD_CHARS, off_loop


@pytest.mark.parametrize("above", [None, 1000])  # the default, and work that says from what size it leaves
def test_small_work_runs_inline_and_large_work_in_a_thread(above):
    limit, options = (OFFLOAD_CHARS, {}) if above is None else (above, {"above": above})

    async def main():
        loop_thread = threading.get_ident()
        small = await off_loop(limit, threading.get_ident, **options)
        large = await off_loop(limit + 1, threading.get_ident, **options)
        return loop_thread, small, large

    loop_thread, small, large = asyncio.run(main())
    assert small == loop_thread and large != loop_thread


def test_the_loop_runs_while_large_work_is_in_a_thread_and_at_most_a_few_run_at_once():
    running, most, ticks = 0, 0, 0
    lock, release = threading.Lock(), threading.Event()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1

    async def main():
        nonlocal ticks
        jobs = [asyncio.create_task(off_loop(OFFLOAD_CHARS * 10, work)) for _ in range(MAX_CONCURRENT + 3)]
        while running < MAX_CONCURRENT:  # the loop is free while the threads block
            ticks += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.gather(*jobs)

    asyncio.run(main())
    assert ticks > 0 and most == MAX_CONCURRENT


def test_each_event_loop_has_its_own_slots():
    """The proxy has one loop, tests many: a semaphore that had to make a job wait is bound to its loop, and
    reusing it from the next loop would raise."""
    async def crowd():
        return await asyncio.gather(*(off_loop(OFFLOAD_CHARS * 10, lambda: 42) for _ in range(MAX_CONCURRENT * 3)))

    for _ in range(2):
        assert asyncio.run(crowd()) == [42] * (MAX_CONCURRENT * 3)


def test_only_compressed_bodies_that_may_expand_past_the_threshold_leave_the_loop():
    """An ordinary gzip prompt is decoded on the loop (it never queues behind large uploads); one that expands
    past the threshold, or is too big on the wire to try, goes to a thread."""
    import gzip

    from addons.extract import SMALL_WIRE_BYTES, _decode_small

    limit = 64 * 1024 * 1024

    def decodes_small(body: bytes) -> bool:
        return _decode_small(body, "gzip", limit) is not None

    assert decodes_small(gzip.compress(b'{"messages": []}'))
    assert not decodes_small(gzip.compress(b" " * (OFFLOAD_CHARS + 1)))  # a few KB that expand past it
    assert not decodes_small(b"x" * (SMALL_WIRE_BYTES + 1))
    assert decodes_small(b"not gzip at all")  # refused on the loop, cheaply
    # a cap below the threshold is still the cap: past it is a bomb, found on the loop
    assert _decode_small(gzip.compress(b" " * 5000), "gzip", 2048)[2]
