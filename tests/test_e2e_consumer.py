"""End to end through the running gateway: a consumer web app over HTTP (ChatGPT's delta-encoded stream) and AI
conversations over WebSockets (Microsoft Copilot, OpenAI Realtime) against fake upstreams, audited in chdb.

httpx2 and the `websockets` client play the browser; the WebSocket upstream is a real `websockets` TLS server with
a certificate from the test CA, reached through the same route_upstream addon as the HTTP fakes."""

from __future__ import annotations

import json
import ssl
import threading

import httpx2
import pytest
from websockets.sync.client import connect
from websockets.sync.server import serve

from tests.conftest import wait_for_events
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Reply, sse

WS_HOSTS = ["copilot.microsoft.com", "api.openai.com"]


def browser(gateway) -> httpx2.Client:
    return httpx2.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=str(gateway.ca)),
                         timeout=30)


def test_chatgpt_web_conversation_streams_and_is_audited(gateway, upstream, marker):
    """The browser reads the first delta while the fake chatgpt.com still holds back the end of the answer."""
    gate = threading.Event()
    frames = [
        'event: delta_encoding\ndata: "v1"\n\n',
        "event: delta\ndata: " + json.dumps({"p": "", "o": "add", "c": 0, "v": {"message": {
            "id": "m-a", "author": {"role": "assistant"}, "recipient": "all",
            "content": {"content_type": "text", "parts": [""]},
            "metadata": {"model_slug": "gpt-4o", "resolved_model_slug": "gpt-4o-2024-11-20"}},
            "conversation_id": "c-1"}}) + "\n\n",
        "event: delta\ndata: " + json.dumps({"p": "/message/content/parts/0", "o": "append", "v": "Hello, "}) + "\n\n",
        "event: delta\ndata: " + json.dumps({"v": marker}) + "\n\n",
        "event: delta\ndata: " + json.dumps({"p": "", "o": "patch", "v": [
            {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
            {"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "stop"}}}]}) + "\n\n",
        "data: " + json.dumps({"type": "message_stream_complete", "conversation_id": "c-1"}) + "\n\ndata: [DONE]\n\n",
    ]
    upstream.route("/backend-api/f/conversation",
                   lambda rec: Reply(content_type="text/event-stream; charset=utf-8", chunks=sse(frames, gate=gate)))
    body = {"action": "next", "model": "auto", "conversation_id": "c-1", "parent_message_id": "p-1",
            "supported_encodings": ["v1"],
            "messages": [{"id": "m-u", "author": {"role": "user"},
                          "content": {"content_type": "text", "parts": [f"Say hello {marker}"]}, "metadata": {}}]}
    with browser(gateway) as http, http.stream("POST", "https://chatgpt.com/backend-api/f/conversation", json=body,
                                               headers={"accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines) == "event: delta_encoding"
        assert not gate.is_set()
        gate.set()
        received = "\n".join(lines)
    assert marker in received and received.rstrip().endswith("data: [DONE]")

    [event] = wait_for_events(gateway, lambda e: marker in e["prompt"] and e["service"] == "chatgpt")
    assert event["operation"] == "conversation" and event["parsed"] and event["stream"]
    assert f"[user] Say hello {marker}" in event["prompt"]
    assert event["completion"] == f"Hello, {marker}"
    assert event["model"] == "gpt-4o-2024-11-20" and event["status"] == 200


def test_chatgpt_web_unknown_answer_is_forwarded_and_audited_unparsed(gateway, upstream, marker):
    upstream.route("/backend-api/conversation",
                   lambda rec: Reply(content_type="text/event-stream", body=b"data: {\"surprise\": 1}\n\n"))
    with browser(gateway) as http:
        r = http.post("https://chatgpt.com/backend-api/conversation",
                      json={"action": "next", "messages": [{"author": {"role": "user"},
                                                            "content": {"content_type": "text",
                                                                        "parts": [marker]}}]})
    assert r.status_code == 200 and r.content == b"data: {\"surprise\": 1}\n\n"
    [event] = wait_for_events(gateway, lambda e: marker in e["prompt"])
    assert not event["parsed"] and event["inspection"] == "inspected"  # the request's text was read: the walk
    assert any("not understood" in w for w in event["warnings"])


def test_an_app_pages_static_files_pass_through_and_only_what_could_carry_data_is_audited(gateway, upstream, marker):
    """A consumer app's page loads scripts, styles and images from the app's host: they carry no prompt, so they
    are passed through and left out of the audit (gateway_audit_assets). A call no parser knows (JSON back), and
    an image fetch with a long query string (which could carry data out), are still audited."""
    upstream.route(f"/static/{marker}", lambda rec: Reply(body=b"console.log(1)", content_type="text/javascript"))
    upstream.route(f"/img/{marker}", lambda rec: Reply(body=b"\x89PNG", content_type="image/png"))
    upstream.route(f"/backend-api/{marker}", lambda rec: Reply(body=b'{"ok": true}'))
    long_query = "q=" + "x" * 200
    with browser(gateway) as http:
        assert http.get(f"https://chatgpt.com/static/{marker}/app.js").content == b"console.log(1)"
        assert http.get(f"https://chatgpt.com/img/{marker}/logo.png?v=3").content == b"\x89PNG"
        assert http.get(f"https://chatgpt.com/img/{marker}/pixel.png?{long_query}").content == b"\x89PNG"
        assert http.get(f"https://chatgpt.com/backend-api/{marker}/me").json() == {"ok": True}
    audited = wait_for_events(gateway, lambda e: marker in e["path"], count=2)
    assert sorted(e["path"].split("?")[0] for e in audited) == [f"/backend-api/{marker}/me",
                                                               f"/img/{marker}/pixel.png"]


# --- WebSockets ------------------------------------------------------------------------------------------------

def _copilot(ws) -> None:
    for raw in ws:
        msg = json.loads(raw)
        if msg.get("event") != "send":
            continue
        prompt = msg["content"][0]["text"]
        ws.send(json.dumps({"event": "received"}))
        ws.send(json.dumps({"event": "startMessage", "messageId": "a1"}))
        ws.send(json.dumps({"event": "appendText", "text": "You said: "}))
        ws.send(json.dumps({"event": "appendText", "text": prompt}))
        ws.send(json.dumps({"event": "done"}))


def _realtime(ws) -> None:
    for raw in ws:
        msg = json.loads(raw)
        if msg.get("type") == "response.create":
            ws.send(json.dumps({"type": "response.output_text.delta", "delta": "Realtime "}))
            ws.send(json.dumps({"type": "response.output_text.delta", "delta": "answer"}))
            ws.send(json.dumps({"type": "response.done", "response": {
                "status": "completed", "usage": {"input_tokens": 7, "output_tokens": 2}}}))


def _route(ws) -> None:
    (_copilot if ws.request.path.startswith("/c/api/chat") else _realtime)(ws)


@pytest.fixture(scope="module")
def ws_gateway(tmp_path_factory, test_ca):
    server = serve(_route, "127.0.0.1", 0, ssl=test_ca.server_context(WS_HOSTS))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.socket.getsockname()[1]
    gw = GatewayProcess(tmp_path_factory.mktemp("ws-gateway"), {h: port for h in WS_HOSTS}, test_ca.ca_pem)
    yield gw
    gw.stop()
    server.shutdown()


def ws_connect(gw: GatewayProcess, url: str):
    return connect(url, proxy=gw.proxy_url, ssl=ssl.create_default_context(cafile=str(gw.ca)), open_timeout=20)


def receive_until(ws, predicate) -> list[dict]:
    out = []
    while True:
        msg = json.loads(ws.recv(timeout=20))
        out.append(msg)
        if predicate(msg):
            return out


def test_copilot_websocket_turns_are_relayed_and_audited(ws_gateway, marker):
    with ws_connect(ws_gateway, "wss://copilot.microsoft.com/c/api/chat?api-version=2&accessToken=tok-SECRET") as ws:
        ws.send(json.dumps({"event": "setOptions", "supportedCards": []}))
        for n in (1, 2):
            ws.send(json.dumps({"event": "send", "conversationId": "c1", "mode": "chat",
                                "content": [{"type": "text", "text": f"turn {n} {marker}"}]}))
            got = receive_until(ws, lambda m: m["event"] == "done")
            assert "".join(m.get("text", "") for m in got if m["event"] == "appendText") == \
                f"You said: turn {n} {marker}"
        # both turns are audited while the connection is still open
        events = wait_for_events(ws_gateway, lambda e: marker in e["prompt"], count=2)
    events.sort(key=lambda e: e["prompt"])
    for n, event in enumerate(events, 1):
        assert event["service"] == "copilot" and event["operation"] == "conversation" and event["parsed"]
        assert event["prompt"] == f"[user] turn {n} {marker}"
        assert event["completion"] == f"You said: turn {n} {marker}"
        assert event["model"] == "chat" and event["status"] == 101 and event["source"] == "websocket"
        assert event["inspection"] == "inspected" and event["entity_types"] == []
        assert "tok-SECRET" not in event["path"] and "accessToken=REDACTED" in event["path"]
    assert events[0]["event_id"] != events[1]["event_id"]


def test_copilot_websocket_turn_is_scanned_masked_and_judged_but_not_held_back(ws_gateway, marker):
    """A turn with an e-mail address and an AWS key is relayed untouched (a live socket cannot be held back), and
    its audit event has the findings, the prompt masked (capture redacted) and what the policy would have done."""
    email, key = "jane.doe@acme-corp.com", "AKIAZ7Q4XK2M3PLR5TVW"
    text = f"{marker} mail {email} the key {key}"
    with ws_connect(ws_gateway, "wss://copilot.microsoft.com/c/api/chat?api-version=2") as ws:
        ws.send(json.dumps({"event": "send", "conversationId": "c2", "mode": "chat",
                            "content": [{"type": "text", "text": text}]}))
        got = receive_until(ws, lambda m: m["event"] == "done")
        assert "".join(m.get("text", "") for m in got if m["event"] == "appendText") == f"You said: {text}"
        [event] = wait_for_events(ws_gateway, lambda e: marker in e["prompt"])
    assert event["source"] == "websocket" and event["inspection"] == "inspected"
    assert event["entity_types"] == ["AWS_ACCESS_KEY", "EMAIL_ADDRESS"] and event["capture"] == "redacted"
    assert event["prompt"] == f"[user] {marker} mail <EMAIL_ADDRESS> the key <AWS_ACCESS_KEY>"
    assert email not in event["prompt"] and key not in event["prompt"]
    # the shipped policy blocks secrets: on a WebSocket that is recorded, not enforced
    assert event["decision"] == "monitor" and event["rule_id"] == "block-secrets"
    assert event["reason"].startswith("would block (not enforced on a WebSocket)")


def test_openai_realtime_turn_is_audited_and_unknown_sockets_too(ws_gateway, marker):
    with ws_connect(ws_gateway, "wss://api.openai.com/v1/realtime?model=gpt-realtime") as ws:
        ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime",
                                                                  "instructions": f"Be brief {marker}"}}))
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Hi {marker}"}]}}))
        # a field no parser reads: the whole-message walk inspects it with the turn
        ws.send(json.dumps({"type": "response.create", "response": {"metadata": {"owner": "jane.doe@acme-corp.com"}}}))
        got = receive_until(ws, lambda m: m["type"] == "response.done")
        assert [m["type"] for m in got] == ["response.output_text.delta"] * 2 + ["response.done"]
    [event] = wait_for_events(ws_gateway, lambda e: f"Hi {marker}" in e["prompt"])
    assert (event["service"], event["operation"], event["model"]) == ("openai", "realtime", "gpt-realtime")
    assert event["prompt"] == f"[system] Be brief {marker}\n[user] Hi {marker}"
    assert event["entity_types"] == ["EMAIL_ADDRESS"] and "walk /response/metadata/owner" in event["coverage"]
    assert event["completion"] == "Realtime answer"
    assert (event["input_tokens"], event["output_tokens"]) == (7, 2)

    # an AI host's WebSocket in a protocol the gateway does not know: relayed, one unparsed event at the end
    with ws_connect(ws_gateway, f"wss://api.openai.com/v1/something-new?m={marker}") as ws:
        ws.send(b"\x00\x01 binary " + marker.encode())
    [event] = wait_for_events(ws_gateway, lambda e: marker in e["path"] and e["operation"] == "websocket")
    assert not event["parsed"] and event["inspection"] == "unparsed"
    assert ws_gateway.proc.poll() is None
