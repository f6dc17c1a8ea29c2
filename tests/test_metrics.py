"""Prometheus metrics through the real gateway: counts by decision and entity, the audit pipeline's state."""

from __future__ import annotations

import socket
import time
import urllib.request

import openai
import pytest
from mitmproxy.exceptions import OptionsError

from addons.metrics import parse_address
from tests.conftest import own_gateway, wait_for_events
from tests.test_e2e_dlp import AWS_KEY, EMAIL, openai_client, openai_reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_gateway(tmp_path_factory, upstream, test_ca):
    port = free_port()
    with own_gateway(tmp_path_factory, upstream, test_ca, "metrics-gateway", f"gateway_metrics=127.0.0.1:{port}") \
            as gw:
        gw.metrics_url = f"http://127.0.0.1:{port}/metrics"
        yield gw


def scrape(gw) -> dict[str, float]:
    text = urllib.request.urlopen(gw.metrics_url, timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_metrics_count_what_the_audit_records_without_values(metrics_gateway, upstream, marker):
    upstream.route("/v1/chat/completions", openai_reply)
    client = openai_client(metrics_gateway)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"{marker} mail {EMAIL}"}])
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"key {AWS_KEY}"}])
    wait_for_events(metrics_gateway, lambda ev: True, count=2)
    deadline = time.monotonic() + 20
    while (metrics := scrape(metrics_gateway)).get("ai_gateway_audit_written_total", 0) < 2:
        assert time.monotonic() < deadline, metrics
        time.sleep(0.2)
    chat = 'operation="chat.completions",service="openai"'
    assert metrics[f'ai_gateway_interactions_total{{decision="block",inspection="inspected",{chat}}}'] == 1
    assert metrics[f'ai_gateway_interactions_total{{decision="monitor",inspection="inspected",{chat}}}'] == 1
    assert metrics['ai_gateway_findings_total{entity="EMAIL_ADDRESS"}'] == 1
    assert metrics['ai_gateway_findings_total{entity="AWS_ACCESS_KEY"}'] == 1
    assert metrics["ai_gateway_audit_dropped_total"] == 0 and metrics["ai_gateway_audit_rejected_total"] == 0
    text = urllib.request.urlopen(metrics_gateway.metrics_url, timeout=10).read().decode()
    assert EMAIL not in text and AWS_KEY not in text and marker not in text


def test_the_metrics_address_is_checked():
    assert parse_address("") is None
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "localhost", "host:port", "127.0.0.1:70000", ":9464"):
        with pytest.raises(OptionsError, match="gateway_metrics must be host:port"):
            parse_address(bad)


def test_the_metrics_server_follows_its_option_from_start_to_done():
    from mitmproxy.test import taddons

    from addons.metrics import Metrics

    metrics = Metrics()
    with taddons.context(metrics) as tctx:
        tctx.configure(metrics, gateway_metrics="127.0.0.1:0")
        assert metrics.server is None  # not before the proxy runs
        metrics.running()
        first = metrics.server[0].server_port
        metrics.observe_tunnel("claude")
        body = urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=10).read().decode()
        assert 'ai_gateway_tunnels_total{service="claude"} 1.0' in body
        tctx.configure(metrics, gateway_metrics="")  # switched off while running
        assert metrics.server is None
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=2)
        tctx.configure(metrics, gateway_metrics="127.0.0.1:0")  # and on again
        assert metrics.server is not None
        metrics.done()
        assert metrics.server is None
