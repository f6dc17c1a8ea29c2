"""The policy engine: precedence, every condition and action, monitor mode, fail modes, the shadow-AI default."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from core.catalog import Catalog, Service
from core.exchange import Attachment, Exchange, Message, TextPart
from policy import Request, Subject, decide
from policy import load as load_policy

OPENAI = Service("openai", "OpenAI API", "OpenAI", "api", sanctioned=True, hosts=("api.openai.com",),
                 formats=("openai",))
AZURE = Service("azure-openai", "Azure OpenAI", "Microsoft", "api", sanctioned=True, hosts=("*.openai.azure.com",))
CHATGPT = Service("chatgpt", "ChatGPT", "OpenAI", "chat", hosts=("chatgpt.com",))
ANTHROPIC = Service("anthropic", "Anthropic API", "Anthropic", "api", hosts=("api.anthropic.com",))
DEEPSEEK = Service("deepseek", "DeepSeek API", "DeepSeek", "api", hosts=("api.deepseek.com",))
CATALOG = Catalog([OPENAI, AZURE, CHATGPT, ANTHROPIC, DEEPSEEK])

ALICE = Subject("alice", frozenset({"research"}), "10.1.2.3")
BOB = Subject("bob", frozenset({"sales"}), "192.168.7.9")


@dataclass
class F:  # the shape of dlp.scanner.Finding the engine reads
    entity: str
    score: float = 0.9
    start: int = 0
    end: int = 1
    part: int = 0
    recognizer: str = "test"


def policy(tmp_path, text: str):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return load_policy(path, CATALOG)


def chat(model="gpt-4o", text="hello", operation="chat.completions", attachments=()) -> Exchange:
    return Exchange(operation=operation, model=model,
                    messages=[Message("user", [TextPart(text, ("messages", 0, "content"))], list(attachments))])


def req(service=OPENAI, exchange=None, findings=(), inspection="inspected") -> Request:
    return Request(service, exchange or chat(), list(findings), inspection)


def test_first_matching_rule_wins(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: block-deepseek, when: {services: [deepseek]}, action: block}
          - {id: allow-api, when: {categories: [api]}, action: allow}
          - {id: block-all, action: block}
    """)
    assert decide(p, BOB, req(DEEPSEEK)).rule == "block-deepseek"
    d = decide(p, BOB, req(OPENAI))
    assert (d.action, d.rule) == ("allow", "allow-api")
    assert decide(p, BOB, req(CHATGPT)).rule == "block-all"
    assert "rule allow-api: allow" in d.reason


def test_model_allowed_for_one_group_only(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - id: o1-for-research
            who: {groups: [research]}
            when: {models: ["o1*"]}
            action: allow
          - id: o1-for-nobody-else
            when: {models: ["o1*"]}
            action: block
            message: o1 is reserved for the research team.
    """)
    assert decide(p, ALICE, req(exchange=chat("o1-preview"))).action == "allow"
    d = decide(p, BOB, req(exchange=chat("O1-mini")))  # globs ignore case
    assert (d.action, d.rule, d.message) == ("block", "o1-for-nobody-else", "o1 is reserved for the research team.")
    assert decide(p, BOB, req(exchange=chat("gpt-4o"))).action == "allow"


def test_subject_conditions_users_groups_sources(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: by-user, who: {users: ["*@contractor.example"]}, action: block}
          - {id: by-source, who: {sources: [192.168.0.0/16, "2001:db8::/32"]}, action: warn}
          - {id: by-both, who: {groups: [research], sources: [10.0.0.0/8]}, action: monitor}
    """)
    assert decide(p, Subject("eve@contractor.example", frozenset(), "10.9.9.9"), req()).rule == "by-user"
    assert decide(p, BOB, req()).rule == "by-source"
    assert decide(p, Subject("", frozenset(), "::ffff:192.168.1.1"), req()).rule == "by-source"  # dual stack
    assert decide(p, Subject("", frozenset(), "2001:db8::5"), req()).rule == "by-source"
    assert decide(p, ALICE, req()).rule == "by-both"
    # every key must hold: research but from elsewhere does not match by-both
    assert decide(p, Subject("alice", frozenset({"research"}), "172.16.0.1"), req()).rule == "defaults"


