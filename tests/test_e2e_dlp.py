"""End to end: DLP through the real gateway with the real openai and anthropic SDKs.

The gateway of this module runs a policy that redacts every finding, reversibly for models named `reversible-*`
and one way for `redact-*` (POLICY). The fake upstream echoes the placeholders it received, so the tests see both
sides: what left the company (placeholders, valid JSON, no raw value) and what the client got back (the original
values again when reversible, split across stream events or not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import ssl
import threading
import time
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from tests.conftest import AI_HOSTS, PLAIN_HOSTS, own_gateway, wait_for_events
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Reply, sse

ROOT = Path(__file__).resolve().parents[1]
EMAIL = "jane.doe@acme-corp.com"
AWS_KEY = "AKIAZ7Q4XK2M3PLR5TVW"
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")

POLICY = """\
version: 1
defaults: {action: allow, shadow_ai: allow, fail: open}
rules:
  - id: pseudonymize
    when: {models: ["reversible-*"]}
    action: redact
    redact: {reversible: true}
  - id: redact-one-way
    when: {models: ["redact-*"]}
    action: redact
  - id: no-keys-in-answers
    when: {models: ["answer-block-*"], findings: {entities: ["*_KEY"], in: response}}
    action: block
    message: The answer held a credential.
  - id: watch-answers
    when: {models: ["answer-watch-*"], findings: {entities: [EMAIL_ADDRESS], in: response}}
    action: block
    mode: monitor
