"""Scanning in worker processes, awaited from asyncio: the proxy's event loop never runs a scan itself.

mitmproxy serves every flow of a process on one event loop; a 20 ms scan run there delays every other request
by 20 ms, and a thread does not help (the GIL). An `async` hook that awaits a ProcessPoolExecutor keeps the others
flowing (stack-facts). Each worker builds its Scanner once, in the pool's initializer; the worker functions live
here, in an importable module, because functions of a mitmproxy script cannot be pickled.

A request's texts are cut into jobs: small parts travel together (one round trip), a part longer than the rules'
chunk size is scanned as chunks spread over the workers, each job holding the whole text so context words and
column headers are read exactly as in-process; the findings are merged as `Scanner.scan_text` merges them.

Failures are explicit, never an empty result: `DlpTimeout` when the scan does not finish in time (the workers are
then replaced, so a runaway scan cannot hold up the next requests), `DlpError` when the rules cannot be loaded in
a worker or a worker died.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from dlp.scanner import Chunk, Finding, chunk_plan, resolve_overlaps

log = logging.getLogger(__name__)


class DlpError(RuntimeError):
    """The scan could not be done: the rules do not load in the workers, or a worker died."""


class DlpTimeout(DlpError, TimeoutError):
    """The scan did not finish within the timeout."""


# --- worker side: one Scanner per process ------------------------------------------------------------------------

_scanner = None
_init_error: str | None = None

Job = list[tuple[int, str, list[Chunk]]]  # (part, text, chunks of it to scan)


def _init_worker(rules: str) -> None:
    global _scanner, _init_error
    try:
        from dlp.scanner import Scanner

        _scanner = Scanner.from_rules(rules)
    except Exception as e:  # reported by every job: an initializer that raises breaks the whole pool silently
        _init_error = f"{type(e).__name__}: {e}"


def _check() -> tuple[int, int]:
    """The worker's chunking limits, or the reason it has no scanner."""
    if _scanner is None:
        raise DlpError(f"DLP worker cannot scan: {_init_error}")
    limits = _scanner.rules.limits
    return limits.chunk_chars, limits.chunk_overlap


def _warm(pause: float) -> tuple[int, int]:
    time.sleep(pause)  # lets the other warm-up calls land on the other workers
    return _check()


def _scan_job(job: Job) -> list[Finding]:
    _check()
    return [f for part, text, chunks in job for chunk in chunks for f in _scanner.scan_chunk(text, chunk, part)]


# --- proxy side -------------------------------------------------------------------------------------------------

class DlpPool:
    """`workers` processes scanning with the rules of `rules` (a recognizers.yaml, or the folder holding it)."""

    def __init__(self, rules: str | Path, workers: int = 1, *, recycle_on_timeout: bool = True):
        """`recycle_on_timeout`: replace every worker when a scan runs out of time, which kills the other scans in
        flight. Needed where one job can run for minutes (an unbounded prompt); a pool whose jobs are bounded (the
        proxy's ordinary pool, once long prompts go to a bulk pool) keeps its workers: a timed-out scan's queued
        jobs are cancelled and its running ones finish unread, so one user's slow scan never fails another's."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.rules, self.workers = str(rules), workers
        self.recycle_on_timeout = recycle_on_timeout
        self._limits: tuple[int, int] | None = None
        self._executor: ProcessPoolExecutor | None = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                   initargs=(self.rules,))

    async def start(self) -> None:
        """Build the scanner in every worker now rather than on the first request; DlpError if they cannot."""
        loop = asyncio.get_running_loop()
        results = await self._gather([self._submit(loop, _warm, 0.2) for _ in range(self.workers)], None)
        self._limits = results[0]

    async def scan_parts(self, texts: list[str], timeout: float | None = None) -> list[Finding]:
        """Findings of every text (`Finding.part` is its index), as `Scanner.scan_parts` gives them."""
        if not any(texts):
            return []
        loop = asyncio.get_running_loop()
        if self._limits is None:
            self._limits = await self._submit(loop, _check)
        jobs = plan_jobs(texts, *self._limits, self.workers)
        try:
            results = await self._gather([self._submit(loop, _scan_job, job) for job in jobs], timeout)
        except DlpTimeout as e:
            raise DlpTimeout(f"DLP scan of {sum(map(len, texts))} characters in {len(texts)} part(s) {e}") from None
        return resolve_overlaps([f for found in results for f in found])

    async def _gather(self, futures: list[asyncio.Future], timeout: float | None) -> list:
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except TimeoutError:
            if self.recycle_on_timeout:
                self._recycle()
            raise DlpTimeout(f"did not finish within {timeout:g} s") from None
        except BrokenProcessPool:
            self._recycle()
            raise DlpError("a DLP worker died; the workers were restarted") from None

    def _submit(self, loop: asyncio.AbstractEventLoop, fn, *args) -> asyncio.Future:
        if self._executor is None:
            raise DlpError("the DLP pool is closed")
        try:
            return loop.run_in_executor(self._executor, fn, *args)
        except BrokenProcessPool:
            self._recycle()
            raise DlpError("a DLP worker died; the workers were restarted") from None

    def _recycle(self) -> None:
        """Replace the workers: a scan that ran out of time keeps its worker busy, and a dead worker breaks the
        executor. (ProcessPoolExecutor cannot cancel a running call; its processes are terminated instead.)"""
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            _terminate(old)

    def close(self) -> None:
        if self._executor is not None:
            _terminate(self._executor)
            self._executor = None


def _terminate(executor: ProcessPoolExecutor) -> None:
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)


def plan_jobs(texts: list[str], chunk_chars: int, chunk_overlap: int, workers: int) -> list[Job]:
    """Cut the texts into at most `workers` jobs of about equal size (largest chunks first to the lightest job).
    Everything fits one job when it is no bigger than one chunk: one round trip for the common request."""
    items = [(part, text, chunk) for part, text in enumerate(texts) if text
             for chunk in chunk_plan(len(text), chunk_chars, chunk_overlap)]
    total = sum(c.hi - c.lo for _, _, c in items)
    n = 1 if total <= chunk_chars else min(workers, len(items))
    loads, groups = [0] * n, [dict() for _ in range(n)]
    for part, text, chunk in sorted(items, key=lambda i: i[2].lo - i[2].hi):
        j = loads.index(min(loads))
        loads[j] += chunk.hi - chunk.lo
        groups[j].setdefault(part, (text, []))[1].append(chunk)
    return [[(part, text, chunks) for part, (text, chunks) in g.items()] for g in groups if g]
