"""Opening the gateway's own SQLite files (the audit spool, the MCP first-seen memory) one way.

Each is written by one thread per connection and shared by the gateway's processes: autocommit (the caller's
BEGIN IMMEDIATE is the only transaction), a busy timeout for the other processes' writers, WAL (a read never
waits for a writer) and `synchronous=NORMAL` (a power loss may lose the last writes, never the file).

Pure: no mitmproxy.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_wal(path: Path, schema: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to `path` in WAL mode with `schema` (an SQL script) run; closed again if any of that fails.
    Usable from any one thread at a time (check_same_thread off: the caller keeps to one)."""
    db = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db