"""


@pytest.fixture(scope="module")
def dlp_gateway(tmp_path_factory, upstream, test_ca):
    rules = tmp_path_factory.mktemp("dlp-rules")
    for f in (ROOT / "rules").glob("*.yaml"):
        shutil.copy(f, rules / f.name)
    (rules / "policy.yaml").write_text(POLICY)
    gw = GatewayProcess(tmp_path_factory.mktemp("dlp-gateway"), {h: upstream.port for h in AI_HOSTS + PLAIN_HOSTS},
                        test_ca.ca_pem, rules=rules, sets=["gateway_dlp_timeout=120"])
    gw.rules_dir = rules
    yield gw
    gw.stop()


def _http(gw) -> httpx2.Client:
    return httpx2.Client(proxy=gw.proxy_url, verify=ssl.create_default_context(cafile=str(gw.ca)), timeout=120)


def openai_client(gw) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test-not-a-real-key", http_client=_http(gw), max_retries=0)


def anthropic_client(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test-not-a-real-key", http_client=_http(gw), max_retries=0)


def prompt(marker: str) -> str:
    return (f"{marker}: write to {EMAIL} and tell them the deploy key is {AWS_KEY}. "
            f"Copy {EMAIL} on it.")


def received(upstream, marker: str) -> dict:
    """The body the fake upstream received for this test, which must be valid JSON."""
    [rec] = [r for r in upstream.requests if marker.encode() in r.body]
    return json.loads(rec.body)


def placeholders_in(body: bytes) -> list[str]:
    return sorted(set(PLACEHOLDER.findall(body.decode())))


def echo_text(body: bytes) -> str:
    """What the fake model answers: every placeholder it was sent, in a sentence."""
    return "Done: " + " and ".join(placeholders_in(body)) + "."


def expected_answer(placeholder_values: dict[str, str], text: str) -> str:
    return PLACEHOLDER.sub(lambda m: placeholder_values[m[0]], text)


def assert_redacted(body: dict, user_text: str) -> dict[str, str]:
    """The text the upstream got holds placeholders instead of the values: which placeholder stands for what."""
    assert EMAIL not in json.dumps(body) and AWS_KEY not in json.dumps(body)
    found = PLACEHOLDER.findall(user_text)
    emails = [p for p in found if p.startswith("<EMAIL_ADDRESS_")]
    assert len(emails) == 2 and emails[0] == emails[1], user_text  # stable per value
    keys = [p for p in found if p != emails[0]]
    assert len(keys) == 1, user_text
    # The placeholders stand where the values stood: the rest of the text is intact.
    assert user_text == prompt_template(user_text).format(email=emails[0], key=keys[0])
    return {emails[0]: EMAIL, keys[0]: AWS_KEY}


def prompt_template(user_text: str) -> str:
    marker = user_text.split(":", 1)[0]
    return prompt(marker).replace(EMAIL, "{email}").replace(AWS_KEY, "{key}")


# --- OpenAI -------------------------------------------------------------------------------------------------------

def openai_reply(rec) -> Reply:
    return Reply(body=json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": echo_text(rec.body)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}}).encode())


def openai_chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


def split_pieces(text: str) -> list[str]:
    """The answer as a model streams it: every placeholder cut in two, across events."""
    pieces, pos = [], 0
    for m in PLACEHOLDER.finditer(text):
        cut = m.start() + len(m[0]) // 2
        pieces.append(text[pos:cut])
        pos = cut
    return pieces + [text[pos:]]


def openai_stream(rec) -> Reply:
    frames = [openai_chunk(p) for p in split_pieces(echo_text(rec.body))]
    return Reply(content_type="text/event-stream",
                 chunks=sse(frames + [openai_chunk(None, "stop"), "data: [DONE]\n\n"]))


@pytest.mark.parametrize("reversible", [True, False])
def test_openai_redacted_upstream_and_restored_answer(dlp_gateway, upstream, marker, reversible):
    upstream.route("/v1/chat/completions", openai_reply)
    model = "reversible-gpt" if reversible else "redact-gpt"
    answer = openai_client(dlp_gateway).chat.completions.create(
        model=model, messages=[{"role": "system", "content": "You write emails."},
                               {"role": "user", "content": prompt(marker)}])
    body = received(upstream, marker)
    values = assert_redacted(body, body["messages"][1]["content"])
    assert body["messages"][0]["content"] == "You write emails." and body["model"] == model
    text = answer.choices[0].message.content
    if reversible:
        assert text == expected_answer(values, "Done: " + " and ".join(sorted(values)) + ".")
        assert EMAIL in text and AWS_KEY in text
    else:
        assert EMAIL not in text and text == "Done: " + " and ".join(sorted(values)) + "."

    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"])
    assert event["decision"] == "redact" and event["inspection"] == "inspected"
    assert EMAIL not in json.dumps(event) and AWS_KEY not in json.dumps(event)  # audit never holds the values
    assert "EMAIL_ADDRESS" in event["entity_types"]
    assert event["entity_counts"][event["entity_types"].index("EMAIL_ADDRESS")] == 2
    assert EMAIL not in event["completion"]  # the audit keeps the answer as the model wrote it


def test_openai_stream_restores_placeholders_split_across_events(dlp_gateway, upstream, marker):
    upstream.route("/v1/chat/completions", openai_stream)
    stream = openai_client(dlp_gateway).chat.completions.create(
        model="reversible-gpt", stream=True, messages=[{"role": "user", "content": prompt(marker)}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    body = received(upstream, marker)
    values = assert_redacted(body, body["messages"][0]["content"])
    assert text == expected_answer(values, "Done: " + " and ".join(sorted(values)) + ".")

    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"] and e["stream"])
    assert EMAIL not in json.dumps(event) and AWS_KEY not in json.dumps(event)
    assert event["completion"] == "Done: " + " and ".join(sorted(values)) + "."


def test_tool_arguments_and_results_are_redacted_in_place(dlp_gateway, upstream, marker):
    """Tool calls echoed in the history are JSON text inside a JSON string: still valid after redaction."""
    upstream.route("/v1/chat/completions", openai_reply)
    args = json.dumps({"to": EMAIL, "subject": marker})
    openai_client(dlp_gateway).chat.completions.create(model="redact-gpt", messages=[
        {"role": "user", "content": f"{marker} send it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "send_mail", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"}])
    body = received(upstream, marker)
    sent_args = json.loads(body["messages"][1]["tool_calls"][0]["function"]["arguments"])
    assert sent_args["subject"] == marker and PLACEHOLDER.fullmatch(sent_args["to"])


# --- Anthropic ----------------------------------------------------------------------------------------------------

def anthropic_reply(rec) -> Reply:
    return Reply(body=json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": echo_text(rec.body)}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 6}}).encode())


def anthropic_event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def anthropic_stream(rec) -> Reply:
    deltas = [anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": p}})
              for p in split_pieces(echo_text(rec.body))]
    deltas.insert(1, anthropic_event("ping", {"type": "ping"}))
    frames = [anthropic_event("message_start", {"type": "message_start", "message": {
                  "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
                  "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
              anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                      "content_block": {"type": "text", "text": ""}}),
              *deltas,
              anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
              anthropic_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                "stop_sequence": None}, "usage": {"output_tokens": 6}}),
              anthropic_event("message_stop", {"type": "message_stop"})]
    return Reply(content_type="text/event-stream", chunks=sse(frames))


@pytest.mark.parametrize("streamed", [False, True])
def test_anthropic_redacted_upstream_and_restored_answer(dlp_gateway, upstream, marker, streamed):
    upstream.route("/v1/messages", anthropic_stream if streamed else anthropic_reply)
    client = anthropic_client(dlp_gateway)
    request = dict(model="reversible-claude", max_tokens=100, system=f"Mail desk. Sender: {EMAIL}",
                   messages=[{"role": "user", "content": [{"type": "text", "text": prompt(marker)}]}])
    if streamed:
        with client.messages.stream(**request) as stream:
            text = "".join(stream.text_stream)
    else:
        text = client.messages.create(**request).content[0].text
    body = received(upstream, marker)
    values = assert_redacted(body, body["messages"][0]["content"][0]["text"])
    assert body["system"] == f"Mail desk. Sender: {next(p for p, v in values.items() if v == EMAIL)}"
    assert text == expected_answer(values, "Done: " + " and ".join(sorted(values)) + ".")
    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"] and e["stream"] == streamed)
    assert EMAIL not in json.dumps(event) and AWS_KEY not in json.dumps(event)
    assert event["service"] == "anthropic" and event["decision"] == "redact"


def test_anthropic_tool_use_input_and_list_tool_result_are_redacted_in_place(dlp_gateway, upstream, marker):
    """A tool_use input is a JSON object and a tool result may be a list of blocks: each string value is its own
    part with its own path, so the values are rewritten where they stand and the request stays valid."""
    upstream.route("/v1/messages", anthropic_reply)
    anthropic_client(dlp_gateway).messages.create(model="redact-claude", max_tokens=50, messages=[
        {"role": "user", "content": f"{marker} who owns the repo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "owner",
                                           "input": {"repo": marker, "notify": [EMAIL], "limit": 3}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": f"owner: {EMAIL}"}, {"type": "text", "text": "since 2020"}]}]}])
    body = received(upstream, marker)
    assert EMAIL not in json.dumps(body)
    tool_input = body["messages"][1]["content"][0]["input"]
    assert tool_input["repo"] == marker and tool_input["limit"] == 3
    [placeholder] = tool_input["notify"]
    assert PLACEHOLDER.fullmatch(placeholder)
    blocks = body["messages"][2]["content"][0]["content"]
    assert blocks == [{"type": "text", "text": f"owner: {placeholder}"}, {"type": "text", "text": "since 2020"}]
    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"])
    assert event["decision"] == "redact" and EMAIL not in json.dumps(event)
    assert event["entity_counts"][event["entity_types"].index("EMAIL_ADDRESS")] == 2


def test_a_finding_that_cannot_be_rewritten_blocks_the_request(dlp_gateway, upstream, marker):
    """The `prompt` field of a multipart upload (audio transcription) has no JSON string to rewrite: the request
    is refused (fail closed) rather than sent with the value in it."""
    upstream.route("/v1/audio/transcriptions", lambda rec: Reply(body=b'{"text": "hello"}'))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai_client(dlp_gateway).audio.transcriptions.create(
            model="redact-whisper", file=("talk.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
            prompt=f"{marker} names: {EMAIL}")
    assert "Blocked by the AI gateway" in str(refused.value) and EMAIL not in str(refused.value)
    assert not [r for r in upstream.requests if marker.encode() in r.body]
    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"])
    assert event["decision"] == "block" and "blocked rather than sent unredacted" in event["reason"]
    assert EMAIL not in json.dumps(event)


# --- Response-side checks ------------------------------------------------------------------------------------------

def answer_with(text: str, streamed: bool):
    """A fake model that answers `text` under the model name it was asked for (response rules match models too)."""
    return lambda rec: _answer(text, streamed, json.loads(rec.body)["model"])


def _answer(text: str, streamed: bool, model: str) -> Reply:
    if streamed:
        return Reply(content_type="text/event-stream",
                     chunks=sse([openai_chunk(text), openai_chunk(None, "stop"), "data: [DONE]\n\n"]))
    return Reply(body=json.dumps({
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
    }).encode())


def test_a_non_streamed_answer_with_a_secret_is_replaced_by_the_provider_error(dlp_gateway, upstream, marker):
    """`findings: {in: response}`: the completion is scanned when the answer ends; a block rule replaces a
    non-streamed answer with the error the SDK shows, and the audit records the answer's findings, masked."""
    upstream.route("/v1/chat/completions", answer_with(f"Use the key {AWS_KEY}.", False))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai_client(dlp_gateway).chat.completions.create(
            model="answer-block-gpt", messages=[{"role": "user", "content": f"{marker} which key?"}])
    assert "no-keys-in-answers" in str(refused.value) and AWS_KEY not in str(refused.value)
    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"])
    assert event["decision"] == "block" and event["rule_id"] == "no-keys-in-answers" and event["status"] == 403
    assert "answer: rule no-keys-in-answers: block" in event["reason"]
    assert event["entity_types"] == ["AWS_ACCESS_KEY"] and event["finding_parts"] == [65535]
    assert event["completion"] == "Use the key <AWS_ACCESS_KEY>." and AWS_KEY not in json.dumps(event)


