"""Prometheus metrics: what the gateway decided, and whether its audit keeps up, on `gateway_metrics`
(host:port, path /metrics; off when empty).

Interactions are counted from the audit events (Audit hands each one to `observe`), so every interaction the
audit records, whether request, WebSocket turn or tunnel, is counted once, by the fields auditors query: service,
operation, decision and inspection; findings by entity type, never by value. All label values come from the
catalog, the policy and the recognizers, so the series stay few. The audit pipeline's own state (records queued,
spooled, written, refused, rejected by the store) is read from the writer at each scrape, so that an alert can
fire when the audit falls behind or loses records: a security product must notice when it stops recording.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from mitmproxy import ctx
from mitmproxy.exceptions import OptionsError
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.audit import AuditEvent

log = logging.getLogger(__name__)

#: writer.status() keys exported, and what they mean
AUDIT_STATE = {
    "queued": "Audit records waiting to be spooled to disk.",
    "spooled": "Audit records on disk not yet in ClickHouse.",
    "written": "Audit records written to ClickHouse since start.",
    "dropped": "Audit records lost since start (queue full, or the spool could not be written).",
    "rejected": "Audit records ClickHouse refused, set aside in the spool.",
    "waiting_on_store_s": "Seconds the writer has been waiting on ClickHouse (0: not waiting).",
}


class _AuditState(Collector):
    """The audit writer's counters, read when Prometheus scrapes (from the metrics server's thread: plain ints)."""

    def __init__(self) -> None:
        self.writer = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self.writer.status() if self.writer is not None else {}
        for key, help_text in AUDIT_STATE.items():
            if isinstance(status.get(key), (int, float)):
                yield GaugeMetricFamily(f"ai_gateway_audit_{key}", help_text, value=status[key])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.interactions = Counter("ai_gateway_interactions", "AI interactions audited.",
                                    ["service", "operation", "decision", "inspection"], registry=self.registry)
        self.findings = Counter("ai_gateway_findings", "DLP findings in audited interactions, by entity type.",
                                ["entity"], registry=self.registry)
        self.audit_state = _AuditState()
        self.registry.register(self.audit_state)
        self.server = None  # (WSGIServer, thread) while serving
        self.address: tuple[str, int] | None = None

    def load(self, loader) -> None:
        loader.add_option("gateway_metrics", str, "",
                          "host:port to serve Prometheus metrics on (path /metrics), e.g. 127.0.0.1:9464; "
                          "empty: off.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_metrics" not in updated:
            return
        self.address = parse_address(ctx.options.gateway_metrics)
        if self.server is not None:
            self._stop()
            self._start()

    def running(self) -> None:
        audit = ctx.master.addons.get("audit")
        self.audit_state.writer = getattr(audit, "writer", None)
        self._start()

    def _start(self) -> None:
        if self.address is None:
            return
        host, port = self.address
        try:
            self.server = start_http_server(port, host, registry=self.registry)
        except OSError as e:  # the proxy is worth more than its metrics: say so and go on
            log.error("metrics not served on %s:%d: %s", host, port, e)
            return
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.server[0].server_port)

    def observe(self, event: AuditEvent) -> None:
        """Count one audit event (called by the audit stage for every event it submits)."""
        self.interactions.labels(event.service, event.operation or "unknown", event.decision,
                                 event.inspection).inc()
        for entity, count in zip(event.entity_types, event.entity_counts):
            self.findings.labels(entity).inc(count)

    def done(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.server is not None:
            httpd, thread = self.server
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)
            self.server = None


def parse_address(value: str) -> tuple[str, int] | None:
    """'host:port' (IPv6 in brackets) -> (host, port); '' -> None. OptionsError names what is wrong."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionsError(f"gateway_metrics must be host:port (e.g. 127.0.0.1:9464) or empty, not {value!r}")
    return host, int(port)
