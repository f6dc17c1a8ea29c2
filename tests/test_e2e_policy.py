"""End to end: the policy decides and enforces through the real gateway, with proxy authentication.

The SDKs must surface our message (in their own error types), browsers get pages, `warn` + continue lets the next
request through and records the justification, and the rules folder reloads under live traffic.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anthropic
import bcrypt
import httpx2
import openai
import pytest

from tests.conftest import AI_HOSTS, PLAIN_HOSTS, wait_for_events
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Reply
from tests.test_e2e_foundation import chat_reply

REPO = Path(__file__).resolve().parent.parent

ENDPOINTS = """
version: 1
services:
  - {id: openai, name: OpenAI API, category: api, sanctioned: true, hosts: [api.openai.com], formats: [openai]}
  - {id: anthropic, name: Anthropic API, category: api, sanctioned: true, hosts: [api.anthropic.com],
     formats: [anthropic]}
  - {id: deepseek, name: DeepSeek API, category: api, hosts: [api.deepseek.com], formats: [openai]}
  - {id: chatgpt, name: ChatGPT, category: chat, hosts: [chatgpt.com], formats: [chatgpt-web]}
  - {id: claude, name: Claude, category: chat, hosts: [claude.ai], formats: [claude-web]}
  - {id: gemini, name: Gemini API, category: api, sanctioned: true, hosts: [generativelanguage.googleapis.com],
     formats: [gemini]}
  - {id: bedrock, name: Amazon Bedrock, category: api, sanctioned: true,
     hosts: ["bedrock-runtime.*.amazonaws.com"], formats: [bedrock]}
  - {id: cohere, name: Cohere API, category: api, sanctioned: true, hosts: [api.cohere.com], formats: [cohere]}
  - {id: mistral, name: Mistral API, category: api, sanctioned: true, hosts: [api.mistral.ai],
     formats: [mistral, openai]}
  - {id: gemini-app, name: Gemini app, category: chat, hosts: [gemini.google.com], paths: [/app]}
"""

POLICY = """
version: 1
defaults: {action: allow, shadow_ai: block, message: This AI service is not approved. Ask IT.}
rules:
  - id: o1-for-research
    who: {groups: [research]}
    when: {models: ["o1*"]}
    action: allow
  - id: o1-reserved
    when: {models: ["o1*"]}
    action: block
    message: o1 models are reserved for the research team.
  - id: no-claude-api-for-sales
    who: {groups: [sales]}
    when: {services: [anthropic]}
    action: block
    message: Sales uses the sanctioned OpenAI service only.
  - id: interns-api-only-openai
    who: {users: [bob]}
    when: {services: [gemini, bedrock, cohere, mistral]}
    action: block
    message: Bob may only use the OpenAI API.
  - id: keys-to-mistral-fail-closed
    who: {users: [alice]}
    when: {services: [mistral], findings: ["*_KEY"]}
    action: block
    fail: closed
    message: Requests to Mistral must be inspected for keys.
  - id: keys-to-cohere-fail-open
    who: {users: [alice]}
    when: {services: [cohere], findings: ["*_KEY"]}
    action: block
    fail: open
  - id: redact-emails
    when: {models: ["redact-test-*"], findings: {entities: [EMAIL_ADDRESS]}}
    action: redact
  - id: consumer-chatgpt
    when: {services: [chatgpt]}
    action: block
    message: Use the company assistant instead of consumer ChatGPT.
  - id: claude-caution
    when: {services: [claude, gemini-app]}
    action: warn
    message: Claude is not approved for customer data.
  - id: old-models
    when: {models: ["gpt-3.5*"]}
    action: warn
    message: gpt-3.5 is being retired; switch to gpt-4o-mini.
  - id: no-deleting-tools
    when: {tools: ["delete_*"]}
    action: strip
  - id: no-shell-tools
    when: {tools: [shell, "re:exec_.*"]}
    action: block
    message: Agents may not be given shell tools.
  - id: no-destructive-commands
    when: {tools: {names: [run_command], args: {command: "re:rm\\\\s+-rf"}}}
    action: block
    message: Destructive commands are not allowed.
"""

IDENTITY = """
version: 1
groups:
  research: [alice]
  sales: [bob]
networks:
  - {cidr: 127.0.0.3/32, user: build-server, groups: [ci]}
trusted_header:
  header: X-Authenticated-User
  from: [127.0.0.1/32]