def test_a_streamed_answer_cannot_be_taken_back_so_the_block_is_recorded(dlp_gateway, upstream, marker):
    upstream.route("/v1/chat/completions", answer_with(f"Use the key {AWS_KEY}.", True))
    stream = openai_client(dlp_gateway).chat.completions.create(
        model="answer-block-gpt", stream=True, messages=[{"role": "user", "content": f"{marker} which key?"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == f"Use the key {AWS_KEY}."
    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"])
    assert event["decision"] == "monitor" and event["rule_id"] == "no-keys-in-answers"
    assert "answer: would block (answer already streamed): rule no-keys-in-answers: block" in event["reason"]
    assert event["completion"] == "Use the key <AWS_ACCESS_KEY>."


def test_a_monitored_response_rule_records_without_touching_the_answer(dlp_gateway, upstream, marker):
    upstream.route("/v1/chat/completions", answer_with(f"Write to {EMAIL}.", False))
    answer = openai_client(dlp_gateway).chat.completions.create(
        model="answer-watch-gpt", messages=[{"role": "user", "content": f"{marker} who?"}])
    assert answer.choices[0].message.content == f"Write to {EMAIL}."
    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"])
    assert event["decision"] == "monitor" and event["rule_id"] == "watch-answers" and event["status"] == 200
    assert "rule watch-answers would block (mode: monitor)" in event["reason"]
    assert event["entity_types"] == ["EMAIL_ADDRESS"] and event["completion"] == "Write to <EMAIL_ADDRESS>."


def test_answers_are_not_scanned_when_no_response_rule_applies(dlp_gateway, upstream, marker):
    upstream.route("/v1/chat/completions", answer_with(f"Write to {EMAIL}.", False))
    openai_client(dlp_gateway).chat.completions.create(
        model="plain-model", messages=[{"role": "user", "content": f"{marker} who?"}])
    [event] = wait_for_events(dlp_gateway, lambda e: marker in e["prompt"])
    assert event["decision"] == "allow" and event["entity_types"] == [] and "answer" not in event["reason"]


# --- The event loop is never blocked --------------------------------------------------------------------------------

def contact_sheet(size: int) -> str:
    """A pasted contact list: an email address, a phone number and a card number every 200 characters, each of
    which the recognizers must examine and validate, so the scan takes a while even for a fast scanner."""
    para = "The quarterly report covers revenue, churn and the roadmap. " * 2
    lines, total, n = [], 0, 0
    while total < size:
        lines.append(f"{para}Contact user{n}@example-{n}.org or call +1 415 555 {n % 10000:04d}, "
                     f"card 4111 1111 1111 {n % 10000:04d}.\n")
        total += len(lines[-1])
        n += 1
    return "".join(lines)[:size]


def test_a_1mb_prompt_does_not_hold_up_other_requests(dlp_gateway, upstream, marker):
    """While the gateway scans a 1 MB prompt, other prompts sent after it are scanned and answered one by one.

    If the scan ran on the event loop, nothing else could be answered until it ended, and then the big request
    would be forwarded at once: at most one other request could complete before the big one reaches the upstream.
    If ordinary prompts shared the big one's workers, they would queue behind its scan just the same. The test
    asserts five complete in between: ordering, not timing."""
    big_arrived = threading.Event()
    big_marker = f"{marker}-big"

    def chat(rec):
        if big_marker.encode() in rec.body:
            big_arrived.set()
        return Reply(body=json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                   "finish_reason": "stop"}]}).encode())

    upstream.route("/v1/chat/completions", chat)
    big_body = json.dumps({"model": "plain-model", "messages": [
        {"role": "user", "content": f"{big_marker}\n" + contact_sheet(1_000_000)}]}).encode()
    sent = threading.Event()

    def body_chunks():
        for i in range(0, len(big_body), 64 * 1024):
            yield big_body[i:i + 64 * 1024]
        sent.set()  # every byte is handed to the connection

    big_result: dict = {}

    def send_big():
        with _http(dlp_gateway) as http:
            big_result["status"] = http.post("https://api.openai.com/v1/chat/completions", content=body_chunks(),
                                             headers={"content-type": "application/json",
                                                      "content-length": str(len(big_body))}).status_code

    other = openai_client(dlp_gateway)

    def ask() -> None:
        answer = other.chat.completions.create(model="plain-model", messages=[
            {"role": "user", "content": f"{marker} mail {EMAIL}"}])
        assert answer.choices[0].message.content == "ok"

    ask()  # connection up before the big request starts
    big = threading.Thread(target=send_big)
    big.start()
    assert sent.wait(60)
    done_before_big = 0
    while not big_arrived.is_set() and done_before_big < 5:
        ask()
        if not big_arrived.is_set():
            done_before_big += 1
    big.join(120)
    assert big_result.get("status") == 200
    assert done_before_big >= 5, f"only {done_before_big} requests completed while the 1 MB one was scanned"
    [event] = wait_for_events(dlp_gateway, lambda e: big_marker in e["prompt"])
    assert event["inspection"] == "inspected" and "EMAIL_ADDRESS" in event["entity_types"]


