"""End to end: the real openai SDK through the real gateway to a fake api.openai.com, audited in chdb."""

from __future__ import annotations

import json
import socket
import ssl
import threading

import httpx2
import openai
import pytest

from tests.conftest import audit_events, own_gateway, wait_for_events
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Reply, sse


def openai_client(gateway) -> openai.OpenAI:
    http = httpx2.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=str(gateway.ca)),
                         timeout=30)
    return openai.OpenAI(api_key="sk-test-not-a-real-key", http_client=http, max_retries=0)


def chat_reply(text: str, model: str = "gpt-4o-2024-08-06") -> Reply:
    return Reply(body=json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}}).encode())


def chunk(delta: dict, finish=None, usage=None) -> str:
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                                  "choices": [] if delta is None else
                                  [{"index": 0, "delta": delta, "finish_reason": finish}],
                                  "usage": usage}) + "\n\n"


def test_chat_completion_is_proxied_and_audited(gateway, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"Paris ({marker})"))
    client = openai_client(gateway)
    answer = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "system", "content": "You are terse."},
                                  {"role": "user", "content": f"Capital of France? {marker}"}])
    assert answer.choices[0].message.content == f"Paris ({marker})"
    assert any(marker.encode() in r.body for r in upstream.requests), "request did not reach the fake upstream"

    [event] = wait_for_events(gateway, lambda e: marker in e["prompt"] and not e["stream"])
    assert event["service"] == "openai"
    assert event["operation"] == "chat.completions"
    assert event["model"] == "gpt-4o-2024-08-06"  # the model that answered, from the response
    assert "[system] You are terse." in event["prompt"]
    assert f"[user] Capital of France? {marker}" in event["prompt"]
    assert event["completion"] == f"Paris ({marker})"
    assert (event["input_tokens"], event["output_tokens"]) == (21, 7)
    assert event["status"] == 200 and event["decision"] == "allow" and event["error"] == ""
    assert event["host"] == "api.openai.com"


def test_streamed_chat_completion_is_not_buffered(gateway, upstream, marker):
    """The client reads the first chunk while the upstream still holds back the last one."""
    gate = threading.Event()
    frames = [chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo "}),
              chunk({"content": marker}, finish="stop"),
              chunk(None, usage={"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}),
              "data: [DONE]\n\n"]
    upstream.route("/v1/chat/completions",
                   lambda rec: Reply(content_type="text/event-stream", chunks=sse(frames, gate=gate)))
    client = openai_client(gateway)
    stream = client.chat.completions.create(model="gpt-4o", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": f"Say hello {marker}"}])
    pieces = []
    first = next(iter(stream))
    assert not gate.is_set()
    pieces.append(first.choices[0].delta.content)
    gate.set()  # only now may the upstream send its last frame
    for c in stream:
        if c.choices:
            pieces.append(c.choices[0].delta.content or "")
    assert "".join(pieces) == f"Hello {marker}"

    [event] = wait_for_events(gateway, lambda e: marker in e["prompt"] and e["stream"])
    assert event["completion"] == f"Hello {marker}"
    assert (event["input_tokens"], event["output_tokens"]) == (11, 3)
    assert event["model"] == "gpt-4o" and event["status"] == 200
    assert event["error"] == ""  # a client closing after [DONE] is not an error


def streamed_hello(gw, upstream, marker: str) -> str:
    frames = [chunk({"role": "assistant", "content": marker}, finish="stop"), "data: [DONE]\n\n"]
    upstream.route("/v1/chat/completions", lambda rec: Reply(content_type="text/event-stream", chunks=sse(frames)))
    stream = openai_client(gw).chat.completions.create(model="gpt-4o", stream=True,
                                                       messages=[{"role": "user", "content": marker}])
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.mark.parametrize("verbosity", ["info", "debug"])
def test_the_log_says_what_was_decided_and_connection_chatter_is_debug(tmp_path_factory, upstream, test_ca,
                                                                      marker, verbosity):
    """mitmproxy's lines for every connection and streamed body would drown the decisions at INFO."""
    with own_gateway(tmp_path_factory, upstream, test_ca, "chatter", f"termlog_verbosity={verbosity}") as gw:
        assert streamed_hello(gw, upstream, marker) == marker
        wait_for_events(gw, lambda e: marker in e["prompt"])
        log = gw.output()
    assert "AI openai chat.completions 127.0.0.1 model=gpt-4o decision=allow status=200" in log
    chatter = ["client connect", "server connect 127.0.0.1:", "Streaming response from "]
    assert [line in log for line in chatter] == [verbosity == "debug"] * len(chatter), log[-3000:]


def test_non_catalog_host_is_tunnelled_with_its_own_certificate(gateway, upstream, test_ca, marker):
    """A TLS connection to a host outside the catalog is passed through: the client sees the upstream's real
    certificate (from the test CA, which the gateway's CA did not sign) and nothing is audited."""
    upstream.route("/plain", lambda rec: Reply(body=b"plain-ok", content_type="text/plain"))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        raw.sendall(b"CONNECT intranet.example:443 HTTP/1.1\r\nHost: intranet.example:443\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(test_ca.ca_pem))  # trusts ONLY the upstream's test CA
        with ctx.wrap_socket(raw, server_hostname="intranet.example") as tls:
            issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
            tls.sendall(f"GET /plain?{marker} HTTP/1.1\r\nHost: intranet.example\r\nConnection: close\r\n\r\n"
                        .encode())
            response = b""
            while data := tls.recv(4096):
                response += data
    assert issuer.get("commonName") == "testca" or issuer.get("organizationName") == "testca"
    assert response.endswith(b"plain-ok")
    assert not [e for e in audit_events(gateway) if marker in e["path"]]


def test_gateway_certificate_is_forged_for_catalog_hosts(gateway):
    """The counterpart of tunnelling: a catalog host is intercepted, its certificate comes from the gateway CA."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        raw.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(gateway.ca))
        with ctx.wrap_socket(raw, server_hostname="api.openai.com") as tls:
            issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
    assert issuer.get("organizationName") == "mitmproxy"


def test_malformed_json_is_refused_with_its_reason_and_audited(gateway, upstream, marker):
    """A JSON body the gateway cannot read one way is not forwarded (the upstream might read it another way): the
    client gets a 400 in its provider's shape that says why, and the audit row says it was refused."""
    broken = b'{"model": "gpt-4o", "messages": [' + marker.encode()
    http = httpx2.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=str(gateway.ca)))
    r = http.post("https://api.openai.com/v1/chat/completions", content=broken,
                  headers={"content-type": "application/json"})
    assert r.status_code == 400 and "was not sent" in r.json()["error"]["message"]
    assert "not valid JSON" in r.json()["error"]["message"]
    assert not any(marker.encode() in rec.body for rec in upstream.requests)
    [event] = wait_for_events(gateway, lambda e: e["operation"] == "chat.completions" and not e["parsed"]
                              and e["status"] == 400 and e["path"] == "/v1/chat/completions"
                              and any("not valid JSON" in w for w in e["warnings"]) and e["prompt"] == ""
                              and e["request_bytes"] == len(broken))
    assert event["inspection"] == "unparsed" and event["decision"] == "block"
    assert event["reason"].startswith("request body refused") and event["event_id"] in r.text
    # the gateway is still alive and serving
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("still here"))
    assert openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "ping"}]).choices[0].message.content == "still here"


