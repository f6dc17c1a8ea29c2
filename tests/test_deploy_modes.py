"""Deployment modes besides the explicit proxy: chained to a corporate proxy (`--set mode=upstream:URL`), and
transparent (`--set mode=transparent`), with the client in a network namespace of its own whose traffic an
nftables rule in the gateway's namespace redirects to the gateway, as a router in front of a network would.

The transparent test needs root (namespaces, nftables); it makes its own two namespaces joined by a veth pair and
uses documentation addresses (192.0.2.0/24 for the client network, 203.0.113.0/24 for the "internet") that exist
only inside them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from pathlib import Path

import httpx2
import openai
import pytest

from core.rulesfile import SHIPPED_RULES
from tests.conftest import AI_HOSTS, PLAIN_HOSTS, wait_for_events
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream
from tests.test_e2e_dlp import AWS_KEY, openai_reply


class CorporateProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 standing for a company's existing one: it asks for proxy credentials,
    records each CONNECT target and reaches `routes` (host -> port on 127.0.0.1) as if they were the internet."""

    def __init__(self, routes: dict[str, int], credentials: str):
        self.routes, self.expected = routes, "Basic " + base64.b64encode(credentials.encode()).decode()
        self.connects: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
            method, target, _ = lines[0].split(" ")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            if headers.get("Proxy-Authorization") != self.expected:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            self.connects.append(target)
            if method != "CONNECT" or host not in self.routes or port != "443":
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with socket.create_connection(("127.0.0.1", self.routes[host])) as server:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
                _pipe(client, server)

    def close(self) -> None:
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_chained_to_a_corporate_proxy(tmp_path, upstream, test_ca, marker):
    """Decrypted AI traffic and tunnelled other traffic both leave through the corporate proxy, with credentials."""
    upstream.route("/v1/chat/completions", openai_reply)
    corporate = CorporateProxy({h: upstream.port for h in AI_HOSTS + PLAIN_HOSTS}, "gateway:s3cret")
    gw = GatewayProcess(tmp_path, {}, test_ca.ca_pem,
                        sets=[f"mode=upstream:http://127.0.0.1:{corporate.port}", "upstream_auth=gateway:s3cret"])
    try:
        http = httpx2.Client(proxy=gw.proxy_url, verify=ssl.create_default_context(cafile=str(gw.ca)), timeout=60)
        client = openai.OpenAI(api_key="sk-test-not-a-real-key", http_client=http, max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": marker}])
        assert reply.choices[0].message.content == "Done: ."  # the fake model's answer, through both proxies
        assert any(marker.encode() in r.body for r in upstream.requests)
        with pytest.raises(openai.PermissionDeniedError):  # still inspected and enforced
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": AWS_KEY}])
        tunnelled = httpx2.get("https://intranet.example/", proxy=gw.proxy_url, timeout=30,
                               verify=ssl.create_default_context(cafile=str(test_ca.ca_pem)))  # the real cert
        assert tunnelled.status_code == 404  # the fake upstream's answer for an unknown path
        assert "api.openai.com:443" in corporate.connects and "intranet.example:443" in corporate.connects
        event, = wait_for_events(gw, lambda e: marker in e["prompt"])
        assert event["service"] == "openai" and event["decision"] == "allow"
    finally:
        gw.stop()
        corporate.close()


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def netns(name: str):
    """This thread (and the threads and processes it starts) in network namespace `name`, then back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        os.setns(target, os.CLONE_NEWNET)
        yield
    finally:
        os.setns(home, os.CLONE_NEWNET)
        os.close(target)
        os.close(home)


@pytest.fixture
def namespaces():
    """Two namespaces: a client network (192.0.2.2) and the gateway's host, its router (192.0.2.1)."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nft")):
        pytest.skip("transparent mode needs root, ip and nft (network namespaces and an nftables redirect)")
    tag = uuid.uuid4().hex[:6]
    client, gateway = f"gwc-{tag}", f"gwg-{tag}"
    try:
        _run("ip", "netns", "add", client)
        _run("ip", "netns", "add", gateway)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create network namespaces here: {e.stderr.strip()}")
    try:
        _run("ip", "link", "add", f"vc-{tag}", "netns", client, "type", "veth", "peer", "name", f"vg-{tag}",
             "netns", gateway)
        for ns, link, address in ((client, f"vc-{tag}", "192.0.2.2/24"), (gateway, f"vg-{tag}", "192.0.2.1/24")):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", address, "dev", link)
            _run("ip", "-n", ns, "link", "set", link, "up")
        _run("ip", "-n", client, "route", "add", "default", "via", "192.0.2.1")
        yield client, gateway, f"vg-{tag}"
    finally:
        for ns in (client, gateway):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_transparent_mode_in_a_network_namespace(namespaces, tmp_path, test_ca, monkeypatch, marker):
    """The client has no proxy settings: its connections to AI hosts are redirected to the gateway, which
    decrypts, inspects and audits them, knows the user by the client's address, and tunnels everything else."""
    client_ns, gateway_ns, gateway_link = namespaces
    rules = tmp_path / "rules"
    shutil.copytree(SHIPPED_RULES, rules)
    (rules / "identity.yaml").write_text("version: 1\nnetworks:\n"
                                         "  - {cidr: 192.0.2.2/32, user: lab-workstation, groups: [lab]}\n")
    internet = {"api.openai.com": "203.0.113.5", "intranet.example": "203.0.113.6"}
    with netns(gateway_ns):
        fake = FakeUpstream(test_ca, list(internet))
        fake.route("/v1/chat/completions", openai_reply)
        # the gateway reaches the "internet" addresses the client asked for at the fake upstream
        gw = GatewayProcess(tmp_path / "gw", {address: fake.port for address in internet.values()}, test_ca.ca_pem,
                            rules=rules, sets=["mode=transparent"], extra_args=["--listen-host", "0.0.0.0"])
        _run("nft", "add", "table", "ip", "gateway")
        _run("nft", "add", "chain", "ip", "gateway", "prerouting",
             "{ type nat hook prerouting priority dstnat; }")
        _run("nft", "add", "rule", "ip", "gateway", "prerouting", "iifname", gateway_link, "tcp", "dport",
             "{ 80, 443 }", "redirect", "to", f":{gw.port}")
    try:
        resolve = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: resolve(internet.get(host, host), *a, **k))
        bundle = tmp_path / "trust.pem"  # the gateway's CA for what it decrypts, the test CA for what it tunnels
        bundle.write_bytes(gw.ca.read_bytes() + test_ca.ca_pem.read_bytes())
        with netns(client_ns):
            http = httpx2.Client(verify=ssl.create_default_context(cafile=str(bundle)), timeout=60)
            client = openai.OpenAI(api_key="sk-test-not-a-real-key", http_client=http, max_retries=0)
            reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": marker}])
            with pytest.raises(openai.PermissionDeniedError):
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": AWS_KEY}])
            plain = httpx2.get("https://intranet.example/", timeout=30,
                               verify=ssl.create_default_context(cafile=str(test_ca.ca_pem)))  # not decrypted
        assert reply.choices[0].message.content == "Done: ."
        assert marker.encode() in fake.requests[0].body
        assert plain.status_code == 404
        event, = wait_for_events(gw, lambda e: marker in e["prompt"])
        assert event["service"] == "openai" and event["user"] == "lab-workstation"
        assert event["client_addr"].startswith("192.0.2.2")
        blocked, = wait_for_events(gw, lambda e: e["decision"] == "block")
        assert blocked["user"] == "lab-workstation"
        assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/"]  # the blocked one never left
    finally:
        gw.stop()
        fake.close()
