"""Prometheus metrics: what the gateway decided, and whether its audit keeps up, on `gateway_metrics`
(host:port, path /metrics; off when empty). The same small HTTP server answers /ready and serves the PAC file.

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

`/ready` answers 200 only when the gateway can do its job: its rules are loaded (a `rules_loaded` event reached
this process), its audit store is connected and taking records (the writer has reached it, its last write did
not fail and no write has hung for `gateway_ready_store_wait` seconds), its DLP workers have built their scanners
(else the first prompts wait for them, and fail closed when that takes longer than `gateway_dlp_wait`; with
several proxy processes, every live one's), and the proxy accepts connections on its listen address (with
several proxy processes: at least one does; each loads the rules before it listens). A later edit of the
recognizers does not make it unready: the workers in use scan until the new ones are warm (addons/inspect.py).
Otherwise 503, each line a reason. A load balancer or Kubernetes then sends no new clients to a gateway that
would fail them or could not record them; while unready the gateway still spools what it is sent.

`/proxy.pac` and `/wpad.dat` serve the PAC file of the catalog in force (core/pac.py): only AI hosts go through
the gateway. Served here, not on the proxy port, because a client fetches a PAC file directly, not through a
proxy, and the proxy port reads every request as one to forward; this server already answers plain HTTP, from a
thread of its own, off the event loop. The addresses in the file are `gateway_pac_proxies`, or else the host the
file was fetched from at the proxy's listen port.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, make_server

from mitmproxy import ctx
from mitmproxy.exceptions import OptionsError
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from core import pac
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
        # with several proxy processes, summed over the live ones (the supervisor forgets those that died)
        self.dlp_ready_gauge = Gauge("ai_gateway_dlp_ready_processes",
                                     "Proxy processes whose DLP workers can scan (or whose DLP is off).",
                                     registry=self.registry, multiprocess_mode="livesum")
        self.dlp_problem = ""  # this process's, from Inspect (addons.hooks.DlpReadyHook)
        self.audit_state = _AuditState()
        self.registry.register(self.audit_state)
        self.server = None  # (WSGIServer, thread) while serving
        self.address: tuple[str, int] | None = None
        self.running_ = False  # served from `running` on, so that options set at start are all known
        # read by the server's threads: each replaced whole, never changed in place
        self.catalog = None  # core.catalog.Catalog of the rules in force (addons.hooks.RulesLoadedHook)
        self.settings = Settings()

    def load(self, loader) -> None:
        loader.add_option("gateway_metrics", str, "",
                          "host:port to serve Prometheus metrics on (path /metrics), e.g. 127.0.0.1:9464; "
                          "empty: off. Also serves /ready and the PAC file (/proxy.pac, /wpad.dat).")
        loader.add_option("gateway_pac_proxies", str, "",
                          "Gateway addresses the served PAC file names, host:port, comma-separated, tried in "
                          "that order. Empty: the host the file is fetched from, at the listen port.")
        loader.add_option("gateway_pac_direct", bool, False,
                          "The served PAC file ends with DIRECT: AI traffic goes uninspected when no gateway "
                          "answers.")
        loader.add_option("gateway_ready_store_wait", int, 30,
                          "Seconds an audit store write may hang before /ready says the gateway is not ready.")
        loader.add_option("gateway_proxy_processes", int, 0,
                          "Set by `gateway run --workers N` for its audit process: the proxy processes whose DLP "
                          "workers /ready waits for. 0: this process is the proxy.")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if updated & {"gateway_pac_proxies", "gateway_pac_direct", "gateway_ready_store_wait", "listen_host",
                      "listen_port", "gateway_audit", "gateway_proxy_processes"}:
            proxies = [p.strip() for p in o.gateway_pac_proxies.split(",") if p.strip()]
            if proxies:
                try:
                    pac.proxy_list(proxies)
                except pac.PacError as e:
                    raise OptionsError(f"gateway_pac_proxies: {e}") from None
            if o.gateway_ready_store_wait < 1:
                raise OptionsError("gateway_ready_store_wait must be at least 1 (seconds)")
            # listen_port None is mitmproxy's default, 8080; gateway_audit exists when the audit stage is loaded
            self.settings = Settings(tuple(proxies), o.gateway_pac_direct, o.gateway_ready_store_wait,
                                     o.listen_host or "", o.listen_port or 8080,
                                     "gateway_audit" in o and bool(o.gateway_audit), o.gateway_proxy_processes)
        if "gateway_metrics" not in updated:
            return
        self.address = parse_address(o.gateway_metrics)
        if self.running_:
            self._stop()
            self._start()

    def rules_loaded(self, rules) -> None:
        self.catalog = rules.catalog

    def running(self) -> None:
        self.running_ = True
        self._start()

    def dlp_ready(self, problem: str) -> None:
        self.dlp_problem = problem
        self.dlp_ready_gauge.set(0 if problem else 1)

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
            self.server = serve(host, port, self.app(make_wsgi_app(registry)))
        except OSError as e:  # the proxy is worth more than its metrics: say so and go on
            log.error("metrics not served on %s:%d: %s", host, port, e)
            return
        log.info("Prometheus metrics on http://%s:%d/metrics (and /ready, /proxy.pac)", host,
                 self.server[0].server_port)

    def app(self, metrics_app):
        """The WSGI application: /metrics, /ready, the PAC file (run in the server's threads)."""

        def application(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path in ("/proxy.pac", "/wpad.dat"):
                status, body, kind = self.pac_file(environ.get("HTTP_HOST", ""))
            elif path == "/ready":
                problems = self.readiness()
                status, kind = ("503 Service Unavailable" if problems else "200 OK"), "text/plain; charset=utf-8"
                body = "\n".join(problems or ["ready"]) + "\n"
            else:
                return metrics_app(environ, start_response)
            data = body.encode()
            start_response(status, [("Content-Type", kind), ("Content-Length", str(len(data))),
                                    ("Cache-Control", "no-cache")])
            return [data]

        return application

    def readiness(self) -> list[str]:
        """Why this gateway is not ready ([] when it is)."""
        settings, problems = self.settings, []
        if self.catalog is None:
            problems.append("rules: not loaded")
        writer = self.audit_state.writer
        if settings.audit and writer is None:
            problems.append("audit: the writer is not open")
        elif writer is not None:
            status = writer.status()
            if writer.store is None:
                problems.append("audit: the store is not connected yet (records wait in the spool)")
            elif status["last_error"]:
                problems.append(f"audit: {status['last_error']}")
            elif status["waiting_on_store_s"] > settings.store_wait:
                problems.append(f"audit: a write to the store has waited {status['waiting_on_store_s']:.0f}s")
        problems += self._dlp_readiness()
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.listen_host,
                                                                        settings.listen_host)
        try:
            socket.create_connection((host, settings.listen_port), timeout=2).close()
        except OSError as e:
            problems.append(f"proxy: not accepting connections on {host}:{settings.listen_port} ({e.strerror or e})")
        return problems

    def _dlp_readiness(self) -> list[str]:
        """This process's DLP state; in the audit process of several proxy processes (it scans nothing), theirs,
        from their gauge files: every one must be ready (one that died counts again once replaced and warm)."""
        expected = self.settings.proxy_processes
        if not expected:
            return [self.dlp_problem] if self.dlp_problem else []
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        ready = int(registry.get_sample_value("ai_gateway_dlp_ready_processes") or 0)
        return [] if ready >= expected else [
            f"dlp: the DLP workers of {expected - ready} of {expected} proxy processes are not ready (starting, or "
            "failing to start: see the log)"]

    def pac_file(self, host_header: str) -> tuple[str, str, str]:
        """(status, body, content type) of the PAC file for a client that asked `host_header`."""
        settings, catalog = self.settings, self.catalog
        if catalog is None:
            return "503 Service Unavailable", "rules not loaded yet\n", "text/plain; charset=utf-8"
        proxies = list(settings.pac_proxies)
        if not proxies:
            host = host_header.rsplit(":", 1)[0] if host_header.rfind(":") > host_header.rfind("]") else host_header
            proxies = [f"{host}:{settings.listen_port}"]
        try:
            return "200 OK", pac.render(catalog, proxies, settings.pac_direct), "application/x-ns-proxy-autoconfig"
        except pac.PacError as e:
            return "400 Bad Request", f"{e} (the Host header names the gateway; or set gateway_pac_proxies)\n", \
                "text/plain; charset=utf-8"

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


@dataclass(frozen=True)
class Settings:
    """The options the server's threads read, replaced whole in `configure`."""

    pac_proxies: tuple[str, ...] = ()
    pac_direct: bool = False
    store_wait: int = 30
    listen_host: str = ""
    listen_port: int = 8080
    audit: bool = False
    proxy_processes: int = 0  # gateway_proxy_processes


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name: a scrape per line is noise
        pass


def serve(host: str, port: int, app) -> tuple:
    """(server, thread): `app` served from a daemon thread, as prometheus-client's start_http_server does with
    its own app; IPv6 or IPv4 as the address says."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
    httpd = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="gateway-metrics", daemon=True)
    thread.start()
    return httpd, thread


def parse_address(value: str) -> tuple[str, int] | None:
    """'host:port' (IPv6 in brackets) -> (host, port); '' -> None. OptionsError names what is wrong."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionsError(f"gateway_metrics must be host:port (e.g. 127.0.0.1:9464) or empty, not {value!r}")
    return host, int(port)
