"""Scanning in worker processes, awaited from asyncio: the proxy's event loop never runs a scan itself.

mitmproxy serves every flow of a process on one event loop; a 20 ms scan run there delays every other request
by 20 ms, and a thread does not help (the GIL). So scans run in worker processes, each building its Scanner once.

Why not `concurrent.futures.ProcessPoolExecutor`: a call there crosses three threads of the proxy process (the
submitting loop, the executor's manager thread, the queue feeder thread), each waiting for the GIL while the event
loop is busy: measured 4.6 ms median per scan inside a gateway serving four streams, for a 0.2 ms scan. It also
cannot tell when a call starts running (so a timeout counts the time spent queued behind other users' scans, and a
flood makes a victim's scan fail), and it cannot stop a running call without terminating every worker. Here each
worker is a process with a socket to the event loop, which writes jobs and reads results with asyncio streams (no
thread), and `DlpPool` does its own queueing:

- `timeout` counts only the time a job runs in a worker. A job over it gets `DlpTimeout` and its worker, and only
  that worker, is killed and replaced: the other users' scans go on.
- `wait` bounds the time a scan waits for a free worker: a scan still queued after it gets `DlpOverloaded`, which
  says the gateway's DLP, not the request, is the problem.
- A worker that dies (crash, out of memory, killed) fails its job with `DlpError` and is replaced.

A request's texts are cut into jobs: small parts travel together (one round trip), a part longer than the rules'
chunk size is scanned as chunks spread over the workers, each job holding the whole text so context words and
column headers are read exactly as in-process; the findings are merged as `Scanner.scan_text` merges them.

The pool belongs to the event loop that first uses it (the proxy has one).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from core.offload import off_loop
from dlp.known import KnownTexts, as_part
from dlp.scanner import Chunk, Finding, boundaries, chunk_plan, resolve_overlaps, split_findings

log = logging.getLogger(__name__)

Job = list[tuple[int, str, list[Chunk]]]  # (part, text, chunks of it to scan)
_HEADER = struct.Struct("!Q")  # every message: its length, then the pickle
DIGEST_INLINE_CHARS = 64 * 1024  # texts' characters whose digests (dlp.known) are taken on the event loop
STARTUP_TIMEOUT = 300.0  # seconds a new worker may take to build its scanner (a cold hyperscan compile is ~1 s)
#: After a job's deadline the loop takes this long a look more at the worker's socket: a reply that came while the
#: event loop was busy elsewhere (resolving a large scan's findings, say) is not late, and its worker is healthy.
LATE_GRACE = 0.05
#: Findings resolved on the event loop; more (hostile text: a match every few characters) are resolved in a thread,
#: so that the loop keeps serving other connections meanwhile (about 4 us per finding).
RESOLVE_INLINE = 2000


class DlpError(RuntimeError):
    """The scan could not be done: the rules do not load in the workers, a worker died, or the pool is closed."""


class DlpTimeout(DlpError, TimeoutError):
    """A job of the scan ran longer than the timeout in its worker."""


class _Broken(DlpError):
    """A worker started but cannot build a scanner from the rules (so no worker can)."""


class DlpOverloaded(DlpError):
    """The scan waited longer than allowed for a free worker: more scanning is asked of the gateway than it has
    workers for."""


# --- worker side: one Scanner per process ------------------------------------------------------------------------

def _send(sock: socket.socket, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


def _worker_main(sock: socket.socket, rules: str) -> None:
    """Build the scanner, say whether it could, then answer jobs until the proxy closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the gateway stops it; it then stops the workers
    try:
        from dlp.scanner import Scanner

        scanner = Scanner.from_rules(rules)
        scanner.warm_up()
    except Exception as e:
        _send(sock, ("broken", f"{type(e).__name__}: {e}"))
        return
    limits = scanner.rules.limits
    _send(sock, ("ready", (limits.chunk_chars, limits.chunk_overlap)))
    while (header := _recv_exactly(sock, _HEADER.size)) is not None:
        data = _recv_exactly(sock, _HEADER.unpack(header)[0])
        if data is None:
            return
        job: Job = pickle.loads(data)
        try:
            found = [f for part, text, chunks in job for chunk in chunks for f in scanner.scan_chunk(text, chunk, part)]
        except Exception as e:  # a scanner bug on this input: this job fails, the worker goes on
            _send(sock, ("error", f"{type(e).__name__}: {str(e)[:300]}"))
        else:
            _send(sock, ("ok", found))