"""

USERS = {"alice": "alice-pw", "bob": "bob-pw"}


def write_rules(folder: Path, policy: str = POLICY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "endpoints.yaml").write_text(textwrap.dedent(ENDPOINTS).lstrip())
    (folder / "policy.yaml").write_text(textwrap.dedent(policy).lstrip())
    (folder / "identity.yaml").write_text(textwrap.dedent(IDENTITY).lstrip())
    return folder


@pytest.fixture(scope="module")
def pgw(tmp_path_factory, upstream, test_ca):
    """A gateway with the test rules and proxy authentication against an htpasswd file (bcrypt)."""
    base = tmp_path_factory.mktemp("policy-gw")
    rules = write_rules(base / "rules")
    htpasswd = base / "htpasswd"
    htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                                for u, p in USERS.items()))
    gw = GatewayProcess(base / "data", {h: upstream.port for h in AI_HOSTS + PLAIN_HOSTS}, test_ca.ca_pem,
                        rules=rules, sets=[f"proxyauth=@{htpasswd}"])
    yield gw
    gw.stop()


def http_client(gw, user: str | None = None, **kw) -> httpx2.Client:
    proxy = gw.proxy_url if user is None else gw.proxy_url.replace("http://", f"http://{user}:{USERS[user]}@")
    return httpx2.Client(proxy=proxy, verify=ssl.create_default_context(cafile=str(gw.ca)), timeout=30, **kw)


def openai_as(gw, user: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", http_client=http_client(gw, user), max_retries=0)


def anthropic_as(gw, user: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", http_client=http_client(gw, user), max_retries=0)


def anthropic_reply(text: str) -> Reply:
    return Reply(body=json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-model",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 2}}).encode())


def reference_in(text: str) -> str:
    m = re.search(r"Reference: ([0-9a-f-]{36})", text)
    assert m, f"no reference id in {text!r}"
    return m.group(1)


def sent_upstream(upstream, marker: str) -> bool:
    return any(marker.encode() in r.body or marker in r.path for r in upstream.requests)


def test_openai_sdk_shows_our_block_message_and_reference(pgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("should not be reached"))
    with pytest.raises(openai.PermissionDeniedError) as e:
        openai_as(pgw, "bob").chat.completions.create(model="o1-mini",
                                                      messages=[{"role": "user", "content": marker}])
    assert e.value.status_code == 403
    assert "o1 models are reserved for the research team." in str(e.value)
    assert "policy rule 'o1-reserved'" in e.value.message
    ref = reference_in(str(e.value))
    assert not sent_upstream(upstream, marker)
    [event] = wait_for_events(pgw, lambda ev: ev["event_id"] == ref)
    assert (event["decision"], event["rule_id"], event["user"], event["status"]) == ("block", "o1-reserved",
                                                                                     "bob", 403)
    assert event["reason"].startswith("rule o1-reserved: block")


def test_group_allows_the_model_for_research(pgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"ok {marker}", model="o1-mini"))
    answer = openai_as(pgw, "alice").chat.completions.create(model="o1-mini",
                                                             messages=[{"role": "user", "content": marker}])
    assert answer.choices[0].message.content == f"ok {marker}"
    assert sent_upstream(upstream, marker)
    [event] = wait_for_events(pgw, lambda ev: marker in ev["prompt"])
    assert (event["decision"], event["rule_id"], event["user"]) == ("allow", "o1-for-research", "alice")
    assert "research" in event["groups"]


def test_streamed_request_is_blocked_before_any_byte(pgw, upstream, marker):
    with pytest.raises(openai.PermissionDeniedError) as e:
        openai_as(pgw, "bob").chat.completions.create(model="o1", stream=True,
                                                      messages=[{"role": "user", "content": marker}])
    assert "reserved for the research team" in str(e.value)
    assert not sent_upstream(upstream, marker)


def test_anthropic_sdk_shows_our_block_message(pgw, upstream, marker):
    upstream.route("/v1/messages", lambda rec: anthropic_reply(f"hi {marker}"))
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        anthropic_as(pgw, "bob").messages.create(model="claude-test-model", max_tokens=10,
                                                 messages=[{"role": "user", "content": marker}])
    assert e.value.status_code == 403
    assert "Sales uses the sanctioned OpenAI service only." in str(e.value)
    assert e.value.body["error"]["type"] == "permission_error"  # the Anthropic error object, parsed by the SDK
    ref = reference_in(str(e.value))
    assert not sent_upstream(upstream, marker)
    # the same request from research goes through
    answer = anthropic_as(pgw, "alice").messages.create(model="claude-test-model", max_tokens=10,
                                                        messages=[{"role": "user", "content": marker}])
    assert answer.content[0].text == f"hi {marker}"
    [event] = wait_for_events(pgw, lambda ev: ev["event_id"] == ref)
    assert (event["decision"], event["rule_id"], event["service"]) == ("block", "no-claude-api-for-sales",
                                                                       "anthropic")


def test_redact_decision_names_the_entities_found(pgw, upstream, marker):
    """The decision half of redaction (the rewrite itself is the DLP stage's, tested in test_e2e_dlp)."""
    from addons import default_addons
    if "Inspect" not in {type(a).__name__ for a in default_addons()}:
        pytest.skip("the DLP inspect stage is not in the pipeline yet")
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("done"))
    openai_as(pgw, "alice").chat.completions.create(
        model="redact-test-1", messages=[{"role": "user", "content": f"{marker} mail jane.doe@acme-corp.com"}])
    [event] = wait_for_events(pgw, lambda ev: marker in ev["prompt"])
    assert (event["decision"], event["rule_id"]) == ("redact", "redact-emails")
    assert event["reason"].startswith("rule redact-emails: redact EMAIL_ADDRESS")


