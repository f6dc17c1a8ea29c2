"""Record every AI exchange as an audit event.

A flow can end in `response` or in `error` (clients close a stream as soon as they read its end marker): both
hooks write the event, once. Events go to the `AuditWriter` queue without waiting; the writer batches them into
ClickHouse from its own thread. The store is opened in `configure`, before the proxy accepts traffic, so a bad
`--audit` URL stops start-up with a clear error instead of failing on the first request.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from core.interaction import KEY, Interaction
from storage.store import AuditUrl, AuditUrlError, Store, StoreLockedError
from storage.writer import AuditWriter

log = logging.getLogger(__name__)


class Audit:
    def __init__(self) -> None:
        self.store: Store | None = None
        self.writer: AuditWriter | None = None

    def load(self, loader) -> None:
        loader.add_option("gateway_audit", str, "",
                          "Audit store: chdb:///path (embedded ClickHouse) or http(s)://user:pass@host:port/db. "
                          "Empty: audit disabled (events are only logged).")

    def configure(self, updated: set[str]) -> None:
        if "gateway_audit" not in updated:
            return
        self._close()
        if not ctx.options.gateway_audit:
            return
        try:
            url = AuditUrl.parse(ctx.options.gateway_audit)
            self.store = Store.open(url)
        except (AuditUrlError, StoreLockedError) as e:
            raise OptionsError(str(e)) from None
        self.writer = AuditWriter(self.store)
        log.info("audit store: %s", url.redacted)

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or it.audited:
            return
        it.audited = True
        event = it.to_event()
        log.info("AI %s %s %s model=%s decision=%s status=%s", event.service, event.operation, event.user or
                 event.client_addr, event.model or "-", event.decision, event.status)
        if self.writer is not None:
            self.writer.submit(event)

    def done(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.store is not None:
            self.store.close()
            self.store = None