# --- proxy side -------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Task:
    """One job of a scan, queued for the next free worker."""

    job: Job
    timeout: float | None
    started: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class DlpPool:
    """`workers` processes scanning with the rules of `rules` (a recognizers.yaml, or the folder holding it)."""

    def __init__(self, rules: str | Path, workers: int = 1, known: KnownTexts | None = None):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.rules, self.workers = str(rules), workers
        self.known = known if known is not None else KnownTexts()  # shared by the pools of one rule set
        self._limits: tuple[int, int] | None = None
        self._broken: str | None = None  # why the workers cannot scan (the rules do not load)
        self._ready: asyncio.Future | None = None  # the first worker's verdict: limits, or DlpError
        self._queue: asyncio.Queue[_Task] | None = None
        self._servers: list[asyncio.Task] = []
        self._processes: dict[int, multiprocessing.Process] = {}  # worker index -> its current process
        self._writers: dict[int, asyncio.StreamWriter] = {}  # worker index -> the socket to its current process
        self._closed = False

    # --- public API -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers and wait until they have built their scanners; DlpError if they cannot."""
        self._ensure_running()
        self._limits = await asyncio.shield(self._ready)

    async def scan_parts(self, texts: list[str], timeout: float | None = None,
                         wait: float | None = None, scope: str = "") -> list[Finding]:
        """Findings of every text (`Finding.part` is its index), as `Scanner.scan_parts` gives them. Texts this
        pool's rule set has scanned before for the same `scope` (the user) are not scanned again (dlp.known).

        `timeout`: seconds each job may run in a worker (DlpTimeout). `wait`: seconds the scan may wait for
        workers to take its jobs (DlpOverloaded)."""
        if not any(texts):
            return []
        self._ensure_running()  # a closed pool refuses, even what it remembers
        # The joins between consecutive texts are scanned (and remembered) like texts, for values split across two
        # parts (Scanner.scan_boundaries); their findings become pieces in the texts they join.
        joins = boundaries(texts)
        every = [*texts, *(j.text for j in joins)]
        # hashing releases the GIL: past DIGEST_INLINE_CHARS (about 0.1 ms of hashing) it runs beside the loop
        keys = await off_loop(sum(map(len, every)), self.known.digests, every, scope, above=DIGEST_INLINE_CHARS)
        self._ensure_running()  # (the pool may have closed meanwhile)
        by_text: dict[int, list[Finding]] = {}
        todo: list[int] = []
        for i, (text, key) in enumerate(zip(every, keys)):
            known = self.known.get(key, i) if text else []
            if known is None:
                todo.append(i)
            else:
                by_text[i] = known
        if todo:
            fresh = await self._scan([every[i] for i in todo], timeout, wait)
            scanned: dict[int, list[Finding]] = {j: [] for j in range(len(todo))}
            for f in fresh:
                scanned[f.part].append(f)
            for j, i in enumerate(todo):
                self.known.put(keys[i], scanned[j])
                by_text[i] = as_part(scanned[j], i)
        own = [f for i in range(len(texts)) for f in by_text[i]]
        split = split_findings(joins, [by_text[len(texts) + k] for k in range(len(joins))], own)
        if not split:  # each text's findings are already resolved: only their order is left to make
            return sorted(own, key=lambda f: (f.part, f.start, f.end, f.entity))
        return await off_loop(len(own) + len(split), resolve_overlaps, own + split, above=RESOLVE_INLINE)

    async def _scan(self, texts: list[str], timeout: float | None, wait: float | None) -> list[Finding]:
        if self._limits is None:  # no worker has started yet: that waiting counts as waiting for a worker
            try:
                async with asyncio.timeout(wait):
                    self._limits = await asyncio.shield(self._ready)
            except TimeoutError:
                raise DlpOverloaded(f"no DLP worker was ready within {wait:g} s (they are starting, or failing "
                                    f"to start: see the log)") from None
        tasks = [_Task(job, timeout) for job in plan_jobs(texts, *self._limits, self.workers)]
        for task in tasks:
            self._queue.put_nowait(task)
        size = f"{sum(map(len, texts))} characters in {len(texts)} part(s)"
        try:
            try:
                async with asyncio.timeout(wait):
                    await asyncio.gather(*(t.started for t in tasks))
            except TimeoutError:
                raise DlpOverloaded(f"DLP scan of {size} waited {wait:g} s for a free worker ({self._queue.qsize()} "
                                    f"job(s) queued for {self.workers} worker(s))") from None
            results = await asyncio.gather(*(t.result for t in tasks))
        except DlpTimeout as e:
            raise DlpTimeout(f"DLP scan of {size} {e}") from None
        finally:
            for t in tasks:  # jobs still queued are skipped; a running one finishes unread
                t.result.cancel()
        found = [f for found in results for f in found]
        return await off_loop(len(found), resolve_overlaps, found, above=RESOLVE_INLINE)

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [p.pid for p in self._processes.values() if p.pid is not None and p.is_alive()]

    def close(self) -> None:
        """Stop every worker; scans waiting on the pool get DlpError."""
        self._closed = True
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(DlpError("the DLP pool is closed"))
            self._ready.exception()
        for server in self._servers:
            server.cancel()
        self._servers = []
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        for process in self._processes.values():
            _kill(process)
        self._processes = {}
        if self._queue is not None:
            while not self._queue.empty():
                self._fail(self._queue.get_nowait(), DlpError("the DLP pool is closed"))

    # --- internals --------------------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._closed:
            raise DlpError("the DLP pool is closed")
        if self._queue is None:
            loop = asyncio.get_running_loop()
            self._queue, self._ready = asyncio.Queue(), loop.create_future()
            self._servers = [loop.create_task(self._serve(i)) for i in range(self.workers)]

    async def _serve(self, index: int) -> None:
        """Keep worker `index` alive and feed it jobs, one at a time."""
        carry: _Task | None = None  # a job taken for a worker found dead before it was sent: the next one runs it
        failures = 0
        while not self._closed:
            try:
                try:
                    reader, writer = await self._spawn(index)
                except Exception:
                    if carry is not None:  # another worker runs it while this one cannot start
                        self._queue.put_nowait(carry)
                        carry = None
                    raise
            except _Broken as e:
                if self._ready.done():  # the rules loaded before: the file is being edited; the reloader will
                    await self._backoff(index, e, failures := failures + 1)  # refuse or apply the edit
                    continue
                # the rules do not load at all: every new worker would fail the same way
                self._ready.set_exception(DlpError(str(e)))
                self._ready.exception()  # retrieved: it is raised to every scan, not logged as lost
                await self._refuse_forever(DlpError(str(e)))
                return
            except (DlpError, OSError) as e:  # could not start (fork failed, out of descriptors, stuck)
                await self._backoff(index, e, failures := failures + 1)
                continue
            failures = 0
            self._writers[index] = writer
            try:
                carry = await self._feed(index, reader, writer, carry)
            finally:
                writer.close()
                self._writers.pop(index, None)
                _kill(self._processes.pop(index, None))

    @staticmethod
    async def _backoff(index: int, error: Exception, failures: int) -> None:
        """A worker that could not start is tried again, a little later each time (at most every 30 s)."""
        log.error("DLP worker %d could not start (%s: %s); retrying", index, type(error).__name__, error)
        await asyncio.sleep(min(30.0, 0.5 * 2 ** failures))

    async def _spawn(self, index: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new worker process, connected and with its scanner built."""
        ours, theirs = socket.socketpair()
        process = _context().Process(target=_worker_main, args=(theirs, self.rules), daemon=True,
                                  name=f"dlp-worker-{index}")
        self._processes[index] = process
        # Forking through the fork server is a blocking exchange, so it runs in a thread, which a close() cannot
        # stop: the process it starts is then killed as soon as it exists.
        starting = asyncio.ensure_future(asyncio.to_thread(process.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(lambda _: _kill(process))
            ours.close()
            raise
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
        except OSError:
            ours.close()
            _kill(self._processes.pop(index, None))
            raise
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                status, detail = await _read(reader)
        except (TimeoutError, EOFError, OSError) as e:
            writer.close()
            _kill(self._processes.pop(index, None))
            raise DlpError(f"DLP worker did not start: {type(e).__name__} {e}") from None
        if status != "ready":
            writer.close()
            _kill(self._processes.pop(index, None))
            raise _Broken(f"DLP worker cannot scan: {detail}")
        if not self._ready.done():
            self._ready.set_result(detail)
        return reader, writer

    async def _feed(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    carry: _Task | None) -> _Task | None:
        """Run queued jobs (`carry` first) on this worker until it times out or dies; the caller then replaces it.
        Returns a job taken but not sent because the worker was already gone (it died while idle): that job's
        scan is not to blame, and the next worker runs it."""
        while True:
            task, carry = carry or await self._queue.get(), None
            if task.result.done():  # its scan gave up (overloaded, failed or cancelled) while it was queued
                continue
            if reader.at_eof():
                log.warning("DLP worker %d died while idle; it is replaced", index)
                return task
            if not task.started.done():
                task.started.set_result(None)
            try:
                await _write(writer, task.job)
                status, detail = await _reply_within(reader, task.timeout)
            except TimeoutError:
                self._fail(task, DlpTimeout(f"did not finish within {task.timeout:g} s"))
                log.warning("DLP worker %d: a job ran over %g s; the worker is replaced", index, task.timeout)
                return None
            except (EOFError, OSError) as e:
                self._fail(task, DlpError("a DLP worker died while scanning; it was restarted"))
                log.warning("DLP worker %d died while scanning (%s); it is replaced", index, type(e).__name__)
                return None
            except BaseException:  # cancelled (the pool closes): the job's scan must not wait forever
                self._fail(task, DlpError("the DLP pool is closed"))
                raise
            if status == "ok":
                if not task.result.done():
                    task.result.set_result(detail)
            else:
                self._fail(task, DlpError(f"DLP scan failed in the worker: {detail}"))

    async def _refuse_forever(self, error: DlpError) -> None:
        """Workers that cannot build a scanner would fail the same way again: fail each job at once instead."""
        while True:
            self._fail(await self._queue.get(), error)

    @staticmethod
    def _fail(task: _Task, error: DlpError) -> None:
        if not task.started.done():
            task.started.set_result(None)
        if not task.result.done():
            task.result.set_exception(error)
            task.result.exception()  # retrieved: a scan that gave up on it must not log "never retrieved"


async def _write(writer: asyncio.StreamWriter, job: Job) -> None:
    data = await off_loop(sum(len(text) for _, text, _ in job), pickle.dumps, job, pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)))
    writer.write(data)
    await writer.drain()


async def _reply_within(reader: asyncio.StreamReader, timeout: float | None):
    """The worker's reply, or TimeoutError when it is not there `timeout` seconds after the job was sent. The
    deadline is checked against what reached the socket, not against when this loop got round to reading it."""
    read = asyncio.ensure_future(_read(reader))
    try:
        done, _ = await asyncio.wait({read}, timeout=timeout)
        if not done:
            done, _ = await asyncio.wait({read}, timeout=LATE_GRACE)
        if not done:
            raise TimeoutError
        return read.result()
    finally:
        read.cancel()


async def _read(reader: asyncio.StreamReader):
    try:
        size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
        return pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise EOFError("the worker closed its socket") from None


def _context() -> multiprocessing.context.BaseContext:
    """How workers start: forked by multiprocessing's fork server (no event loop or threads of the proxy copied),
    which imports the scanner's modules once (Presidio, spaCy, phonenumbers: 3 s of CPU, half of a worker's start),
    so that each worker, the first and every replacement, starts without importing them again. Spawned where there
    is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # read when the fork server starts (with the first worker)
    context.set_forkserver_preload(["dlp.rules", "dlp.recognizers", "dlp.scanner"])
    return context


def _kill(process: multiprocessing.Process | None) -> None:
    if process is None or process.pid is None:
        return
    process.kill()
    process.join(1)  # SIGKILL is immediate; reaps it, so no zombie is left


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
