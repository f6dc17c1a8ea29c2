"""Prometheus metrics: what the gateway decided, and whether its audit keeps up, on `gateway_metrics`
(host:port, path /metrics; off when empty).

Interactions are counted from the audit events (Audit hands each one to `observe`), so every interaction the
audit records, request or WebSocket turn, is counted once, by the fields auditors query: service, operation,
decision and inspection; findings by entity type, never by value; tunnelled connections (`observe_tunnel`) by
service. All label values come from the catalog, the providers' parsers, the policy and the recognizers, never
from what a client sends, so the series stay few. The audit pipeline's own state (records queued, spooled,
written, lost, rejected by the store) is read from the writer at each scrape, so that an alert can fire when the
audit falls behind or loses records: a security product must notice when it stops recording.

With several proxy processes (`gateway run --workers N`) prometheus-client's multiprocess mode counts them all:
`gateway run` gives every process the same `PROMETHEUS_MULTIPROC_DIR`, each process's counters go to files there,
and the audit process alone serves /metrics, summing the files (and adding its writer's state: the shared spool).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from mitmproxy import ctx
from mitmproxy.exceptions import OptionsError
from prometheus_client import CollectorRegistry, Counter, multiprocess, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.audit import AuditEvent, ConnectionEvent

log = logging.getLogger(__name__)

#: writer.status() keys exported: (metric name, what it counts, whether it only grows)
AUDIT_STATE = {
    "queued": ("ai_gateway_audit_queued", "Audit records waiting to be spooled to disk.", False),
    "spooled": ("ai_gateway_audit_spooled", "Audit records on disk not yet in ClickHouse.", False),
    "waiting_on_store_s": ("ai_gateway_audit_waiting_on_store_seconds",
                           "Seconds the writer has been waiting on ClickHouse (0: not waiting).", False),
    "written": ("ai_gateway_audit_written", "Audit records written to ClickHouse.", True),
    "dropped": ("ai_gateway_audit_dropped", "Audit records lost (queue full, or the spool could not be written).",
                True),
    "rejected": ("ai_gateway_audit_rejected", "Audit records ClickHouse refused, set aside in the spool.", True),
    "failures": ("ai_gateway_audit_store_failures", "Failed attempts to write to ClickHouse.", True),
}


class _AuditState(Collector):
    """The audit writer's state, read when Prometheus scrapes (from the metrics server's thread: plain numbers),
    from whichever writer the audit stage has then (a reconfigured store gets a new one)."""

    def __init__(self) -> None:
        self.writer = None  # storage.writer.AuditWriter the audit stage opened (addons.hooks.AuditOpenedHook)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        writer = self.writer
        status = writer.status() if writer is not None else {}
        for key, (name, help_text, grows) in AUDIT_STATE.items():
            value = status.get(key)
            if isinstance(value, (int, float)):
                family = CounterMetricFamily if grows else GaugeMetricFamily
                yield family(name, help_text, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.interactions = Counter("ai_gateway_interactions", "AI interactions audited.",
                                    ["service", "operation", "decision", "inspection"], registry=self.registry)
        self.findings = Counter("ai_gateway_findings", "DLP findings in audited interactions, by entity type.",
                                ["entity"], registry=self.registry)
        self.tunnels = Counter("ai_gateway_tunnels", "Connections to AI services tunnelled without decryption.",
                               ["service"], registry=self.registry)
        self.audit_state = _AuditState()
        self.registry.register(self.audit_state)
        self.server = None  # (WSGIServer, thread) while serving
        self.address: tuple[str, int] | None = None
        self.running_ = False  # served from `running` on, so that options set at start are all known

    def load(self, loader) -> None:
        loader.add_option("gateway_metrics", str, "",
                          "host:port to serve Prometheus metrics on (path /metrics), e.g. 127.0.0.1:9464; "
                          "empty: off.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_metrics" not in updated:
            return
        self.address = parse_address(ctx.options.gateway_metrics)
        if self.running_:
            self._stop()
            self._start()

    def running(self) -> None:
        self.running_ = True
        self._start()

    def audit_opened(self, writer) -> None:
        self.audit_state.writer = writer

    def audit_recorded(self, event: AuditEvent | ConnectionEvent) -> None:
        if isinstance(event, ConnectionEvent):
            self.observe_tunnel(event.service)
        else:
            self.observe(event)

    def _start(self) -> None:
        if self.address is None:
            return
        host, port = self.address
        registry = self.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # every process's counters, from their files
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self.audit_state)
        try:
            self.server = start_http_server(port, host, registry=registry)
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

    def observe_tunnel(self, service: str) -> None:
        """Count one tunnelled connection (the audit stage, when it records the connection)."""
        self.tunnels.labels(service).inc()

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