def test_service_category_sanctioned_and_operation_conditions(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: no-uploads, when: {operations: ["upload*", "files.*"]}, action: block}
          - {id: sanctioned-only, when: {sanctioned: false, categories: [api]}, action: block}
          - {id: chat-apps, when: {categories: [chat]}, action: warn}
    """)
    assert decide(p, BOB, req(exchange=chat(operation="files.create"))).rule == "no-uploads"
    assert decide(p, BOB, req(ANTHROPIC)).rule == "sanctioned-only"
    assert decide(p, BOB, req(AZURE)).action == "allow"
    assert decide(p, BOB, req(CHATGPT)).rule == "chat-apps"


def test_sizes_and_attachment_types(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: big-prompt, when: {prompt_chars: {min: 10k}}, action: block}
          - {id: big-files, when: {attachment_bytes: {max: 5MB, min: 1MB}}, action: warn}
          - {id: no-pdf, when: {attachment_types: [application/pdf]}, action: block}
          - {id: images, when: {attachment_types: ["image"]}, action: monitor}
    """)
    assert decide(p, BOB, req(exchange=chat(text="x" * 10_000))).rule == "big-prompt"
    assert decide(p, BOB, req(exchange=chat(text="x" * 9_999))).rule == "defaults"
    big = Attachment("file", "a.bin", "application/octet-stream", size=2_000_000)
    assert decide(p, BOB, req(exchange=chat(attachments=[big]))).rule == "big-files"
    pdf = Attachment("file", "a.pdf", "application/pdf", size=100)
    assert decide(p, BOB, req(exchange=chat(attachments=[pdf]))).rule == "no-pdf"
    png = Attachment("image", "", "image/png", size=100)
    assert decide(p, BOB, req(exchange=chat(attachments=[png]))).action == "monitor"


def test_findings_entities_counts_and_scores(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - id: secrets
            when: {findings: {entities: ["AWS_*", GITHUB_TOKEN], min_score: 0.6}}
            action: block
          - id: many-emails
            when: {findings: {entities: [EMAIL_ADDRESS], min_count: 3}}
            action: block
          - {id: any-finding, when: {findings: {}}, action: monitor}
    """)
    assert decide(p, BOB, req(findings=[F("AWS_ACCESS_KEY", 0.9)])).rule == "secrets"
    assert decide(p, BOB, req(findings=[F("AWS_ACCESS_KEY", 0.5)])).rule == "any-finding"  # below min_score
    assert decide(p, BOB, req(findings=[F("EMAIL_ADDRESS")] * 2)).rule == "any-finding"
    assert decide(p, BOB, req(findings=[F("EMAIL_ADDRESS")] * 3)).rule == "many-emails"
    assert decide(p, BOB, req(findings=[])).rule == "defaults"


def test_redact_lists_the_entities_found(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - id: pii
            when: {findings: [EMAIL_ADDRESS, PHONE_NUMBER, US_SSN]}
            action: redact
            redact: {reversible: true}
          - id: ssn-only
            action: redact
            redact: {entities: [US_SSN]}
    """)
    d = decide(p, BOB, req(findings=[F("PHONE_NUMBER"), F("EMAIL_ADDRESS"), F("EMAIL_ADDRESS"), F("IP_ADDRESS")]))
    assert (d.action, d.rule, d.redact_entities, d.reversible) == ("redact", "pii", ["EMAIL_ADDRESS",
                                                                                   "PHONE_NUMBER"], True)
    assert "redact EMAIL_ADDRESS, PHONE_NUMBER (reversible)" in d.reason
    # a redact rule with nothing of its own to redact does not match: the next rules still apply
    assert decide(p, BOB, req(findings=[F("IP_ADDRESS")])).rule == "defaults"


def test_redact_rule_without_entities_redacts_every_finding(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules: [{id: scrub, action: redact}]
    """)
    d = decide(p, BOB, req(findings=[F("IBAN_CODE"), F("PERSON")]))
    assert (d.action, d.redact_entities, d.reversible) == ("redact", ["IBAN_CODE", "PERSON"], False)


def test_monitor_mode_records_what_it_would_do_and_reading_goes_on(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: new-block, when: {services: [anthropic]}, action: block, mode: monitor}
          - {id: pii, when: {findings: [EMAIL_ADDRESS]}, action: redact, mode: monitor}
          - {id: warn-anthropic, when: {services: [anthropic]}, action: warn}
    """)
    d = decide(p, BOB, req(ANTHROPIC))
    assert (d.action, d.rule) == ("warn", "warn-anthropic")  # the monitored block changed nothing
    assert d.reason == "rule warn-anthropic: warn; rule new-block would block (mode: monitor)"
    d = decide(p, BOB, req(OPENAI, findings=[F("EMAIL_ADDRESS")]))
    assert (d.action, d.mode, d.rule) == ("monitor", "monitor", "pii")  # allowed, flagged for the audit
    assert d.redact_entities == []  # nothing is redacted in monitor mode
    assert "rule pii would redact EMAIL_ADDRESS (mode: monitor)" in d.reason