def test_shadow_ai_default_blocks_an_unnamed_service(pgw, upstream, marker):
    with pytest.raises(openai.PermissionDeniedError) as e:
        openai.OpenAI(api_key="sk", base_url="https://api.deepseek.com/v1", http_client=http_client(pgw, "alice"),
                      max_retries=0).chat.completions.create(model="deepseek-chat",
                                                             messages=[{"role": "user", "content": marker}])
    assert "This AI service is not approved. Ask IT." in str(e.value)
    assert "policy rule 'shadow_ai'" in str(e.value)
    assert not sent_upstream(upstream, marker)


def test_without_credentials_the_proxy_asks_for_them(pgw):
    with http_client(pgw) as client, pytest.raises(httpx2.ProxyError) as e:
        client.get("https://api.openai.com/v1/models")
    assert "407" in str(e.value)


def test_trusted_header_is_stripped_and_proxy_auth_wins(pgw, upstream, marker):
    """The SSO header is honoured from 127.0.0.1 here, but an authenticated proxy user outranks it, and the
    header never reaches the AI provider."""
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    with http_client(pgw, "alice") as client:
        r = client.post("https://api.openai.com/v1/chat/completions", headers={"X-Authenticated-User": "mallory"},
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": marker}]})
    assert r.status_code == 200
    [rec] = [r for r in upstream.requests if marker.encode() in r.body]
    assert "x-authenticated-user" not in rec.headers
    [event] = wait_for_events(pgw, lambda ev: marker in ev["prompt"])
    assert event["user"] == "alice"


def test_browser_gets_the_block_page_for_a_consumer_app(pgw, upstream, marker):
    upstream.route("/c/", lambda rec: Reply(body=b"<html>chatgpt</html>", content_type="text/html"))
    with http_client(pgw, "alice") as client:
        r = client.get(f"https://chatgpt.com/c/{marker}", headers={"accept": "text/html,application/xhtml+xml"})
        xhr = client.post("https://chatgpt.com/backend-api/conversation", json={"messages": [], "m": marker},
                          headers={"accept": "text/event-stream"})
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "Blocked by your organisation" in page and "consumer-chatgpt" in page and "ChatGPT" in page
    assert "Use the company assistant instead of consumer ChatGPT." in page
    ref = reference_in(page.replace("<code>", "").replace("</code>", ""))
    assert r.headers["x-ai-gateway-reference"] == ref
    assert xhr.status_code == 403 and "consumer-chatgpt" in xhr.text  # the app's own calls are refused too
    assert not sent_upstream(upstream, marker)
    [event] = wait_for_events(pgw, lambda ev: ev["event_id"] == ref)
    assert (event["decision"], event["service"], event["status"]) == ("block", "chatgpt", 403)


def test_warn_page_continue_lets_the_next_request_through_and_records_why(pgw, upstream, marker):
    upstream.route("/chat/", lambda rec: Reply(body=b"<html>claude app</html>", content_type="text/html"))
    html = {"accept": "text/html"}
    with http_client(pgw, "bob") as client:
        first = client.get(f"https://claude.ai/chat/{marker}", headers=html)
        assert first.status_code == 403 and "Continue" in first.text
        assert "Claude is not approved for customer data." in first.text
        token = re.search(r'name="token" value="([^"]+)"', first.text).group(1)
        target = re.search(r'name="target" value="([^"]+)"', first.text).group(1)
        assert target == f"/chat/{marker}"
        go = client.post("https://claude.ai/__ai-gateway/continue",
                         data={"token": token, "target": target, "justification": f"internal test data {marker}"})
        assert go.status_code == 303 and go.headers["location"] == f"/chat/{marker}"
        again = client.get(f"https://claude.ai/chat/{marker}", headers=html)
        assert again.status_code == 200 and again.text == "<html>claude app</html>"
        # a token is good once
        replay = client.post("https://claude.ai/__ai-gateway/continue", data={"token": token, "target": "/"})
        assert replay.status_code == 403
    with http_client(pgw, "alice") as client:  # someone else has not continued: they still see the page
        assert client.get(f"https://claude.ai/chat/{marker}", headers=html).status_code == 403
    events = wait_for_events(pgw, lambda ev: ev["service"] == "claude" and ev["user"] == "bob"
                             and ev["justification"] == f"internal test data {marker}", count=2)
    assert {e["decision"] for e in events} == {"warn"}
    assert any("continue past the warning" in e["reason"] and e["status"] == 303 for e in events)
    assert any(e["status"] == 200 and marker in e["path"] for e in events)


@pytest.fixture(scope="module")
def anon_gw(tmp_path_factory, upstream, test_ca):
    """The test rules without proxy authentication: browsers are known only by their (shared) address."""
    base = tmp_path_factory.mktemp("anon-gw")
    gw = GatewayProcess(base / "data", {h: upstream.port for h in AI_HOSTS + PLAIN_HOSTS}, test_ca.ca_pem,
                        rules=write_rules(base / "rules"))
    yield gw
    gw.stop()


def test_an_anonymous_continue_belongs_to_the_browser_that_clicked_not_to_its_address(anon_gw, upstream, marker):
    """Two browsers behind one address (a NAT): one continues past the warning; the other still sees the page,
    and its requests are not credited with the first one's justification. The cookie that carries this never
    reaches the AI service."""
    upstream.route("/chat/", lambda rec: Reply(body=b"<html>claude app</html>", content_type="text/html"))
    html = {"accept": "text/html"}
    seen = len(upstream.requests)
    with http_client(anon_gw) as clicker, http_client(anon_gw) as neighbour:
        page = clicker.get(f"https://claude.ai/chat/{marker}", headers=html)
        token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
        go = clicker.post("https://claude.ai/__ai-gateway/continue",
                          data={"token": token, "target": f"/chat/{marker}", "justification": f"why {marker}"})
        assert go.status_code == 303 and "ai_gateway_ack=" in go.headers["set-cookie"]
        assert "HttpOnly" in go.headers["set-cookie"] and "Secure" in go.headers["set-cookie"]
        assert clicker.get(f"https://claude.ai/chat/{marker}", headers=html).status_code == 200
        assert neighbour.get(f"https://claude.ai/chat/{marker}", headers=html).status_code == 403
        forged = http_client(anon_gw, cookies={"ai_gateway_ack": "A" * 24})  # an id the gateway never issued
        with forged:
            assert forged.get(f"https://claude.ai/chat/{marker}", headers=html).status_code == 403
        # the cookie is sent with every request to the host, also to paths the catalog does not count as AI use
        upstream.route(f"/help/{marker}", lambda rec: Reply(body=b"help page", content_type="text/html"))
        page = clicker.get(f"https://gemini.google.com/app/{marker}", headers=html)
        token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
        clicker.post("https://gemini.google.com/__ai-gateway/continue", data={"token": token, "target": "/app"})
        assert "ai_gateway_ack" in str(clicker.cookies.jar)
        assert clicker.get(f"https://gemini.google.com/help/{marker}").text == "help page"
    forwarded = upstream.requests[seen:]
    assert any(f"/help/{marker}" in r.path for r in forwarded)
    assert forwarded and all("ai_gateway_ack" not in r.headers.get("cookie", "") for r in forwarded)
    events = wait_for_events(anon_gw, lambda ev: ev["service"] == "claude" and marker in ev["path"], count=4)
    assert [e["justification"] for e in events if e["status"] == 200] == [f"why {marker}"]
    assert all(e["justification"] == "" for e in events if e["status"] == 403)


def test_warn_lets_api_clients_through_with_a_header(pgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"old {marker}", model="gpt-3.5-turbo"))
    raw = openai_as(pgw, "alice").chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": marker}])
    assert raw.parse().choices[0].message.content == f"old {marker}"
    warning = raw.headers["x-ai-gateway-warning"]
    assert "gpt-3.5 is being retired" in warning and "old-models" in warning
    [event] = wait_for_events(pgw, lambda ev: marker in ev["prompt"])
    assert (event["decision"], event["rule_id"], event["status"]) == ("warn", "old-models", 200)