# --- rules reload ---------------------------------------------------------------------------------------------------

def test_a_new_company_term_is_found_after_a_rules_edit_without_restart(dlp_gateway, upstream, marker):
    upstream.route("/v1/chat/completions", openai_reply)
    client = openai_client(dlp_gateway)
    term = f"Falconridge{marker[-6:]}"
    recognizers = dlp_gateway.rules_dir / "recognizers.yaml"
    text = recognizers.read_text()
    assert "deny_list: [Project Nightjar, " in text
    recognizers.write_text(text.replace("deny_list: [Project Nightjar, ", f"deny_list: [{term}, Project Nightjar, "))
    deadline = time.monotonic() + 120  # a reload recompiles, restarts the DLP workers: slow on busy CI
    while True:
        probe = f"{marker}-{time.monotonic()}"
        client.chat.completions.create(model="redact-gpt", messages=[{"role": "user", "content": f"{probe} {term}"}])
        content = received(upstream, probe)["messages"][0]["content"]
        if term not in content:
            break
        assert time.monotonic() < deadline, "the new term was never redacted"
        time.sleep(0.2)
    assert content == f"{probe} <CODE_NAME_1>"


def test_a_recognizers_edit_keeps_prompts_scanned_while_new_workers_start(tmp_path_factory, upstream, test_ca,
                                                                           marker):
    """The workers in use scan until the new rules' workers are warm, and /ready stays 200 meanwhile. With
    gateway_dlp_wait at 1 s, less than a pool takes to start, a prompt sent while the new workers start would be
    errored 'overloaded' (and fail closed) had the old workers been stopped first. At start, /ready waits for them."""
    from tests.support.gateway import free_port, http_get

    rules = tmp_path_factory.mktemp("swap-rules")
    for f in (ROOT / "rules").glob("*.yaml"):
        shutil.copy(f, rules / f.name)
    (rules / "policy.yaml").write_text(POLICY)
    port = free_port()
    gw = GatewayProcess(tmp_path_factory.mktemp("swap-gateway"), {h: upstream.port for h in AI_HOSTS},
                        test_ca.ca_pem, rules=rules, sets=["gateway_dlp_wait=1", f"gateway_metrics=127.0.0.1:{port}"])
    try:
        ready = f"http://127.0.0.1:{port}/ready"
        deadline = time.monotonic() + 120
        while (answer := http_get(ready))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        assert "DLP: prefilter gate ready" in gw.output()  # ready means warm
        upstream.route("/v1/chat/completions", openai_reply)
        client = openai_client(gw)
        term = f"Kestrelmoor{marker[-6:]}"
        recognizers = rules / "recognizers.yaml"
        recognizers.write_text(recognizers.read_text().replace("deny_list: [Project Nightjar, ",
                                                               f"deny_list: [{term}, Project Nightjar, "))
        probes, deadline = [], time.monotonic() + 120
        while True:
            probe = f"{marker}-{len(probes)}"
            probes.append(probe)
            text = f"{probe} mail ada@example.com {term}"
            client.chat.completions.create(model="redact-gpt", messages=[{"role": "user", "content": text}])
            assert http_get(ready) == (200, "ready\n")
            if term not in received(upstream, probe)["messages"][0]["content"]:
                break  # the new rules' workers scan now
            assert time.monotonic() < deadline, "the new term was never redacted"
            time.sleep(0.1)
        events = wait_for_events(gw, lambda e: marker in e["prompt"], count=len(probes))
        assert len(events) == len(probes) >= 2
        assert {e["inspection"] for e in events} == {"inspected"}, [e["warnings"] for e in events]
        assert all("EMAIL_ADDRESS" in e["entity_types"] for e in events)  # old workers or new, each prompt scanned
        assert "DLP: the new rules' workers are warm and scan from now on" in gw.output()
    finally:
        gw.stop()