def test_fail_open_skips_the_rule_and_says_so(tmp_path):
    p = policy(tmp_path, """
        version: 1
        defaults: {fail: open}
        rules:
          - {id: secrets, when: {findings: [AWS_*]}, action: block}
          - {id: rest, action: monitor}
    """)
    d = decide(p, BOB, req(inspection="timeout"))
    assert (d.action, d.rule, d.fail) == ("monitor", "rest", "")
    assert "rule secrets not applied: inspection timeout (fail open)" in d.reason


def test_fail_closed_blocks_when_inspection_did_not_complete(tmp_path):
    p = policy(tmp_path, """
        version: 1
        defaults: {fail: open}
        rules:
          - {id: secrets, when: {services: [openai], findings: [AWS_*]}, action: block, fail: closed}
          - {id: pii, when: {findings: [EMAIL_ADDRESS]}, action: redact}
    """)
    d = decide(p, BOB, req(OPENAI, inspection="errored"))
    assert (d.action, d.rule, d.fail) == ("block", "secrets", "closed")
    assert d.reason == "rule secrets: block: inspection errored, fail closed"
    # the rule's other conditions still count: not openai, so the fail-closed rule does not apply
    d = decide(p, BOB, req(ANTHROPIC, inspection="errored"))
    assert (d.action, d.fail) == ("allow", "")
    assert "rule pii not applied: inspection errored (fail open)" in d.reason
    # inspected and clean: no block
    assert decide(p, BOB, req(OPENAI)).action == "allow"


def test_fail_modes_per_reason_the_findings_are_incomplete(tmp_path):
    """Closed when the gateway's own DLP failed (an attacker able to cause that must not get past the rule), open
    for a body the gateway did not understand; a reason not named keeps the defaults' mode, and a state the policy
    does not know counts as errored."""
    p = policy(tmp_path, """
        version: 1
        defaults: {fail: {skipped: closed}}
        rules:
          - {id: secrets, when: {findings: [AWS_*]}, action: block, fail: {errored: closed}, message: Key found.}
    """)
    [rule] = p.rules
    assert str(rule.fail) == "{errored: closed, unparsed: open, skipped: closed}"
    d = decide(p, BOB, req(inspection="errored"))
    assert (d.action, d.fail, d.reason) == ("block", "closed", "rule secrets: block: inspection errored, fail closed")
    assert "could not check this request" in d.message and "did not complete in time" in d.message
    d = decide(p, BOB, req(inspection="unparsed"))
    assert (d.action, d.fail) == ("allow", "")
    assert "rule secrets not applied: inspection unparsed (fail open)" in d.reason
    assert decide(p, BOB, req(inspection="skipped")).fail == "closed"  # from the defaults
    assert decide(p, BOB, req(inspection="pending")).fail == "closed"  # unknown: as errored


def test_fail_closed_in_monitor_mode_only_records(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules: [{id: secrets, when: {findings: [AWS_*]}, action: block, fail: closed, mode: monitor}]
    """)
    d = decide(p, BOB, req(inspection="errored"))
    assert d.action == "monitor"
    assert "rule secrets would block: inspection errored, fail closed (mode: monitor)" in d.reason


def test_rules_without_findings_do_not_depend_on_inspection(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules: [{id: no-deepseek, when: {services: [deepseek]}, action: block, fail: closed}]
    """)
    assert decide(p, BOB, req(DEEPSEEK, inspection="errored")).fail == ""
    assert decide(p, BOB, req(OPENAI, inspection="errored")).action == "allow"


def test_shadow_ai_default_applies_to_services_no_rule_names(tmp_path):
    p = policy(tmp_path, """
        version: 1
        defaults: {action: allow, shadow_ai: block, message: Ask IT before using a new AI service.}
        rules:
          - {id: anthropic-for-research, who: {groups: [research]}, when: {services: [anthropic]}, action: allow}
    """)
    d = decide(p, BOB, req(DEEPSEEK))  # not sanctioned, named by no rule
    assert (d.action, d.rule, d.shadow_ai) == ("block", "shadow_ai", True)
    assert d.message == "Ask IT before using a new AI service."
    assert "shadow AI: deepseek is not sanctioned and no rule names it" in d.reason
    assert decide(p, BOB, req(ANTHROPIC)).action == "allow"  # named by a rule: known, the default applies
    assert decide(p, BOB, req(OPENAI)).action == "allow"  # sanctioned in the catalog


