"""End to end: the model's answer calls a tool the policy forbids, and the real SDK gets a refusal it handles.

Each official SDK goes through the real gateway to a fake upstream that answers with a tool call: a forbidden one
comes back as text in the provider's own shape (finish reason consistent, the SDK parses it), an allowed one passes
unchanged. In the streamed cases the upstream holds the call back until the test has seen the text before it, so
the text provably reached the client before the upstream sent the call. Calls that never complete or grow past the
cap are refused too, and every refusal is audited with its rule and the tool's name.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Iterable

import pytest

from tests.conftest import AI_HOSTS, wait_for_events
from tests.support import eventstream_frames as es
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Reply
from tests.test_e2e_foundation import chunk, openai_client
from tests.test_e2e_openai_anthropic import anthropic_client
from tests.test_e2e_policy import write_rules
from tests.test_e2e_sdks import (MODEL, bedrock, cohere_client, genai_client,  # noqa: F401 (bedrock: a fixture)
                                 http_client, mistral_client, route_gemini, ssl_context)

POLICY = """
version: 1
defaults: {action: allow, shadow_ai: allow}
rules:
  - id: no-destructive-commands
    when: {tools: {names: [run_command], args: {command: "re:rm\\\\s+-rf"}}}
    action: block
    message: Destructive commands are not allowed.
  - id: no-mail
    when: {tools: [send_mail]}
    action: block
    mode: monitor
  - id: no-deleting-tools
    when: {tools: ["delete_*"]}
    action: strip
"""
CAP = 16 * 1024
RM, LS = {"command": "sudo rm  -rf /srv/app"}, {"command": "ls -la /srv/app"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream, test_ca):
    """This module's own gateway, with its tool rules (so the SDK fixtures it borrows, `bedrock`, use it too)."""
    base = tmp_path_factory.mktemp("toolcalls-gw")
    rules = write_rules(base / "rules", POLICY)
    with (rules / "endpoints.yaml").open("a") as catalog:  # the test catalog's services, and hosted Ollama
        catalog.write("  - {id: ollama, name: Ollama, category: api, hosts: [ollama.com], formats: [ollama]}\n")
    gw = GatewayProcess(base / "data", {h: upstream.port for h in AI_HOSTS}, test_ca.ca_pem, rules=rules,
                        # no rule here needs findings: no DLP workers to wait for (the audit keeps the text)
                        sets=[f"gateway_tool_call_max_bytes={CAP}", "gateway_dlp=false", "gateway_capture=full"])
    yield gw
    gw.stop()


def held_back(before: Iterable[str | bytes], gate: threading.Event, after: Iterable[str | bytes]):
    """Chunks: `before` at once, `after` only once the test has set `gate` (it saw what came before)."""
    for c in before:
        yield c.encode() if isinstance(c, str) else c
    if not gate.wait(20):
        raise TimeoutError("the test never saw the text before the call")
    for c in after:
        yield c.encode() if isinstance(c, str) else c


def refusal_event(gw, marker: str) -> dict:
    [event] = wait_for_events(gw, lambda e: marker in e["prompt"])
    return event


def assert_refused(event: dict, tool: str = "run_command", rule: str = "no-destructive-commands") -> None:
    assert (event["decision"], event["rule_id"], event["status"]) == ("block", rule, 200), event
    assert f"answer: tool call {tool} refused (rule {rule})" in event["reason"]


FUNCTION = {"type": "function", "function": {"name": "run_command", "parameters": {"type": "object"}}}


# --- OpenAI chat completions ------------------------------------------------------------------------------------

def chat_answer(args: dict, name: str = "run_command") -> Reply:
    return Reply(body=json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": name, "arguments": json.dumps(args)}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode())


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_openai_chat_a_forbidden_call_becomes_the_answer_text(gateway, upstream, marker, args, refused):
    upstream.route("/v1/chat/completions", lambda rec: chat_answer(args))
    answer = openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{marker} clean up"}], tools=[FUNCTION])
    choice = answer.choices[0]
    if refused:
        assert choice.finish_reason == "stop" and choice.message.tool_calls is None
        assert "refused the call of the tool 'run_command'" in choice.message.content
        assert "Destructive commands are not allowed." in choice.message.content
        assert_refused(refusal_event(gateway, marker))
    else:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "run_command", LS)
        assert refusal_event(gateway, marker)["decision"] == "allow"


def chat_call_frames(args: dict) -> list[str]:
    text = json.dumps(args)
    return [chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "run_command", "arguments": ""}}]}),
            *[chunk({"tool_calls": [{"index": 0, "function": {"arguments": text[i:i + 5]}}]})
              for i in range(0, len(text), 5)],
            chunk({}, "tool_calls"), "data: [DONE]\n\n"]


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_openai_chat_stream_text_first_then_the_call_refused_or_passed(gateway, upstream, marker, args, refused):
    """Read with the SDK's own stream helper, which accumulates the chunks and parses the call's arguments."""
    gate = threading.Event()
    upstream.route("/v1/chat/completions", lambda rec: Reply(content_type="text/event-stream", chunks=held_back(
        [chunk({"role": "assistant", "content": "Cleaning "}), chunk({"content": "up."})], gate,
        chat_call_frames(args))))
    strict = {"type": "function", "function": {**FUNCTION["function"], "strict": True}}
    with openai_client(gateway).chat.completions.stream(
            model="gpt-4o", messages=[{"role": "user", "content": f"{marker} clean up"}], tools=[strict]) as stream:
        for ev in stream:
            if ev.type == "content.delta" and ev.snapshot == "Cleaning up." and not gate.is_set():
                gate.set()  # the text came while the upstream still held the call back (it waits for this)
        final = stream.get_final_completion().choices[0]
    assert gate.is_set()
    if refused:
        assert not final.message.tool_calls and final.finish_reason == "stop"
        assert final.message.content.startswith("Cleaning up.")
        assert "refused the call of the tool 'run_command'" in final.message.content
        assert_refused(refusal_event(gateway, marker))
    else:
        assert final.message.content == "Cleaning up." and final.finish_reason == "tool_calls"
        [call] = final.message.tool_calls
        assert (call.id, call.function.name, call.function.arguments) == ("call_1", "run_command", json.dumps(LS))
        assert call.function.parsed_arguments == LS