@pytest.mark.parametrize("body", [b"\xff\xfe not utf8", b"[]", b'{"messages": "nope"}', b'{"messages": [1, {"role": 5}]}',
                                  b"9" * 5000, b'{"messages": [{"role": "user", "content": {"deep": ' * 1 + b"1}}]}"])
def test_hostile_bodies_never_crash_the_gateway(gateway, upstream, body):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    http = httpx2.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=str(gateway.ca)))
    r = http.post("https://api.openai.com/v1/chat/completions", content=body,
                  headers={"content-type": "application/json"})
    # answered (a body whose JSON the gateway cannot read one way is refused, saying why), never a crash
    assert r.status_code == 200 or (r.status_code == 400 and "was not sent" in r.text)
    assert gateway.proc.poll() is None


def test_credentials_in_query_strings_never_reach_the_audit(gateway, upstream, marker):
    """Gemini-style `?key=AIza...` and signed-URL parameters are masked in the audited path."""
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    http = httpx2.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=str(gateway.ca)))
    secret = "AIzaSyD-not-a-real-key-" + marker
    r = http.post(f"https://api.openai.com/v1/chat/completions?key={secret}&trace={marker}",
                  json={"model": "gpt-4o", "messages": [{"role": "user", "content": marker}]})
    assert r.status_code == 200
    [event] = wait_for_events(gateway, lambda e: f"trace={marker}" in e["path"])
    assert event["path"] == f"/v1/chat/completions?key=REDACTED&trace={marker}"
    assert secret not in str(event)


def test_a_tls_name_that_differs_from_the_connect_host_does_not_bypass_inspection(gateway, upstream, marker):
    """`CONNECT api.openai.com` with SNI `cdn.example.org`: the gateway still decrypts, inspects and audits."""
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": marker}]}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        raw.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(gateway.ca))  # only the gateway CA: proves interception
        with ctx.wrap_socket(raw, server_hostname="cdn.example.org") as tls:
            tls.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: "
                        b"application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            response = b""
            while data := tls.recv(4096):
                response += data
    # Intercepted (the gateway's certificate was accepted for cdn.example.org), inspected and audited; the upstream
    # connection then carries the client's TLS name, which the real host's certificate does not match.
    assert response.startswith(b"HTTP/1.1 502") and b"hostname mismatch" in response
    [event] = wait_for_events(gateway, lambda e: marker in e["prompt"])
    assert event["service"] == "openai" and event["host"] == "api.openai.com"
    assert event["inspection"] == "inspected" and event["operation"] == "chat.completions"


def test_a_script_with_the_deprecated_add_log_hook_is_told_it_is_not_called(tmp_path, upstream, test_ca):
    script = tmp_path / "old_style.py"
    script.write_text("def add_log(entry):\n    pass\n")
    gw = GatewayProcess(tmp_path / "gw", {}, test_ca.ca_pem, extra_args=["-s", str(script)])
    try:
        assert "an addon has an add_log hook, which mitmproxy has deprecated and the gateway does not call" \
            in gw.output()
    finally:
        gw.stop()
