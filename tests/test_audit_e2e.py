"""The audit through the real gateway: CLI commands over the admin socket, tunnelled AI connections, a ClickHouse
endpoint that fails while traffic flows, and `kill -9` of the gateway.
"""

from __future__ import annotations

import base64
import csv
import http.server
import io
import json
import re
import socket
import ssl
import threading
import time

import pytest

from core.audit import sha256_text
from core.rulesfile import SHIPPED_RULES
from tests.conftest import AI_HOSTS, PLAIN_HOSTS, wait_for_events
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream, Reply
from tests.test_e2e_foundation import chat_reply, openai_client

TUNNEL_HOST = "api2.cursor.sh"  # in the catalog's do_not_decrypt list (Cursor backend)
SECRET = "s3cr3t-Audit-Pw"


@pytest.fixture(scope="module")
def tunnel_upstream(test_ca):
    up = FakeUpstream(test_ca, [TUNNEL_HOST])
    up.route("/", lambda rec: Reply(body=b"cursor-ok", content_type="text/plain"))
    yield up
    up.close()


def start_gateway(folder, upstream, tunnel_upstream, test_ca, **kwargs) -> GatewayProcess:
    routes = {h: upstream.port for h in AI_HOSTS + PLAIN_HOSTS} | {TUNNEL_HOST: tunnel_upstream.port}
    return GatewayProcess(folder, routes, test_ca.ca_pem, **kwargs)


@pytest.fixture(scope="module")
def audit_gw(tmp_path_factory, upstream, tunnel_upstream, test_ca):
    gw = start_gateway(tmp_path_factory.mktemp("audit-gw"), upstream, tunnel_upstream, test_ca,
                       sets=["gateway_capture=metadata"])
    yield gw
    gw.stop()


def chat(gw: GatewayProcess, text: str) -> str:
    return openai_client(gw).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}]).choices[0].message.content


def cli(gw: GatewayProcess, *args: str) -> str:
    return gw.gateway_cli("audit", *args).stdout


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_metadata_capture_keeps_no_text(audit_gw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"answer {marker}"))
    assert chat(audit_gw, f"question {marker}") == f"answer {marker}"
    [event] = wait_for_events(audit_gw, lambda e: e["prompt_sha256"] == sha256_text(f"[user] question {marker}"))
    assert (event["prompt"], event["completion"], event["capture"]) == ("", "", "metadata")
    assert event["source"] == "http" and event["status"] == 200