def test_openai_chat_stream_a_call_that_never_completes_is_refused(gateway, upstream, marker):
    frames = chat_call_frames(RM)[:3]  # the call's first pieces, then the stream ends
    upstream.route("/v1/chat/completions", lambda rec: Reply(content_type="text/event-stream", chunks=[
        chunk({"role": "assistant", "content": "Hm."}).encode(), *(f.encode() for f in frames)]))
    stream = openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{marker} go"}], tools=[FUNCTION], stream=True)
    deltas = [c.delta for ev in stream for c in ev.choices]
    assert not any(d.tool_calls for d in deltas)
    assert "the call did not complete" in "".join(d.content or "" for d in deltas)
    event = refusal_event(gateway, marker)
    assert event["decision"] == "block" and "tool call run_command refused: it did not complete" in event["reason"]


def test_openai_chat_stream_huge_arguments_are_refused_not_held(gateway, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: Reply(content_type="text/event-stream", chunks=(
        f.encode() for f in chat_call_frames({"command": "echo " + "A" * 200_000}))))
    stream = openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{marker} go"}], tools=[FUNCTION], stream=True)
    deltas, finish = [], None
    for ev in stream:
        for c in ev.choices:
            deltas.append(c.delta)
            finish = c.finish_reason or finish
    assert not any(d.tool_calls for d in deltas) and finish == "stop"
    assert "the call grew past the cap" in "".join(d.content or "" for d in deltas)
    assert "grew past the cap" in refusal_event(gateway, marker)["reason"]


def test_a_monitored_rule_records_the_call_it_would_refuse_and_lets_it_through(gateway, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_answer({"to": "x@example.com"}, "send_mail"))
    answer = openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{marker} mail"}],
        tools=[{"type": "function", "function": {"name": "send_mail"}}])
    assert answer.choices[0].message.tool_calls[0].function.name == "send_mail"
    event = refusal_event(gateway, marker)
    assert (event["decision"], event["rule_id"]) == ("monitor", "no-mail")
    assert "tool call send_mail would be refused (rule no-mail, mode: monitor)" in event["reason"]


def test_a_stripped_tool_is_not_offered_and_its_call_is_refused_all_the_same(gateway, upstream, marker):
    """The model calls what it was not offered (it saw the tool earlier, or guessed): still refused."""
    upstream.route("/v1/chat/completions", lambda rec: chat_answer({"name": "prod"}, "delete_repo"))
    answer = openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{marker} tidy"}],
        tools=[FUNCTION, {"type": "function", "function": {"name": "delete_repo"}}])
    [sent] = [r for r in upstream.requests if marker.encode() in r.body]
    assert [t["function"]["name"] for t in json.loads(sent.body)["tools"]] == ["run_command"]
    choice = answer.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert "refused the call of the tool 'delete_repo' (policy rule 'no-deleting-tools')" in choice.message.content
    event = refusal_event(gateway, marker)
    assert "stripped tools delete_repo from the request" in event["reason"]
    assert_refused(event, "delete_repo", "no-deleting-tools")


# --- OpenAI Responses -------------------------------------------------------------------------------------------

RESPONSES_TOOL = {"type": "function", "name": "run_command", "parameters": {"type": "object"}}


def fc_item(args: dict, status: str = "completed") -> dict:
    return {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "run_command",
            "arguments": json.dumps(args) if status == "completed" else "", "status": status}


def response_object(output: list[dict]) -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4.1",
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 3, "output_tokens": 3, "total_tokens": 6}}


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_openai_responses_a_forbidden_function_call_item_becomes_a_message(gateway, upstream, marker, args, refused):
    upstream.route("/v1/responses", lambda rec: Reply(body=json.dumps(response_object([fc_item(args)])).encode()))
    answer = openai_client(gateway).responses.create(model="gpt-4.1", input=f"{marker} clean", tools=[RESPONSES_TOOL])
    [item] = answer.output
    if refused:
        assert item.type == "message" and "refused the call of the tool 'run_command'" in answer.output_text
        assert_refused(refusal_event(gateway, marker))
    else:
        assert (item.type, item.call_id, json.loads(item.arguments)) == ("function_call", "call_1", LS)


def sse_event(payload: dict) -> str:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_openai_responses_stream_text_first_then_the_call(gateway, upstream, marker, args, refused):
    message = {"type": "message", "id": "msg_0", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "On it.", "annotations": []}]}
    text = json.dumps(args)
    before = [sse_event({"type": "response.created", "sequence_number": 0,
                         "response": {**response_object([]), "status": "in_progress"}}),
              sse_event({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
                         "item": {**message, "status": "in_progress", "content": []}}),
              sse_event({"type": "response.content_part.added", "sequence_number": 2, "output_index": 0,
                         "item_id": "msg_0", "content_index": 0,
                         "part": {"type": "output_text", "text": "", "annotations": []}}),
              sse_event({"type": "response.output_text.delta", "sequence_number": 3, "output_index": 0,
                         "item_id": "msg_0", "content_index": 0, "delta": "On it.", "logprobs": []}),
              sse_event({"type": "response.output_item.done", "sequence_number": 4, "output_index": 0,
                         "item": message})]
    after = [sse_event({"type": "response.output_item.added", "sequence_number": 5, "output_index": 1,
                        "item": fc_item(args, "in_progress")}),
             sse_event({"type": "response.function_call_arguments.delta", "sequence_number": 6, "output_index": 1,
                        "item_id": "fc_1", "delta": text}),
             sse_event({"type": "response.function_call_arguments.done", "sequence_number": 7, "output_index": 1,
                        "item_id": "fc_1", "arguments": text}),
             sse_event({"type": "response.output_item.done", "sequence_number": 8, "output_index": 1,
                        "item": fc_item(args)}),
             sse_event({"type": "response.completed", "sequence_number": 9,
                        "response": response_object([message, fc_item(args)])})]
    gate = threading.Event()
    upstream.route("/v1/responses", lambda rec: Reply(content_type="text/event-stream",
                                                      chunks=held_back(before, gate, after)))
    with openai_client(gateway).responses.stream(model="gpt-4.1", input=f"{marker} clean",
                                             tools=[RESPONSES_TOOL]) as stream:  # the SDK's accumulating helper
        for ev in stream:
            if ev.type == "response.output_text.delta" and ev.delta == "On it.":
                assert not gate.is_set()
                gate.set()
        final = stream.get_final_response()
    assert gate.is_set()
    kinds = [i.type for i in final.output]
    if refused:
        assert kinds == ["message", "message"] and "refused the call of the tool" in final.output_text
        assert_refused(refusal_event(gateway, marker))
    else:
        assert kinds == ["message", "function_call"] and json.loads(final.output[1].arguments) == LS


