"""The audit writer: takes records from the proxy without ever blocking it, and never loses one it accepted.

Every record goes through a local spool before ClickHouse (a write-ahead log: SQLite in WAL mode):

    proxy event loop --submit()--> bounded queue --[spool thread]--> spool.sqlite --[ship thread]--> ClickHouse

* `submit` (one record) and `submit_many` (several, with one future: the audit addon hands over each turn of the
  event loop's records at once) are non-blocking puts; the future resolves once the records are durable in the
  spool (group commit: one transaction for whatever arrived meanwhile). That is the moment a record is *accepted*: from
  then on a `kill -9` of the gateway cannot lose it (SQLite WAL survives a process crash; `synchronous=NORMAL`
  trades only the last transactions on a power loss). The audit addon waits on the future (asynchronously, the
  event loop keeps serving) before the client gets its response.
* The ship thread sends the oldest spooled rows to ClickHouse in batches (by size, and by time:
  `flush_interval`), then deletes them from the spool. If ClickHouse is unreachable or slow the spool grows on disk
  while memory stays bounded (the queue, one batch); when it answers again the backlog is replayed in order, and
  on start-up whatever a previous process left is replayed first. A crash between insert and delete replays rows
  ClickHouse already has: at-least-once, and the ReplacingMergeTree (read with FINAL) collapses the duplicates by
  event_id.
* A row ClickHouse rejects while it is healthy (a bad value, not an outage) would block the spool forever: the
  batch is retried row by row and a rejected row is moved to the spool's `rejected` table, kept and counted.

With several proxy processes (`gateway run --workers N`) the spool is one file they share: each proxy process
runs a writer that only spools (`ship=False`: it never opens the store, which one process only may hold), and the
audit process runs the one that ships (`shared=True`: rows arrive from other processes, so it counts the spool at
every round instead of trusting its own count). SQLite in WAL mode takes appends from several processes (their
transactions take turns on the file's lock) while the shipper reads and deletes, and the ship order stays the
order rows were accepted. One shared file, rather than one per proxy process, leaves nothing behind when a proxy
process is killed: the rows it had accepted are already in the file the audit process ships from.

Queue depth, spool size and failures are logged on every failure and on recovery, and `status()` reports them
(the admin socket's `gateway audit status`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from core.audit import AuditEvent, AuditRecord, ConnectionEvent
from storage.sqlitefile import open_wal
from storage.store import Store

log = logging.getLogger(__name__)

TABLE_OF = {AuditEvent: "events", ConnectionEvent: "connections"}

_SPOOL_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, row BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, row BLOB NOT NULL,
                                     error TEXT NOT NULL, at REAL NOT NULL);
"""


