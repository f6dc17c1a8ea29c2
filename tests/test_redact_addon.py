"""The redact stage on real mitmproxy flows: the request body is rewritten in place or the request is blocked."""

from __future__ import annotations

import json

import pytest
from mitmproxy.test import tflow

import providers
from addons.inspect import SHIPPED_RULES
from addons.redact import Redact
from core.catalog import Catalog
from core.exchange import Attachment
from core.interaction import KEY, Interaction
from dlp.scanner import Finding
from policy.ruleset import ENDPOINTS

EMAIL = "jane.doe@acme-corp.com"


@pytest.fixture(scope="module")
def openai_service():
    return Catalog.load(SHIPPED_RULES / ENDPOINTS).match("api.openai.com").service


def flow_for(service, body: dict, findings: list[Finding], *, reversible: bool = False, entities=()):
    f = tflow.tflow()
    f.request.host, f.request.path, f.request.method = "api.openai.com", "/v1/chat/completions", "POST"
    f.request.headers["content-type"] = "application/json"
    f.request.content = json.dumps(body).encode()
    req = providers.HttpRequest.from_url_parts("POST", "api.openai.com", "/v1/chat/completions",
                                               dict(f.request.headers), f.request.content)
    parsed = providers.parse_request(req, "openai", service.formats)
    it = Interaction(service=service, client_addr="127.0.0.1", host="api.openai.com", method="POST",
                     path="/v1/chat/completions", exchange=parsed.exchange, findings=findings, decision="redact",
                     redact_entities=list(entities), reversible=reversible)
    f.metadata[KEY], it.stages.parsed, it.stages.body = it, parsed, parsed.body  # as Extract leaves them
    return f, it


def email_findings(text: str, part: int) -> list[Finding]:
    out, pos = [], 0
    while (i := text.find(EMAIL, pos)) >= 0:
        out.append(Finding("EMAIL_ADDRESS", i, i + len(EMAIL), 1.0, part, "test"))
        pos = i + 1
    return out


def test_body_is_rewritten_in_place_and_stays_valid_json(openai_service):
    text = f"mail {EMAIL} and {EMAIL} \"quoted\" \\ ok"
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0.5}
    f, it = flow_for(openai_service, body, email_findings(text, 0), reversible=True)
    Redact().request(f)
    sent = json.loads(f.request.content)
    assert EMAIL not in f.request.text
    assert sent["messages"][0]["content"] == 'mail <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_1> "quoted" \\ ok'
    assert sent["temperature"] == 0.5 and sent["model"] == "m"
    assert f.request.headers["content-length"] == str(len(f.request.raw_content))
    assert it.stages.placeholders is not None and f.request.headers["accept-encoding"] == "identity"
    assert f.response is None and it.decision == "redact" and "2 EMAIL_ADDRESS" in it.reason


def test_only_the_decided_entities_are_redacted(openai_service):
    text = f"mail {EMAIL}"
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    f, it = flow_for(openai_service, body, email_findings(text, 0), entities=["PHONE_NUMBER"])
    before = f.request.content
    Redact().request(f)
    assert f.request.content == before and f.response is None


def test_compressed_request_is_re_encoded(openai_service):
    text = f"mail {EMAIL}"
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    f, it = flow_for(openai_service, body, email_findings(text, 0))
    f.request.encode("gzip")
    Redact().request(f)
    assert f.request.headers["content-encoding"] == "gzip"
    assert json.loads(f.request.get_content())["messages"][0]["content"] == "mail <EMAIL_ADDRESS_1>"


