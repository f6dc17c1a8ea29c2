"""`/ready` on the metrics port: 200 only when the rules are loaded, the audit store takes records and the proxy
accepts connections; otherwise 503 with the reasons (what a Kubernetes readiness probe or a load balancer reads)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from core.catalog import Catalog
from core.rulesfile import SHIPPED_RULES
from tests.conftest import AI_HOSTS, own_gateway
from tests.support.gateway import GatewayProcess, free_port, http_get


def test_ready_when_rules_audit_dlp_and_proxy_are_up(tmp_path_factory, upstream, test_ca):
    """Ready once the DLP workers are warm too; until then the only reasons are parts still starting."""
    port = free_port()
    with own_gateway(tmp_path_factory, upstream, test_ca, "ready-gateway", f"gateway_metrics=127.0.0.1:{port}") as gw:
        deadline = time.monotonic() + 120
        while (answer := http_get(f"http://127.0.0.1:{port}/ready"))[0] != 200:
            assert answer[0] == 503 and set(answer[1].splitlines()) <= {
                "dlp: the workers are starting", "audit: the store is not connected yet (records wait in the spool)"}
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        assert answer == (200, "ready\n") and "DLP: prefilter gate ready" in gw.output()


def test_not_ready_while_the_audit_store_cannot_be_reached(tmp_path, upstream, test_ca):
    """A ClickHouse server that is down does not stop the proxy (records wait in the spool), but the gateway is
    not ready: no new clients should be sent to a gateway that cannot record them."""
    port, closed = free_port(), free_port()
    gw = GatewayProcess(tmp_path, {h: upstream.port for h in AI_HOSTS}, test_ca.ca_pem,
                        sets=[f"gateway_metrics=127.0.0.1:{port}"],
                        extra_args=["--audit", f"http://default@127.0.0.1:{closed}/audit"])
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/ready")
        assert status == 503 and body.startswith("audit: "), body
        assert "rules" not in body and "proxy" not in body  # those are up
    finally:
        gw.stop()


def test_each_missing_part_is_a_reason():
    from mitmproxy.test import taddons

    from addons.metrics import Metrics

    metrics = Metrics()
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        listen_port = proxy.getsockname()[1]
        with taddons.context(metrics) as tctx:
            tctx.options.add_option("gateway_audit", str, "", "")  # the audit stage's option, not loaded here
            tctx.configure(metrics, gateway_metrics="127.0.0.1:0", gateway_audit="chdb:///nowhere",
                           listen_host="0.0.0.0", listen_port=listen_port)
            metrics.running()
            url = f"http://127.0.0.1:{metrics.server[0].server_port}/ready"
            status, body = http_get(url)
            assert status == 503
            assert body.splitlines() == [
                "rules: not loaded", "audit: the writer is not open",
                f"proxy: not accepting connections on 127.0.0.1:{listen_port} (Connection refused)"]
            metrics.rules_loaded(SimpleNamespace(catalog=Catalog.load(SHIPPED_RULES / "endpoints.yaml")))
            proxy.listen()
            writer = SimpleNamespace(store=object(), status=lambda: {"last_error": "", "waiting_on_store_s": 31.0})
            metrics.audit_opened(writer)
            assert http_get(url) == (503, "audit: a write to the store has waited 31s\n")
            writer.status = lambda: {"last_error": "Code: 241. Memory limit exceeded", "waiting_on_store_s": 0.0}
            assert http_get(url) == (503, "audit: Code: 241. Memory limit exceeded\n")
            writer.status = lambda: {"last_error": "", "waiting_on_store_s": 3.0}
            assert http_get(url) == (200, "ready\n")
            metrics.dlp_ready("dlp: the workers are starting")  # addons.hooks.DlpReadyHook, from Inspect
            assert http_get(url) == (503, "dlp: the workers are starting\n")
            metrics.dlp_ready("")
            assert http_get(url) == (200, "ready\n")
            with pytest.raises(Exception, match="gateway_ready_store_wait must be at least 1"):
                tctx.configure(metrics, gateway_ready_store_wait=0)
            with pytest.raises(Exception, match="gateway_pac_proxies: gateway address must be host:port"):
                tctx.configure(metrics, gateway_pac_proxies="gw-a:8080,gw-b")
            metrics.done()
