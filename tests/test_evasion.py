"""Evasions: ways of sending a secret, a card number, an e-mail address or a company term past the gateway.

The gateway here runs the shipped rules with `redact-pii` and `company-terms` switched to `mode: enforce`, so every
value below must either not leave (blocked, or refused as ambiguous) or leave redacted. Each case goes through the
real gateway to the fake upstream, which records what really arrived: the assertion is on those bytes (no trace
of the value, in any of its spellings), on what the client was told, and on the audit row (its decision, and that
its coverage says how the text was read).
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from tests.conftest import AI_HOSTS, wait_for_events
from tests.support.gateway import GatewayProcess
from tests.support.pdf import pdf
from tests.support.upstream import Recorded, Reply

ROOT = Path(__file__).resolve().parents[1]
KEY = "AKIAZ7Q4XK2M3PLR5TVW"
CARD = "4111111111111111"
EMAIL = "jane.doe@acme-corp.com"
TERM = "Project Nightjar"
VALUES = (KEY, CARD, EMAIL, TERM)


@dataclass
class Case:
    id: str
    body: bytes
    path: str = "/v1/chat/completions"
    method: str = "POST"
    host: str = "api.openai.com"
    content_type: str = "application/json"
    #: What the audit's coverage must name (the way the value was read), or "" for a refused body.
    read_by: str = "walk"
    headers: dict[str, str] = field(default_factory=dict)
    #: The value as this case spells it (obfuscated), which must not arrive either; None: one of VALUES as is.
    sent: str | None = None


def chat(**extra) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise this."}],
                       **extra}).encode()


def anthropic(**extra) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Summarise this."}], **extra}).encode()


def tool(description: str = "Looks things up", default=None) -> dict:
    props = {"q": {"type": "string", "description": "what to look up"}}
    if default is not None:
        props["q"]["default"] = default
    return {"type": "function", "function": {"name": "lookup", "description": description,
                                             "parameters": {"type": "object", "properties": props}}}


FIELDS = [
    Case("user-field", chat(user=KEY)),
    Case("user-field-email", chat(user=EMAIL)),
    Case("metadata-value", chat(metadata={"ticket": f"reply to {EMAIL}"}, store=True)),
    Case("metadata-key", chat(metadata={KEY: "x"}, store=True)),
    Case("message-name", json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "name": KEY, "content": "hi"}]}).encode()),
    Case("tool-call-id", json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": KEY, "type": "function",
                                              "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": KEY, "content": "none"}]}).encode()),
    Case("tool-description", chat(tools=[tool(description=f"Always send {KEY} as the key")])),
    Case("schema-default", chat(tools=[tool(default=CARD)])),
    Case("response-format-description", chat(response_format={"type": "json_schema", "json_schema": {
        "name": "out", "description": f"notes about {TERM}", "schema": {"type": "object"}}})),
    Case("prediction", chat(prediction={"type": "content", "content": f"key {KEY}"})),
    Case("stop", chat(stop=[KEY, "END"])),
    Case("seed-number", chat(seed=int(CARD))),
    Case("model-field", json.dumps({"model": EMAIL, "messages": [{"role": "user", "content": "hi"}]}).encode()),
    Case("content-object", json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": {"type": "text", "text": f"key {KEY}"}}]}).encode()),
    Case("unknown-content-part", json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": [{"type": "input_text", "text": f"mail {EMAIL}"}]}]}).encode()),
    Case("refusal-part", json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": f"I won't use {KEY}"}]}]}).encode()),
    Case("array-body", json.dumps([{"role": "user", "content": f"key {KEY}"}]).encode()),
    Case("responses-unknown-item", json.dumps({"model": "gpt-4o", "input": [
        {"type": "future_item", "payload": {"note": f"key {KEY}"}}]}).encode(), path="/v1/responses"),
    Case("responses-text-format", json.dumps({"model": "gpt-4o", "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "x", "schema": {"type": "object", "description": TERM}}}}).encode(),
        path="/v1/responses"),
    Case("anthropic-thinking", anthropic(messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": f"the key is {KEY}", "signature": "s"}]},
        {"role": "user", "content": "go on"}]), path="/v1/messages", host="api.anthropic.com"),
    Case("anthropic-document-title", anthropic(messages=[{"role": "user", "content": [
        {"type": "document", "title": f"for {EMAIL}", "context": f"from {TERM}",
         "source": {"type": "text", "media_type": "text/plain", "data": "hello"}},
        {"type": "text", "text": "Summarise."}]}]), path="/v1/messages", host="api.anthropic.com"),
    Case("anthropic-mcp-token", anthropic(mcp_servers=[{"type": "url", "url": "https://mcp.example/sse",
                                                        "name": "x", "authorization_token": KEY}]),
         path="/v1/messages", host="api.anthropic.com"),
    Case("anthropic-search-result", anthropic(messages=[{"role": "user", "content": [
        {"type": "search_result", "source": "https://wiki", "title": "t",
         "content": [{"type": "text", "text": f"card {CARD}"}]}]}]), path="/v1/messages", host="api.anthropic.com"),
]

ENDPOINTS = [
    Case("moderations", json.dumps({"input": f"is {KEY} ok?"}).encode(), path="/v1/moderations"),
    Case("moderations-list", json.dumps({"input": ["hi", f"mail {EMAIL}"]}).encode(), path="/v1/moderations"),
    Case("conversations", json.dumps({"items": [{"type": "message", "role": "user",
                                                 "content": f"key {KEY}"}]}).encode(), path="/v1/conversations"),
    Case("vector-store-search", json.dumps({"query": f"orders of {EMAIL}"}).encode(),
         path="/v1/vector_stores/vs_1/search"),
    Case("realtime-client-secret", json.dumps({"session": {"type": "realtime",
                                                           "instructions": f"use {KEY}"}}).encode(),
         path="/v1/realtime/client_secrets"),
    Case("put-chat", chat(messages=[{"role": "user", "content": f"key {KEY}"}]), method="PUT"),
    Case("patch-unknown", json.dumps({"note": f"{TERM} launch"}).encode(), path="/v1/organization/x",
         method="PATCH"),
    Case("text-body", f"please remember {KEY}".encode(), content_type="text/plain", read_by="walk text"),
    Case("form-body", f"prompt=hello&token={KEY}".encode(), content_type="application/x-www-form-urlencoded",
         read_by="walk form"),
    Case("no-content-type", f"key {KEY} in a body without a type".encode(), content_type="", read_by="walk text"),
]

DIFFERENTIALS = [
    Case("duplicate-key", b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], '
                          b'"messages": [{"role": "user", "content": "key ' + KEY.encode() + b'"}]}', read_by=""),
    Case("duplicate-key-nested", b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi", '
                                 b'"content": "' + EMAIL.encode() + b'"}]}', read_by=""),
    Case("bom", b"\xef\xbb\xbf" + chat(user=KEY), read_by=""),
    Case("invalid-utf8", b'{"model": "gpt-4o", "user": "\xff", "stop": "' + KEY.encode()
         + b'", "messages": [{"role": "user", "content": "hi"}]}', read_by=""),
    Case("lone-surrogate", b'{"model": "gpt-4o", "user": "\\ud800", "stop": "' + KEY.encode()
         + b'", "messages": [{"role": "user", "content": "hi"}]}', read_by=""),
    Case("nan", chat(user=KEY).replace(b'"model"', b'"temperature": NaN, "model"'), read_by=""),
    Case("infinity", chat(user=KEY).replace(b'"model"', b'"temperature": 1e400, "model"'), read_by=""),
    Case("too-deep", chat(metadata={"x": "y"}).replace(b'"y"', b"[" * 200 + b'"' + KEY.encode() + b'"' + b"]" * 200),
         read_by=""),
    Case("truncated-json", chat(user=KEY)[:-1], read_by=""),
]

def said(text: str, *more: str) -> bytes:
    """A chat request whose user messages are `text` and `more`."""
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": t} for t in (text, *more)]}).encode()


def obfuscated(id: str, sent: str, *more: str, prefix: str = "please use ") -> Case:
    return Case(id, said(prefix + sent, *more), sent=sent, read_by="parser")


FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
OBFUSCATIONS = [
    obfuscated("zero-width-key", KEY[:4] + "\u200b" + KEY[4:12] + "\u2060" + KEY[12:]),
    obfuscated("zero-width-email", "jane.doe\u200d@acme-corp.com"),
    obfuscated("homoglyph-key", "\u0410" + KEY[1:]),  # Cyrillic A
    obfuscated("homoglyph-email", "jane.d\u043ee@acme-corp.com"),  # Cyrillic o
    obfuscated("fullwidth-card", "4111 1111 1111 1111".translate(FULLWIDTH)),
    obfuscated("fullwidth-key", KEY[:4] + KEY[4:].translate(FULLWIDTH)),
    obfuscated("nbsp-card", "4111\u00a01111\u00a01111\u00a01111"),
    obfuscated("dotted-card", "4111.1111.1111.1111"),
    obfuscated("entity-email", "jane.doe&#64;acme-corp.com"),
    obfuscated("named-entity-email", "jane.doe&commat;acme-corp.com"),
    obfuscated("percent-email", "jane.doe%40acme-corp.com"),
    obfuscated("percent-key", "%41%4B%49%41" + KEY[4:]),
    obfuscated("base64-key", base64.b64encode(f"key={KEY}".encode()).decode()),
    obfuscated("hex-key", KEY.encode().hex()),
    obfuscated("lower-prefix-key", "akia" + KEY[4:]),
    obfuscated("spaced-key", " ".join(KEY)),
    obfuscated("term-inflected", "Project-Nightjar's roadmap", prefix="summarise "),
    obfuscated("term-plural", "the Nightjars launch", prefix="summarise "),
    Case("split-key-messages", said("my key starts AKIAZ7Q4XK", "2M3PLR5TVW is the rest"), sent="AKIAZ7Q4XK",
         read_by="parser"),
    Case("split-card-parts", json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "card 41111111"}, {"type": "text", "text": "11111111 thanks"}]}]}).encode(),
         sent="card 41111111", read_by="parser"),
]

def multipart(*parts: tuple[str, str, bytes]) -> tuple[bytes, str]:
    """A multipart body of (content-disposition parameters, content type, content) parts, and its type."""
    out = b""
    for disposition, ctype, content in parts:
        out += (f"--b0undary\r\ncontent-disposition: form-data; {disposition}\r\n"
                + (f"content-type: {ctype}\r\n" if ctype else "") + "\r\n").encode() + content + b"\r\n"
    return out + b"--b0undary--\r\n", "multipart/form-data; boundary=b0undary"


def upload(id: str, *parts: tuple[str, str, bytes], path: str = "/v1/files") -> Case:
    body, ctype = multipart(*parts)
    return Case(id, body, path=path, content_type=ctype, read_by="upload")


PDF = base64.b64encode(pdf(f"Deploy with key {KEY} today")).decode()
LONG_TEXT = ("filler line of an ordinary log file\n" * 17000).encode() + f"aws_key={KEY}\n".encode()
UPLOADS = [
    Case("responses-input-file-pdf", json.dumps({"model": "gpt-4o", "input": [{"role": "user", "content": [
        {"type": "input_file", "filename": "plan.pdf", "file_data": f"data:application/pdf;base64,{PDF}"},
        {"type": "input_text", "text": "Summarise."}]}]}).encode(), path="/v1/responses", read_by="upload",
         sent=PDF[:40]),
    Case("chat-file-part-pdf", json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "plan.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "text", "text": "Summarise."}]}]}).encode(), read_by="upload", sent=PDF[:40]),
    Case("anthropic-document-pdf", anthropic(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
        {"type": "text", "text": "Summarise."}]}]), path="/v1/messages", host="api.anthropic.com",
         read_by="upload", sent=PDF[:40]),
    upload("multipart-pdf", ('name="purpose"', "", b"assistants"),
           ('name="file"; filename="plan.bin"', "application/octet-stream", pdf(f"key {KEY}"))),
    upload("octet-stream-text", ('name="purpose"', "", b"assistants"),
           ('name="file"; filename="notes"', "application/octet-stream", f"remember {KEY}".encode())),
    upload("secret-at-600kb", ('name="purpose"', "", b"assistants"),
           ('name="file"; filename="app.log"', "text/plain", LONG_TEXT)),
    upload("rfc2231-filename", ('name="purpose"', "", b"assistants"),
           ("name=\"file\"; filename=\"x.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt", "",
            f"mail {KEY}".encode())),
    upload("secret-in-filename", ('name="purpose"', "", b"assistants"),
           (f'name="file"; filename="{KEY}.txt"', "text/plain", b"hello")),
    upload("repeated-field", ('name="purpose"', "", b"assistants"), ('name="purpose"', "", KEY.encode()),
           ('name="file"; filename="a.txt"', "text/plain", b"hello")),
]

CASES = FIELDS + ENDPOINTS + DIFFERENTIALS + OBFUSCATIONS + UPLOADS


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory, upstream, test_ca):
    """The shipped rules with the personal-data and company-terms rules enforced."""
    rules = tmp_path_factory.mktemp("evasion-rules")
    for f in (ROOT / "rules").glob("*.yaml"):
        shutil.copy(f, rules / f.name)
    policy = (rules / "policy.yaml").read_text()
    enforced = policy.replace("    redact: {reversible: true}\n    mode: monitor", "    redact: {reversible: true}")
    enforced = enforced.replace("    action: block\n    mode: monitor", "    action: block")
    assert enforced.count("mode: monitor") == policy.count("mode: monitor") - 2
    (rules / "policy.yaml").write_text(enforced)
    gw = GatewayProcess(tmp_path_factory.mktemp("evasion-gateway"), {h: upstream.port for h in AI_HOSTS},
                        test_ca.ca_pem, rules=rules, sets=["gateway_dlp_timeout=120"])
    later = list(upstream.handlers)

    def answer(rec: Recorded) -> Reply:
        if "evasion=" in rec.path:
            return Reply(body=b'{"id": "x", "object": "ok"}')
        for prefix, handler in later:
            if rec.path.startswith(prefix):
                return handler(rec)
        return Reply(404, b'{"error": {"message": "no fake route"}}')

    upstream.route("/", answer)
    yield gw
    gw.stop()


def spellings(value: str) -> list[bytes]:
    """How a value could arrive: as is, JSON-escaped, or with its @ escaped."""
    return [value.encode(), json.dumps(value).encode()[1:-1], value.replace("@", "\\u0040").encode()]


def send(gw: GatewayProcess, case: Case, marker: str) -> httpx2.Response:
    client = httpx2.Client(proxy=gw.proxy_url, verify=ssl.create_default_context(cafile=str(gw.ca)), timeout=120)
    headers = {"authorization": "Bearer sk-test-not-a-real-key", **case.headers}
    if case.content_type:
        headers["content-type"] = case.content_type
    sep = "&" if "?" in case.path else "?"
    with client:
        return client.request(case.method, f"https://{case.host}{case.path}{sep}evasion={marker}",
                              content=case.body, headers=headers)


def arrived(upstream, marker: str) -> list[bytes]:
    return [r.body for r in upstream.requests if f"evasion={marker}" in r.path]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_nothing_of_the_value_leaves(strict_gateway, upstream, case):
    marker = uuid.uuid4().hex[:12]
    assert case.sent is not None or any(v.encode() in case.body for v in VALUES), "the case must carry a value"
    response = send(strict_gateway, case, marker)
    bodies = arrived(upstream, marker)
    for body in bodies:
        for value in (*VALUES, *([case.sent] if case.sent else [])):
            for spelling in spellings(value):
                assert spelling not in body, (case.id, value, body[:500])
    [event] = wait_for_events(strict_gateway, lambda e: f"evasion={marker}" in e["path"])
    if case.read_by:  # read, then blocked or redacted: the client is told, the audit says how it was read
        assert event["decision"] in ("block", "redact"), event
        assert event["inspection"] == "inspected", event
        assert any(line.startswith(case.read_by) for line in event["coverage"]), event["coverage"]
        if event["decision"] == "block":
            assert response.status_code == 403 and not bodies
            assert "Blocked by the AI gateway" in response.text and event["event_id"] in response.text
        else:
            assert response.status_code == 200 and len(bodies) == 1
    else:  # ambiguous: refused whole, with a reason the client shows
        assert response.status_code == 400 and not bodies, response.text
        assert "was not sent, as its JSON cannot be read one way" in response.text and event["event_id"] in response.text
        assert event["decision"] == "block" and event["reason"].startswith("request body refused"), event
    for value in VALUES:  # the audit row names paths; a value used as a key must not land there raw
        assert value not in json.dumps(event["coverage"])


def test_coverage_names_parser_and_walk_paths(strict_gateway, upstream):
    """The audit says which paths were read by the parser and which by the walk, so 'inspected' is never claimed
    for text the gateway did not read."""
    marker = uuid.uuid4().hex[:12]
    case = Case("coverage", chat(user="someone", metadata={"team": "core"}, store=True))
    assert send(strict_gateway, case, marker).status_code == 200
    [event] = wait_for_events(strict_gateway, lambda e: f"evasion={marker}" in e["path"])
    assert event["decision"] == "allow" and event["inspection"] == "inspected"
    assert {"parser /messages/*/content", "walk /user", "walk /metadata/team", "walk /model",
            "walk /messages/*/role"} <= set(event["coverage"]), event["coverage"]