# --- Anthropic --------------------------------------------------------------------------------------------------

ANTHROPIC_TOOL = {"name": "run_command", "input_schema": {"type": "object"}}


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_anthropic_a_forbidden_tool_use_block_becomes_text(gateway, upstream, marker, args, refused):
    upstream.route("/v1/messages", lambda rec: Reply(body=json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "On it."},
                    {"type": "tool_use", "id": "toolu_1", "name": "run_command", "input": args}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 3}}).encode()))
    answer = anthropic_client(gateway).messages.create(model="claude-test", max_tokens=50, tools=[ANTHROPIC_TOOL],
                                                   messages=[{"role": "user", "content": f"{marker} clean"}])
    if refused:
        assert answer.stop_reason == "end_turn" and [b.type for b in answer.content] == ["text", "text"]
        assert "refused the call of the tool 'run_command'" in answer.content[1].text
        assert_refused(refusal_event(gateway, marker))
    else:
        assert answer.stop_reason == "tool_use" and answer.content[1].input == LS


def anthropic_events(args: dict) -> tuple[list[dict], list[dict]]:
    """A Messages stream: the text block's events, then the tool_use block's and the end's."""
    text = json.dumps(args)
    before = [{"type": "message_start", "message": {
                  "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
                  "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "On it."}},
              {"type": "content_block_stop", "index": 0}]
    after = [{"type": "content_block_start", "index": 1, "content_block": {
                 "type": "tool_use", "id": "toolu_1", "name": "run_command", "input": {}}},
             *[{"type": "content_block_delta", "index": 1, "delta": {
                 "type": "input_json_delta", "partial_json": text[i:i + 7]}} for i in range(0, len(text), 7)],
             {"type": "content_block_stop", "index": 1},
             {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
              "usage": {"output_tokens": 9}},
             {"type": "message_stop"}]
    return before, after


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_anthropic_stream_text_first_then_the_tool_use(gateway, upstream, marker, args, refused):
    before, after = ([sse_event(e) for e in events] for events in anthropic_events(args))
    gate = threading.Event()
    upstream.route("/v1/messages", lambda rec: Reply(content_type="text/event-stream",
                                                     chunks=held_back(before, gate, after)))
    with anthropic_client(gateway).messages.stream(model="claude-test", max_tokens=50, tools=[ANTHROPIC_TOOL],
                                               messages=[{"role": "user", "content": f"{marker} clean"}]) as stream:
        for ev in stream:
            if ev.type == "text" and ev.text == "On it.":
                assert not gate.is_set()
                gate.set()
        final = stream.get_final_message()
    assert gate.is_set()
    if refused:
        assert final.stop_reason == "end_turn" and [b.type for b in final.content] == ["text", "text"]
        assert "refused the call of the tool 'run_command'" in final.content[1].text
        assert_refused(refusal_event(gateway, marker))
    else:
        assert final.stop_reason == "tool_use" and final.content[1].input == LS


# --- Google Gemini (google-genai) -------------------------------------------------------------------------------

def gemini_chunk(part: dict, finish: str | None = None) -> str:
    candidate = {"content": {"role": "model", "parts": [part]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return f"data: {json.dumps({'candidates': [candidate], 'modelVersion': 'gemini-2.0-flash-001'})}\r\n\r\n"


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_google_genai_stream_a_forbidden_function_call_part_becomes_text(gateway, upstream, marker, args, refused):
    from google.genai import types
    gate = threading.Event()
    route_gemini(upstream, "gemini-2.0-flash:streamGenerateContent", lambda rec: Reply(
        content_type="text/event-stream", chunks=held_back(
            [gemini_chunk({"text": "On it."})], gate,
            [gemini_chunk({"functionCall": {"name": "run_command", "args": args}}, "STOP")])))
    client = genai_client(gateway)
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(name="run_command")])
    pieces, calls, finish = [], [], None
    for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents=f"{marker} clean",
                                                   config=types.GenerateContentConfig(tools=[tool])):
        if c.text == "On it.":
            assert not gate.is_set()
            gate.set()
        parts = c.candidates[0].content.parts
        pieces += [p.text for p in parts if p.text]
        calls += [p.function_call for p in parts if p.function_call]
        finish = c.candidates[0].finish_reason or finish
    assert gate.is_set() and finish == types.FinishReason.STOP
    if refused:
        assert calls == [] and "refused the call of the tool 'run_command'" in pieces[-1]
        assert_refused(refusal_event(gateway, marker))
    else:
        assert [(c.name, c.args) for c in calls] == [("run_command", LS)]


# --- Amazon Bedrock (boto3) -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_boto3_invoke_model_with_response_stream_claude_tool_use(gateway, upstream, bedrock, marker, args, refused):
    """Claude's own events, each in a chunk frame of Bedrock's event stream (what Claude Code on Bedrock reads)."""
    before, after = ([es.chunk(e) for e in events] for events in anthropic_events(args))
    gate = threading.Event()
    upstream.route(f"/model/{MODEL.replace(':', '%3A')}/invoke-with-response-stream", lambda rec: Reply(
        content_type="application/vnd.amazon.eventstream", chunks=held_back(before, gate, after)))
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "tools": [ANTHROPIC_TOOL],
            "messages": [{"role": "user", "content": f"{marker} clean"}]}
    response = bedrock.invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(body))
    events = []
    for e in response["body"]:
        events.append(json.loads(e["chunk"]["bytes"]))
        if events[-1].get("delta", {}).get("text") == "On it.":
            assert not gate.is_set()
            gate.set()
    assert gate.is_set()
    blocks = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    [stop] = [e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta"]
    if refused:
        assert blocks == ["text", "text"] and stop == "end_turn"
        assert "refused the call of the tool 'run_command'" in events[-4]["delta"]["text"]
        assert_refused(refusal_event(gateway, marker))
    else:
        assert blocks == ["text", "tool_use"] and stop == "tool_use"
        assert json.loads("".join(e["delta"].get("partial_json", "") for e in events
                                  if e["type"] == "content_block_delta")) == LS


CONVERSE_TOOLS = {"tools": [{"toolSpec": {"name": "run_command", "inputSchema": {"json": {"type": "object"}}}}]}


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_boto3_converse_stream_a_forbidden_tool_use_becomes_text(gateway, upstream, bedrock, marker, args, refused):
    text = json.dumps(args)
    before = [es.event("messageStart", {"role": "assistant"}),
              es.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "On it."}}),
              es.event("contentBlockStop", {"contentBlockIndex": 0})]
    after = [es.event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {
                 "toolUseId": "tu_1", "name": "run_command"}}}),
             *[es.event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": text[i:i + 6]}}})
               for i in range(0, len(text), 6)],
             es.event("contentBlockStop", {"contentBlockIndex": 1}),
             es.event("messageStop", {"stopReason": "tool_use"}),
             es.event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 3, "totalTokens": 6},
                                   "metrics": {"latencyMs": 5}})]
    gate = threading.Event()
    data = b"".join(after)
    upstream.route(f"/model/{MODEL.replace(':', '%3A')}/converse-stream", lambda rec: Reply(
        content_type="application/vnd.amazon.eventstream",
        chunks=held_back(before, gate, [data[i:i + 29] for i in range(0, len(data), 29)])))
    response = bedrock.converse_stream(modelId=MODEL, toolConfig=CONVERSE_TOOLS,
                                       messages=[{"role": "user", "content": [{"text": f"{marker} clean"}]}])
    texts, tool_input, tool_uses, stop = [], "", [], None
    for ev in response["stream"]:
        delta = ev.get("contentBlockDelta", {}).get("delta", {})
        if "text" in delta:
            texts.append(delta["text"])
            if delta["text"] == "On it.":
                assert not gate.is_set()
                gate.set()
        tool_input += delta.get("toolUse", {}).get("input", "")
        if "toolUse" in ev.get("contentBlockStart", {}).get("start", {}):
            tool_uses.append(ev["contentBlockStart"]["start"]["toolUse"]["name"])
        stop = ev.get("messageStop", {}).get("stopReason", stop)
    assert gate.is_set()
    if refused:
        assert tool_uses == [] and stop == "end_turn"
        assert "refused the call of the tool 'run_command'" in texts[-1]
        assert_refused(refusal_event(gateway, marker))
    else:
        assert tool_uses == ["run_command"] and json.loads(tool_input) == LS and stop == "tool_use"