def test_shadow_ai_condition_places_the_block_anywhere(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: block-unknown, when: {shadow_ai: true}, action: block}
          - {id: pii, when: {findings: [EMAIL_ADDRESS]}, action: redact}
    """)
    assert decide(p, BOB, req(DEEPSEEK, findings=[F("EMAIL_ADDRESS")])).rule == "block-unknown"
    assert decide(p, BOB, req(OPENAI, findings=[F("EMAIL_ADDRESS")])).rule == "pii"


def test_no_rules_allows(tmp_path):
    p = policy(tmp_path, "version: 1\n")
    d = decide(p, BOB, req(CHATGPT))
    assert (d.action, d.rule) == ("allow", "shadow_ai")


def test_regex_model_patterns(tmp_path):
    p = policy(tmp_path, r"""
        version: 1
        rules: [{id: dated, when: {models: ["re:gpt-4o-\\d{4}-\\d{2}-\\d{2}"]}, action: block}]
    """)
    assert decide(p, BOB, req(exchange=chat("gpt-4o-2024-08-06"))).action == "block"
    assert decide(p, BOB, req(exchange=chat("gpt-4o-2024-08-06-x"))).action == "allow"  # whole value only
    assert decide(p, BOB, req(exchange=chat(""))).action == "allow"  # no model: a model condition fails


@pytest.mark.parametrize("entity_attr", ["entity", "entity_type"])
def test_findings_may_name_entity_either_way(tmp_path, entity_attr):
    p = policy(tmp_path, "version: 1\nrules: [{id: s, when: {findings: [JWT]}, action: block}]\n")
    finding = type("Finding", (), {entity_attr: "JWT", "score": 1.0})()
    assert decide(p, BOB, req(findings=[finding])).action == "block"


def test_header_condition_tells_the_company_workspace_apart(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - id: company-chatgpt
            when: {services: [chatgpt], headers: {ChatGPT-Account-Id: ["ws-acme-*"]}}
            action: allow
          - {id: other-chatgpt, when: {services: [chatgpt]}, action: block}
    """)
    company = Request(CHATGPT, chat(), headers={"chatgpt-account-id": "ws-acme-42"})
    assert decide(p, BOB, company).rule == "company-chatgpt"
    assert decide(p, BOB, Request(CHATGPT, chat(), headers={"chatgpt-account-id": "personal"})).rule == \
        "other-chatgpt"
    assert decide(p, BOB, Request(CHATGPT, chat())).rule == "other-chatgpt"  # no header: no match


def test_an_allow_rule_after_a_monitored_match_is_recorded_as_monitor(tmp_path):
    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: trial-block, when: {models: ["gpt-4o*"]}, action: block, mode: monitor}
          - {id: allow-openai, when: {services: [openai]}, action: allow}
    """)
    d = decide(p, BOB, req(OPENAI))
    assert (d.action, d.rule) == ("monitor", "trial-block")
    assert d.reason == "rule allow-openai: allow; rule trial-block would block (mode: monitor)"


def test_response_rules_wait_for_the_answer_and_count_only_its_findings(tmp_path):
    from core.exchange import RESPONSE_PART
    from policy import decide_response, wants_response_scan

    p = policy(tmp_path, """
        version: 1
        rules:
          - id: keys-in-answers
            when: {models: ["gpt-4o*"], findings: {entities: ["AWS_*"], in: response}}
            action: block
          - id: emails-in-answers
            when: {findings: {entities: [EMAIL_ADDRESS], in: response}}
            action: block
            mode: monitor
    """)
    key_in_prompt, key_in_answer = F("AWS_ACCESS_KEY"), F("AWS_ACCESS_KEY", part=RESPONSE_PART)
    # the request's decision never applies a response rule, even with the same entity in the prompt
    assert decide(p, BOB, req(findings=[key_in_prompt])).rule == "defaults"
    assert wants_response_scan(p, BOB, req()) and wants_response_scan(p, BOB, req(exchange=chat(model="o1")))
    assert decide_response(p, BOB, req(findings=[key_in_prompt])) is None
    d = decide_response(p, BOB, req(findings=[key_in_prompt, key_in_answer]))
    assert (d.action, d.rule) == ("block", "keys-in-answers")
    d = decide_response(p, BOB, req(exchange=chat(model="o1"), findings=[key_in_answer]))
    assert d is None
    d = decide_response(p, BOB, req(findings=[F("EMAIL_ADDRESS", part=RESPONSE_PART)]))
    assert (d.action, d.rule) == ("monitor", "emails-in-answers") and "would block (mode: monitor)" in d.reason
    d = decide_response(p, BOB, req(findings=[key_in_answer], inspection="errored"))
    assert d.action == "allow" and "not applied: inspection errored (fail open)" in d.reason


def test_response_rules_only_where_they_apply(tmp_path):
    from policy import wants_response_scan

    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: r, when: {services: [anthropic], findings: {in: response}}, action: block}
          - {id: q, when: {findings: [EMAIL_ADDRESS]}, action: block}
    """)
    assert wants_response_scan(p, BOB, req(ANTHROPIC)) and not wants_response_scan(p, BOB, req(OPENAI))


