"""Loading policy and identity files: strict, and every error names file and line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from core.catalog import Catalog
from core.rulesfile import RulesError
from policy import identity
from policy import load as load_policy
from policy.engine import Subject, decide
from tests.test_policy_engine import CATALOG

SHIPPED = Path(__file__).resolve().parent.parent / "rules"


def write(tmp_path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize("text, line, message", [
    ("version: 2\n", 1, "unsupported policy version 2"),
    ("version: 1\nrule: []\n", 2, "policy file: unknown key 'rule'"),
    ("version: 1\nrules:\n  - id: a\n    action: deny\n", 4, "rule 'a': 'action' must be one of allow, monitor, "
                                                             "redact, strip, warn, block, not 'deny'"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    whne: {}\n", 5, "rule: unknown key 'whne'"),
    ("version: 1\nrules:\n  - action: block\n", 3, "rule: missing key 'id'"),
    ("version: 1\nrules:\n  - {id: a, action: block}\n  - {id: a, action: allow}\n", 4,
     "rule id 'a' already used at line 3"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      services: [openai, opneai]\n", 6,
     "rule 'a': unknown service 'opneai' (not an id in the endpoint catalog)"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      categories: [chatbots]\n", 6,
     "rule 'a': unknown category 'chatbots'"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    who:\n      sources: [10.0.0.1/8]\n", 6,
     "rule 'a': bad CIDR '10.0.0.1/8'"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      models: [\"gpt-[4\"]\n", 6,
     "rule 'a': bad glob 'gpt-[4' in 'models' (unbalanced brackets)"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      models: [\"re:gpt-(4\"]\n", 6,
     "rule 'a': bad regular expression 're:gpt-(4' in 'models'"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      findings: [email]\n", 6,
     "entity type 'email' must be upper-case"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      findings: {min_score: 2}\n", 6,
     "'min_score' must be a number from 0 to 1"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      prompt_chars: {max: lots}\n", 6,
     "'lots' is not a size"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    redact: {entities: [US_SSN]}\n", 5,
     "'redact' is only for 'action: redact'"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      headers: {'bad header': x}\n", 6,
     "'bad header' is not an HTTP header name"),
    ("version: 1\nrules:\n  - {id: a, action: block, fail: maybe}\n", 3, "'fail' must be one of open, closed"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    fail:\n      timeout: closed\n", 6,
     "rule 'a' fail: unknown key 'timeout' (known: errored, skipped, unparsed)"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    fail:\n      errored: shut\n", 6,
     "rule 'a' fail: 'errored' must be one of open, closed, not 'shut'"),
    ("version: 1\nrules:\n  - {id: a, action: block, mode: dry-run}\n", 3, "'mode' must be one of enforce, monitor"),
    ("version: 1\ndefaults: {shadow_ai: redact}\n", 2, "defaults: 'shadow_ai' must be one of allow, monitor"),
    ("version: 1\nrules:\n  - id: a\n    action: block\n    when:\n      findings: {in: answer}\n", 6,
     "'in' must be one of request, response, not 'answer'"),
    ("version: 1\nrules:\n  - id: a\n    when:\n      findings: {in: response}\n    action: redact\n", 6,
     "a rule on findings 'in: response' can block, monitor or allow the answer, not redact it"),
    ("version: 1\nrules:\n  - {id: a, action: block\n", 4, ""),  # YAML syntax error: its line
])
def test_policy_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as e:
        load_policy(path, CATALOG)
    assert e.value.file == str(path)
    assert e.value.line == line, str(e.value)
    assert message in e.value.message
    assert str(e.value).startswith(f"{path}:{line}: ")


def test_sizes_accept_units(tmp_path):
    path = write(tmp_path, """
        version: 1
        rules: [{id: a, action: block, when: {prompt_chars: {min: 2k, max: 3MB}, attachment_bytes: {max: 10}}}]
    """)
    rule = load_policy(path, CATALOG).rules[0]
    assert (rule.when.prompt_chars.min, rule.when.prompt_chars.max) == (2000, 3_000_000)
    assert rule.when.attachment_bytes.max == 10


def test_shipped_policy_loads_against_the_shipped_catalog():
    catalog = Catalog.load(SHIPPED / "endpoints.yaml")
    p = load_policy(SHIPPED / "policy.yaml", catalog)
    assert [r.id for r in p.rules][:1] == ["block-secrets"]
    assert p.defaults.shadow_ai == "allow"
    # monitor-first: only secrets and injected instructions in what tools and documents hand the model (an attack
    # on the agent, whoever sent it) are enforced; every other rule only records
    assert [r.id for r in p.rules if r.mode == "enforce" and r.action == "block"] == ["block-secrets",
                                                                                     "block-indirect-injection"]
    assert all(r.mode == "monitor" or r.action in ("block", "allow") for r in p.rules)
    identity.load(SHIPPED / "identity.yaml")


SECRETS = ["AWS_ACCESS_KEY", "AWS_SECRET_KEY", "GCP_SERVICE_ACCOUNT_KEY", "AZURE_STORAGE_KEY",
           "AZURE_CONNECTION_STRING", "GITHUB_TOKEN", "GITLAB_TOKEN", "SLACK_TOKEN", "SLACK_WEBHOOK", "STRIPE_KEY",
           "TWILIO_KEY", "SENDGRID_KEY", "OPENAI_KEY", "ANTHROPIC_KEY", "HUGGINGFACE_TOKEN", "GOOGLE_API_KEY",
           "PRIVATE_KEY", "JWT", "URL_PASSWORD", "DB_CONNECTION_STRING", "GENERIC_SECRET"]
PII = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "PERSON", "URL",
       "CRYPTO", "US_PASSPORT", "CODE_NAME"]


def test_shipped_policy_blocks_every_secret_and_only_secrets():
    from tests.test_policy_engine import BOB, F, req

    catalog = Catalog.load(SHIPPED / "endpoints.yaml")
    p = load_policy(SHIPPED / "policy.yaml", catalog)
    openai_api = catalog.services["openai"]
    for entity in SECRETS:
        d = decide(p, BOB, req(openai_api, findings=[F(entity, 0.9)]))
        assert (d.action, d.rule) == ("block", "block-secrets"), entity
    for entity in PII:
        d = decide(p, BOB, req(openai_api, findings=[F(entity, 0.9)]))
        assert d.action in ("allow", "monitor"), (entity, d.reason)
    d = decide(p, BOB, req(openai_api, findings=[F("EMAIL_ADDRESS")]))
    assert "rule redact-pii would redact EMAIL_ADDRESS (reversible) (mode: monitor)" in d.reason


def test_identity_resolution_order(tmp_path):
    path = write(tmp_path, """
        version: 1
        groups:
          research: [alice, "*@lab.example"]
          everyone-in-sso: [carol]
        networks:
          - {cidr: 10.20.0.0/16, groups: [lab]}
          - {cidr: 10.20.1.7/32, user: build-server, groups: [ci]}
        trusted_header:
          header: X-Authenticated-User
          groups_header: X-Authenticated-Groups
          from: [10.0.0.5/32]
    """, "identity.yaml")
    cfg = identity.load(path)
    # proxy authentication wins; groups from membership plus the network
    who = cfg.resolve("10.20.3.3", proxy_user="alice")
    assert (who.user, who.groups, who.source) == ("alice", frozenset({"research", "lab"}), "proxyauth")
    # the trusted header, only from the SSO proxy's address
    who = cfg.resolve("10.0.0.5", header_user="carol", header_groups="finance, eu")
    assert (who.user, who.groups, who.source) == ("carol", frozenset({"everyone-in-sso", "finance", "eu"}), "header")
    who = cfg.resolve("10.9.9.9", header_user="carol", header_groups="admins")
    assert (who.user, who.groups, who.source) == ("", frozenset(), "address")
    # the network map: the longest prefix wins
    who = cfg.resolve("10.20.1.7")
    assert (who.user, who.groups, who.source) == ("build-server", frozenset({"ci"}), "network")
    assert cfg.resolve("10.20.9.9").groups == frozenset({"lab"})
    assert cfg.resolve("::ffff:10.20.1.7").user == "build-server"
    assert cfg.resolve("10.1.1.1", proxy_user="bob@lab.example").groups == {"research"}


def test_identity_groups_feed_the_policy(tmp_path):
    cfg = identity.load(write(tmp_path, "version: 1\ngroups: {research: [alice]}\n", "identity.yaml"))
    p = load_policy(write(tmp_path, """
        version: 1
        rules: [{id: r, who: {groups: [research]}, action: block}]
    """), CATALOG)
    from tests.test_policy_engine import req
    who = cfg.resolve("10.0.0.1", proxy_user="alice")
    assert decide(p, Subject(who.user, who.groups, "10.0.0.1"), req()).rule == "r"


@pytest.mark.parametrize("text, line, message", [
    ("version: 1\nnetworks:\n  - {cidr: 10.0.0.0/33}\n", 3, "network: bad CIDR '10.0.0.0/33'"),
    ("version: 1\nnetworks:\n  - {cidr: 10.0.0.0/8, usr: x}\n", 3, "network: unknown key 'usr'"),
    ("version: 1\ngroups:\n  research: alice\n", 3, "group 'research': members must be a list"),
    ("version: 1\ntrusted_header:\n  header: X-User\n", 3, "trusted_header: missing key 'from'"),
    ("version: 1\ntrusted_header:\n  header: 'X-User:'\n  from: [10.0.0.5/32]\n", 3,
     "'header' must be an HTTP header name"),
    ("version: 1\ntrusted_header:\n  header: X-User\n  from: [sso.example]\n", 4, "bad CIDR 'sso.example'"),
])
def test_identity_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text, "identity.yaml")
    with pytest.raises(RulesError) as e:
        identity.load(path)
    assert (e.value.line, e.value.file) == (line, str(path)), str(e.value)
    assert message in e.value.message


def test_the_worked_examples_of_the_docs_load(tmp_path):
    """docs/policy.md's examples are real policies: each loads against the shipped catalog."""
    docs = (SHIPPED.parent / "docs" / "policy.md").read_text()
    examples = docs.split("## Worked examples", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", examples, re.DOTALL) if b.startswith("version: 1")]
    assert len(blocks) >= 6
    catalog = Catalog.load(SHIPPED / "endpoints.yaml")
    for i, block in enumerate(blocks):
        load_policy(write(tmp_path, block, f"example-{i}.yaml"), catalog)
    ident = docs.split("## Identity", 1)[1]
    [block] = re.findall(r"```yaml\n(version: 1.*?)```", ident.split("\n## ", 1)[0], re.DOTALL)
    cfg = identity.load(write(tmp_path, block, "identity.yaml"))
    assert cfg.resolve("10.30.1.7").user == "build-server"