# --- every provider's own error object -------------------------------------------------------------------------

BOB_ONLY_OPENAI = "Bob may only use the OpenAI API."


def proxy_as(gw, user: str) -> str:
    return gw.proxy_url.replace("http://", f"http://{user}:{USERS[user]}@")


def test_google_genai_sdk_shows_our_block_message(pgw, upstream, marker):
    from google import genai
    from google.genai import errors, types
    client = genai.Client(api_key="AIza-test", http_options=types.HttpOptions(
        client_args={"proxy": proxy_as(pgw, "bob"), "verify": ssl.create_default_context(cafile=str(pgw.ca))},
        timeout=30_000))
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="gemini-2.5-flash", contents=marker)
    assert e.value.code == 403 and e.value.status == "PERMISSION_DENIED"
    assert BOB_ONLY_OPENAI in e.value.message and reference_in(e.value.message)
    assert not sent_upstream(upstream, marker)


def test_boto3_bedrock_shows_our_block_message(pgw, upstream, marker, monkeypatch):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTNOTAREALKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-not-real")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("bedrock-runtime", region_name="us-east-1", verify=str(pgw.ca),
                          config=Config(proxies={"https": proxy_as(pgw, "bob")}, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        client.converse(modelId="anthropic.claude-3-5-sonnet-20240620-v1:0",
                        messages=[{"role": "user", "content": [{"text": marker}]}])
    error = e.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert BOB_ONLY_OPENAI in error["Message"] and reference_in(error["Message"])
    assert not sent_upstream(upstream, marker)


def test_cohere_sdk_shows_our_block_message(pgw, upstream, marker):
    import cohere
    import httpx
    client = cohere.ClientV2(api_key="co-test", httpx_client=httpx.Client(
        proxy=proxy_as(pgw, "bob"), verify=ssl.create_default_context(cafile=str(pgw.ca)), timeout=30))
    with pytest.raises(cohere.errors.ForbiddenError) as e:
        client.chat(model="command-r", messages=[{"role": "user", "content": marker}])
    assert BOB_ONLY_OPENAI in e.value.body["message"] and reference_in(e.value.body["message"])
    assert not sent_upstream(upstream, marker)


def test_mistral_sdk_shows_our_block_message(pgw, upstream, marker):
    import httpx
    from mistralai.client import Mistral
    from mistralai.client.errors import SDKError
    client = Mistral(api_key="test", client=httpx.Client(
        proxy=proxy_as(pgw, "bob"), verify=ssl.create_default_context(cafile=str(pgw.ca)), timeout=30))
    with pytest.raises(SDKError) as e:
        client.chat.complete(model="mistral-small-latest", messages=[{"role": "user", "content": marker}])
    assert "403" in str(e.value) and BOB_ONLY_OPENAI in str(e.value) and reference_in(str(e.value))
    assert not sent_upstream(upstream, marker)


def test_fail_modes_when_the_body_cannot_be_inspected(pgw, upstream, marker):
    """An opaque (binary) body cannot be scanned: the fail-closed rule blocks, the fail-open rule is skipped, and
    the audit says which, with inspection 'unparsed'. (Malformed JSON is refused whatever the fail modes:
    tests/test_evasion.py.)"""
    upstream.route("/v2/chat", lambda rec: Reply(400, b'{"message": "bad json"}'))
    broken = b"\x00\x01\x02 opaque " + marker.encode()
    with http_client(pgw, "alice") as client:
        closed = client.post("https://api.mistral.ai/v1/chat/completions", content=broken,
                             headers={"content-type": "application/octet-stream"})
        opened = client.post("https://api.cohere.com/v2/chat", content=broken,
                             headers={"content-type": "application/octet-stream"})
    # the user is told the request could not be checked, not the rule's message (which speaks of keys found)
    message = closed.json()["error"]["message"]
    assert closed.status_code == 403 and "cannot read this request's format" in message
    assert "must be inspected for keys" not in message
    assert opened.status_code == 400 and opened.json() == {"message": "bad json"}  # forwarded: the upstream's answer
    [c] = wait_for_events(pgw, lambda ev: ev["service"] == "mistral" and ev["request_bytes"] == len(broken)
                          and ev["user"] == "alice")
    assert (c["decision"], c["rule_id"], c["inspection"]) == ("block", "keys-to-mistral-fail-closed", "unparsed")
    assert "inspection unparsed, fail closed" in c["reason"]
    [o] = wait_for_events(pgw, lambda ev: ev["service"] == "cohere" and ev["request_bytes"] == len(broken)
                          and ev["user"] == "alice")
    assert (o["decision"], o["inspection"], o["status"]) == ("allow", "unparsed", 400)
    assert "rule keys-to-cohere-fail-open not applied: inspection unparsed (fail open)" in o["reason"]


# --- hot reload -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rgw(tmp_path_factory, upstream, test_ca):
    """A gateway of its own: the reload test rewrites its rules."""
    base = tmp_path_factory.mktemp("reload-gw")
    rules = write_rules(base / "rules", "version: 1\n")
    gw = GatewayProcess(base / "data", {h: upstream.port for h in AI_HOSTS + PLAIN_HOSTS}, test_ca.ca_pem,
                        rules=rules)
    gw.rules = rules
    yield gw
    gw.stop()


def wait_until(predicate, timeout: float = 90, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_rules_reload_under_live_traffic(rgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("live"))
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic():  # one kept-alive connection the whole time: reloads must not drop it
        client = openai.OpenAI(api_key="sk", http_client=http_client(rgw), max_retries=0)
        while not stop.is_set():
            try:
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": marker}])
                outcomes.append("ok")
            except openai.PermissionDeniedError as e:
                outcomes.append("blocked" if "gpt-4o is paused" in str(e) else f"wrong block: {e}")
            except Exception as e:  # noqa: BLE001 - any other failure is what this test hunts
                outcomes.append(f"failed: {type(e).__name__}: {e}")

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        wait_until(lambda: outcomes.count("ok") >= 3, what="traffic before the change")
        good = """
            version: 1
            rules:
              - id: pause-gpt-4o
                when: {models: [gpt-4o]}
                action: block
                message: gpt-4o is paused.
        """
        (rgw.rules / "policy.yaml").write_text(textwrap.dedent(good).lstrip())
        wait_until(lambda: "blocked" in outcomes, what="the new rule to take effect")
        # a broken edit is refused: the last good rules stay active
        (rgw.rules / "policy.yaml").write_text("version: 1\nrules:\n  - id: x\n    action: block\n    when:\n"
                                               "      services: [no-such-service]\n")
        status = wait_until(lambda: rgw.gateway_cli("rules", "status", check=False)
                            if "REFUSED" in rgw.gateway_cli("rules", "status", check=False).stdout else None,
                            what="the refused edit in rules status")
        assert status.returncode == 1
        assert f"{rgw.rules / 'policy.yaml'}:6: rule 'x': unknown service 'no-such-service'" in status.stdout
        assert "rules change refused" in rgw.output()
        seen = len(outcomes)
        wait_until(lambda: len(outcomes) >= seen + 3, what="traffic after the refused edit")
        assert outcomes[-1] == "blocked"  # still the last good policy
        # deleting the policy is refused too: enforcement must not quietly stop
        (rgw.rules / "policy.yaml").unlink()
        wait_until(lambda: "file removed" in rgw.gateway_cli("rules", "status", check=False).stdout,
                   what="the removed file in rules status")
        seen = len(outcomes)
        wait_until(lambda: len(outcomes) >= seen + 3, what="traffic after the removal")
        assert outcomes[-1] == "blocked"
        # undoing the broken edits clears the error
        (rgw.rules / "policy.yaml").write_text(textwrap.dedent(good).lstrip())
        wait_until(lambda: rgw.gateway_cli("rules", "status", check=False).returncode == 0,
                   what="rules status to be clean again")
    finally:
        stop.set()
        thread.join(30)
    failures = [o for o in outcomes if o not in ("ok", "blocked")]
    assert not failures, failures
    first_block = outcomes.index("blocked")
    assert "ok" not in outcomes[first_block:]  # once applied, applied to every later request


def test_sso_header_names_the_user_and_others_are_known_by_address(rgw, upstream, marker):
    """Without proxy authentication: the SSO proxy's header (trusted from 127.0.0.1 in this identity.yaml) names
    the user and is removed before forwarding; a request without it is known by its address."""
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"sso {marker}"}]}
    with http_client(rgw) as client:
        assert client.post("https://api.openai.com/v1/chat/completions", json=body,
                           headers={"X-Authenticated-User": "carol"}).status_code == 200
        anonymous = dict(body, messages=[{"role": "user", "content": f"anon {marker}"}])
        assert client.post("https://api.openai.com/v1/chat/completions", json=anonymous).status_code == 200
    [rec] = [r for r in upstream.requests if f"sso {marker}".encode() in r.body]
    assert "x-authenticated-user" not in rec.headers
    [sso] = wait_for_events(rgw, lambda ev: f"sso {marker}" in ev["prompt"])
    [anon] = wait_for_events(rgw, lambda ev: f"anon {marker}" in ev["prompt"])
    assert sso["user"] == "carol"
    assert (anon["user"], anon["client_addr"]) == ("", "127.0.0.1")