def test_every_audit_command_in_every_format_over_the_admin_socket(audit_gw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    chat(audit_gw, f"hello {marker}")
    [event] = wait_for_events(audit_gw, lambda e: e["prompt_sha256"] == sha256_text(f"[user] hello {marker}"))
    event_id = event["event_id"]
    assert audit_gw.admin_socket.exists()

    rows = json_lines(cli(audit_gw, "search", "--service", "openai", "--decision", "allow", "--format", "json"))
    assert rows and all(r["service"] == "openai" for r in rows)
    table = cli(audit_gw, "search", "--service", "openai", "--format", "table")
    assert table.splitlines()[0].split()[:2] == ["ts", "user"] and f"({len(rows)} events)" in table
    parsed = list(csv.DictReader(io.StringIO(cli(audit_gw, "search", "--service", "openai", "--format", "csv"))))
    assert {r["event_id"] for r in parsed} == {r["event_id"] for r in rows}
    assert json.loads(parsed[0]["warnings"]) == rows[0]["warnings"]  # arrays as JSON inside CSV cells
    assert cli(audit_gw, "search", "--user", "x' OR '1'='1", "--format", "json") == ""

    [shown] = json_lines(cli(audit_gw, "show", event_id, "--format", "json"))
    assert shown["event_id"] == event_id and "inserted_at" in shown
    assert f"event_id  {event_id}" in cli(audit_gw, "show", event_id)
    [shown_csv] = csv.DictReader(io.StringIO(cli(audit_gw, "show", event_id, "--format", "csv")))
    assert shown_csv["event_id"] == event_id
    missing = audit_gw.gateway_cli("audit", "show", "00000000-0000-4000-8000-000000000000", check=False)
    assert missing.returncode == 1 and "no event" in missing.stderr
    bad = audit_gw.gateway_cli("audit", "show", "'; DROP TABLE events; --", check=False)
    assert bad.returncode == 2 and "invalid event id" in bad.stderr

    for by in ("service", "user", "decision", "entity", "model", "category"):
        stats = json_lines(cli(audit_gw, "stats", "--by", by, "--bucket", "hour", "--format", "json"))
        assert all(set(r) == {"bucket", by, "count"} for r in stats)
    by_service = json_lines(cli(audit_gw, "stats", "--by", "service", "--format", "json"))
    assert sum(r["count"] for r in by_service if r["service"] == "openai") >= 1
    assert cli(audit_gw, "stats", "--format", "csv").startswith("bucket,service,count")
    assert "service" in cli(audit_gw, "stats").splitlines()[0]

    shadow = {r["service"]: r for r in json_lines(cli(audit_gw, "shadow-ai", "--format", "json"))}
    assert shadow["openai"]["requests"] >= 1  # the shipped catalog does not sanction the OpenAI API
    assert cli(audit_gw, "shadow-ai", "--format", "csv").startswith("service,category,users,requests")
    assert "(" in cli(audit_gw, "shadow-ai").splitlines()[-1]

    tailed = json_lines(cli(audit_gw, "tail", "--since", "10m", "--count", "1", "--format", "json"))
    assert len(tailed) == 1 and "inserted_at" in tailed[0]
    assert "openai" in cli(audit_gw, "tail", "--since", "10m", "--count", "1")
    assert cli(audit_gw, "tail", "--since", "10m", "--count", "1", "--format", "csv").startswith("event_id,")

    [status] = json_lines(cli(audit_gw, "status", "--format", "json"))
    assert status["written"] >= 2 and status["dropped"] == 0 and status["store"].startswith("chdb://")
    assert "spooled" in cli(audit_gw, "status")
    assert cli(audit_gw, "status", "--format", "csv").startswith("queued,spooled,written")


def get_through_tunnel(raw: socket.socket, ca) -> bytes:
    """GET / over TLS inside an open tunnel, the server's certificate checked against `ca` (the upstream's own
    for a tunnel that is not intercepted)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with ctx.wrap_socket(raw, server_hostname=TUNNEL_HOST) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {TUNNEL_HOST}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while data := tls.recv(4096):
            response += data
    return response


def test_tunnelled_ai_connection_is_recorded(audit_gw, test_ca):
    """A do-not-decrypt AI host is passed through (the client sees the real certificate) and recorded as a
    connection: who, host, service, duration; shown by shadow-ai."""
    with socket.create_connection(("127.0.0.1", audit_gw.port), timeout=10) as raw:
        raw.sendall(f"CONNECT {TUNNEL_HOST}:443 HTTP/1.1\r\nHost: {TUNNEL_HOST}:443\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        assert get_through_tunnel(raw, test_ca.ca_pem).endswith(b"cursor-ok")

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shadow = {r["service"]: r for r in json_lines(cli(audit_gw, "shadow-ai", "--format", "json"))}
        if shadow.get("cursor", {}).get("connections"):
            break
        time.sleep(0.3)
    assert shadow["cursor"]["connections"] == 1 and shadow["cursor"]["requests"] == 0
    assert shadow["cursor"]["some_users"] == ["127.0.0.1"]
    assert "AI tunnel cursor api2.cursor.sh" in audit_gw.output()


TUNNEL_POLICY = """\
version: 1
rules:
  - id: no-cursor-for-bob
    who: {users: [bob]}
    when: {services: [cursor]}
    action: block
    message: Cursor is not approved for your team.
  - id: watch-cursor
    when: {services: [cursor]}
    action: block
    mode: monitor
"""


@pytest.fixture(scope="module")
def policy_tunnel_gw(tmp_path_factory, upstream, tunnel_upstream, test_ca):
    """Shipped rules, a policy on the tunnelled Cursor service, and users named by a trusted SSO header."""
    rules = tmp_path_factory.mktemp("tunnel-rules")
    for f in SHIPPED_RULES.glob("*.yaml"):
        (rules / f.name).write_bytes(f.read_bytes())
    (rules / "policy.yaml").write_text(TUNNEL_POLICY)
    (rules / "identity.yaml").write_text(
        "version: 1\ntrusted_header: {header: X-Authenticated-User, from: [127.0.0.1/32]}\n")
    gw = start_gateway(tmp_path_factory.mktemp("tunnel-gw"), upstream, tunnel_upstream, test_ca, rules=rules)
    yield gw
    gw.stop()


def connect_as(gw: GatewayProcess, user: str) -> tuple[socket.socket, bytes]:
    """Send a CONNECT as `user`; the socket and the proxy's whole answer (head and body)."""
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    raw.sendall(f"CONNECT {TUNNEL_HOST}:443 HTTP/1.1\r\nHost: {TUNNEL_HOST}:443\r\n"
                f"X-Authenticated-User: {user}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer and (data := raw.recv(4096)):
        answer += data
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer.partition(b"\r\n\r\n")[0])
    while length and len(answer.partition(b"\r\n\r\n")[2]) < int(length[1]) and (data := raw.recv(4096)):
        answer += data
    return raw, answer


def test_the_policy_decides_who_may_open_a_tunnel_to_a_do_not_decrypt_service(policy_tunnel_gw, test_ca):
    """Nothing inside a tunnel is seen, so the CONNECT is where the policy acts: bob's is refused with the rule's
    message and audited as a block; alice's opens (and the monitored rule that matched it is recorded)."""
    raw, head = connect_as(policy_tunnel_gw, "bob")
    with raw:
        assert head.startswith(b"HTTP/1.1 403") and b"Cursor is not approved for your team." in head
    raw, head = connect_as(policy_tunnel_gw, "alice")
    with raw:
        assert head.startswith(b"HTTP/1.1 200") and get_through_tunnel(raw, test_ca.ca_pem).endswith(b"cursor-ok")
    events = wait_for_events(policy_tunnel_gw, lambda e: e["service"] == "cursor", count=2)
    by_user = {e["user"]: e for e in events}
    assert (by_user["bob"]["decision"], by_user["bob"]["rule_id"], by_user["bob"]["status"],
            by_user["bob"]["operation"], by_user["bob"]["inspection"]) == ("block", "no-cursor-for-bob", 403,
                                                                            "tunnel", "skipped")
    assert (by_user["alice"]["decision"], by_user["alice"]["rule_id"]) == ("monitor", "watch-cursor")
    assert "rule watch-cursor would block" in by_user["alice"]["reason"]


def test_a_tunnel_named_only_in_the_tls_handshake_is_judged_too(policy_tunnel_gw, tunnel_upstream, test_ca):
    """CONNECT to a bare address, the blocked service named only by the TLS name (SNI), as a pinned app behind a
    transparent proxy would look: bob's connection is decrypted instead of tunnelled, so his client, which trusts
    only the service's own certificate, cannot complete the handshake; the block is audited. Alice's tunnel
    opens as before."""
    def connect_ip(user: str) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", policy_tunnel_gw.port), timeout=10)
        raw.sendall(f"CONNECT 127.0.0.1:{tunnel_upstream.port} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"X-Authenticated-User: {user}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        return raw

    with connect_ip("bob") as raw, pytest.raises(ssl.SSLCertVerificationError):
        get_through_tunnel(raw, test_ca.ca_pem)
    with connect_ip("bob") as raw:  # a client that trusts the gateway's CA gets the block on its requests instead
        answer = get_through_tunnel(raw, policy_tunnel_gw.ca)
    assert answer.startswith(b"HTTP/1.1 403") and b"Cursor is not approved for your team." in answer
    with connect_ip("alice") as raw:
        assert get_through_tunnel(raw, test_ca.ca_pem).endswith(b"cursor-ok")
    events = wait_for_events(policy_tunnel_gw, lambda e: e["service"] == "cursor" and e["user"] == "bob"
                             and "decrypted instead of tunnelled" in e["reason"], count=2)
    assert {(e["decision"], e["rule_id"], e["operation"]) for e in events} == {("block", "no-cursor-for-bob", "tunnel")}
    [refused] = wait_for_events(policy_tunnel_gw, lambda e: e["service"] == "cursor" and e["status"] == 403
                                and "blocked at its TLS handshake" in e["reason"])
    assert refused["decision"] == "block"


class Failing500(http.server.ThreadingHTTPServer):
    """A 'ClickHouse' that answers every request with 500, recording what it was sent."""

    def __init__(self):
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _fail(self):
                outer.seen.append(dict(self.headers))
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                body = b"Code: 999. DB::Exception: simulated outage"
                self.send_response(500)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _fail

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_failing_clickhouse_never_fails_clients_and_events_wait_in_the_spool(tmp_path, upstream, tunnel_upstream,
                                                                           test_ca, marker, monkeypatch):
    server = Failing500()
    monkeypatch.setenv("GATEWAY_AUDIT_PASSWORD", SECRET)
    gw = start_gateway(tmp_path, upstream, tunnel_upstream, test_ca,
                       extra_args=["--audit", f"http://auditor@127.0.0.1:{server.server_address[1]}/ai"])
    try:
        upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"fine {marker}"))
        for i in range(12):
            assert chat(gw, f"q{i} {marker}") == f"fine {marker}"
        [status] = json_lines(gw.gateway_cli("audit", "status", "--format", "json").stdout)
        assert status["spooled"] == 12 and status["written"] == 0 and status["store"] == "not connected"
        deadline = time.monotonic() + 20
        while status["failures"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            [status] = json_lines(gw.gateway_cli("audit", "status", "--format", "json").stdout)
        assert status["failures"] >= 2 and "unavailable" in status["last_error"]
        assert server.seen, "the gateway never tried the store"
        sent = " ".join(f"{k}={v}" for h in server.seen for k, v in h.items())
        decoded = " ".join(base64.b64decode(v.split()[-1]).decode(errors="replace")
                           for h in server.seen for k, v in h.items() if k.lower() == "authorization")
        assert SECRET in sent + decoded, "the password from the environment is what the store receives"
        search = gw.gateway_cli("audit", "search", check=False)
        assert search.returncode == 2 and "not connected yet" in search.stderr
        assert chat(gw, f"still serving {marker}") == f"fine {marker}"
    finally:
        gw.stop()
        server.shutdown()
    log = gw.log_path.read_text(errors="replace")
    assert "audit write failed" in log and "spooled" in log
    assert SECRET not in log and SECRET not in json.dumps(status)
    assert "auditor:***@127.0.0.1" in log
    from storage.writer import spool_counts

    assert spool_counts(tmp_path / "audit-spool.sqlite")["spooled"] == 13  # kept for when the store returns


def test_kill_9_loses_no_accepted_event(tmp_path, upstream, tunnel_upstream, test_ca, marker):
    """Every event whose response a client received is in ClickHouse after `kill -9` and a restart, once."""
    gw = start_gateway(tmp_path, upstream, tunnel_upstream, test_ca)
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    try:
        for i in range(25):
            chat(gw, f"n{i} {marker}")
        gw.proc.kill()  # SIGKILL: no shutdown hooks, no flush
        gw.proc.wait()
    finally:
        gw.stop()
    # without a gateway the CLI opens the store and the spool itself
    [offline] = json_lines(gw.gateway_cli("audit", "status", "--format", "json").stdout)
    assert offline["gateway"] == "not running"
    before = json_lines(gw.gateway_cli("audit", "search", "--text", marker, "--format", "json").stdout)
    assert len(before) + offline["spooled"] >= 25  # each one is in the store, the spool, or both
    stats = gw.gateway_cli("audit", "stats", "--format", "csv").stdout
    shadow = gw.gateway_cli("audit", "shadow-ai", "--format", "csv").stdout
    if before:
        assert stats.startswith("bucket,service,count") and shadow.startswith("service,")
    else:  # the writer had shipped nothing before the kill: an empty answer, not an error
        assert stats == shadow == ""
    if before:  # these need an event in the store
        [shown] = json_lines(gw.gateway_cli("audit", "show", before[0]["event_id"], "--format", "json").stdout)
        assert shown["event_id"] == before[0]["event_id"]
        tailed = gw.gateway_cli("audit", "tail", "--since", "10m", "--count", "1", "--format", "csv").stdout
        assert tailed.startswith("event_id,")
    gw.admin_socket.unlink(missing_ok=True)  # stale socket of the killed process

    again = start_gateway(tmp_path, upstream, tunnel_upstream, test_ca)
    try:
        events = wait_for_events(again, lambda e: marker in e["prompt"], count=25, timeout=60)
        assert sorted(e["prompt"] for e in events) == sorted(f"[user] n{i} {marker}" for i in range(25))
        [status] = json_lines(again.gateway_cli("audit", "status", "--format", "json").stdout)
        assert status["spooled"] == 0
    finally:
        again.stop()
