"""A stage that crashes must not let the request out: mitmproxy would log the error and forward it undecided."""

from __future__ import annotations

import json
from pathlib import Path

from mitmproxy.test import tflow

import providers
from addons.decide import Decide
from addons.extract import PARSED_KEY
from addons.redact import Redact
from core.catalog import Catalog
from core.interaction import KEY, Interaction
from policy.ruleset import ENDPOINTS, load_policy

RULES = Path(__file__).resolve().parents[1] / "rules"


def ai_flow(it_kwargs: dict):
    catalog = Catalog.load(RULES / ENDPOINTS)
    service = catalog.match("api.openai.com").service
    f = tflow.tflow()
    f.request.host, f.request.path, f.request.method = "api.openai.com", "/v1/chat/completions", "POST"
    f.request.headers["content-type"] = "application/json"
    f.request.content = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = providers.HttpRequest.from_url_parts("POST", "api.openai.com", f.request.path, dict(f.request.headers),
                                               f.request.content)
    parsed = providers.parse_request(req, "openai", service.formats)
    it = Interaction(service=service, client_addr="127.0.0.1", host="api.openai.com", method="POST",
                     path=f.request.path, exchange=parsed.exchange, **it_kwargs)
    f.metadata[KEY], f.metadata[PARSED_KEY] = it, parsed
    return f, it, catalog


def test_a_policy_stage_that_crashes_blocks_the_request():
    f, it, catalog = ai_flow({"inspection": "inspected", "groups": None})  # a broken identity stage's output
    decide = Decide()
    decide.policy = load_policy(RULES, catalog)
    decide.request(f)
    assert f.response is not None and f.response.status_code == 403
    assert it.decision == "block" and "policy decision failed (TypeError)" in it.reason
    assert b"could not apply its policy" in f.response.content


def test_a_redaction_that_crashes_blocks_the_request():
    f, it, _ = ai_flow({"inspection": "inspected", "decision": "redact", "findings": [object()]})
    Redact().request(f)
    assert f.response is not None and f.response.status_code == 403
    assert it.decision == "block" and "redaction failed" in it.reason


def test_an_interaction_no_stage_inspected_says_so():
    _, it, _ = ai_flow({})
    assert it.inspection == "pending" and it.to_event("redacted").inspection == "pending"
