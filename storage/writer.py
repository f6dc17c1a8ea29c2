"""The audit writer: takes events from the proxy without ever blocking it, and writes them in batches.

Inserts cost 12-15 ms each whatever their size (stack-facts), so events are batched by count and by time in a
background thread. `submit` is a non-blocking put on a bounded queue: the proxy's event loop never waits for
ClickHouse. A failed insert is retried with backoff while the batch stays in memory (bounded by the queue);
what could not be kept is counted and logged, never silently lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from core.audit import AuditEvent
from storage.store import Store

log = logging.getLogger(__name__)


class AuditWriter:
    def __init__(self, store: Store, *, batch_size: int = 1000, flush_interval: float = 0.5,
                 max_queue: int = 100_000):
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue: queue.Queue[AuditEvent | None] = queue.Queue(maxsize=max_queue)
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, event: AuditEvent) -> bool:
        """Queue an event; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(event)
            self._idle.clear()
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("audit queue full: %d events dropped so far", self.dropped)
            return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not (self.queue.empty() and self._idle.is_set()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        batch: list[AuditEvent] = []
        closing = False
        while not closing:
            deadline = time.monotonic() + self.flush_interval
            while len(batch) < self.batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            if batch:
                self._write(batch, final=closing)
                batch = []
            if self.queue.empty():
                self._idle.set()

    def _write(self, batch: list[AuditEvent], final: bool) -> None:
        delay = 0.2
        while True:
            try:
                self.store.insert_events(batch)
                self.written += len(batch)
                return
            except Exception as e:  # the store's failure types vary by backend; all mean "try again"
                self.failures += 1
                log.error("audit insert of %d events failed (%s); retrying in %.1fs",
                          len(batch), str(e).splitlines()[0][:200], delay)
                if final:
                    self.dropped += len(batch)
                    log.error("audit writer closing: %d events not written", len(batch))
                    return
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