def raw_chat(gw, source: str, text: str, headers: str = "") -> bytes:
    """A chat completion from a chosen loopback source address (httpx cannot bind one behind a proxy)."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    raw = socket.socket()
    raw.bind((source, 0))
    raw.settimeout(30)
    raw.connect(("127.0.0.1", gw.port))
    raw.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    with ssl.create_default_context(cafile=str(gw.ca)).wrap_socket(raw, server_hostname="api.openai.com") as tls:
        tls.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n{headers}"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    f"{body}".encode())
        response = b""
        while data := tls.recv(4096):
            response += data
    return response


def test_sso_header_from_an_untrusted_address_is_ignored_and_stripped(rgw, upstream, marker):
    """Anyone can send the header: from 127.0.0.2 (not the SSO proxy's 127.0.0.1) it names nobody."""
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    assert raw_chat(rgw, "127.0.0.2", f"spoof {marker}", "X-Authenticated-User: ceo\r\n").startswith(b"HTTP/1.1 200")
    [rec] = [r for r in upstream.requests if f"spoof {marker}".encode() in r.body]
    assert "x-authenticated-user" not in rec.headers
    [event] = wait_for_events(rgw, lambda ev: f"spoof {marker}" in ev["prompt"])
    assert (event["user"], event["client_addr"]) == ("", "127.0.0.2")
    assert "identity header X-Authenticated-User from untrusted address 127.0.0.2 ignored" in rgw.output()


def test_network_map_names_a_client_by_its_address(rgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("ok"))
    assert raw_chat(rgw, "127.0.0.3", f"ci {marker}").startswith(b"HTTP/1.1 200")
    [event] = wait_for_events(rgw, lambda ev: f"ci {marker}" in ev["prompt"])
    assert (event["user"], event["groups"], event["client_addr"]) == ("build-server", ["ci"], "127.0.0.3")


# --- gateway rules check / test ---------------------------------------------------------------------------------

def gateway(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=REPO,
                          input=stdin, timeout=120)


def test_rules_check_prints_every_broken_file(tmp_path):
    folder = write_rules(tmp_path / "rules")
    (folder / "policy.yaml").write_text("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n"
                                        "      models: [\"re:gpt-(\"]\n")
    (folder / "identity.yaml").write_text("version: 1\nnetworks:\n  - {cidr: 10.0.0.0/33}\n")
    result = gateway("rules", "check", str(folder))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{folder / 'policy.yaml'}:6: rule 'a': bad regular expression 're:gpt-('")
    assert lines[1].startswith(f"{folder / 'identity.yaml'}:3: network: bad CIDR '10.0.0.0/33'")
    (folder / "endpoints.yaml").write_text("version: 1\nservices:\n  - {id: x, name: X, category: nope, "
                                           "hosts: [x.example.com]}\n")
    result = gateway("rules", "check", str(folder))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(f"{folder / 'endpoints.yaml'}:3: service 'x': unknown category")


def test_broken_policy_stops_startup_with_its_line(tmp_path):
    folder = write_rules(tmp_path / "rules", "version: 1\nrules:\n  - {id: a, action: nope}\n")
    result = gateway("run", "--data-dir", str(tmp_path / "data"), "--listen-port", "0", "--rules", str(folder))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"gateway: error: {folder / 'policy.yaml'}:3: rule 'a': 'action' must be one "
                                     f"of allow, monitor, redact, strip, warn, block, not 'nope'")