def open_spool(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_wal(path, _SPOOL_SCHEMA, 30)


def spool_counts(path: Path) -> dict[str, int]:
    """Rows waiting and rows rejected in a spool file (for `gateway audit status` without a gateway)."""
    if not path.exists():
        return {"spooled": 0, "rejected": 0}
    db = open_spool(path)
    try:
        return {"spooled": db.execute("SELECT count(*) FROM spool").fetchone()[0],
                "rejected": db.execute("SELECT count(*) FROM rejected").fetchone()[0]}
    finally:
        db.close()


@dataclass
class _Item:
    records: list[AuditRecord] | None  # None: stop
    accepted: Future


class AuditWriter:
    def __init__(self, spool_path: Path, *, store: Store | None = None,
                 open_store: Callable[[], Store] | None = None, batch_size: int = 1000,
                 flush_interval: float = 0.5, max_queue: int = 100_000, max_backoff: float = 10.0,
                 spool_report: int = 1000, ship: bool = True, shared: bool = False):
        """`store` (already open, e.g. chdb) or `open_store` (called by the ship thread until it succeeds, so a
        ClickHouse server that is down at start-up does not stop the proxy); neither with `ship=False` (spool
        only: another process ships). `shared`: other processes append to the spool too."""
        if ship and store is None and open_store is None:
            raise ValueError("AuditWriter needs a store or a way to open one")
        self.store = store
        self._open_store = open_store
        self.spool_path = Path(spool_path)
        self.ship = ship
        self.shared = shared
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.max_queue = max_queue  # records, however they are grouped into items
        self.queue: queue.Queue[_Item] = queue.Queue()
        self.queued = 0  # records submitted and not yet in the spool
        self._queued_lock = threading.Lock()  # the spool thread never holds it across a write: submit never waits
        self.written = 0
        self.dropped = 0  # refused at submit (queue full) or not made durable (spool write failed)
        self.failures = 0  # failed attempts to write to ClickHouse
        self.rejected = 0
        self.last_error = ""
        self._spool = open_spool(self.spool_path)
        self.spooled = self._spool.execute("SELECT count(*) FROM spool").fetchone()[0]
        self.rejected = self._spool.execute("SELECT count(*) FROM rejected").fetchone()[0]
        if self.spooled and ship:
            log.warning("audit spool %s holds %d records from before: replaying", self.spool_path, self.spooled)
        self._ship_db = open_spool(self.spool_path)
        self._count_lock = threading.Lock()
        self._busy_since = 0.0  # when the ship thread started its current call to the store (0: idle)
        self._spool_report = spool_report
        self._next_report = spool_report  # spool size at which to log next (x10 each time, reset when drained)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._spool_thread = threading.Thread(target=self._spool_loop, name="audit-spool", daemon=True)
        self._ship_thread = threading.Thread(target=self._ship_loop, name="audit-ship", daemon=True)
        self._spool_thread.start()
        if ship:
            self._ship_thread.start()

    # --- the proxy's side --------------------------------------------------------------------------------------

    def submit(self, record: AuditRecord) -> Future | None:
        """Queue a record without waiting. The future resolves (True) when it is durable in the spool; None when
        the queue is full (counted and logged: the one way a record is refused)."""
        return self.submit_many([record])

    def submit_many(self, records: list[AuditRecord]) -> Future | None:
        """`submit` for several records at once: one put, one wake-up of the spool thread and one future for all
        of them (resolved when all are durable: they are spooled in one transaction), or None when they would
        overfill the queue (all refused, counted and logged)."""
        with self._queued_lock:
            if self.queued + len(records) > self.max_queue:
                self.dropped += len(records)
                dropped = self.dropped
            else:
                self.queued += len(records)
                dropped = 0
        if dropped:
            if dropped == len(records) or dropped // 1000 > (dropped - len(records)) // 1000:  # first, each 1000th
                log.error("audit queue full (%d records): %d records refused so far", self.max_queue, dropped)
            return None
        item = _Item(records, Future())
        self.queue.put_nowait(item)  # unbounded: the count above is the bound
        return item.accepted

    def status(self) -> dict[str, object]:
        since = self._busy_since
        return {"queued": self.queued, "spooled": self.spooled, "written": self.written,
                "failures": self.failures, "dropped": self.dropped, "rejected": self.rejected,
                "store": self.store.url.redacted if self.store else "not connected" if self.ship else "audit process",
                "waiting_on_store_s": round(time.monotonic() - since, 1) if since else 0.0,
                "last_error": self.last_error, "spool": str(self.spool_path)}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is in ClickHouse (tests, benchmarks); in the spool, for a
        writer that does not ship."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks or (self.spooled and self.ship):
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop: everything queued is spooled; what ClickHouse did not take in `timeout` stays in the spool for
        the next start. Nothing is dropped."""
        self.queue.put(_Item(None, Future()))
        self._spool_thread.join(timeout)
        if not self.ship:
            self._spool.close()
            self._ship_db.close()
            return
        deadline = time.monotonic() + timeout
        while self.spooled and time.monotonic() < deadline and self.store is not None and not self.last_error:
            self._wake.set()
            time.sleep(0.01)
        self._stopping.set()
        self._wake.set()
        self._ship_thread.join(timeout)
        if self.spooled:
            log.warning("audit writer stopped with %d records in the spool %s; they are sent on next start",
                        self.spooled, self.spool_path)
        if not self._ship_thread.is_alive():  # else it is stuck in a slow insert; the daemon thread dies with us
            self._spool.close()
            self._ship_db.close()

    # --- spool thread ------------------------------------------------------------------------------------------

    def _spool_loop(self) -> None:
        while True:
            items = [self.queue.get()]
            while len(items) < self.batch_size:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            batches = [i for i in items if i.records is not None]
            if batches:
                self._append(batches)
            for _ in items:
                self.queue.task_done()
            if len(batches) < len(items):
                return

    def _append(self, items: list[_Item]) -> None:
        rows = [(TABLE_OF[type(r)], orjson.dumps(r.as_row())) for i in items for r in i.records]
        with self._queued_lock:
            self.queued -= len(rows)
        try:
            with self._count_lock:
                with self._spool:  # one transaction: group commit
                    self._spool.execute("BEGIN")
                    self._spool.executemany("INSERT INTO spool (tbl, row) VALUES (?, ?)", rows)
                self.spooled += len(rows)
        except sqlite3.Error as e:
            with self._queued_lock:
                self.dropped += len(rows)
            self.last_error = f"spool write failed: {e}"
            log.error("audit spool %s write failed (%s): %d records NOT recorded", self.spool_path, e, len(rows))
            for i in items:
                i.accepted.set_exception(e)
            return
        for i in items:
            i.accepted.set_result(True)
        if not self.ship:
            return
        if self.spooled >= self.batch_size:
            self._wake.set()
        if self.spooled >= self._next_report:  # visible even while the ship thread hangs on a silent store
            since = self._busy_since
            log.warning("audit spool holds %d records not yet in ClickHouse (%s)", self.spooled,
                        self.last_error or (f"store busy for {time.monotonic() - since:.0f}s" if since
                                            else "shipping"))
            self._next_report *= 10

    # --- ship thread -------------------------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        backoff, next_try = 0.0, 0.0
        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self.shared:
                self._count_spool()
            if not self.spooled or time.monotonic() < next_try:
                continue
            try:
                # A backlog goes in full batches one after the other; the last, partial batch ends the round, and
                # what arrives meanwhile waits for the next (flush_interval later, or sooner once a full batch is
                # spooled). Shipping again at once whatever came in during the last insert would make a steady
                # trickle of requests one insert (one part, merged later) per few rows: at 450 requests/s about
                # 7 rows per insert, and 2.97 ms of CPU per row for the store and writer instead of 0.42 with
                # 225-row inserts (bench/store.py).
                while self.spooled and not self._stopping.is_set():
                    if self._ship_batch() < self.batch_size:
                        break
                if backoff:
                    log.warning("audit store back: backlog shipped, %d written so far", self.written)
                self._next_report = self._spool_report
                backoff, self.last_error = 0.0, ""
            except Exception as e:  # noqa: BLE001 - every backend failure means "keep it spooled, try again later"
                self.failures += 1
                backoff = min(max(backoff * 2, 0.2), self.max_backoff)
                next_try = time.monotonic() + backoff
                self.last_error = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                log.error("audit write failed (%s): %d spooled, %d queued, %d failures; retry in %.1fs",
                          self.last_error, self.spooled, self.queued, self.failures, backoff)

    def _connected_store(self) -> Store:
        if self.store is None:
            assert self._open_store is not None
            self.store = self._open_store()
            log.info("audit store connected: %s", self.store.url.redacted)
        return self.store

    def _ship_batch(self) -> int:
        self._busy_since = time.monotonic()
        try:
            return self._ship_oldest()
        finally:
            self._busy_since = 0.0

    def _ship_oldest(self) -> int:
        """Send the oldest batch; returns how many rows it held."""
        store = self._connected_store()
        rows = self._ship_db.execute("SELECT seq, tbl, row FROM spool ORDER BY seq LIMIT ?",
                                     (self.batch_size,)).fetchall()
        if not rows:  # the count drifted (it is only a hint for waking up): take the truth
            self._count_spool()
            return 0
        try:
            self._insert(store, rows)
        except Exception:
            if not self._healthy(store):
                raise
            self._insert_one_by_one(store, rows)
        with self._count_lock:
            self._ship_db.execute("DELETE FROM spool WHERE seq <= ?", (rows[-1][0],))
            self.spooled -= len(rows)
        self.written += len(rows)
        return len(rows)

    def _count_spool(self) -> None:
        with self._count_lock:
            self.spooled = self._ship_db.execute("SELECT count(*) FROM spool").fetchone()[0]

    @staticmethod
    def _insert(store: Store, rows: list[tuple[int, str, bytes]]) -> None:
        by_table: dict[str, list[dict]] = {}
        for _, tbl, row in rows:
            by_table.setdefault(tbl, []).append(orjson.loads(row))
        for tbl, dicts in by_table.items():
            for d in dicts:  # timestamps travel as ISO text
                d["ts"] = datetime.fromisoformat(d["ts"])
            store.insert(tbl, dicts)

    @staticmethod
    def _healthy(store: Store) -> bool:
        try:
            store.query("SELECT 1", {})
            return True
        except Exception:  # noqa: BLE001 - any failure to answer means "not healthy"
            return False

    def _insert_one_by_one(self, store: Store, rows: list[tuple[int, str, bytes]]) -> None:
        """The store is up but refused the batch: find the rows it refuses and set them aside."""
        for row in rows:
            try:
                self._insert(store, [row])
            except Exception as e:
                if not self._healthy(store):
                    raise
                seq, tbl, data = row
                self._ship_db.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?)",
                                      (seq, tbl, data, str(e)[:2000], time.time()))
                self.rejected += 1
                log.error("audit store rejected record %d (%s); kept in %s table 'rejected'",
                          seq, str(e).splitlines()[0][:200], self.spool_path)


class Handover:
    """The event loop's side of a writer: the records submitted during one turn of the loop go to the writer
    together when it ends, and one wake-up of the loop settles all their waiters. One at a time, each record cost
    a queue put, a wake-up of the spool thread and a wake-up of the loop (a write to its self-pipe and a read),
    about 0.05 ms of the loop's CPU and 0.04 of the spool thread's per small request, a tenth of what the gateway
    adds to bare mitmproxy. Each waiter still learns whether its own record is durable, and waits at most `wait`
    seconds: auditing never holds a client forever."""

    def __init__(self, writer: AuditWriter, wait: float):
        self.writer = writer
        self.wait = wait
        self._records: list[AuditRecord] = []
        self._waiters: list[asyncio.Future[bool]] = []

    def submit(self, record: AuditRecord) -> asyncio.Future[bool]:
        """Queue `record` with this turn's. The future resolves True once it is durable in the spool; False if it
        was refused or the spool write failed (the writer counted and logged that), or after `wait` seconds
        without an answer (logged here). Never an exception: a waiter that nobody awaits warns of nothing."""
        loop = asyncio.get_running_loop()
        if not self._records:
            loop.call_soon(self.hand_over)
        self._records.append(record)
        waiter = loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def hand_over(self) -> None:
        """Give the writer what this turn submitted; the owner calls it too before it closes the writer."""
        if not self._records:
            return
        records, waiters = self._records, self._waiters
        self._records, self._waiters = [], []
        accepted = self.writer.submit_many(records)
        if accepted is None:
            _settle(waiters, False)
            return
        loop = waiters[0].get_loop()
        late = loop.call_later(self.wait, self._late, records, waiters)
        accepted.add_done_callback(lambda done: _wake(loop, self._durable, done, waiters, late))

    @staticmethod
    def _durable(accepted: Future, waiters: list[asyncio.Future[bool]], late: asyncio.TimerHandle) -> None:
        late.cancel()
        _settle(waiters, accepted.exception() is None)

    def _late(self, records: list[AuditRecord], waiters: list[asyncio.Future[bool]]) -> None:
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""  # a turn's batch can be thousands
        log.error("audit records %s%s not yet durable after %.0fs: answering the clients anyway",
                  ", ".join(r.event_id for r in records[:5]), more, self.wait)
        _settle(waiters, False)


def _wake(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    """Run `callback` on `loop` from the spool thread; a loop that has closed meanwhile (the proxy shut down
    with records in flight: they are spooled, only nobody waits any more) is left alone."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def _settle(waiters: list[asyncio.Future[bool]], durable: bool) -> None:
    for waiter in waiters:
        if not waiter.done():  # answered late, or its request was cancelled
            waiter.set_result(durable)