def test_findings_matter_exactly_when_they_could_change_what_is_enforced(tmp_path):
    """The proxy sends a prompt before its scan ends when findings of the entity types the prefilter saw cannot
    change the enforced decision. Checked against the engine itself: whenever `findings_matter` says no, every
    combination of those findings gets the enforced decision that no findings get."""
    from itertools import chain, combinations

    from policy import findings_matter

    p = policy(tmp_path, """
        version: 1
        rules:
          - {id: block-deepseek, when: {services: [deepseek]}, action: block}
          - {id: block-keys, when: {findings: ["*_KEY"]}, action: block}
          - {id: watch-mail, when: {findings: [EMAIL_ADDRESS, PERSON]}, action: redact, mode: monitor}
          - {id: research-names, who: {groups: [research]}, when: {findings: [PERSON]}, action: allow}
          - {id: o1-phones, when: {models: [o1]}, action: redact, redact: {entities: [PHONE_NUMBER]}}
          - {id: names-to-anthropic, when: {services: [anthropic], findings: [PERSON]}, action: warn}
          - {id: mail-in-answers, when: {findings: {entities: [EMAIL_ADDRESS], in: response}}, action: block}
          - {id: block-all-anthropic, when: {services: [anthropic]}, action: block}
    """)
    entities = ["AWS_ACCESS_KEY", "EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER"]
    subsets = [frozenset(c) for c in chain.from_iterable(combinations(entities, n) for n in range(1, 5))]

    def enforced(d):  # what the client gets: a monitored "would" changes nothing
        return ("allow", "", []) if d.action in ("allow", "monitor") else (d.action, d.rule, d.redact_entities)

    said_no = 0
    for subject in (ALICE, BOB):
        for service in (OPENAI, DEEPSEEK, ANTHROPIC):
            for model in ("gpt-4o", "o1"):
                for possible in subsets:
                    if findings_matter(p, subject, req(service, chat(model)), possible):
                        continue
                    said_no += 1
                    unscanned = enforced(decide(p, subject, req(service, chat(model))))
                    for found in (s for s in subsets if s <= possible):
                        d = decide(p, subject, req(service, chat(model), [F(e) for e in sorted(found)]))
                        assert enforced(d) == unscanned, (subject.user, service.id, model, possible, found)
    assert said_no > 20

    def matters(subject, service, model, *possible):
        return findings_matter(p, subject, req(service, chat(model)), frozenset(possible))

    assert not matters(BOB, OPENAI, "gpt-4o", "EMAIL_ADDRESS")  # only a monitored rule looks at it
    assert matters(BOB, OPENAI, "gpt-4o", "EMAIL_ADDRESS", "AWS_ACCESS_KEY")
    assert not matters(BOB, DEEPSEEK, "gpt-4o", "AWS_ACCESS_KEY")  # blocked whatever is found
    assert matters(ALICE, OPENAI, "gpt-4o", "PERSON") and not matters(BOB, OPENAI, "gpt-4o", "PERSON")  # allow
    assert matters(BOB, OPENAI, "o1", "PHONE_NUMBER") and not matters(BOB, OPENAI, "gpt-4o", "PHONE_NUMBER")
    assert not matters(BOB, OPENAI, "o1", "EMAIL_ADDRESS")  # the redaction there is of phone numbers only
    assert matters(BOB, ANTHROPIC, "gpt-4o", "PERSON")  # a warn, though a block follows for anything else
