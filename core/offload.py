"""Work on one large body, off the event loop.

mitmproxy serves every connection of the process on one event loop. Decoding a compressed upload, parsing it and
building its audit event take time in proportion to the body: about 0.5 s for 60 MB, during which every other
user's request would wait (a reviewer measured 2.6 s stalls with four such uploads at once). Above OFFLOAD_CHARS
that work runs in a thread instead: zlib, brotli and zstd release the GIL while they decompress, and Python code
in a thread is preempted every few milliseconds, so the loop keeps serving the others. Below it, the thread hop
would cost more than it saves.

At most MAX_CONCURRENT such jobs run at once and the others queue, which also bounds how many bodies are being
expanded in memory at the same time.

`Deferred` is work that starts later, once, when whoever needs it first asks (the DLP scan of a request that was
sent before it was scanned starts when the upstream answers).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

OFFLOAD_CHARS = 1 << 20  # bytes or characters of what the work reads or produces
MAX_CONCURRENT = 2

_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def off_loop(size: int, fn: Callable[..., T], *args, above: int = OFFLOAD_CHARS) -> T:
    """`fn(*args)`: inline when `size` is at most `above`, else in a thread (at most MAX_CONCURRENT at once). `fn`
    must not touch mitmproxy objects: it runs beside the event loop."""
    if size <= above:
        return fn(*args)
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(MAX_CONCURRENT)
    async with slots:
        return await asyncio.to_thread(fn, *args)


class Deferred:
    """A coroutine started once, by the first caller of `start`; every caller awaits the same task."""

    def __init__(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.work = work
        self.task: asyncio.Task | None = None

    def start(self) -> asyncio.Task:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.work())
        return self.task
