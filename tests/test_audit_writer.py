"""The spooled writer against the real engine: an outage loses nothing, replays arrive once, bad rows step aside;
and credentials for a server store never show.

A `Switchable` store wraps a real chdb store and fails like an unreachable server until it is switched back on
(no ClickHouse server can run here); the gateway-level fault and kill -9 tests are in test_audit_e2e.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import threading
import time
from urllib.parse import quote

import pytest

from core.audit import AuditEvent, ConnectionEvent
from storage.store import AuditUrl, AuditUrlError, Store, StoreUnavailableError
from storage.writer import AuditWriter, Handover, spool_counts


class Switchable:
    """A real store that refuses everything while `up` is clear, as a server that went away does."""

    def __init__(self, store: Store):
        self.store, self.url = store, store.url
        self.up = threading.Event()
        self.up.set()
        self.poison_user = ""  # rows of this user are refused even when up (a bad value, not an outage)
        self.answering = threading.Event()  # cleared: calls hang, as on a server that accepts and never answers
        self.answering.set()

    def insert(self, table, rows):
        self.answering.wait()
        if not self.up.is_set():
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        if any(r.get("user") == self.poison_user != "" for r in rows):
            raise ValueError("Code: 53. Type mismatch")
        self.store.insert(table, rows)

    def query(self, sql, params):
        if not self.up.is_set():
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return self.store.query(sql, params)


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb://{tmp_path / 'audit'}")
    yield s
    s.close()


def count(store: Store, sql: str) -> int:
    return store.query(sql, {})[1][0][0]


def wait_until(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_outage_spools_and_everything_arrives_once_when_the_store_returns(tmp_path, store, caplog):
    flaky = Switchable(store)
    flaky.up.clear()
    writer = AuditWriter(tmp_path / "spool.sqlite", store=flaky, batch_size=50, flush_interval=0.02,
                         max_backoff=0.05, spool_report=100)
    events = [AuditEvent(user=f"u{i % 7}", prompt=f"p{i}") for i in range(500)]
    with caplog.at_level(logging.WARNING, logger="storage.writer"):
        accepted = [writer.submit(e) for e in events]
        accepted.append(writer.submit(ConnectionEvent(host="claude.ai", service="claude-web")))
        assert all(f.result(10) for f in accepted)  # durable in the spool while the store is down
        wait_until(lambda: writer.failures >= 3)
    status = writer.status()
    assert (status["spooled"], status["written"], status["dropped"]) == (501, 0, 0)
    assert "Connection refused" in status["last_error"]
    assert any("501 spooled" in r.getMessage() for r in caplog.records), "spool size must be in the logs"
    assert any("audit spool holds" in r.getMessage() for r in caplog.records)

    flaky.up.set()
    assert writer.flush(30)
    writer.close()
    assert count(store, "SELECT count() FROM events FINAL") == 500
    assert count(store, "SELECT uniqExact(event_id) FROM events") == 500
    assert count(store, "SELECT count() FROM connections") == 1
    assert spool_counts(tmp_path / "spool.sqlite") == {"spooled": 0, "rejected": 0}


def test_spool_left_by_a_crash_is_replayed_and_duplicates_collapse(tmp_path, store):
    """A previous process spooled events and died; some of them had reached ClickHouse already (inserted, not yet
    deleted from the spool). The next writer replays the spool; readers see each event once."""
    flaky = Switchable(store)
    flaky.up.clear()
    first = AuditWriter(tmp_path / "spool.sqlite", store=flaky, flush_interval=0.02, max_backoff=0.05)
    events = [AuditEvent(prompt=f"p{i}") for i in range(200)]
    assert all(first.submit(e).result(10) for e in events)
    first.close(timeout=0.5)  # the store is down: nothing is dropped, it stays spooled
    assert spool_counts(tmp_path / "spool.sqlite")["spooled"] == 200
    store.insert_events(events[:80])  # these made it before the "crash"

    second = AuditWriter(tmp_path / "spool.sqlite", store=store, flush_interval=0.02)
    assert second.flush(30)
    second.close()
    assert count(store, "SELECT count() FROM events") == 280  # at-least-once on disk ...
    assert count(store, "SELECT count() FROM events FINAL") == 200  # ... exactly once for readers
    assert spool_counts(tmp_path / "spool.sqlite")["spooled"] == 0


class Counting:
    """A real store that records the size of every insert it is given."""

    def __init__(self, store: Store):
        self.store, self.url = store, store.url
        self.inserts: list[int] = []

    def insert(self, table, rows):
        self.store.insert(table, rows)
        self.inserts.append(len(rows))

    def query(self, sql, params):
        return self.store.query(sql, params)


def test_a_steady_trickle_is_shipped_once_per_flush_interval_not_as_it_comes(tmp_path, store):
    """Requests arriving a few at a time are inserted together every flush_interval: one part per interval for
    chdb to write and merge, not one per few rows (shipping again at once what came in during an insert did that:
    about 7 rows per insert at 450 requests/s, and 7 times the store's CPU per row: bench/store.py)."""
    counting = Counting(store)
    writer = AuditWriter(tmp_path / "spool.sqlite", store=counting, flush_interval=0.3)
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < 1.5:  # about 200 requests/s
        for _ in range(2):
            writer.submit(AuditEvent(user="u", prompt=f"p{sent}"))
            sent += 1
        time.sleep(0.01)
    assert writer.flush(30)
    writer.close()
    assert sum(counting.inserts) == sent == count(store, "SELECT count() FROM events FINAL")
    assert len(counting.inserts) <= 1.5 / 0.3 + 4, counting.inserts  # before: one insert per ~10 ms


def test_a_backlog_is_shipped_in_full_batches_without_waiting(tmp_path, store):
    """What piled up while the store was slow goes in one round, batch after batch, the last one partial."""
    slow = Switchable(store)
    slow.answering.clear()  # the first insert hangs until the backlog is spooled
    counting = Counting(slow)
    writer = AuditWriter(tmp_path / "spool.sqlite", store=counting, batch_size=100, flush_interval=60)
    assert all(f.result(10) for f in [writer.submit(AuditEvent(prompt=f"p{i}")) for i in range(450)])
    slow.answering.set()
    wait_until(lambda: sum(counting.inserts) == 450)  # not a flush_interval (a minute) between batches
    assert counting.inserts == [100, 100, 100, 100, 50]
    writer.close()
    assert count(store, "SELECT count() FROM events FINAL") == 450


def test_rows_the_healthy_store_refuses_are_set_aside_not_blocking(tmp_path, store):
    flaky = Switchable(store)
    flaky.poison_user = "poison"
    writer = AuditWriter(tmp_path / "spool.sqlite", store=flaky, flush_interval=0.02, max_backoff=0.05)
    for i in range(30):
        writer.submit(AuditEvent(user="poison" if i == 13 else "ok"))
    assert writer.flush(30)
    writer.close()
    assert count(store, "SELECT count() FROM events FINAL") == 29
    assert writer.rejected == 1
    db = sqlite3.connect(tmp_path / "spool.sqlite")
    [(row, error)] = db.execute("SELECT row, error FROM rejected").fetchall()
    assert b'"poison"' in row and "Type mismatch" in error


def test_store_unreachable_at_start_is_connected_later(tmp_path, store):
    attempts = []

    def open_store() -> Store:
        attempts.append(1)
        if len(attempts) < 3:
            raise StoreUnavailableError("audit store http://ch:8123/default unavailable: refused")
        return store

    writer = AuditWriter(tmp_path / "spool.sqlite", open_store=open_store, flush_interval=0.02, max_backoff=0.05)
    assert writer.status()["store"] == "not connected"
    assert writer.submit(AuditEvent(prompt="early")).result(10)
    assert writer.flush(30)
    assert len(attempts) == 3 and writer.status()["store"].startswith("chdb://")
    writer.close()
    assert count(store, "SELECT count() FROM events FINAL WHERE prompt = 'early'") == 1


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections to it are refused


SECRET = "pa55-w0rd/with:odd@chars"


def test_password_never_shows_in_reprs_or_errors(tmp_path, monkeypatch):
    url = AuditUrl.parse(f"http://auditor@127.0.0.1:{refused_port()}/ai")
    monkeypatch.setenv("GATEWAY_AUDIT_PASSWORD", SECRET)
    with_env = url.with_password()
    assert with_env.password == SECRET and SECRET not in repr(with_env) and SECRET not in with_env.redacted
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    assert url.with_password(password_file=str(secret_file)).password == "from-file"
    with pytest.raises(AuditUrlError, match="cannot read audit password file"):
        url.with_password(password_file=str(tmp_path / "missing"))
    with pytest.raises(StoreUnavailableError) as e:
        Store.open(with_env)
    assert SECRET not in str(e.value) and "auditor:***@127.0.0.1" in str(e.value)
    inline = AuditUrl.parse(f"http://auditor:{quote(SECRET, safe='')}@127.0.0.1:{refused_port()}/ai")
    assert inline.password == SECRET
    assert inline.scrub(f"{SECRET} {quote(SECRET, safe='')} {quote(SECRET)}") == "*** *** ***"


def test_a_hung_store_blocks_only_the_ship_thread(tmp_path, store):
    flaky = Switchable(store)
    flaky.answering.clear()
    writer = AuditWriter(tmp_path / "spool.sqlite", store=flaky, flush_interval=0.02)
    assert writer.submit(AuditEvent(prompt="first")).result(10)
    wait_until(lambda: writer.status()["waiting_on_store_s"] > 0)  # the ship thread is stuck in an insert
    later = [writer.submit(AuditEvent(prompt=f"later{i}")) for i in range(50)]
    assert all(f.result(10) for f in later)  # still accepted and durable meanwhile
    assert writer.status()["spooled"] == 51
    flaky.answering.set()
    assert writer.flush(30)
    writer.close()
    assert count(store, "SELECT count() FROM events FINAL") == 51


# --- the event loop's side: several records per hand-over, each waiter told about its own -------------------------

def test_the_queue_bound_counts_records_and_refuses_a_batch_that_would_overfill_it_whole(tmp_path, caplog):
    writer = AuditWriter(tmp_path / "spool.sqlite", ship=False, max_queue=3)
    writer._count_lock.acquire()  # the spool thread stalls in its next write, as on a slow disk
    try:
        first = writer.submit(AuditEvent(prompt="first"))
        wait_until(lambda: writer.queued == 0)  # taken by the spool thread, which now waits on the disk
        waiting = writer.submit_many([AuditEvent(prompt="b"), AuditEvent(prompt="c")])
        with caplog.at_level(logging.ERROR, logger="storage.writer"):
            assert writer.submit_many([AuditEvent(prompt="d"), AuditEvent(prompt="e")]) is None  # 2 + 2 > 3
        assert writer.submit(AuditEvent(prompt="f")) is not None  # 2 + 1 fits
        assert writer.status()["queued"] == 3 and writer.dropped == 2
        assert "audit queue full (3 records): 2 records refused so far" in caplog.text
    finally:
        writer._count_lock.release()
    assert first.result(10) and waiting.result(10)
    writer.close()
    assert spool_counts(tmp_path / "spool.sqlite")["spooled"] == 4 and writer.status()["queued"] == 0


class CountingWriter(AuditWriter):
    """A real spool-only writer that remembers how the records were handed to it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handed: list[int] = []

    def submit_many(self, records):
        self.handed.append(len(records))
        return super().submit_many(records)


def test_records_of_one_turn_of_the_loop_go_together_and_each_waiter_learns_it_is_durable(tmp_path):
    writer = CountingWriter(tmp_path / "spool.sqlite", ship=False)
    handover = Handover(writer, wait=10)

    async def main():
        turn = [handover.submit(AuditEvent(prompt=f"p{i}")) for i in range(5)]
        await asyncio.sleep(0)
        later = handover.submit(AuditEvent(prompt="next turn"))
        return await asyncio.gather(*turn, later)

    assert asyncio.run(main()) == [True] * 6
    assert writer.handed == [5, 1]
    writer.close()
    assert spool_counts(tmp_path / "spool.sqlite")["spooled"] == 6


def test_a_refused_or_unconfirmed_record_is_answered_false_and_a_cancelled_waiter_spares_its_siblings(
        tmp_path, caplog):
    writer = AuditWriter(tmp_path / "spool.sqlite", ship=False, max_queue=1)
    handover = Handover(writer, wait=0.2)

    async def main():
        refused = [handover.submit(AuditEvent(prompt="a")), handover.submit(AuditEvent(prompt="b"))]  # 2 > 1
        assert await asyncio.gather(*refused) == [False, False]
        writer.max_queue = 10
        writer._count_lock.acquire()  # the spool never confirms in time
        try:
            stalled = [handover.submit(AuditEvent(prompt=f"stalled {i}")) for i in range(7)]
            assert await asyncio.wait_for(asyncio.gather(*stalled), 5) == [False] * 7
        finally:
            writer._count_lock.release()
        gone, kept = handover.submit(AuditEvent(prompt="gone")), handover.submit(AuditEvent(prompt="kept"))
        gone.cancel()  # its request went away; the record is still written
        return await kept

    with caplog.at_level(logging.ERROR, logger="storage.writer"):
        assert asyncio.run(main()) is True
    assert " and 2 more not yet durable after 0s: answering the clients anyway" in caplog.text
    assert writer.dropped == 2
    writer.close()
    assert spool_counts(tmp_path / "spool.sqlite")["spooled"] == 9  # stalled (late, not lost), gone and kept


def test_records_handed_over_at_close_are_spooled_even_if_the_loop_is_gone(tmp_path, caplog):
    writer = AuditWriter(tmp_path / "spool.sqlite", ship=False)
    handover = Handover(writer, wait=10)

    async def main():
        handover.submit(AuditEvent(prompt="last"))
        handover.hand_over()  # what the audit addon does on shutdown, before it closes the writer

    writer._count_lock.acquire()
    try:
        asyncio.run(main())  # the loop closes before the spool thread answers
    finally:
        writer._count_lock.release()
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no callback into the closed loop
    assert spool_counts(tmp_path / "spool.sqlite")["spooled"] == 1
