"""The MCP first-seen memory shared by a gateway's processes and kept across restarts: a small SQLite file in the
data folder (`mcp-first-seen.sqlite`, option `gateway_mcp_first_seen`).

Why a file: a rug pull is a definition that differs from the one its server first listed, a shadowed name one
another server listed first. Remembered per process, `gateway run --workers N` misses a change whenever the first
listing and the changed one reach different processes (the kernel spreads the connections), and a restart takes
the changed definition for the first. So each process keeps its memory (providers.mcp.FirstSeen, which the MCP
stage reads synchronously, from a stream callable too) in step with the file:

- before the MCP stage judges a request, the process reads the rows written since its last read (`seq`: a
  counter of the file that every write transaction bumps), in a thread, waiting at most READ_WAIT; its first
  read loads the whole file, which on a restart is what the gateway saw before;
- what a listing changes (a new tool, another last definition, a `last_seen` older than providers.mcp.RESEEN)
  is written by another thread, never waited for; the rows waiting are one per tool (its latest), so a server
  listing without end costs bounded memory;
- two processes learning one tool at once: the first write wins (`first` is kept on conflict) and the other
  process takes it at its next read, from when on its listings of another definition are flagged.

SQLite in WAL mode (a read never waits for a writer), `synchronous=NORMAL` (a power loss may lose the last
writes: those tools are learned again), writers of several processes taking turns within BUSY_TIMEOUT. Bounded
as the memory is, by its rule (providers.mcp.overflow): at most `per_server` rows of one server and `limit` in
all; past either, the least recently seen tenth (of that server, or of all) is deleted in the write that went
past. The file keeps its own row counts (tables `sizes` and `size`, kept by triggers, so every process's writes
count), so a write reads two numbers and counts nothing.

When the file cannot be opened, read or written (a read-only folder, a corrupt file, a disk that does not
answer), the process says so in its log and goes on with its own memory, and `problem` says why, which the MCP
stage notes on the events it judges meanwhile (addons/mcp.py). A write that failed is not retried: its tools are
written again when they change or are seen again after RESEEN.

Pure: no mitmproxy.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from core.exchange import ToolDefinition
from providers.mcp import MAX_TOOLS, FirstSeen, Seen, overflow
from storage.sqlitefile import open_wal

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's
READ_WAIT = 1.0  # a read that takes longer is not waited for: the request is judged by what the process knows

Row = tuple[str, str, Seen]

# One transaction, so that two processes opening a file from before the size tables count its rows once.
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS tools (server TEXT NOT NULL, name TEXT NOT NULL, first TEXT NOT NULL,
                                  first_seen REAL NOT NULL, last TEXT NOT NULL, last_seen REAL NOT NULL,
                                  seq INTEGER NOT NULL, PRIMARY KEY (server, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tools_seq ON tools (seq);
CREATE INDEX IF NOT EXISTS tools_last_seen ON tools (last_seen);
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL);
INSERT OR IGNORE INTO counter VALUES (0, 0);
-- How many rows the file holds of each server and in all, kept by triggers: a write reads them, never counts.
CREATE TABLE IF NOT EXISTS sizes (server TEXT PRIMARY KEY, tools INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS size (id INTEGER PRIMARY KEY CHECK (id = 0), tools INTEGER NOT NULL);
INSERT INTO sizes SELECT server, count(*) FROM tools WHERE NOT EXISTS (SELECT 1 FROM size) GROUP BY server;
INSERT OR IGNORE INTO size SELECT 0, count(*) FROM tools;
CREATE TRIGGER IF NOT EXISTS tools_added AFTER INSERT ON tools BEGIN
    INSERT INTO sizes VALUES (new.server, 1) ON CONFLICT (server) DO UPDATE SET tools = tools + 1;
    UPDATE size SET tools = tools + 1;
END;
CREATE TRIGGER IF NOT EXISTS tools_removed AFTER DELETE ON tools BEGIN
    UPDATE sizes SET tools = tools - 1 WHERE server = old.server;
    DELETE FROM sizes WHERE server = old.server AND tools <= 0;
    UPDATE size SET tools = tools - 1;
END;
COMMIT;
"""

