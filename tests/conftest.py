"""Shared fixtures: a test CA, fake HTTPS upstreams on 127.0.0.1, and the real gateway in front of them.

One gateway process serves the whole session (start-up costs seconds); tests register the fake routes they need
and tell their events apart by a unique marker in the prompt.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest

from core.rulesfile import SHIPPED_RULES
from tests.support.gateway import GatewayProcess
from tests.support.upstream import FakeUpstream, TestCA

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

#: Hosts the fake upstream answers for (certificate SANs). Non-AI hosts prove tunnelling.
AI_HOSTS = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com",
            "us-central1-aiplatform.googleapis.com", "bedrock-runtime.us-east-1.amazonaws.com", "api.cohere.com",
            "api.mistral.ai", "api.groq.com", "api.deepseek.com", "chatgpt.com", "claude.ai",
            "gemini.google.com", "copilot.microsoft.com", "www.perplexity.ai", "chat.deepseek.com",
            "chat.mistral.ai", "myres.openai.azure.com", "ollama.com", "openrouter.ai", "api.x.ai",
            "cloudcode-pa.googleapis.com", "bedrock-agent-runtime.us-east-1.amazonaws.com"]
PLAIN_HOSTS = ["intranet.example"]


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("testca"))


@pytest.fixture(scope="session")
def upstream(test_ca) -> FakeUpstream:
    up = FakeUpstream(test_ca, AI_HOSTS + PLAIN_HOSTS)
    yield up
    up.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, upstream, test_ca) -> GatewayProcess:
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway"), {h: upstream.port for h in AI_HOSTS + PLAIN_HOSTS},
                        test_ca.ca_pem)
    yield gw
    gw.stop()


@contextlib.contextmanager
def own_gateway(tmp_path_factory, upstream, test_ca, name: str, *sets: str,
                policy: str | None = None) -> Iterator[GatewayProcess]:
    """A gateway of a module's own, for options the shared one must not have: the shipped rules, every AI host
    routed to the fake upstream, and `sets` (NAME=VALUE); `policy`: the text of its policy.yaml instead of the
    shipped one."""
    rules = None
    if policy is not None:
        rules = tmp_path_factory.mktemp(f"{name}-rules")
        for f in SHIPPED_RULES.glob("*.yaml"):
            shutil.copy(f, rules / f.name)
        (rules / "policy.yaml").write_text(policy)
    gw = GatewayProcess(tmp_path_factory.mktemp(name), {h: upstream.port for h in AI_HOSTS}, test_ca.ca_pem,
                        rules=rules, sets=list(sets))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def marker() -> str:
    """A unique string to put in a prompt, so a test finds its own audit event among the session's."""
    return f"mk-{uuid.uuid4().hex[:12]}"


def audit_events(gw: GatewayProcess, *args: str) -> list[dict]:
    out = gw.gateway_cli("audit", "search", "--format", "json", "--limit", "1000", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_events(gw: GatewayProcess, predicate, count: int = 1, timeout: float = 20) -> list[dict]:
    """Audit events matching predicate, waiting for the batched writer (flushes every 0.5 s)."""
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = [e for e in audit_events(gw) if predicate(e)]
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"expected {count} audit events, found {len(found)}: {found}\n{gw.output()[-3000:]}")