def test_rules_check_accepts_the_shipped_rules():
    result = gateway("rules", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok (" in result.stdout


def test_rules_test_prints_decision_rule_and_body(tmp_path):
    folder = write_rules(tmp_path / "rules")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "o1-mini", "messages": [{"role": "user", "content": "hello"}]}))
    url = "https://api.openai.com/v1/chat/completions"
    out = gateway("rules", "test", "--rules", str(folder), "--user", "bob", "--url", url, "--body", str(body))
    assert out.returncode == 0, out.stderr
    assert "decision:  block  (rule: o1-reserved)" in out.stdout
    assert "subject:   bob from 127.0.0.1; groups: sales" in out.stdout
    assert "nothing is sent" in out.stdout and "o1 models are reserved" in out.stdout
    out = gateway("rules", "test", "--rules", str(folder), "--user", "alice", "--url", url, "--body", str(body))
    assert "decision:  allow  (rule: o1-for-research)" in out.stdout
    assert '"model": "o1-mini"' in out.stdout  # the body that goes upstream
    out = gateway("rules", "test", "--rules", str(folder), "--user", "bob", "--group", "research", "--url", url,
                  "--body", str(body))
    assert "(rule: o1-for-research)" in out.stdout
    out = gateway("rules", "test", "--rules", str(folder), "--url", "https://example.org/", "--body", str(body))
    assert "not in the AI endpoint catalog" in out.stdout