def test_a_stream_compressed_although_identity_was_asked_for_is_decoded_and_still_guarded(gateway, upstream, marker):
    def gzipped(frames: list[str]):
        z = zlib.compressobj(wbits=31)
        for f in frames:
            yield z.compress(f.encode()) + z.flush(zlib.Z_SYNC_FLUSH)
        yield z.flush()
    upstream.route("/v1/chat/completions", lambda rec: Reply(
        content_type="text/event-stream", headers={"content-encoding": "gzip"},
        chunks=gzipped([chunk({"role": "assistant", "content": "Hm."}), *chat_call_frames(RM)])))
    stream = openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{marker} go"}], tools=[FUNCTION], stream=True)
    deltas = [c.delta for ev in stream for c in ev.choices]
    assert not any(d.tool_calls for d in deltas)
    assert "refused the call of the tool 'run_command'" in "".join(d.content or "" for d in deltas)
    [sent] = [r for r in upstream.requests if marker.encode() in r.body]
    assert sent.headers.get("accept-encoding") == "identity"
    assert_refused(refusal_event(gateway, marker))


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_google_genai_and_boto3_converse_json_answers(gateway, upstream, bedrock, marker, args, refused):
    from google.genai import types
    route_gemini(upstream, "gemini-2.0-flash:generateContent", lambda rec: Reply(body=json.dumps({"candidates": [{
        "content": {"role": "model", "parts": [{"functionCall": {"name": "run_command", "args": args}}]},
        "finishReason": "STOP", "index": 0}]}).encode()))
    client = genai_client(gateway)
    tools = [types.Tool(function_declarations=[types.FunctionDeclaration(name="run_command")])]
    answer = client.models.generate_content(model="gemini-2.0-flash", contents=f"{marker} gemini",
                                            config=types.GenerateContentConfig(tools=tools))
    upstream.route(f"/model/{MODEL.replace(':', '%3A')}/converse", lambda rec: Reply(body=json.dumps({
        "output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tu_1", "name": "run_command", "input": args}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 3, "totalTokens": 6},
        "metrics": {"latencyMs": 5}}).encode()))
    converse = bedrock.converse(modelId=MODEL, toolConfig=CONVERSE_TOOLS,
                                messages=[{"role": "user", "content": [{"text": f"{marker} bedrock"}]}])
    [block] = converse["output"]["message"]["content"]
    if refused:
        assert answer.function_calls is None and "refused the call of the tool 'run_command'" in answer.text
        assert answer.candidates[0].finish_reason == types.FinishReason.STOP
        assert "refused the call of the tool 'run_command'" in block["text"] and converse["stopReason"] == "end_turn"
        for which in ("gemini", "bedrock"):
            assert_refused(refusal_event(gateway, f"{marker} {which}"))
    else:
        assert [(c.name, c.args) for c in answer.function_calls] == [("run_command", LS)]
        assert block["toolUse"]["input"] == LS and converse["stopReason"] == "tool_use"


# Command R, Mistral Large, Nova and gpt-oss through InvokeModel answer in their vendors' own shapes: Cohere v1 chat,
# chat choices (Mistral's named `stop_reason`), Converse's, OpenAI chat's
BEDROCK_VENDORS = {"cohere": "cohere.command-r-plus-v1:0", "mistral": "mistral.mistral-large-2407-v1:0",
                   "nova": "us.amazon.nova-pro-v1:0", "openai": "openai.gpt-oss-120b-1:0"}
METRICS = {"amazon-bedrock-invocationMetrics": {"inputTokenCount": 3, "outputTokenCount": 3}}


def bedrock_vendor_request(vendor: str, marker: str) -> dict:
    if vendor == "cohere":
        return {"message": f"{marker} clean", "tools": [
            {"name": "run_command", "parameter_definitions": {"command": {"type": "str"}}}]}
    if vendor == "nova":
        return {"messages": [{"role": "user", "content": [{"text": f"{marker} clean"}]}],
                "toolConfig": CONVERSE_TOOLS, "inferenceConfig": {"maxTokens": 50}}
    return {"messages": [{"role": "user", "content": f"{marker} clean"}], "tools": [FUNCTION]}


