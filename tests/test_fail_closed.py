"""A stage that crashes must not let the request out: mitmproxy would log the error and forward it undecided."""

from __future__ import annotations

import json
from pathlib import Path

from mitmproxy.test import tflow

import providers
from addons.decide import Decide
from addons.redact import Redact
from core.catalog import Catalog
from core.interaction import KEY, Interaction
from policy.engine import Request, findings_matter, subject_of
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
    f.metadata[KEY], it.stages.parsed, it.stages.body = it, parsed, parsed.body  # as Extract leaves them
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


def test_a_prompt_sent_before_its_scan_is_judged_again_on_its_findings_and_a_contradiction_is_reported(
        tmp_path, caplog):
    """A prompt the inspect stage let go before its scan ended (`deferred`) is decided on no findings, by the policy
    that found its findings could not matter; when the answer ends the findings are judged by that same policy for
    the audit. Monitored rules then show, and may take the credit from another monitored rule; an enforced rule
    that would have acted means the prefilter missed an entity: the audit and the log say so."""
    from dlp.scanner import Finding
    from policy import Policy, Rule
    from policy import load as load_rules

    (tmp_path / "policy.yaml").write_text("""
version: 1
rules:
  - {id: block-keys, when: {findings: ["*_KEY"]}, action: block}
  - {id: watch-mail, when: {findings: [EMAIL_ADDRESS]}, action: redact, mode: monitor}
  - {id: watch-gpt4, when: {models: ["gpt-4*"]}, action: block, mode: monitor}
""")
    for found, decision, rule, said in (
            (Finding("EMAIL_ADDRESS", 0, 2, 1.0), "monitor", "watch-mail", "rule watch-mail would redact"),
            (Finding("AWS_ACCESS_KEY", 0, 2, 1.0), "monitor", "watch-gpt4", "BUG: on the findings of the scan that "
                                                                            "ran after the decision, the policy says "
                                                                            "block")):
        f, it, catalog = ai_flow({"inspection": "deferred"})
        policy = load_rules(tmp_path / "policy.yaml", catalog)
        request = Request(it.service, it.exchange, (), headers=f.request.headers)
        assert not findings_matter(policy, subject_of(it), request, frozenset({"EMAIL_ADDRESS"}))
        it.stages.sent_under = policy  # as the inspect stage records it when it lets the request go unscanned
        decide = Decide()
        decide.policy = Policy((Rule("block-everything", 1, "block"),))  # a rules reload right then
        decide.request(f)
        assert f.response is None and (it.decision, it.rule_id) == ("monitor", "watch-gpt4")
        assert it.reason.endswith("; decided before the DLP scan ended (no rule in force acts on what it could find)")
        it.inspection, it.findings = "inspected", [found]
        decide.response(f)
        assert (it.decision, it.rule_id) == (decision, rule)
        assert said in it.reason and "rule watch-gpt4 would block" in it.reason
        assert "decided before the DLP scan ended" in it.reason
    assert caplog.text.count("BUG") == 1