def test_rules_test_runs_the_dlp_scanner_in_process(tmp_path):
    pytest.importorskip("dlp.scanner")
    if not (REPO / "rules" / "recognizers.yaml").exists():
        pytest.skip("no shipped recognizers.yaml yet")
    folder = write_rules(tmp_path / "rules", """
        version: 1
        rules: [{id: pii, when: {findings: [EMAIL_ADDRESS]}, action: redact}]
    """)
    (folder / "recognizers.yaml").write_bytes((REPO / "rules" / "recognizers.yaml").read_bytes())
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "gpt-4o", "messages": [{"role": "user",
                                                                 "content": "Write to jane.doe@acme-corp.com"}]}))
    out = gateway("rules", "test", "--rules", str(folder), "--url", "https://api.openai.com/v1/chat/completions",
                  "--body", str(body))
    assert out.returncode == 0, out.stderr
    assert re.search(r"^  EMAIL_ADDRESS +score", out.stdout, re.MULTILINE)
    assert "decision:  redact  (rule: pii)" in out.stdout
    upstream_part = out.stdout.split("upstream:", 1)[1]
    assert "jane.doe@acme-corp.com" not in upstream_part  # neither the findings nor the upstream body show it
    assert "jane.doe@acme-corp.com" not in out.stdout.split("upstream:", 1)[0]