# --- gateway dlp scan -----------------------------------------------------------------------------------------------

def test_gateway_dlp_scan_lists_findings_without_their_values(tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text(prompt("cli"))
    result = subprocess.run([sys.executable, "-m", "gateway", "dlp", "scan", str(sample), "--format", "json"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["entity"] for r in rows] == ["EMAIL_ADDRESS", "AWS_ACCESS_KEY", "EMAIL_ADDRESS"]
    assert EMAIL not in result.stdout and AWS_KEY not in result.stdout


def test_a_broken_recognizers_file_stops_startup_with_file_and_line(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(ROOT / "rules" / "endpoints.yaml", rules / "endpoints.yaml")
    (rules / "recognizers.yaml").write_text("recognizers:\n  - name: Broken\n    type: custom\n"
                                            "    supported_entity: X\n    patterns: [{name: p, regex: '(', score: 1}]\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "run", "--data-dir", str(tmp_path), "--listen-port", "0",
                        "--rules", str(rules)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.startswith(f"gateway: error: {rules / 'recognizers.yaml'}:"), r.stderr


# --- the gateway's own DLP failing ---------------------------------------------------------------------------------

def wait_for_gate(gw: GatewayProcess) -> None:
    """Until the gateway's DLP prefilter gate is ready (until then every scan waits for the workers)."""
    deadline = time.monotonic() + 60
    while "prefilter gate ready" not in gw.output():
        assert time.monotonic() < deadline, gw.output()[-3000:]
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stalled_gateway(tmp_path_factory, upstream, test_ca):
    """Shipped rules, and DLP workers that cannot finish a long scan in time (a job may run 1 ms, and a reply
    later than that is waited for only LATE_GRACE more)."""
    with own_gateway(tmp_path_factory, upstream, test_ca, "stalled-gateway", "gateway_dlp_timeout=0.001") as gw:
        yield gw


def test_when_the_scan_fails_the_shipped_secrets_rule_fails_closed_and_clean_prompts_still_pass(
        stalled_gateway, upstream, marker):
    """A prompt the workers must scan (it holds a key) cannot be checked: the shipped `block-secrets` blocks it
    (fail closed on `errored`) with a message that says why, and the audit records exactly that. A prompt the
    prefilter proves clean never needs the workers, so it is inspected and answered as usual."""
    upstream.route("/v1/chat/completions", openai_reply)
    client = openai_client(stalled_gateway)
    with pytest.raises(openai.PermissionDeniedError) as e:
        # ~234k characters, one job (under a chunk): its scan takes well over the timeout and its grace
        # (dlp.pool.LATE_GRACE) on any machine
        long_prompt = f"the deploy key is {AWS_KEY}; mail everyone: " + f"cc {EMAIL} " * 9000
        client.chat.completions.create(model=f"stall-{marker}", messages=[{"role": "user", "content": long_prompt}])
    assert "could not check this request" in str(e.value) and "did not complete in time" in str(e.value)
    assert not [r for r in upstream.requests if AWS_KEY.encode() in r.body]  # nothing left
    wait_for_gate(stalled_gateway)
    tag = "".join(chr(ord("a") + int(c, 16)) for c in marker[3:])  # letters only: no recognizer could match it
    answer = client.chat.completions.create(model="gpt-4o", messages=[
        {"role": "user", "content": f"Summarise the figures of project {tag}."}])
    assert answer.choices[0].message.content.startswith("Done")

    [blocked] = wait_for_events(stalled_gateway, lambda ev: ev["model"] == f"stall-{marker}")
    assert (blocked["decision"], blocked["rule_id"], blocked["inspection"]) == ("block", "block-secrets", "errored")
    assert "inspection errored, fail closed" in blocked["reason"]
    assert any("timed out" in w for w in blocked["warnings"])
    assert AWS_KEY not in json.dumps(blocked)
    [clean] = wait_for_events(stalled_gateway, lambda ev: tag in ev["prompt"])
    assert (clean["decision"], clean["inspection"]) == ("allow", "inspected")


# --- sending before the scan ends ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frozen_gateway(tmp_path_factory, upstream, test_ca):
    """Shipped rules, one DLP worker, and scan timeouts the tests can wait out (they freeze the worker): a scan
    may run 2 s, and wait 3 s for a worker."""
    with own_gateway(tmp_path_factory, upstream, test_ca, "frozen-gateway", "gateway_dlp_timeout=2",
                     "gateway_dlp_wait=3", "gateway_dlp_workers=1") as gw:
        wait_for_gate(gw)
        yield gw


def freeze_dlp_workers(gw: GatewayProcess) -> list[int]:
    """SIGSTOP the gateway's DLP workers (the fork server, a child of the gateway, starts them: its children). A
    scan sent to a frozen worker runs out its timeout, then the gateway kills that worker and starts another."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    children = {pid for pid, parent in parents.items() if parent == gw.proc.pid}
    workers = [pid for pid, parent in parents.items() if parent in children]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    return workers


def test_a_prompt_no_enforced_rule_can_act_on_is_sent_before_its_scan_ends(frozen_gateway, upstream, marker):
    """With the shipped policy an e-mail address changes nothing enforced (only `block-secrets` is, and the
    prefilter shows that nothing secret-like is in the prompt), so the prompt goes upstream while it is scanned:
    the client gets its answer although the scan never completes, which `block-secrets` (fail closed when the
    scan errors) would otherwise block. A prompt with a key must wait for its scan: with the worker frozen it is
    blocked, and nothing of it leaves."""
    upstream.route("/v1/chat/completions", openai_reply)
    client = openai_client(frozen_gateway)
    assert freeze_dlp_workers(frozen_gateway)
    answer = client.chat.completions.create(model="gpt-4o", messages=[
        {"role": "user", "content": f"{marker}: send the figures to {EMAIL} today."}])
    assert answer.choices[0].message.content.startswith("Done")
    assert received(upstream, marker)
    # the only answered request of this gateway; its prompt is withheld, since its scan did not complete
    [sent] = wait_for_events(frozen_gateway, lambda ev: ev["status"] == 200)
    assert sent["prompt"] == "" and marker not in json.dumps(sent)
    assert (sent["decision"], sent["inspection"]) == ("allow", "errored")
    assert "decided before the DLP scan ended" in sent["reason"] and "scan after sending errored" in sent["reason"]
    assert any("timed out" in w for w in sent["warnings"])

    deadline = time.monotonic() + 30
    while not freeze_dlp_workers(frozen_gateway):  # the replacement of the worker killed for its timeout (frozen
        assert time.monotonic() < deadline, "no new DLP worker"  # ready, the scan times out; frozen starting, it
        time.sleep(0.1)  # waits for a worker in vain: either way it does not complete)
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": f"{marker}-key: deploy with {AWS_KEY} and mail {EMAIL}."}])
    assert "could not check this request" in str(e.value)
    assert not [r for r in upstream.requests if f"{marker}-key".encode() in r.body]
    [blocked] = wait_for_events(frozen_gateway, lambda ev: ev["status"] == 403)
    assert (blocked["decision"], blocked["rule_id"], blocked["inspection"]) == ("block", "block-secrets", "errored")


def test_a_prompt_sent_before_its_scan_ends_is_audited_with_its_findings_and_monitored_rules(
        gateway, upstream, marker):
    """The scan that ran while the prompt went upstream is in the audit event: its findings, and the monitored
    `redact-pii` rule of the shipped policy judged on them, as if the prompt had waited for its scan."""
    upstream.route("/v1/chat/completions", openai_stream)
    wait_for_gate(gateway)
    client = openai_client(gateway)
    stream = client.chat.completions.create(model="gpt-4o", stream=True, messages=[
        {"role": "user", "content": f"{marker}: send the figures to {EMAIL} today."}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("Done")
    [ev] = wait_for_events(gateway, lambda ev: marker in ev["prompt"])
    assert (ev["decision"], ev["rule_id"], ev["inspection"], ev["stream"]) == ("monitor", "redact-pii", "inspected",
                                                                               True)
    assert ev["entity_types"] == ["EMAIL_ADDRESS"]
    assert "would redact EMAIL_ADDRESS" in ev["reason"] and "decided before the DLP scan ended" in ev["reason"]
    assert EMAIL not in json.dumps(ev)