def bedrock_vendor_text(vendor: str) -> dict:
    """The stream object of the text before the call."""
    if vendor == "cohere":
        return {"is_finished": False, "event_type": "text-generation", "text": "On it."}
    if vendor == "nova":
        return {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "On it."}}}
    if vendor == "openai":
        return gpt_oss_chunk({"role": "assistant", "content": "On it."})
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "On it."}, "stop_reason": None}]}


def gpt_oss_chunk(delta: dict, finish: str | None = None, **more) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": BEDROCK_VENDORS["openai"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}


def bedrock_vendor_call(vendor: str, args: dict) -> list[dict]:
    """The stream objects of one call (each in a chunk frame); the last one is the answer's end."""
    text = json.dumps(args)
    if vendor == "nova":  # each object one ConverseStream event, keyed by its name
        return [{"contentBlockStop": {"contentBlockIndex": 0}},
                {"contentBlockStart": {"contentBlockIndex": 1, "start": {"toolUse": {
                    "toolUseId": "tu_1", "name": "run_command"}}}},
                *[{"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"toolUse": {"input": text[i:i + 6]}}}}
                  for i in range(0, len(text), 6)],
                {"contentBlockStop": {"contentBlockIndex": 1}}, {"messageStop": {"stopReason": "tool_use"}},
                {"metadata": {"usage": {"inputTokens": 3, "outputTokens": 3}}, **METRICS}]
    if vendor == "openai":  # the call's arguments in pieces, as OpenAI chat streams them
        return [gpt_oss_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
                    "name": "run_command", "arguments": ""}}]}),
                *[gpt_oss_chunk({"tool_calls": [{"index": 0, "function": {"arguments": text[i:i + 6]}}]})
                  for i in range(0, len(text), 6)],
                gpt_oss_chunk({}, "tool_calls", **METRICS)]
    if vendor == "cohere":
        return [{"is_finished": False, "event_type": "tool-calls-chunk",
                 "tool_call_delta": {"index": 0, "name": "run_command"}},
                {"is_finished": False, "event_type": "tool-calls-chunk",
                 "tool_call_delta": {"index": 0, "parameters": json.dumps(args)}},
                {"is_finished": False, "event_type": "tool-calls-generation", "text": "On it.",
                 "tool_calls": [{"name": "run_command", "parameters": args}]},
                {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE",
                 "response": bedrock_vendor_answer(vendor, args)}]
    return [{"choices": [{"index": 0, "message": bedrock_vendor_answer(vendor, args)["choices"][0]["message"],
                          "stop_reason": None}]},
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "stop_reason": "tool_calls"}],
             **METRICS}]


def bedrock_vendor_answer(vendor: str, args: dict) -> dict:
    if vendor == "cohere":
        calls = [{"name": "run_command", "parameters": args}]
        return {"response_id": "r1", "generation_id": "g1", "text": "On it.", "finish_reason": "COMPLETE",
                "tool_calls": calls, "chat_history": [{"role": "USER", "message": "clean"},
                                                      {"role": "CHATBOT", "message": "On it.", "tool_calls": calls}]}
    if vendor == "nova":
        return {"output": {"message": {"role": "assistant", "content": [
            {"text": "On it."}, {"toolUse": {"toolUseId": "tu_1", "name": "run_command", "input": args}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 3, "totalTokens": 6}}
    if vendor == "openai":
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": BEDROCK_VENDORS[vendor],
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "On it.", "tool_calls": [{
                        "id": "call_1", "type": "function", "function": {
                            "name": "run_command", "arguments": json.dumps(args)}}]}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
    return {"choices": [{"index": 0, "stop_reason": "tool_calls", "message": {
        "role": "assistant", "content": "On it.", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "run_command", "arguments": json.dumps(args)}}]}}]}


def assert_bedrock_vendor_answer(vendor: str, answer: dict, args: dict, refused: bool) -> None:
    """Cohere: the call gone from `tool_calls` and the history, its refusal in the text; Mistral and gpt-oss: in the
    message's content, the finish reason `stop`; Nova: a text block instead of the toolUse one, `end_turn`."""
    said = (answer["text"] if vendor == "cohere" else json.dumps(answer["output"]) if vendor == "nova"
            else answer["choices"][0]["message"]["content"])
    if refused:
        assert "refused the call of the tool 'run_command'" in said and "rm  -rf" not in json.dumps(answer)
        if vendor == "cohere":
            assert "tool_calls" not in answer and "tool_calls" not in answer["chat_history"][-1]
        elif vendor == "nova":
            assert [list(b) for b in answer["output"]["message"]["content"]] == [["text"], ["text"]]
            assert answer["stopReason"] == "end_turn"
        else:
            assert "tool_calls" not in answer["choices"][0]["message"]
            assert answer["choices"][0]["stop_reason" if vendor == "mistral" else "finish_reason"] == "stop"
    else:
        assert answer == bedrock_vendor_answer(vendor, args)


@pytest.mark.parametrize("vendor", list(BEDROCK_VENDORS))
@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_boto3_invoke_model_each_vendors_own_tool_calls(gateway, upstream, bedrock, marker, vendor, args, refused):
    model = BEDROCK_VENDORS[vendor].replace(":", "%3A")
    upstream.route(f"/model/{model}/invoke", lambda rec: Reply(body=json.dumps(
        bedrock_vendor_answer(vendor, args)).encode()))
    response = bedrock.invoke_model(modelId=BEDROCK_VENDORS[vendor],
                                    body=json.dumps(bedrock_vendor_request(vendor, f"{marker} json")))
    assert_bedrock_vendor_answer(vendor, json.loads(response["body"].read()), args, refused)
    if refused:
        assert_refused(refusal_event(gateway, f"{marker} json"))