def test_rules_test_explains_a_warning(tmp_path):
    folder = write_rules(tmp_path / "rules")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}))
    out = gateway("rules", "test", "--rules", str(folder), "--user", "alice", "--url",
                  "https://api.openai.com/v1/chat/completions", "--body", str(body))
    assert "decision:  warn  (rule: old-models)" in out.stdout
    assert "x-ai-gateway-warning: Warning by the AI gateway (policy rule 'old-models'): gpt-3.5" in out.stdout


def _tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": "runs things",
                                             "parameters": {"type": "object", "properties": {}}}}


def test_a_request_offering_a_forbidden_tool_is_blocked_before_it_leaves(pgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"ok {marker}"))
    client = openai_as(pgw, "alice")
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"{marker} list"}],
                                       tools=[_tool("read_file"), _tool("exec_python")])
    assert "Agents may not be given shell tools." in str(e.value)
    assert not sent_upstream(upstream, f"{marker} list")
    [event] = wait_for_events(pgw, lambda ev: ev["event_id"] == reference_in(str(e.value)))
    assert (event["decision"], event["rule_id"]) == ("block", "no-shell-tools")
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"{marker} ok"}],
                                            tools=[_tool("read_file")])
    assert answer.choices[0].message.content == f"ok {marker}" and sent_upstream(upstream, f"{marker} ok")


def test_a_conversation_carrying_a_forbidden_call_is_blocked_by_its_arguments(pgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"ok {marker}"))

    def history(command: str) -> list[dict]:
        call = {"id": "call_1", "type": "function",
                "function": {"name": "run_command", "arguments": json.dumps({"command": command})}}
        return [{"role": "user", "content": f"{marker} clean up"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "done"}]

    client = openai_as(pgw, "alice")
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="gpt-4o", messages=history("sudo rm  -rf /var/lib/app"),
                                       tools=[_tool("run_command")])
    assert "Destructive commands are not allowed." in str(e.value) and not sent_upstream(upstream, marker)
    answer = client.chat.completions.create(model="gpt-4o", messages=history("ls -la /var/lib/app"),
                                            tools=[_tool("run_command")])
    assert answer.choices[0].message.content == f"ok {marker}"


def test_a_forbidden_tool_is_stripped_and_the_request_goes_on_with_the_others(pgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"ok {marker}"))
    answer = openai_as(pgw, "alice").chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{marker} tidy"}],
        tools=[_tool("read_file"), _tool("delete_repo"), _tool("list_dir")])
    assert answer.choices[0].message.content == f"ok {marker}"
    [sent] = [r for r in upstream.requests if marker.encode() in r.body]
    assert [t["function"]["name"] for t in json.loads(sent.body)["tools"]] == ["read_file", "list_dir"]
    [event] = wait_for_events(pgw, lambda ev: marker in ev["prompt"])
    assert (event["decision"], event["rule_id"]) == ("strip", "no-deleting-tools")
    assert "stripped tools delete_repo from the request" in event["reason"]


def test_anthropic_tools_are_stripped_too_and_an_empty_list_goes_with_its_choice(pgw, upstream, marker):
    upstream.route("/v1/messages", lambda rec: anthropic_reply(f"ok {marker}"))
    tools = [{"name": "delete_branch", "input_schema": {"type": "object"}}]
    answer = anthropic_as(pgw, "alice").messages.create(
        model="claude-test-model", max_tokens=10, messages=[{"role": "user", "content": f"{marker} go"}],
        tools=tools, tool_choice={"type": "auto"})
    assert answer.content[0].text == f"ok {marker}"
    [sent] = [r for r in upstream.requests if marker.encode() in r.body]
    assert "tools" not in json.loads(sent.body) and "tool_choice" not in json.loads(sent.body)
    with pytest.raises(anthropic.PermissionDeniedError):  # insisting on the stripped tool: refused, not altered
        anthropic_as(pgw, "alice").messages.create(
            model="claude-test-model", max_tokens=10, messages=[{"role": "user", "content": f"{marker} must"}],
            tools=tools, tool_choice={"type": "tool", "name": "delete_branch"})
    assert not sent_upstream(upstream, f"{marker} must")