# the first definition stays; the last is the later one's (two processes may write out of order)
_UPSERT = """
INSERT INTO tools (server, name, first, first_seen, last, last_seen, seq) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server, name) DO UPDATE SET
    last = CASE WHEN excluded.last_seen >= tools.last_seen THEN excluded.last ELSE tools.last END,
    last_seen = max(tools.last_seen, excluded.last_seen), seq = excluded.seq
"""


class FirstSeenFile:
    """One connection to the file, for the one thread that uses it."""

    def __init__(self, path: Path, limit: int, per_server: int):
        self.limit, self.per_server = limit, per_server
        self.db = open_wal(path, _SCHEMA, BUSY_TIMEOUT)

    def changes(self, since: int) -> tuple[int, list[Row]]:
        """The rows written after `since`, and the counter to read from next."""
        rows = self.db.execute("SELECT server, name, first, first_seen, last, last_seen, seq FROM tools "
                               "WHERE seq > ? ORDER BY seq", (since,)).fetchall()
        return (rows[-1][6] if rows else since), [(s, n, Seen(f, fs, la, ls)) for s, n, f, fs, la, ls, _ in rows]

    def write(self, rows: list[Row]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            (seq,) = db.execute("UPDATE counter SET seq = seq + 1 RETURNING seq").fetchone()
            db.executemany(_UPSERT, [(s, n, r.first, r.first_seen, r.last, r.last_seen, seq) for s, n, r in rows])
            for server in {s for s, _, _ in rows}:
                (count,) = db.execute("SELECT tools FROM sizes WHERE server = ?", (server,)).fetchone()
                self._forget("WHERE server = ?", (server,), overflow(count, self.per_server))
            (count,) = db.execute("SELECT tools FROM size").fetchone()
            self._forget("", (), overflow(count, self.limit))
            db.execute("COMMIT")
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")

    def _forget(self, where: str, args: tuple, excess: int) -> None:
        """The `excess` least recently seen rows (of a server, or of all), as FirstSeen forgets them."""
        if excess:
            self.db.execute(f"DELETE FROM tools WHERE (server, name) IN (SELECT server, name FROM tools {where} "
                            f"ORDER BY last_seen LIMIT ?)", (*args, excess))

    def close(self) -> None:
        self.db.close()


class SharedFirstSeen:
    """One process's FirstSeen, kept in step with the file when it has one (`open`), else its own."""

    def __init__(self, limit: int = 100_000, per_server: int = MAX_TOOLS):
        self.limit, self.per_server = limit, per_server
        self.memory = FirstSeen(limit, per_server)
        self.path: Path | None = None
        self.cursor = 0  # the counter of the file up to which this memory has read it
        self.problems: dict[str, str] = {}  # open, read, write -> what went wrong last time
        self._reader = ThreadPoolExecutor(1, "mcp-first-seen-read")
        self._writer = ThreadPoolExecutor(1, "mcp-first-seen-write")
        self._files = threading.local()  # each thread's FirstSeenFile
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], Seen] = {}
        self._flushing = False
        self._inflight: Future | None = None  # the read under way (refresh)

    @property
    def problem(self) -> str:
        """Why this memory is not (or not now) the gateway's shared one; "" when it is, or was never meant to be."""
        return "; ".join(tuple(self.problems.values()))  # a copy: the threads may change it meanwhile

    def open(self, path: Path) -> None:
        """Use the file, in the background: the first read waits for it, and a failure is logged and kept in
        `problem`."""
        self.path = path
        self._reader.submit(self._open)
        self._writer.submit(self._open)

    def close(self) -> None:
        """Write what waits and let the threads end (they finish their queued work; nothing is waited for)."""
        if self.path is not None:
            self._writer.submit(self._flush)
            self._writer.submit(self._close_file)
            self._reader.submit(self._close_file)
        self._reader.shutdown(wait=False)
        self._writer.shutdown(wait=False)

    def get(self, server: str, name: str) -> Seen | None:
        return self.memory.get(server, name)

    def mark(self, tool: ToolDefinition) -> None:
        self.memory.mark(tool)

    def observe(self, tools: list[ToolDefinition], now: float) -> None:
        """FirstSeen.observe, and what it changed queued for the file."""
        rows = self.memory.observe(tools, now)
        if not rows or self.path is None or "open" in self.problems:
            return
        with self._lock:
            self._pending.update(((s, n), r) for s, n, r in rows)
            if self._flushing:
                return
            self._flushing = True
        self._writer.submit(self._flush)

    async def refresh(self) -> None:
        """Take what the file holds that this memory has not read: before an MCP request is judged. One read at a
        time: requests that come meanwhile wait for the same one, and a read slower than READ_WAIT is not lost but
        taken by the next refresh (else a slow file would be read from the start again and again, and never be
        loaded). Never raises: what goes wrong is in `problem`."""
        if self.path is None or "open" in self.problems:
            return
        if self._inflight is None:
            self._inflight = self._reader.submit(self._read, self.cursor)
        inflight = self._inflight
        try:  # shielded: a wait that gives up must not cancel the read
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(inflight)), READ_WAIT)
        except TimeoutError:
            return self._failed("read", f"{self.path} did not answer within {READ_WAIT:g}s")
        except Exception:  # noqa: BLE001 (taken, and said, below)
            pass
        self._take(inflight)

    def _take(self, inflight: Future) -> None:
        if self._inflight is not inflight:
            return  # another request took this read already
        self._inflight = None
        error = inflight.exception()
        if error is not None:
            return self._failed("read", f"{self.path} could not be read ({error})")
        cursor, rows, loaded = inflight.result()
        self._recovered("read")
        if cursor <= self.cursor:
            return
        if loaded is not None and self.memory.count == 0:
            self.memory = loaded  # the whole file, built in the thread
        else:
            self.memory.merge(rows)
        self.cursor = cursor

    # --- in the threads -------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._files.file = FirstSeenFile(self.path, self.limit, self.per_server)
        except (sqlite3.Error, OSError) as e:
            self._failed("open", f"{self.path} could not be opened ({e})")

    def _close_file(self) -> None:
        file = getattr(self._files, "file", None)
        if file is not None:
            file.close()
            self._files.file = None

    def _read(self, since: int) -> tuple[int, list[Row], FirstSeen | None]:
        file = getattr(self._files, "file", None)
        if file is None:  # it failed to open, after this read was asked for
            return since, [], None
        cursor, rows = file.changes(since)
        if since:
            return cursor, rows, None
        loaded = FirstSeen(self.limit, self.per_server)
        loaded.merge(rows)
        return cursor, rows, loaded

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending, self._flushing = self._pending, {}, False
        file = getattr(self._files, "file", None)
        if not pending or file is None:
            return
        try:
            file.write([(s, n, r) for (s, n), r in pending.items()])
        except (sqlite3.Error, OSError) as e:
            return self._failed("write", f"{self.path} could not be written ({e})")
        self._recovered("write")

    def _failed(self, what: str, problem: str) -> None:
        known, self.problems[what] = self.problems.get(what), problem  # before logging, which may fail
        if known != problem:
            log.warning("MCP first-seen memory: %s: this process goes on with its own memory of MCP tool "
                        "definitions (rug pulls and shadowed names seen by the gateway's other processes, or "
                        "before it started, are missed)", problem)

    def _recovered(self, what: str) -> None:
        if self.problems.pop(what, None) is not None:
            log.info("MCP first-seen memory: %s works again", self.path)