@pytest.mark.parametrize("vendor", list(BEDROCK_VENDORS))
@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_boto3_invoke_model_with_response_stream_each_vendors_own_tool_calls(gateway, upstream, bedrock, marker,
                                                                             vendor, args, refused):
    text = bedrock_vendor_text(vendor)
    gate = threading.Event()
    upstream.route(f"/model/{BEDROCK_VENDORS[vendor].replace(':', '%3A')}/invoke-with-response-stream",
                   lambda rec: Reply(content_type="application/vnd.amazon.eventstream", chunks=held_back(
                       [es.chunk(text)], gate, [es.chunk(o) for o in bedrock_vendor_call(vendor, args)])))
    response = bedrock.invoke_model_with_response_stream(
        modelId=BEDROCK_VENDORS[vendor], body=json.dumps(bedrock_vendor_request(vendor, marker)))
    objects = []
    for e in response["body"]:
        objects.append(json.loads(e["chunk"]["bytes"]))
        if objects[-1] == text:
            assert not gate.is_set()
            gate.set()
    assert gate.is_set()
    said = json.dumps(objects)
    if refused:
        assert "refused the call of the tool 'run_command'" in said and "rm  -rf" not in said
        if vendor == "cohere":
            assert_bedrock_vendor_answer(vendor, objects[-1]["response"], args, refused)
        elif vendor == "nova":
            assert not any("toolUse" in o.get("contentBlockStart", {}).get("start", {}) for o in objects)
            assert [o["messageStop"]["stopReason"] for o in objects if "messageStop" in o] == ["end_turn"]
        else:
            finish = "stop_reason" if vendor == "mistral" else "finish_reason"
            assert [c[finish] for o in objects for c in o["choices"] if c.get(finish)] == ["stop"]
            assert not any(c.get("delta", {}).get("tool_calls") for o in objects for c in o["choices"])
        if vendor != "cohere":  # a chunk rewritten keeps Bedrock's token counts
            assert {k: objects[-1][k] for k in METRICS} == METRICS
        assert_refused(refusal_event(gateway, marker))
    else:
        assert objects == [text, *bedrock_vendor_call(vendor, args)]


# --- Mistral (mistralai) ----------------------------------------------------------------------------------------

