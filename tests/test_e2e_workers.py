"""`gateway run --workers 2`: two proxy processes on one listen address and an audit process, end to end.

The real SDK through the shared port, a rules edit that every proxy process applies, and a proxy process killed
with SIGKILL: the supervisor starts another and every event the killed one had answered for is in the audit
(an answer goes out only once its event is durable in the shared spool: addons/audit.py, storage/writer.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import time
from pathlib import Path

import httpx2
import openai
import pytest

from core.rulesfile import SHIPPED_RULES
from tests.conftest import AI_HOSTS, wait_for_events
from tests.support.gateway import GatewayProcess, free_port, http_get
from tests.test_e2e_foundation import chat_reply

BLOCK_RULE = """
  - id: reload-reaches-every-process
    when: {{models: ["{model}"]}}
    action: block
    message: Blocked by the edit.
"""


def wait_output(gw: GatewayProcess, pattern: str, count: int, timeout: float = 60) -> list[str]:
    """The distinct matches of `pattern` in the gateway's output, once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(set(re.findall(pattern, gw.output())))
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{count} x {pattern!r} not in the output:\n{gw.output()[-4000:]}")


@pytest.fixture(scope="module")
def wgw(tmp_path_factory, upstream, test_ca):
    base = tmp_path_factory.mktemp("workers-gw")
    rules = shutil.copytree(SHIPPED_RULES, base / "rules")
    port = free_port()
    gw = GatewayProcess(base / "data", {h: upstream.port for h in AI_HOSTS}, test_ca.ca_pem, rules=rules,
                        workers=2, sets=[f"gateway_metrics=127.0.0.1:{port}"])
    gw.rules, gw.ready_url = rules, f"http://127.0.0.1:{port}/ready"
    wait_output(gw, r"\[(proxy \d)\] watching .* for rules changes", 2)
    yield gw
    gw.stop()


def client(gw: GatewayProcess) -> openai.OpenAI:
    """A new connection per request (no keep-alive), so that requests spread over the proxy processes."""
    http = httpx2.Client(proxy=gw.proxy_url, verify=ssl.create_default_context(cafile=str(gw.ca)), timeout=30,
                         limits=httpx2.Limits(max_keepalive_connections=0))
    return openai.OpenAI(api_key="sk-test", http_client=http, max_retries=0)


def ask(gw: GatewayProcess, marker: str, model: str = "gpt-4o"):
    return client(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": marker}])


def asked(event: dict) -> str:
    return event["prompt"].rsplit(" ", 1)[-1]


def rec_model(rec) -> str:
    return json.loads(rec.body)["model"]


def served_by(gw: GatewayProcess, marker: str) -> set[str]:
    """The proxy processes whose log names an audited request of this marker's model."""
    return set(re.findall(rf"\[(proxy \d)\] AI openai \S+ \S+ model={re.escape(marker)} ", gw.output()))


def test_openai_sdk_through_two_proxy_processes_is_audited_once_each(wgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"answer {marker}", model=marker))
    for i in range(12):
        assert ask(wgw, f"{marker}-{i}", model=marker).choices[0].message.content == f"answer {marker}"
    events = wait_for_events(wgw, lambda e: e["model"] == marker, count=12)
    assert sorted(asked(e) for e in events) == sorted(f"{marker}-{i}" for i in range(12))
    assert served_by(wgw, marker) == {"proxy 1", "proxy 2"}  # the kernel spread the connections over both
    status = wgw.gateway_cli("audit", "status").stdout
    assert "written" in status


def test_a_rules_edit_reaches_every_proxy_process(wgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("fine"))
    before = len(re.findall(r"\[proxy \d\] rules reloaded", wgw.output()))
    policy = wgw.rules / "policy.yaml"
    text = policy.read_text()
    policy.write_text(text.replace("rules:\n", "rules:\n" + BLOCK_RULE.format(model=marker).lstrip("\n"), 1))
    deadline = time.monotonic() + 30
    while len(re.findall(r"\[proxy \d\] rules reloaded", wgw.output())) < before + 2:
        assert time.monotonic() < deadline, wgw.output()[-3000:]
        time.sleep(0.1)
    for i in range(12):
        with pytest.raises(openai.PermissionDeniedError):
            ask(wgw, f"{marker}-{i}", model=marker)
    assert served_by(wgw, marker) == {"proxy 1", "proxy 2"}
    events = wait_for_events(wgw, lambda e: e["model"] == marker, count=12)
    assert {e["decision"] for e in events} == {"block"}


def wait_ready(gw: GatewayProcess) -> list[str]:
    """The reasons /ready gave (the audit process's, for every process) until it answered 200."""
    reasons, deadline = [], time.monotonic() + 120
    while (answer := http_get(gw.ready_url))[0] != 200:
        reasons.append(answer[1])
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    return reasons


def test_ready_waits_for_the_dlp_workers_of_every_proxy_process(wgw):
    wait_ready(wgw)
    assert wgw.output().count("DLP: prefilter gate ready") >= 2  # both processes' workers are warm


def test_a_killed_proxy_process_is_replaced_and_its_answered_events_are_kept(wgw, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("kept", model=rec_model(rec)))
    pids = dict(re.findall(r"\[(proxy \d)\] proxy process (\d+) started", wgw.output()))
    assert set(pids) == {"proxy 1", "proxy 2"}
    wait_ready(wgw)
    warm = wgw.output().count("DLP: prefilter gate ready")
    for i in range(12):
        ask(wgw, f"{marker}-{i}", model=marker)
    victim = sorted(served_by(wgw, marker))[0]  # a process that answered some of them
    os.kill(int(pids[victim]), signal.SIGKILL)  # no chance to flush anything: only what it had made durable
    wait_output(wgw, rf"{victim} process {pids[victim]} exited with code -9: starting another", 1)
    wait_output(wgw, rf"\[{victim}\] proxy process (\d+) started", 2)
    wait_output(wgw, rf"(\[{victim}\] HTTP\(S\) proxy listening)", 1)
    # ready again once the replacement's DLP workers are warm (the dead process no longer counts)
    assert set(wait_ready(wgw)) <= {"dlp: the DLP workers of 1 of 2 proxy processes are not ready (starting, or "
                                    "failing to start: see the log)\n"}
    assert wgw.output().count("DLP: prefilter gate ready") == warm + 1  # the replacement's
    events = wait_for_events(wgw, lambda e: e["model"] == marker, count=12)
    assert sorted(asked(e) for e in events) == sorted(f"{marker}-{i}" for i in range(12))
    after = f"{marker}-after"
    for i in range(6):  # both processes serve again
        assert ask(wgw, f"{after}-{i}", model=after).choices[0].message.content == "kept"
    wait_for_events(wgw, lambda e: e["model"] == after, count=6)