def test_a_finding_without_a_json_path_blocks_instead_of_leaking(openai_service):
    """Text extracted from an upload has no JSON string to rewrite: a finding there blocks the request (fail
    closed), the client is told in its provider's error shape, and the audit says why."""
    body = {"model": "m", "messages": [{"role": "user", "content": "see the file"}]}
    f, it = flow_for(openai_service, body, [])
    it.exchange.messages[0].attachments.append(Attachment("file", "people.csv", "text/csv", 40,
                                                          text=f"owner,{EMAIL}", inspected=True))
    parts = it.exchange.request_parts()
    [upload] = [i for i, p in enumerate(parts) if p.source == "upload"]
    assert parts[upload].path is None
    it.findings = email_findings(parts[upload].text, upload)
    before = f.request.content
    Redact().request(f)
    assert f.request.content == before  # nothing half-redacted either
    assert f.response is not None and f.response.status_code == 403
    assert EMAIL not in f.response.text and it.event_id in f.response.text
    assert json.loads(f.response.content)["error"]["message"].startswith("Blocked by the AI gateway")
    assert it.decision == "block" and "cannot be rewritten in place" in it.reason


def test_a_body_that_is_not_json_blocks(openai_service):
    text = f"mail {EMAIL}"
    f, it = flow_for(openai_service, {"model": "m", "messages": [{"role": "user", "content": text}]},
                     email_findings(text, 0))
    f.request.content = b"not json " + EMAIL.encode()
    it.stages.body = None  # Extract leaves no canonical parse of a body that is not JSON
    Redact().request(f)
    assert f.response.status_code == 403 and it.decision == "block"


def test_sigv4_signed_request_is_blocked_not_broken(openai_service):
    """A SigV4 signature covers the body's hash: redacting would make AWS refuse the request with a signature error
    the user cannot understand, so the gateway blocks it with its own message instead."""
    text = f"mail {EMAIL}"
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    f, it = flow_for(openai_service, body, email_findings(text, 0))
    f.request.headers["authorization"] = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/us-east-1/bedrock/"
                                          "aws4_request, SignedHeaders=host;x-amz-date, Signature=abc")
    Redact().request(f)
    assert f.response is not None and f.response.status_code == 403
    assert it.decision == "block" and "SigV4" in it.reason
    assert EMAIL in f.request.text  # nothing was rewritten, and nothing was sent


def test_a_value_also_sent_in_an_unscanned_field_blocks_instead_of_leaking(openai_service):
    """DLP reads the messages; the same address in the OpenAI `user` field or in metadata would go out raw."""
    text = f"mail {EMAIL}"
    body = {"model": "m", "user": EMAIL, "metadata": {"owner": EMAIL},
            "messages": [{"role": "user", "content": text}]}
    f, it = flow_for(openai_service, body, email_findings(text, 0))
    Redact().request(f)
    assert f.response is not None and f.response.status_code == 403
    assert it.decision == "block" and "EMAIL_ADDRESS also present in fields DLP does not read" in it.reason


def test_buffered_answer_is_restored_and_a_compressed_bomb_is_not_expanded(openai_service):
    import gzip

    from mitmproxy.test import taddons, tutils

    from addons.extract import Extract

    text = f"mail {EMAIL}"
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    with taddons.context(Extract()) as tctx:
        tctx.options.gateway_max_decoded_bytes = 1_000_000
        f, it = flow_for(openai_service, body, email_findings(text, 0), reversible=True)
        Redact().request(f)
        answer = {"choices": [{"message": {"content": "Wrote to <EMAIL_ADDRESS_1>."}}]}
        f.response = tutils.tresp(content=gzip.compress(json.dumps(answer).encode()))
        f.response.headers["content-encoding"] = "gzip"
        Redact().response(f)
        assert json.loads(f.response.content)["choices"][0]["message"]["content"] == f"Wrote to {EMAIL}."

        g, it2 = flow_for(openai_service, body, email_findings(text, 0), reversible=True)
        Redact().request(g)
        g.response = tutils.tresp(content=gzip.compress(b'{"a": "<EMAIL_ADDRESS_1>' + b" " * 5_000_000 + b'"}'))
        g.response.headers["content-encoding"] = "gzip"
        raw = g.response.raw_content
        Redact().response(g)
        assert g.response.raw_content == raw  # left as it came, not expanded
        assert any("placeholders not restored" in w for w in it2.exchange.warnings)