def mistral_answer(args: dict) -> Reply:
    """An agents completion calling the tool (OpenAI chat, as Mistral writes it: no `type`, the arguments whole)."""
    return Reply(body=json.dumps({
        "id": "a1", "object": "chat.completion", "created": 1, "model": "mistral-medium-2505",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "", "tool_calls": [{"id": "abc123xyz", "index": 0, "function": {
                "name": "run_command", "arguments": json.dumps(args)}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode())


def mistral_chunk(delta: dict, finish: str | None = None) -> str:
    return "data: " + json.dumps({"id": "a1", "object": "chat.completion.chunk", "created": 1,
                                  "model": "mistral-medium-2505",
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_mistral_agents_complete_a_forbidden_call_becomes_the_answer_text(gateway, upstream, marker, args, refused):
    upstream.route("/v1/agents/completions", lambda rec: mistral_answer(args))
    answer = mistral_client(gateway).agents.complete(
        agent_id="ag-1", messages=[{"role": "user", "content": f"{marker} clean up"}], tools=[FUNCTION])
    choice = answer.choices[0]
    if refused:
        assert choice.finish_reason == "stop" and not choice.message.tool_calls
        assert "refused the call of the tool 'run_command'" in choice.message.content
        assert_refused(refusal_event(gateway, marker))
    else:
        [call] = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls" and json.loads(call.function.arguments) == LS


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_mistral_agents_stream_text_first_then_the_whole_call(gateway, upstream, marker, args, refused):
    gate = threading.Event()
    call = {"id": "abc123xyz", "index": 0, "function": {"name": "run_command", "arguments": json.dumps(args)}}
    upstream.route("/v1/agents/completions", lambda rec: Reply(content_type="text/event-stream", chunks=held_back(
        [mistral_chunk({"role": "assistant", "content": "On it."})], gate,
        [mistral_chunk({"tool_calls": [call]}, "tool_calls"), "data: [DONE]\n\n"])))
    text, calls, finish = "", [], None
    for ev in mistral_client(gateway).agents.stream(
            agent_id="ag-1", messages=[{"role": "user", "content": f"{marker} clean up"}], tools=[FUNCTION]):
        choice = ev.data.choices[0]
        if choice.delta.content == "On it.":
            assert not gate.is_set()
            gate.set()
        text += choice.delta.content or ""
        calls += choice.delta.tool_calls or []
        finish = choice.finish_reason or finish
    assert gate.is_set()
    if refused:
        assert calls == [] and finish == "stop" and text.startswith("On it.")
        assert "refused the call of the tool 'run_command'" in text
        assert_refused(refusal_event(gateway, marker))
    else:
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("run_command", LS)]
        assert finish == "tool_calls" and text == "On it."


def test_a_mistral_agents_own_tools_are_judged_though_its_requests_offer_none(gateway, upstream, marker):
    """An agent's tools are defined on Mistral's side: an agents completion, a conversation with the agent, and
    any conversation continued or restarted (its tools are those it was started with) name none, and the answer
    may call them all the same."""
    upstream.route("/v1/agents/completions", lambda rec: mistral_answer(RM))
    client = mistral_client(gateway)
    answer = client.agents.complete(agent_id="ag-1", messages=[{"role": "user", "content": f"{marker} completion"}])
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "refused the call of the tool 'run_command'" in choice.message.content
    conversation = {"object": "conversation.response", "conversation_id": "conv_1", "outputs": [conversation_call(RM)],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
    for path in ("/v1/conversations", "/v1/conversations/conv_1", "/v1/conversations/conv_1/restart"):
        upstream.route(path, lambda rec: Reply(body=json.dumps(conversation).encode()))
    conversations = client.beta.conversations
    for reply in (conversations.start(inputs=f"{marker} conversation", agent_id="ag-1"),
                  conversations.append(conversation_id="conv_1", inputs=f"{marker} continued"),
                  conversations.restart(conversation_id="conv_1", from_entry_id="msg_0", inputs=f"{marker} restarted")):
        [entry] = reply.outputs
        assert entry.type == "message.output" and "refused the call of the tool 'run_command'" in entry.content
    for asked in ("completion", "conversation", "continued", "restarted"):
        assert_refused(refusal_event(gateway, f"{marker} {asked}"))


def conversation_call(args: dict) -> dict:
    return {"object": "entry", "type": "function.call", "id": "fc_1", "tool_call_id": "call_1",
            "name": "run_command", "arguments": json.dumps(args), "created_at": "2025-01-01T00:00:00Z"}


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_mistral_conversations_a_forbidden_function_call_entry_becomes_a_message(gateway, upstream, marker, args,
                                                                                 refused):
    upstream.route("/v1/conversations", lambda rec: Reply(body=json.dumps({
        "object": "conversation.response", "conversation_id": "conv_1", "outputs": [conversation_call(args)],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode()))
    reply = mistral_client(gateway).beta.conversations.start(inputs=f"{marker} clean up", model="mistral-medium-latest",
                                                             tools=[FUNCTION])
    [entry] = reply.outputs
    if refused:
        assert entry.type == "message.output" and "refused the call of the tool 'run_command'" in entry.content
        assert_refused(refusal_event(gateway, marker))
    else:
        assert (entry.type, entry.name, json.loads(entry.arguments)) == ("function.call", "run_command", LS)


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_mistral_conversations_stream_text_first_then_the_call(gateway, upstream, marker, args, refused):
    def event(payload: dict) -> str:
        return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"
    entry = conversation_call(args)
    delta = {**{k: entry[k] for k in ("id", "tool_call_id", "name", "arguments", "created_at")},
             "type": "function.call.delta", "output_index": 1}
    gate = threading.Event()
    upstream.route("/v1/conversations", lambda rec: Reply(content_type="text/event-stream", chunks=held_back(
        [event({"type": "conversation.response.started", "conversation_id": "conv_1"}),
         event({"type": "message.output.delta", "id": "msg_0", "output_index": 0, "content_index": 0,
                "role": "assistant", "content": "On it."})], gate,
        [event(delta), event({"type": "conversation.response.done",
                              "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})])))
    texts, calls, kinds = [], [], []
    for ev in mistral_client(gateway).beta.conversations.start_stream(
            inputs=f"{marker} clean up", model="mistral-medium-latest", tools=[FUNCTION]):
        kinds.append(ev.data.type)
        if ev.data.type == "message.output.delta":
            if ev.data.content == "On it.":
                assert not gate.is_set()
                gate.set()
            texts.append(ev.data.content)
        elif ev.data.type == "function.call.delta":
            calls.append((ev.data.name, json.loads(ev.data.arguments)))
    assert gate.is_set() and kinds[-1] == "conversation.response.done"
    if refused:
        assert calls == [] and "refused the call of the tool 'run_command'" in texts[-1]
        assert_refused(refusal_event(gateway, marker))
    else:
        assert calls == [("run_command", LS)] and texts == ["On it."]


# --- Cohere v2 (cohere.ClientV2) --------------------------------------------------------------------------------

@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_cohere_chat_a_forbidden_call_becomes_text_content(gateway, upstream, marker, args, refused):
    upstream.route("/v2/chat", lambda rec: Reply(body=json.dumps({
        "id": "c1", "finish_reason": "TOOL_CALL", "message": {
            "role": "assistant", "tool_plan": "I will run the command.", "tool_calls": [
                {"id": "run_command_1", "type": "function", "function": {
                    "name": "run_command", "arguments": json.dumps(args)}}]},
        "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 3}}}).encode()))
    answer = cohere_client(gateway).chat(model="command-a-03-2025", tools=[FUNCTION],
                                         messages=[{"role": "user", "content": f"{marker} clean up"}])
    if refused:
        assert answer.finish_reason == "COMPLETE" and not answer.message.tool_calls
        assert "refused the call of the tool 'run_command'" in answer.message.content[0].text
        assert_refused(refusal_event(gateway, marker))
    else:
        [call] = answer.message.tool_calls
        assert answer.finish_reason == "TOOL_CALL" and json.loads(call.function.arguments) == LS


def cohere_event(kind: str, index: int | None = None, **message) -> str:
    payload = {"type": kind, **({} if index is None else {"index": index}),
               **({"delta": {"message": message}} if message else {})}
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_cohere_chat_stream_text_first_then_the_call(gateway, upstream, marker, args, refused):
    text = json.dumps(args)
    gate = threading.Event()
    upstream.route("/v2/chat", lambda rec: Reply(content_type="text/event-stream", chunks=held_back(
        [cohere_event("message-start", role="assistant"), cohere_event("tool-plan-delta", tool_plan="On it.")], gate,
        [cohere_event("tool-call-start", 0, tool_calls={"id": "run_command_1", "type": "function", "function": {
            "name": "run_command", "arguments": ""}}),
         *(cohere_event("tool-call-delta", 0, tool_calls={"function": {"arguments": text[i:i + 6]}})
           for i in range(0, len(text), 6)),
         cohere_event("tool-call-end", 0),
         f"event: message-end\ndata: {json.dumps({'type': 'message-end', 'delta': {'finish_reason': 'TOOL_CALL'}})}"
         "\n\n"])))
    texts, calls, arguments, finish = [], [], "", None
    for ev in cohere_client(gateway).chat_stream(model="command-a-03-2025", tools=[FUNCTION],
                                                 messages=[{"role": "user", "content": f"{marker} clean up"}]):
        if ev.type == "tool-plan-delta" and ev.delta.message.tool_plan == "On it.":
            assert not gate.is_set()
            gate.set()
        elif ev.type == "content-delta":
            texts.append(ev.delta.message.content.text)
        elif ev.type == "tool-call-start":
            calls.append(ev.delta.message.tool_calls.function.name)
        elif ev.type == "tool-call-delta":
            arguments += ev.delta.message.tool_calls.function.arguments
        elif ev.type == "message-end":
            finish = ev.delta.finish_reason
    assert gate.is_set()
    if refused:
        assert calls == [] and finish == "COMPLETE"
        assert "refused the call of the tool 'run_command'" in "".join(texts)
        assert_refused(refusal_event(gateway, marker))
    else:
        assert calls == ["run_command"] and json.loads(arguments) == LS and finish == "TOOL_CALL" and texts == []


# --- Ollama (the ollama client) ---------------------------------------------------------------------------------

def ollama_client(gateway):
    import ollama
    return ollama.Client(host="https://ollama.com", proxy=gateway.proxy_url, verify=ssl_context(gateway), timeout=30)


def ollama_line(message: dict, done: bool = False) -> dict:
    return {"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z", "message": {"role": "assistant", **message},
            "done": done, **({"done_reason": "stop", "prompt_eval_count": 3, "eval_count": 3} if done else {})}


def ollama_call(args: dict) -> dict:
    return {"content": "", "tool_calls": [{"function": {"name": "run_command", "arguments": args}}]}


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_ollama_chat_a_forbidden_call_becomes_the_message_text(gateway, upstream, marker, args, refused):
    upstream.route("/api/chat", lambda rec: Reply(body=json.dumps(ollama_line(ollama_call(args), done=True)).encode()))
    answer = ollama_client(gateway).chat(model="llama3.2", tools=[FUNCTION], stream=False,
                                         messages=[{"role": "user", "content": f"{marker} clean up"}])
    if refused:
        assert not answer.message.tool_calls and answer.done_reason == "stop"
        assert "refused the call of the tool 'run_command'" in answer.message.content
        assert_refused(refusal_event(gateway, marker))
    else:
        [call] = answer.message.tool_calls
        assert (call.function.name, call.function.arguments) == ("run_command", LS)


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_ollama_chat_stream_text_first_then_the_whole_call(gateway, upstream, marker, args, refused):
    gate = threading.Event()
    upstream.route("/api/chat", lambda rec: Reply(content_type="application/x-ndjson", chunks=held_back(
        [json.dumps(ollama_line({"content": "On it."})) + "\n"], gate,
        [json.dumps(ollama_line(ollama_call(args))) + "\n", json.dumps(ollama_line({"content": ""}, True)) + "\n"])))
    text, calls = "", []
    for part in ollama_client(gateway).chat(model="llama3.2", tools=[FUNCTION], stream=True,
                                            messages=[{"role": "user", "content": f"{marker} clean up"}]):
        if part.message.content == "On it.":
            assert not gate.is_set()
            gate.set()
        text += part.message.content or ""
        calls += part.message.tool_calls or []
    assert gate.is_set() and part.done
    if refused:
        assert calls == [] and text.startswith("On it.") and "refused the call of the tool 'run_command'" in text
        assert_refused(refusal_event(gateway, marker))
    else:
        assert [(c.function.name, c.function.arguments) for c in calls] == [("run_command", LS)] and text == "On it."


@pytest.mark.parametrize("args,refused", [(RM, True), (LS, False)])
def test_cohere_v1_chat_stream_a_forbidden_call_becomes_text(gateway, upstream, marker, args, refused):
    """The v1 client's NDJSON stream: the call in chunks, then whole in its generation, and the end's response."""
    import cohere
    call = {"name": "run_command", "parameters": args}
    text = json.dumps(args)
    lines = [{"event_type": "stream-start", "generation_id": "g1"},
             {"event_type": "text-generation", "text": "On it."},
             {"event_type": "tool-calls-chunk", "tool_call_delta": {"index": 0, "name": "run_command"}},
             *({"event_type": "tool-calls-chunk", "tool_call_delta": {"index": 0, "parameters": text[i:i + 6]}}
               for i in range(0, len(text), 6)),
             {"event_type": "tool-calls-generation", "text": "On it.", "tool_calls": [call]},
             {"event_type": "stream-end", "finish_reason": "COMPLETE", "response": {
                 "text": "On it.", "generation_id": "g1", "finish_reason": "COMPLETE", "tool_calls": [call],
                 "meta": {"billed_units": {"input_tokens": 3, "output_tokens": 3}}}}]
    upstream.route("/v1/chat", lambda rec: Reply(content_type="application/stream+json", chunks=[
        json.dumps({"is_finished": x["event_type"] == "stream-end", **x}).encode() + b"\n" for x in lines]))
    client = cohere.Client(api_key="co-test-not-a-key", httpx_client=http_client(gateway))
    events = list(client.chat_stream(model="command-r", message=f"{marker} clean up", tools=[
        {"name": "run_command", "description": "Runs a command", "parameter_definitions": {
            "command": {"type": "str", "required": True}}}]))
    texts = "".join(e.text for e in events if e.event_type == "text-generation")
    generated = [c for e in events if e.event_type == "tool-calls-generation" for c in e.tool_calls]
    end = events[-1]
    assert end.event_type == "stream-end" and end.finish_reason == "COMPLETE"
    if refused:
        assert generated == [] and not end.response.tool_calls
        assert texts.startswith("On it.") and "refused the call of the tool 'run_command'" in texts
        assert not any(e.event_type == "tool-calls-chunk" and e.tool_call_delta for e in events)
        assert_refused(refusal_event(gateway, marker))
    else:
        assert [(c.name, c.parameters) for c in generated] == [("run_command", LS)] and texts == "On it."


# --- a stream the guard does not read ---------------------------------------------------------------------------

def test_a_stream_in_a_framing_the_guard_does_not_read_is_replaced_by_an_error(gateway, upstream, marker):
    """Gemini streams a JSON array without alt=sse: its calls could not be judged as they come, so the client gets
    an error in Gemini's shape instead of the stream (fail closed, as for a JSON answer that cannot be judged)."""
    elements = [{"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}]}
                for part in ({"text": "On it."}, {"functionCall": {"name": "run_command", "args": RM}})]
    body = ("[" + ",\r\n".join(json.dumps(e) for e in elements) + "]").encode()
    upstream.route("/v1beta/models/gemini-2.0-flash:streamGenerateContent", lambda rec: Reply(
        content_type="application/json", chunks=[body[i:i + 40] for i in range(0, len(body), 40)]))
    with http_client(gateway).stream(
            "POST", "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            headers={"x-goog-api-key": "AIza-test"}, json={
                "contents": [{"role": "user", "parts": [{"text": f"{marker} clean up"}]}],
                "tools": [{"functionDeclarations": [{"name": "run_command"}]}]}) as r:
        answer = r.read()
    assert r.status_code == 403 and b"rm " not in answer and b"functionCall" not in answer
    assert json.loads(answer)["error"]["status"] == "PERMISSION_DENIED"
    event = refusal_event(gateway, marker)
    assert (event["decision"], event["status"]) == ("block", 403)
    assert "tool calls could not be checked: its stream (application/json) is in a framing the guard does not read" \
        in event["reason"]


def test_a_model_whose_answers_the_guard_does_not_read_is_audited_as_not_checked(gateway, upstream, bedrock, marker):
    """Llama on Bedrock's InvokeModel, offered a tool while a tool rule is in force: its answer (a `generation` text,
    no structure for calls) is not read for calls, and the audit says so instead of implying they were judged."""
    model = "meta.llama3-3-70b-instruct-v1:0"
    upstream.route(f"/model/{model.replace(':', '%3A')}/invoke", lambda rec: Reply(body=json.dumps(
        {"generation": "ok", "prompt_token_count": 3, "generation_token_count": 1, "stop_reason": "stop"}
    ).encode()))
    bedrock.invoke_model(modelId=model, body=json.dumps({"messages": [{"role": "user", "content": f"{marker} run"}],
                                                         "tools": [FUNCTION]}))
    event = refusal_event(gateway, marker)
    assert any("tool calls in the answer not checked" in w and model in w for w in event["warnings"]), (
        event["warnings"], event["tool_names"], event["model"], event["operation"])
