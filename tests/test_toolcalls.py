"""Tool calls in model answers (providers/toolcalls.py, policy/toolcalls.py): real provider answers, JSON and
streamed, with a forbidden call and an allowed one. What the guard passes on is read back by the gateway's own
response parsers (as a client's SDK would read it): the refusal is text, the finish reason consistent, an allowed
call unchanged to the byte, and the text before a call goes on before the call has arrived."""

from __future__ import annotations

import base64
import gzip
import json
import random
import textwrap

import orjson
import pytest

from core.catalog import Catalog
from core.exchange import ToolCall
from dlp.scanner import Finding
from core.rulesfile import SHIPPED_RULES
from policy.engine import Subject
from policy.language import load
from policy.toolcalls import forbidding
from providers import eventstream, toolcalls
from tests.support import eventstream_frames as es
from tests.support.wire import parse, respond

REFUSAL = "REFUSED"


def judge(call: ToolCall) -> str | None:
    """Forbids `shell`, and `run` with a destructive command (read from the parsed arguments)."""
    if call.name == "shell":
        return f"{REFUSAL} {call.name}"
    if call.name == "run" and "rm -rf" in str((call.value or {}).get("command", "")):
        return f"{REFUSAL} {call.name}"
    return None


# --- the answers, as each provider writes them ---------------------------------------------------------------------

FUNCTION = {"type": "function", "function": {"name": "run"}}
REQUESTS = {
    toolcalls.CHAT: ("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
                                              "tools": [FUNCTION]}),
    toolcalls.RESPONSES: ("/v1/responses", {"model": "gpt-4o", "input": "go",
                                            "tools": [{"type": "function", "name": "run"}]}),
    toolcalls.ANTHROPIC: ("/v1/messages", {"model": "claude-x", "max_tokens": 9, "tools": [{"name": "run"}],
                                           "messages": [{"role": "user", "content": "go"}]}),
    toolcalls.GEMINI: ("/v1beta/models/gemini-2.0-flash:generateContent", {
        "contents": [{"role": "user", "parts": [{"text": "go"}]}],
        "tools": [{"functionDeclarations": [{"name": "run"}]}]}),
    toolcalls.CONVERSE: ("/model/m1/converse", {"messages": [{"role": "user", "content": [{"text": "go"}]}],
                                                "toolConfig": {"tools": [{"toolSpec": {"name": "run"}}]}}),
    toolcalls.BEDROCK_ANTHROPIC: ("/model/anthropic.claude-3-5-sonnet-20240620-v1:0/invoke", {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 9, "tools": [{"name": "run"}],
        "messages": [{"role": "user", "content": "go"}]}),
    toolcalls.BEDROCK_COHERE: ("/model/cohere.command-r-plus-v1:0/invoke", {"message": "go", "tools": [
        {"name": "run", "parameter_definitions": {"command": {"type": "str"}}}]}),
    toolcalls.BEDROCK_MISTRAL: ("/model/mistral.mistral-large-2407-v1:0/invoke", {
        "messages": [{"role": "user", "content": "go"}], "tools": [FUNCTION]}),
    toolcalls.BEDROCK_NOVA: ("/model/us.amazon.nova-pro-v1:0/invoke", {
        "messages": [{"role": "user", "content": [{"text": "go"}]}],
        "toolConfig": {"tools": [{"toolSpec": {"name": "run"}}]}}),
    toolcalls.BEDROCK_OPENAI: ("/model/openai.gpt-oss-120b-1:0/invoke", {
        "messages": [{"role": "user", "content": "go"}], "tools": [FUNCTION]}),
    toolcalls.MISTRAL_CONVERSATIONS: ("/v1/conversations", {"model": "mistral-medium-latest", "inputs": "go",
                                                            "tools": [FUNCTION]}),
    toolcalls.COHERE: ("/v2/chat", {"model": "command-a-03-2025", "messages": [{"role": "user", "content": "go"}],
                                    "tools": [FUNCTION]}),
    toolcalls.COHERE_V1: ("/v1/chat", {"model": "command-r", "message": "go", "tools": [
        {"name": "run", "parameter_definitions": {"command": {"type": "str"}}}]}),
    toolcalls.OLLAMA: ("/api/chat", {"model": "llama3.2", "stream": False, "tools": [FUNCTION],  # it streams unless
                                     "messages": [{"role": "user", "content": "go"}]}),
}
HOSTS = {toolcalls.CHAT: "api.openai.com", toolcalls.RESPONSES: "api.openai.com",
         toolcalls.ANTHROPIC: "api.anthropic.com", toolcalls.GEMINI: "generativelanguage.googleapis.com",
         toolcalls.CONVERSE: "bedrock-runtime.us-east-1.amazonaws.com",
         toolcalls.BEDROCK_ANTHROPIC: "bedrock-runtime.us-east-1.amazonaws.com",
         toolcalls.BEDROCK_COHERE: "bedrock-runtime.us-east-1.amazonaws.com",
         toolcalls.BEDROCK_MISTRAL: "bedrock-runtime.us-east-1.amazonaws.com",
         toolcalls.BEDROCK_NOVA: "bedrock-runtime.us-east-1.amazonaws.com",
         toolcalls.BEDROCK_OPENAI: "bedrock-runtime.us-east-1.amazonaws.com",
         toolcalls.MISTRAL_CONVERSATIONS: "api.mistral.ai", toolcalls.COHERE: "api.cohere.com",
         toolcalls.COHERE_V1: "api.cohere.com", toolcalls.OLLAMA: "ollama.com"}


def body(fmt: str, name: str, args: dict) -> dict:
    """A JSON answer with some text and one call (Nova's: Converse's, the last one)."""
    if fmt in (toolcalls.CHAT, toolcalls.BEDROCK_OPENAI):
        return {"id": "c1", "object": "chat.completion", "model": "gpt-4o", "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Let me.", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": name, "arguments": json.dumps(args)}}]}, "finish_reason": "tool_calls"}]}
    if fmt == toolcalls.RESPONSES:
        return {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4o", "output": [
            {"type": "message", "id": "msg_0", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Let me.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": name, "arguments": json.dumps(args),
             "status": "completed"}]}
    if fmt in (toolcalls.ANTHROPIC, toolcalls.BEDROCK_ANTHROPIC):
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [
            {"type": "text", "text": "Let me."}, {"type": "tool_use", "id": "toolu_1", "name": name, "input": args}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}
    if fmt == toolcalls.GEMINI:
        return {"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me."}, {"functionCall": {"name": name, "args": args}}]}, "finishReason": "STOP"}]}
    if fmt == toolcalls.BEDROCK_MISTRAL:  # chat choices, the finish reason named stop_reason
        return {"choices": [bedrock_mistral_choice("Let me.", [mistral_call(name, args)], "tool_calls")]}
    if fmt in (toolcalls.COHERE_V1, toolcalls.BEDROCK_COHERE):
        calls = [{"name": name, "parameters": args}]
        return {"response_id": "r1", "generation_id": "g1", "text": "Let me.", "finish_reason": "COMPLETE",
                "tool_calls": calls, "chat_history": [{"role": "USER", "message": "go"},
                                                      {"role": "CHATBOT", "message": "Let me.", "tool_calls": calls}],
                "meta": {"billed_units": {"input_tokens": 1, "output_tokens": 1}}}
    if fmt == toolcalls.OLLAMA:
        return ollama_line({"content": "Let me.", "tool_calls": [{"function": {"name": name, "arguments": args}}]},
                           done=True)
    if fmt == toolcalls.COHERE:
        return {"id": "c1", "finish_reason": "TOOL_CALL", "message": {
            "role": "assistant", "tool_plan": "I will run it.", "content": [{"type": "text", "text": "Let me."}],
            "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": name, "arguments": json.dumps(args)}}]},
            "usage": {"billed_units": {"input_tokens": 1, "output_tokens": 1}}}
    if fmt == toolcalls.MISTRAL_CONVERSATIONS:
        return {"object": "conversation.response", "conversation_id": "conv_1", "outputs": [
            {"object": "entry", "type": "message.output", "role": "assistant", "id": "msg_0", "content": "Let me."},
            {"object": "entry", "type": "function.call", "id": "fc_1", "tool_call_id": "call_1", "name": name,
             "arguments": json.dumps(args)}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    return {"output": {"message": {"role": "assistant", "content": [
        {"text": "Let me."}, {"toolUse": {"toolUseId": "tu_1", "name": name, "input": args}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 1}}


def mistral_call(name: str, args: dict) -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def bedrock_mistral_choice(content: str, calls: list[dict] | None = None, stop: str | None = None) -> dict:
    """A choice of Mistral Large on Bedrock, whole or streamed alike: a `message`, not a `delta`."""
    message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
    return {"index": 0, "message": message, "stop_reason": stop}


def ollama_line(message: dict, done: bool = False) -> dict:
    return {"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z", "message": {"role": "assistant", **message},
            "done": done, **({"done_reason": "stop", "eval_count": 1} if done else {})}


def ndjson(*objects: dict) -> list[bytes]:
    return [json.dumps(o).encode() + b"\n" for o in objects]


def sse(*events: dict, named: bool = False) -> list[bytes]:
    return [(f"event: {e['type']}\n" if named else "").encode() + b"data: " + json.dumps(e).encode() + b"\n\n"
            for e in events]


def stream(fmt: str, name: str, args: dict) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """A streamed answer: (the text's events, the call's events, the events after it)."""
    text = json.dumps(args)
    half = len(text) // 2
    if fmt in (toolcalls.CHAT, toolcalls.BEDROCK_OPENAI):  # gpt-oss on Bedrock: each chunk in a chunk frame
        def chunk(delta, finish=None, **more):
            return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}

        def chunks(*objects):
            return sse(*objects) if fmt == toolcalls.CHAT else [es.chunk(o) for o in objects]
        end = (sse(chunk({}, "tool_calls")) + [b"data: [DONE]\n\n"] if fmt == toolcalls.CHAT else chunks(chunk(
            {}, "tool_calls", **{"amazon-bedrock-invocationMetrics": {"inputTokenCount": 1, "outputTokenCount": 1}})))
        return (chunks(chunk({"role": "assistant", "content": "Let "}), chunk({"content": "me."})),
                chunks(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}),
                       chunk({"tool_calls": [{"index": 0, "function": {"arguments": text[:half]}}]}),
                       chunk({"tool_calls": [{"index": 0, "function": {"arguments": text[half:]}}]})),
                end)
    if fmt == toolcalls.RESPONSES:
        item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": name, "arguments": "",
                "status": "in_progress"}
        done = {**item, "arguments": text, "status": "completed"}
        message = {"type": "message", "id": "msg_0", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": "Let me.", "annotations": []}]}
        return (sse({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "output": []}},
                    {"type": "response.output_text.delta", "sequence_number": 1, "output_index": 0,
                     "item_id": "msg_0", "content_index": 0, "delta": "Let me."}, named=True),
                sse({"type": "response.output_item.added", "sequence_number": 2, "output_index": 1, "item": item},
                    {"type": "response.function_call_arguments.delta", "sequence_number": 3, "output_index": 1,
                     "item_id": "fc_1", "delta": text[:half]},
                    {"type": "response.function_call_arguments.delta", "sequence_number": 4, "output_index": 1,
                     "item_id": "fc_1", "delta": text[half:]},
                    {"type": "response.function_call_arguments.done", "sequence_number": 5, "output_index": 1,
                     "item_id": "fc_1", "arguments": text},
                    {"type": "response.output_item.done", "sequence_number": 6, "output_index": 1, "item": done},
                    named=True),
                sse({"type": "response.completed", "sequence_number": 7, "response": {
                    "id": "resp_1", "status": "completed", "model": "gpt-4o", "output": [message, done]}},
                    named=True))
    if fmt in (toolcalls.ANTHROPIC, toolcalls.BEDROCK_ANTHROPIC):  # Bedrock: each event in a chunk frame
        def frames(*events):
            return sse(*events, named=True) if fmt == toolcalls.ANTHROPIC else [es.chunk(e) for e in events]
        return (frames({"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 1}}},
                       {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                       {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me."}},
                       {"type": "content_block_stop", "index": 0}),
                frames({"type": "content_block_start", "index": 1, "content_block": {
                    "type": "tool_use", "id": "toolu_1", "name": name, "input": {}}},
                       {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                              "partial_json": text[:half]}},
                       {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                              "partial_json": text[half:]}},
                       {"type": "content_block_stop", "index": 1}),
                frames({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                        "usage": {"output_tokens": 5}}, {"type": "message_stop"}))
    if fmt == toolcalls.GEMINI:
        def part(p, finish=None):
            candidate = {"content": {"role": "model", "parts": [p]}, "index": 0}
            return {"candidates": [{**candidate, "finishReason": finish}] if finish else [candidate]}
        return (sse(part({"text": "Let me."})), sse(part({"functionCall": {"name": name, "args": args}}, "STOP")),
                [])
    if fmt in (toolcalls.COHERE_V1, toolcalls.BEDROCK_COHERE):  # the call in chunks, then whole in its generation
        def line(kind, **fields):
            return {"is_finished": kind == "stream-end", "event_type": kind, **fields}

        def lines(*objects):  # Bedrock: each line's object in a chunk frame
            return ndjson(*objects) if fmt == toolcalls.COHERE_V1 else [es.chunk(o) for o in objects]
        return (lines(line("stream-start", generation_id="g1"), line("text-generation", text="Let me.")),
                lines(line("tool-calls-chunk", tool_call_delta={"index": 0, "name": name}),
                      line("tool-calls-chunk", tool_call_delta={"index": 0, "parameters": text[:half]}),
                      line("tool-calls-chunk", tool_call_delta={"index": 0, "parameters": text[half:]}),
                      line("tool-calls-generation", text="Let me.", tool_calls=[{"name": name, "parameters": args}])),
                lines(line("stream-end", finish_reason="COMPLETE", response=body(fmt, name, args))))
    if fmt == toolcalls.BEDROCK_MISTRAL:  # each chunk a choice's message; a call comes whole
        def chunk(*choices, **more):
            return es.chunk({"choices": list(choices), **more})
        return ([chunk(bedrock_mistral_choice("Let ")), chunk(bedrock_mistral_choice("me."))],
                [chunk(bedrock_mistral_choice("", [mistral_call(name, args)]))],
                [chunk(bedrock_mistral_choice("", stop="tool_calls"), **{"amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 1, "outputTokenCount": 1}})])
    if fmt == toolcalls.OLLAMA:  # a call comes whole, in one line
        return (ndjson(ollama_line({"content": "Let me."})),
                ndjson(ollama_line({"content": "", "tool_calls": [{"function": {"name": name, "arguments": args}}]})),
                ndjson(ollama_line({"content": ""}, done=True)))
    if fmt == toolcalls.COHERE:
        def message(kind, index=None, **delta):
            return {"type": kind, **({} if index is None else {"index": index}),
                    **({"delta": {"message": delta}} if delta else {})}
        return (sse(message("message-start", role="assistant"),
                    message("content-start", 0, content={"type": "text", "text": ""}),
                    message("content-delta", 0, content={"text": "Let me."}), message("content-end", 0), named=True),
                sse(message("tool-call-start", 0, tool_calls={"id": "call_1", "type": "function", "function": {
                    "name": name, "arguments": ""}}),
                    message("tool-call-delta", 0, tool_calls={"function": {"arguments": text[:half]}}),
                    message("tool-call-delta", 0, tool_calls={"function": {"arguments": text[half:]}}),
                    message("tool-call-end", 0), named=True),
                sse({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
                    "billed_units": {"input_tokens": 1, "output_tokens": 1}}}}, named=True))
    if fmt == toolcalls.MISTRAL_CONVERSATIONS:  # Mistral sends the arguments whole; here in pieces all the same
        def piece(arguments):
            return {"type": "function.call.delta", "id": "fc_1", "output_index": 1, "name": name,
                    "tool_call_id": "call_1", "arguments": arguments}
        return (sse({"type": "conversation.response.started", "conversation_id": "conv_1"},
                    {"type": "message.output.delta", "id": "msg_0", "output_index": 0, "content_index": 0,
                     "role": "assistant", "content": "Let me."}, named=True),
                sse(piece(""), piece(text[:half]), piece(text[half:]), named=True),
                sse({"type": "conversation.response.done", "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
                    named=True))
    def event(kind, payload, **more):  # ConverseStream's frames; Nova's chunks, each `{eventName: payload}`
        return es.event(kind, payload) if fmt == toolcalls.CONVERSE else es.chunk({kind: payload, **more})
    return ([event("messageStart", {"role": "assistant"}),
             event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me."}}),
             event("contentBlockStop", {"contentBlockIndex": 0})],
            [event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {
                "toolUseId": "tu_1", "name": name}}}),
             event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": text[:half]}}}),
             event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": text[half:]}}}),
             event("contentBlockStop", {"contentBlockIndex": 1})],
            [event("messageStop", {"stopReason": "tool_use"}),
             event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1}}, **{
                 "amazon-bedrock-invocationMetrics": {"inputTokenCount": 1, "outputTokenCount": 1}})])


CONTENT_TYPES = {fmt: "text/event-stream" for fmt in REQUESTS} | {
    toolcalls.CONVERSE: "application/vnd.amazon.eventstream",
    toolcalls.BEDROCK_ANTHROPIC: "application/vnd.amazon.eventstream",
    toolcalls.BEDROCK_COHERE: "application/vnd.amazon.eventstream",
    toolcalls.BEDROCK_MISTRAL: "application/vnd.amazon.eventstream",
    toolcalls.BEDROCK_NOVA: "application/vnd.amazon.eventstream",
    toolcalls.BEDROCK_OPENAI: "application/vnd.amazon.eventstream", toolcalls.OLLAMA: "application/x-ndjson",
    toolcalls.COHERE_V1: "application/stream+json"}
STOPS = {toolcalls.CHAT: ("tool_calls", "stop"), toolcalls.RESPONSES: ("completed", "completed"),
         toolcalls.ANTHROPIC: ("tool_use", "end_turn"), toolcalls.GEMINI: ("STOP", "STOP"),
         toolcalls.CONVERSE: ("tool_use", "end_turn"), toolcalls.BEDROCK_ANTHROPIC: ("tool_use", "end_turn"),
         toolcalls.BEDROCK_COHERE: ("COMPLETE", "COMPLETE"), toolcalls.BEDROCK_MISTRAL: ("tool_calls", "stop"),
         toolcalls.BEDROCK_NOVA: ("tool_use", "end_turn"), toolcalls.BEDROCK_OPENAI: ("tool_calls", "stop"),
         toolcalls.MISTRAL_CONVERSATIONS: ("stop", "stop"), toolcalls.COHERE: ("TOOL_CALL", "COMPLETE"),
         toolcalls.COHERE_V1: ("COMPLETE", "COMPLETE"), toolcalls.OLLAMA: ("stop", "stop")}
JSON_STOPS = {toolcalls.MISTRAL_CONVERSATIONS: ""}  # a conversation's JSON answer has no finish reason


BEDROCK = (toolcalls.CONVERSE, toolcalls.BEDROCK_ANTHROPIC, toolcalls.BEDROCK_COHERE, toolcalls.BEDROCK_MISTRAL,
           toolcalls.BEDROCK_NOVA, toolcalls.BEDROCK_OPENAI)


def read_back(fmt: str, answer: bytes | dict, streamed: bool):
    """The answer as the gateway's own parser for that provider reads it."""
    path, request = REQUESTS[fmt]
    if streamed and fmt == toolcalls.GEMINI:
        path = path.replace(":generateContent", ":streamGenerateContent") + "?alt=sse"
    elif streamed and fmt in BEDROCK:
        path = path.replace("/converse", "/converse-stream").replace("/invoke", "/invoke-with-response-stream")
    in_body = streamed and fmt != toolcalls.GEMINI and fmt not in BEDROCK  # streaming is asked in the body or URL
    bedrock = fmt in BEDROCK
    parsed = parse(path, {**request, "stream": True} if in_body else request,
                   host=HOSTS[fmt], hints=("bedrock" if bedrock else fmt.split("-")[0],))
    x = parsed.exchange
    assert toolcalls.format_of(parsed.provider.name, x.operation, x.model) == fmt and x.stream == streamed
    return respond(parsed, CONTENT_TYPES[fmt] if streamed else "application/json",
                   answer if isinstance(answer, bytes) else answer).exchange


FORMATS = list(REQUESTS)
WHOLE = (toolcalls.GEMINI, toolcalls.OLLAMA, toolcalls.BEDROCK_MISTRAL)  # a call comes whole, in one event
PIECEMEAL = [f for f in FORMATS if f not in WHOLE]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_forbidden_call_in_a_json_answer_becomes_text_and_the_finish_reason_says_stop(fmt):
    data = body(fmt, "run", {"command": "rm -rf /"})
    assert toolcalls.rewrite_body(fmt, data, judge)
    x = read_back(fmt, data, streamed=False)
    assert x.completion_tool_calls == [] and f"{REFUSAL} run" in x.completion and "Let me." in x.completion
    assert x.finish_reason == JSON_STOPS.get(fmt, STOPS[fmt][1])
    assert orjson.loads(orjson.dumps(data)) == data  # still plain JSON


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_allowed_call_in_a_json_answer_is_left_alone(fmt):
    data = body(fmt, "run", {"command": "ls"})
    before = json.dumps(data)
    assert not toolcalls.rewrite_body(fmt, data, judge) and json.dumps(data) == before


def guarded(fmt: str, chunks: list[bytes], step: int = 0, max_call_bytes: int = toolcalls.MAX_CALL_BYTES):
    """Feed the guard (re-chunked by `step`), collecting what it passes on after each piece."""
    guard = toolcalls.stream_guard(fmt, CONTENT_TYPES[fmt], judge, max_call_bytes)
    data = b"".join(chunks)
    pieces = [data[i:i + step] for i in range(0, len(data), step)] if step else chunks
    return guard, [guard.feed(p) for p in pieces] + [guard.finish()]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("step", [0, 7])
def test_a_streamed_allowed_call_passes_unchanged_and_the_text_before_it_goes_on_first(fmt, step):
    text, call, after = stream(fmt, "run", {"command": "ls -la"})
    guard = toolcalls.stream_guard(fmt, CONTENT_TYPES[fmt], judge)
    assert guard.feed(b"".join(text)) == b"".join(text)  # before any of the call arrived
    _, out = guarded(fmt, text + call + after, step)
    assert b"".join(out) == b"".join(text + call + after)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_streamed_forbidden_call_is_replaced_by_refusal_events_with_a_consistent_stop(fmt):
    text, call, after = stream(fmt, "run", {"command": "sudo rm -rf /srv"})
    guard = toolcalls.stream_guard(fmt, CONTENT_TYPES[fmt], judge)
    assert guard.feed(b"".join(text)) == b"".join(text)
    held = [guard.feed(c) for c in call[:-1]]
    assert held == [b""] * len(held)  # the call's events wait for it to be complete
    out = b"".join(text) + b"".join(held) + guard.feed(call[-1]) + guard.feed(b"".join(after)) + guard.finish()
    x = read_back(fmt, out, streamed=True)
    assert x.completion_tool_calls == [] and x.completion == f"Let me.{REFUSAL} run"
    assert x.finish_reason == STOPS[fmt][1] and not x.warnings
    assert b"rm -rf" not in out


@pytest.mark.parametrize("fmt", PIECEMEAL)
def test_a_call_that_never_completes_is_refused_at_the_end_of_the_stream(fmt):
    text, call, _ = stream(fmt, "run", {"command": "ls"})
    guard, out = guarded(fmt, text + call[:2])
    x = read_back(fmt, b"".join(out), streamed=True)
    assert x.completion_tool_calls == [] and "did not complete" in x.completion
    assert guard.refused == [("run", toolcalls.INCOMPLETE)]


@pytest.mark.parametrize("fmt", PIECEMEAL)
def test_a_call_growing_past_the_cap_is_refused_and_nothing_more_of_it_is_held(fmt):
    text, call, after = stream(fmt, "run", {"command": "ls " + "x" * 50_000})
    guard, out = guarded(fmt, text + call + after, step=999, max_call_bytes=4096)
    passed = b"".join(out)
    assert len(passed) < 12_000 and b"xxxxxxxxxx" not in passed
    x = read_back(fmt, passed, streamed=True)
    assert x.completion_tool_calls == [] and "grew past the cap" in x.completion
    assert x.finish_reason == STOPS[fmt][1]
    assert guard.refused == [("run", toolcalls.OVERSIZED)]


def test_chat_a_refused_call_among_allowed_ones_keeps_the_others_renumbered():
    def chunk(delta, finish=None):
        return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def call(i, name, args):
        return chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                      "function": {"name": name, "arguments": json.dumps(args)}}]})
    events = sse(call(0, "shell", {"c": "x"}), call(1, "run", {"command": "ls"}), chunk({}, "tool_calls"))
    _, out = guarded(toolcalls.CHAT, events)
    x = read_back(toolcalls.CHAT, b"".join(out), streamed=True)
    assert [(c.name, c.arguments) for c in x.completion_tool_calls] == [("run", '{"command": "ls"}')]
    assert x.finish_reason == "tool_calls" and x.completion == f"{REFUSAL} shell"
    assert b'"index":0,"id":"call_1"' in b"".join(out)  # the allowed call takes the refused one's index


@pytest.mark.parametrize("fmt,start,end", [(toolcalls.ANTHROPIC, b"data: {", b"\n\n"), (toolcalls.OLLAMA, b"{", b"\n")])
def test_an_event_that_never_ends_is_cut_rather_than_held(fmt, start, end):
    guard = toolcalls.stream_guard(fmt, CONTENT_TYPES[fmt], judge)
    assert guard.feed(start + b"x" * (toolcalls.MAX_EVENT_BYTES + 1)) == b""
    assert guard.broken and guard.feed(end) == b""


@pytest.mark.parametrize("step", [0, 1])
def test_ndjson_lines_ended_by_crlf_get_a_refusal_line_ended_alike(step):
    text, call, after = stream(toolcalls.OLLAMA, "shell", {"c": "x"})
    guard, out = guarded(toolcalls.OLLAMA, [e.replace(b"\n", b"\r\n") for e in text + call + after], step)
    lines = b"".join(out).split(b"\r\n")
    assert not guard.broken and len(lines) == 4 and lines[-1] == b"" and REFUSAL.encode() in lines[1]
    assert b"tool_calls" not in lines[1] and b"\n" not in b"".join(lines)


@pytest.mark.parametrize("fmt,content_type", [(toolcalls.GEMINI, "application/json"),  # its JSON array stream
                                               (toolcalls.OLLAMA, "text/event-stream"),
                                               (toolcalls.CHAT, "application/x-ndjson")])
def test_a_stream_in_another_framing_is_not_one_the_guard_reads(fmt, content_type):
    assert toolcalls.stream_guard(fmt, content_type, judge) is None


# --- the policy's judgement --------------------------------------------------------------------------------------

CATALOG = Catalog.load(SHIPPED_RULES / "endpoints.yaml")
RULES = """
- id: admins-may
  who: {users: [root]}
  when: {tools: [shell]}
  action: allow
- id: no-shell
  when: {tools: [shell]}
  action: block
  message: No shell.
- id: no-rm
  when: {tools: {names: [run], args: {command: "re:rm\\\\s+-rf"}}}
  action: block
- id: no-delete
  when: {tools: ["delete_*"]}
  action: strip
- id: watch-mail
  when: {tools: [send_mail]}
  action: block
  mode: monitor
"""


@pytest.fixture
def pol(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrules:\n" + textwrap.indent(textwrap.dedent(RULES).strip(), "  ") + "\n")
    return load(path, CATALOG)


@pytest.mark.parametrize("user,name,args,expected", [
    ("", "shell", {}, ("no-shell", "enforce")),
    ("root", "shell", {}, None),  # first match: the allow before it
    ("", "run", {"command": "sudo rm  -rf /"}, ("no-rm", "enforce")),
    ("", "run", {"command": "ls"}, None),
    ("", "delete_repo", {}, ("no-delete", "enforce")),  # stripped from the offer, so its call is refused too
    ("", "send_mail", {}, ("watch-mail", "monitor")),  # recorded, not refused
    ("", "read_file", {}, None),
])
def test_a_call_is_judged_by_the_tool_rules_as_if_offered_alone(pol, user, name, args, expected):
    x = parse(*REQUESTS[toolcalls.CHAT], host="api.openai.com", hints=("openai",)).exchange
    call = ToolCall(name, json.dumps(args), value=args)
    d = forbidding(pol, Subject(user), CATALOG.services["openai"], x, "gpt-4o", {}, call)
    assert (None if d is None else (d.rule, d.mode)) == expected


@pytest.mark.parametrize("fmt", [toolcalls.CHAT, toolcalls.ANTHROPIC])
def test_many_calls_opened_at_once_count_against_one_cap(fmt):
    """Each call small, none ever complete: what is held at once is bounded all the same."""
    if fmt == toolcalls.CHAT:
        events = sse(*({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function", "function": {
                "name": "run", "arguments": '{"command": "'}}]}, "finish_reason": None}]} for i in range(200)))
    else:
        events = sse(*({"type": "content_block_start", "index": i, "content_block": {
            "type": "tool_use", "id": f"t{i}", "name": "run", "input": {}}} for i in range(200)), named=True)
    guard = toolcalls.stream_guard(fmt, "text/event-stream", judge, 4096)
    out = []
    for e in events:
        out.append(guard.feed(e))
        assert (guard.batch_size if fmt == toolcalls.CHAT else guard.held_total) <= 4096
    out.append(guard.finish())
    whys = [why for _, why in guard.refused]
    assert len(whys) == 200 and whys[0] == toolcalls.OVERSIZED and set(whys) == {toolcalls.OVERSIZED,
                                                                                  toolcalls.INCOMPLETE}
    assert b'"command": "' not in b"".join(out) and b"tool_use" not in b"".join(out)


def test_a_call_whose_keys_are_written_with_escapes_is_still_seen():
    """JSON may spell a key with \\u escapes; the client's parser reads it as the key all the same."""
    _, call, after = stream(toolcalls.CHAT, "shell", {"c": "x"})
    escaped = [c.replace(b'"tool_calls"', b'"tool\\u005fcalls"') for c in call]
    assert all(b"tool_calls" not in c for c in escaped)
    _, out = guarded(toolcalls.CHAT, escaped + after)
    x = read_back(toolcalls.CHAT, b"".join(out), streamed=True)
    assert x.completion_tool_calls == [] and x.completion == f"{REFUSAL} shell"


@pytest.mark.parametrize("command,finishes", [("ls", ["tool_calls"]), ("rm -rf /", ["stop"])])
def test_chat_a_finish_riding_on_the_calls_last_piece_is_said_once(command, finishes):
    whole = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
            "name": "run", "arguments": json.dumps({"command": command})}}]}, "finish_reason": "tool_calls"}]}
    _, out = guarded(toolcalls.CHAT, sse(whole) + [b"data: [DONE]\n\n"])
    events = [orjson.loads(e[6:]) for e in b"".join(out).split(b"\n\n") if e.startswith(b"data: {")]
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == finishes


def test_a_guard_that_fails_stops_the_stream_there_and_the_audit_says_why():
    from addons.toolcalls import _Guarded, _Judge
    from policy.language import Policy
    from tests.test_stream_tap import tapped

    class Broken(toolcalls.ChatGuard):
        def feed(self, chunk: bytes) -> bytes:
            raise RuntimeError("bug")
    _, it = tapped()
    guarded = _Guarded(it, Broken(judge), _Judge(Policy(), it, {}), None, None)
    assert guarded(b"data: {}\n\n") == b"" and guarded(b"data: {}\n\n") == b""  # nothing unjudged goes on
    assert it.decision == "block" and "the tool-call guard failed (RuntimeError)" in it.reason


@pytest.mark.parametrize("fmt", [toolcalls.CHAT, toolcalls.GEMINI, toolcalls.ANTHROPIC])
@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_unicode_line_separator_in_a_calls_arguments_does_not_let_it_through(fmt, separator):
    """SSE lines end only in \\r\\n, \\r or \\n: a U+2028 the model writes unescaped is part of the data line."""
    _, call, after = stream(fmt, "shell", {"c": f"a{separator}b"})
    escape = f"\\u{ord(separator):04x}".encode()  # as json.dumps wrote it (in Chat: in a string in a string)
    unescaped = [e.replace(b"\\" + escape, separator.encode()).replace(escape, separator.encode()) for e in call]
    assert any(separator.encode() in e for e in unescaped)
    guard, out = guarded(fmt, unescaped + after)
    x = read_back(fmt, b"".join(out), streamed=True)
    assert not guard.broken and x.completion_tool_calls == [] and f"{REFUSAL} shell" in x.completion


@pytest.mark.parametrize("fmt", [toolcalls.CHAT, toolcalls.GEMINI])
@pytest.mark.parametrize("step", [0, 1])
def test_events_ended_by_a_lone_cr_are_events_too(fmt, step):
    _, call, after = stream(fmt, "shell", {"c": "x"})
    guard, out = guarded(fmt, [e.replace(b"\n", b"\r") for e in call + after], step)
    joined = b"".join(out)
    assert not guard.broken and REFUSAL.encode() in joined and b'"name":"shell"' not in joined.replace(b" ", b"")
    assert b"\n" not in joined  # the refusal written in the stream's own line endings


@pytest.mark.parametrize("fmt", [toolcalls.CHAT, toolcalls.GEMINI, toolcalls.ANTHROPIC, toolcalls.RESPONSES,
                                 toolcalls.MISTRAL_CONVERSATIONS, toolcalls.COHERE, toolcalls.COHERE_V1,
                                 toolcalls.OLLAMA])
def test_an_event_that_may_hold_a_call_and_does_not_parse_stops_the_stream(fmt):
    """orjson refuses a lone surrogate the SDKs' json.loads accepts: such an event is not passed on unjudged."""
    text, call, after = stream(fmt, "shell", {"c": "x"})
    bad = [e.replace(b'"shell"', b'"shell\\ud800"') for e in call]
    assert any(b"\\ud800" in e for e in bad)
    guard, out = guarded(fmt, text + bad + after)
    joined = b"".join(out)
    assert guard.broken and b"\\ud800" not in joined and joined.startswith(b"".join(text))


def event_frame(event_type: str, payload: bytes) -> bytes:
    return es.frame({":message-type": "event", ":event-type": event_type, ":content-type": "application/json"},
                    payload)


UNREADABLE_FRAMES = {  # each where a call would be; orjson refuses a lone surrogate the SDKs' json.loads accepts
    "converse-start-not-json": (toolcalls.CONVERSE, event_frame("contentBlockStart", (
        b'{"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "shell\\ud800"}}}'))),
    "chunk-payload-not-json": (toolcalls.BEDROCK_ANTHROPIC, event_frame("chunk", b'{"bytes": ')),
    "chunk-bytes-not-base64": (toolcalls.BEDROCK_ANTHROPIC, es.event("chunk", {"bytes": "{not base64}"})),
    "chunk-event-not-json": (toolcalls.BEDROCK_ANTHROPIC, es.event("chunk", {"bytes": base64.b64encode(
        b'{"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", '
        b'"name": "shell\\ud800", "input": {}}}').decode()})),
    "nova-chunk-event-not-json": (toolcalls.BEDROCK_NOVA, es.event("chunk", {"bytes": base64.b64encode(
        b'{"contentBlockStart": {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", '
        b'"name": "shell\\ud800"}}}}').decode()})),
}


@pytest.mark.parametrize("fmt,bad", UNREADABLE_FRAMES.values(), ids=list(UNREADABLE_FRAMES))
def test_an_event_stream_frame_that_may_hold_a_call_and_does_not_read_stops_the_stream(fmt, bad):
    """As an unreadable SSE event does: nothing from there on is passed on unjudged."""
    text, _, after = stream(fmt, "shell", {"c": "x"})
    guard, out = guarded(fmt, text + [bad] + after)
    assert guard.broken and b"".join(out) == b"".join(text)


def test_bedrock_mistral_a_refused_call_among_allowed_ones_leaves_the_finish_saying_tool_calls():
    calls = [mistral_call("shell", {"c": "x"}), mistral_call("run", {"command": "ls"})]
    chunks = [es.chunk({"choices": [bedrock_mistral_choice("", calls)]}),
              es.chunk({"choices": [bedrock_mistral_choice("", stop="tool_calls")]})]
    _, out = guarded(toolcalls.BEDROCK_MISTRAL, chunks)
    x = read_back(toolcalls.BEDROCK_MISTRAL, b"".join(out), streamed=True)
    assert [c.name for c in x.completion_tool_calls] == ["run"] and x.completion == f"{REFUSAL} shell"
    assert x.finish_reason == "tool_calls"


def test_bedrock_mistral_chunks_of_delta_pieces_are_guarded_as_openai_chat():
    def chunk(delta, finish=None):
        return es.chunk({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    text = json.dumps({"command": "rm -rf /"})
    events = [chunk({"role": "assistant", "content": "Let me."}),
              chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "run", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": text[:5]}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": text[5:]}}]}), chunk({}, "tool_calls")]
    guard, out = guarded(toolcalls.BEDROCK_MISTRAL, events)
    assert out[0] == events[0] and out[1:3] == [b"", b""]  # the call's pieces held until its JSON closes
    x = read_back(toolcalls.BEDROCK_MISTRAL, b"".join(out), streamed=True)
    assert x.completion_tool_calls == [] and x.completion == f"Let me.{REFUSAL} run" and x.finish_reason == "stop"


def test_bedrock_invoke_judges_the_vendors_whose_answers_it_reads():
    assert [toolcalls.format_of("bedrock", "invoke", m) for m in (
        "us.anthropic.claude-sonnet-4-20250514-v1:0", "cohere.command-r-plus-v1:0", "mistral.mistral-large-2407-v1:0",
        "us.amazon.nova-pro-v1:0", "openai.gpt-oss-20b-1:0", "meta.llama3-70b-instruct-v1:0",
        "amazon.titan-text-express-v1", "deepseek.r1-v1:0", "arn:aws:bedrock:us-east-1:1:provisioned-model/abc")] == [
        toolcalls.BEDROCK_ANTHROPIC, toolcalls.BEDROCK_COHERE, toolcalls.BEDROCK_MISTRAL, toolcalls.BEDROCK_NOVA,
        toolcalls.BEDROCK_OPENAI, None, None, None, None]


def test_bedrock_nova_a_rewritten_chunk_keeps_what_else_it_carries_and_two_events_in_one_are_not_read():
    metrics = {"amazon-bedrock-invocationMetrics": {"inputTokenCount": 1, "outputTokenCount": 1}}
    text, call, _ = stream(toolcalls.BEDROCK_NOVA, "shell", {"c": "x"})
    _, out = guarded(toolcalls.BEDROCK_NOVA, text + call + [es.chunk({"messageStop": {"stopReason": "tool_use"},
                                                                      **metrics})])
    objects = [json.loads(base64.b64decode(json.loads(m.payload)["bytes"]))
               for m in eventstream.EventStreamDecoder().feed(b"".join(out))]
    assert objects[-1] == {"messageStop": {"stopReason": "end_turn"}, **metrics}
    assert objects[-3:-1] == [{"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"text": f"{REFUSAL} shell"}}},
                              {"contentBlockStop": {"contentBlockIndex": 1}}]
    both = es.chunk({"contentBlockStop": {"contentBlockIndex": 1}, "messageStop": {"stopReason": "tool_use"}})
    guard, out = guarded(toolcalls.BEDROCK_NOVA, text + call[:-1] + [both])
    assert guard.broken and b"".join(out).startswith(b"".join(text)) and b"tu_1" not in b"".join(out)
    assert guard.refused == [("shell", toolcalls.INCOMPLETE)]


def test_bedrock_gpt_oss_a_rewritten_finish_chunk_keeps_the_invocation_metrics():
    text, call, after = stream(toolcalls.BEDROCK_OPENAI, "shell", {"c": "x"})
    _, out = guarded(toolcalls.BEDROCK_OPENAI, text + call + after)
    *_, last = eventstream.EventStreamDecoder().feed(b"".join(out))
    finish = json.loads(base64.b64decode(json.loads(last.payload)["bytes"]))
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["amazon-bedrock-invocationMetrics"] == {"inputTokenCount": 1, "outputTokenCount": 1}


# --- the addon on a JSON answer ------------------------------------------------------------------------------------

def answered(pol, fmt: str, raw: bytes, encoding: str | None = None):
    """The addon's response hook (real mitmproxy flow and options) on a 200 JSON answer; (flow, interaction)."""
    import asyncio

    from mitmproxy.test import taddons, tflow

    from addons.extract import Extract
    from addons.toolcalls import AnswerTools
    from core.interaction import KEY, Interaction

    parsed = parse(*REQUESTS[fmt], host=HOSTS[fmt], hints=(fmt.split("-")[0],))
    it = Interaction(service=CATALOG.match(HOSTS[fmt]).service, client_addr="127.0.0.1", host=HOSTS[fmt],
                     method="POST", path=REQUESTS[fmt][0], exchange=parsed.exchange)
    it.stages.parsed = parsed
    addon = AnswerTools()
    with taddons.context(Extract(), addon):  # Extract's: the decoding cap
        addon.policy, addon.active = pol, True
        flow = tflow.tflow(resp=True)
        flow.response.status_code = 200
        flow.response.headers["content-type"] = "application/json"
        if encoding:
            flow.response.headers["content-encoding"] = encoding
        flow.response.raw_content = raw
        flow.metadata[KEY] = it
        asyncio.run(addon.response(flow))
    return flow, it


def forbidden_chat(content) -> dict:
    data = body(toolcalls.CHAT, "shell", {})
    data["choices"][0]["message"]["content"] = content
    return data


def test_a_chat_answer_whose_content_is_a_list_of_parts_has_its_call_judged(pol):
    flow, it = answered(pol, toolcalls.CHAT, orjson.dumps(forbidden_chat([{"type": "text", "text": "Let me."}])))
    message = orjson.loads(flow.response.content)["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"][0] == {"type": "text", "text": "Let me."}
    assert "No shell." in message["content"][1]["text"] and it.decision == "block" and it.rule_id == "no-shell"


@pytest.mark.parametrize("raw,encoding,why", [
    (b"\xef\xbb\xbf" + orjson.dumps(forbidden_chat("x")), None, "not JSON"),  # a BOM: json.loads(text) skips it
    (orjson.dumps(forbidden_chat("x")).replace(b'"index":0', b'"index":0,"p":NaN'), None, "not JSON"),
    (orjson.dumps(forbidden_chat("x")).replace(b'"x"', b'"\\ud800"'), None, "not JSON"),  # a lone surrogate
    (gzip.compress(orjson.dumps(forbidden_chat("x")))[:-12], "gzip", "could not be decoded"),
])
def test_a_json_answer_that_cannot_be_judged_is_replaced_by_an_error(pol, raw, encoding, why):
    """What orjson or the decoder refuses a client may read all the same: its call is not forwarded unjudged."""
    flow, it = answered(pol, toolcalls.CHAT, raw, encoding)
    assert flow.response.status_code == 403 and b"shell" not in flow.response.content
    assert orjson.loads(flow.response.content)["error"]["code"] == "blocked_by_policy"
    assert it.decision == "block" and why in it.reason


# --- legacy chat function_call -------------------------------------------------------------------------------------

def legacy_answer(command: str) -> dict:
    return {"id": "c1", "object": "chat.completion", "model": "gpt-4o", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": None, "function_call": {"name": "run", "arguments": json.dumps(
            {"command": command})}}, "finish_reason": "function_call"}]}


def test_chat_a_legacy_function_call_in_a_json_answer_is_judged():
    data = legacy_answer("rm -rf /")
    assert toolcalls.rewrite_body(toolcalls.CHAT, data, judge)
    choice = data["choices"][0]
    assert "function_call" not in choice["message"] and choice["message"]["content"] == f"{REFUSAL} run"
    assert choice["finish_reason"] == "stop"
    allowed = legacy_answer("ls")
    assert not toolcalls.rewrite_body(toolcalls.CHAT, allowed, judge) and allowed == legacy_answer("ls")


@pytest.mark.parametrize("command,refused", [("rm -rf /", True), ("ls", False)])
@pytest.mark.parametrize("step", [0, 5])
def test_chat_a_streamed_legacy_function_call_is_judged(command, refused, step):
    def chunk(delta, finish=None):
        return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    text = json.dumps({"command": command})
    events = sse(chunk({"role": "assistant", "content": None, "function_call": {"name": "run", "arguments": ""}}),
                 chunk({"function_call": {"arguments": text[:9]}}), chunk({"function_call": {"arguments": text[9:]}}),
                 chunk({}, "function_call")) + [b"data: [DONE]\n\n"]
    guard, out = guarded(toolcalls.CHAT, events, step)
    joined = b"".join(out)
    if not refused:
        assert joined == b"".join(events)
        return
    decoded = [orjson.loads(e[6:]) for e in joined.split(b"\n\n") if e.startswith(b"data: {")]
    deltas = [c["delta"] for e in decoded for c in e["choices"]]
    assert not any("function_call" in d for d in deltas) and b"rm -rf" not in joined
    assert "".join(d.get("content") or "" for d in deltas) == f"{REFUSAL} run"
    assert [c["finish_reason"] for e in decoded for c in e["choices"] if c["finish_reason"]] == ["stop"]


# --- Mistral agents completions: OpenAI chat ----------------------------------------------------------------------

def mistral_agent(stream: bool):
    parsed = parse("/v1/agents/completions", {"agent_id": "ag-1", "stream": stream, "tools": [FUNCTION],
                                              "messages": [{"role": "user", "content": "go"}]},
                   host="api.mistral.ai", hints=("mistral", "openai"))
    x = parsed.exchange
    assert (parsed.provider.name, toolcalls.format_of(parsed.provider.name, x.operation, x.model)) == \
        ("mistral", toolcalls.CHAT)
    return parsed


@pytest.mark.parametrize("command,refused", [("rm -rf /", True), ("ls", False)])
@pytest.mark.parametrize("as_object", [False, True])  # Mistral's SDK takes the arguments as JSON text or an object
def test_mistral_agents_a_calls_arguments_whole_in_one_delta_are_judged_there(command, refused, as_object):
    def chunk(delta, finish=None):
        return {"id": "a1", "object": "chat.completion.chunk", "created": 1, "model": "mistral-medium-2505",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    args = {"command": command}
    events = sse(chunk({"role": "assistant", "content": "Let me."}),
                 chunk({"tool_calls": [{"id": "abc123xyz", "index": 0, "function": {  # no type, as Mistral sends
                     "name": "run", "arguments": args if as_object else json.dumps(args)}}]}, "tool_calls"),
                 ) + [b"data: [DONE]\n\n"]
    guard = toolcalls.stream_guard(toolcalls.CHAT, "text/event-stream", judge)
    out = [guard.feed(e) for e in events] + [guard.finish()]
    assert out[0] == events[0]
    if not refused:
        assert b"".join(out) == b"".join(events)
        return
    x = respond(mistral_agent(True), "text/event-stream", b"".join(out)).exchange
    assert x.completion_tool_calls == [] and x.completion == f"Let me.{REFUSAL} run" and x.finish_reason == "stop"
    assert b"rm -rf" not in b"".join(out)


def test_mistral_agents_a_call_whose_arguments_are_an_object_in_a_json_answer_is_judged():
    data = body(toolcalls.CHAT, "run", {})
    data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = {"command": "rm -rf /"}
    assert toolcalls.rewrite_body(toolcalls.CHAT, data, judge)
    x = respond(mistral_agent(False), "application/json", data).exchange
    assert x.completion_tool_calls == [] and x.completion == f"Let me.\n\n{REFUSAL} run" and x.finish_reason == "stop"


# --- Cohere v2 -----------------------------------------------------------------------------------------------

def test_cohere_a_refusal_is_a_content_of_its_own_and_the_tool_plan_stays():
    """Calls and contents are numbered apart: the refusal's content index is one the stream has not used."""
    data = body(toolcalls.COHERE, "shell", {})
    assert toolcalls.rewrite_body(toolcalls.COHERE, data, judge)
    assert data["message"]["tool_plan"] == "I will run it." and "tool_calls" not in data["message"]
    text, call, after = stream(toolcalls.COHERE, "shell", {})
    _, out = guarded(toolcalls.COHERE, text + call + after)
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in b"".join(out).split(b"\n\n") if b"data: " in e]
    assert [(e["type"], e.get("index")) for e in events if e["type"].startswith("content-")] == [
        ("content-start", 0), ("content-delta", 0), ("content-end", 0),
        ("content-start", 1), ("content-delta", 1), ("content-end", 1)]
    assert not any(e["type"].startswith("tool-call") for e in events)


# --- Cohere v1 -----------------------------------------------------------------------------------------------

def test_cohere_v1_a_refused_call_among_allowed_ones_each_judged_once_and_the_end_says_the_same():
    seen = []

    def counting(call: ToolCall) -> str | None:
        seen.append(call.name)
        return judge(call)
    shell, ls = {"name": "shell", "parameters": {"c": "x"}}, {"name": "run", "parameters": {"command": "ls"}}
    answer = body(toolcalls.COHERE_V1, "shell", {"c": "x"})
    answer["tool_calls"] = answer["chat_history"][-1]["tool_calls"] = [shell, ls]
    events = ndjson(*({"is_finished": False, "event_type": "tool-calls-chunk", "tool_call_delta": {
                        "index": i, "name": tc["name"], "parameters": json.dumps(tc["parameters"])}}
                      for i, tc in enumerate([shell, ls])),
                    {"is_finished": False, "event_type": "tool-calls-generation", "tool_calls": [shell, ls]},
                    {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE",
                     "response": answer})
    guard = toolcalls.stream_guard(toolcalls.COHERE_V1, "application/stream+json", counting)
    lines = [orjson.loads(line) for line in b"".join([guard.feed(e) for e in events] + [guard.finish()]).splitlines()]
    assert [line["event_type"] for line in lines] == ["text-generation", "tool-calls-chunk", "tool-calls-generation",
                                                      "stream-end"]
    assert lines[0]["text"] == f"{REFUSAL} shell" and seen == ["shell", "run"]
    assert lines[1]["tool_call_delta"] == {"index": 0, "name": "run", "parameters": '{"command": "ls"}'}
    response = lines[3]["response"]
    assert lines[2]["tool_calls"] == response["tool_calls"] == response["chat_history"][-1]["tool_calls"] == [ls]
    assert response["text"] == response["chat_history"][-1]["message"] == f"Let me.\n\n{REFUSAL} shell"


# --- Responses items of calls the client runs that are not functions ---------------------------------------------

CLIENT_ITEMS = {
    "local_shell_call": {"type": "local_shell_call", "id": "lsh_1", "call_id": "call_1", "status": "completed",
                         "action": {"type": "exec", "command": ["rm", "-rf", "/"], "env": {}}},
    "shell_call": {"type": "shell_call", "id": "sh_1", "call_id": "call_1", "status": "completed",
                   "action": {"commands": ["rm -rf /"], "timeout_ms": 1000}},
    "apply_patch_call": {"type": "apply_patch_call", "id": "ap_1", "call_id": "call_1", "status": "completed",
                         "operation": {"type": "delete_file", "path": "/etc/passwd"}},
    "computer_call": {"type": "computer_call", "id": "cu_1", "call_id": "call_1", "status": "completed",
                      "action": {"type": "click", "x": 1, "y": 2, "button": "left"}, "pending_safety_checks": []},
}


def judge_by_type(call: ToolCall) -> str | None:
    """Forbids the built-in tools (named as their definitions in a request are: by type) when their arguments were
    read."""
    return f"{REFUSAL} {call.name}" if f"{call.name}_call" in CLIENT_ITEMS and call.value else None


@pytest.mark.parametrize("kind", list(CLIENT_ITEMS))
def test_responses_a_client_run_call_item_in_a_json_answer_is_judged_by_its_type(kind):
    data = body(toolcalls.RESPONSES, "run", {})
    data["output"][1] = dict(CLIENT_ITEMS[kind])
    assert toolcalls.rewrite_body(toolcalls.RESPONSES, data, judge_by_type)
    assert data["output"][1]["type"] == "message" and f"{REFUSAL} {kind[:-5]}" in orjson.dumps(data).decode()


@pytest.mark.parametrize("kind", list(CLIENT_ITEMS))
def test_responses_a_streamed_client_run_call_item_is_held_and_refused(kind):
    done = CLIENT_ITEMS[kind]
    added = {**done, "status": "in_progress"}
    events = sse({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": added},
                 {"type": f"response.{kind}_operation.delta", "sequence_number": 2, "output_index": 0,
                  "item_id": done["id"], "delta": "SECRET-PIECE"},
                 {"type": "response.output_item.done", "sequence_number": 3, "output_index": 0, "item": done},
                 {"type": "response.completed", "sequence_number": 4, "response": {
                     "id": "resp_1", "status": "completed", "model": "gpt-4o", "output": [done]}}, named=True)
    guard = toolcalls.stream_guard(toolcalls.RESPONSES, "text/event-stream", judge_by_type)
    joined = b"".join([guard.feed(e) for e in events] + [guard.finish()])
    decoded = [orjson.loads(e.split(b"data: ", 1)[1]) for e in joined.split(b"\n\n") if b"data: " in e]
    items = [d["item"] for d in decoded if "item" in d] + decoded[-1]["response"]["output"]
    assert {i["type"] for i in items} == {"message"} and b"SECRET-PIECE" not in joined
    assert f"{REFUSAL} {kind[:-5]}".encode() in joined and decoded[-1]["type"] == "response.completed"


def test_the_end_of_streamed_arguments_is_found_however_they_are_cut():
    """Arguments' JSON written piece by piece (strings with quotes, backslashes and brackets in them, cut anywhere,
    even between a backslash and what it escapes): the piece that closes the value is the one that holds its last
    character, and not one before."""
    rng = random.Random(11)
    alphabet = ['"', "\\", "{", "}", "[", "]", "a", " ", "\\n", "é"]

    def value(depth: int):
        kind = rng.random()
        if depth > 3 or kind < 0.3:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        if kind < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {value(4): value(depth + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(300):
        doc = json.dumps({"k": value(0)}, ensure_ascii=rng.random() < 0.5)
        cuts = sorted(rng.sample(range(1, len(doc)), min(len(doc) - 1, rng.randint(0, 12))))
        pieces = [doc[a:b] for a, b in zip([0, *cuts], [*cuts, len(doc)])]
        end = toolcalls._JsonEnd()
        closed = [end.feed(p) for p in pieces]
        assert closed[-1] and not any(closed[:-1]), (doc, pieces)


def test_bedrock_mistral_stream_keeps_saying_tool_calls_while_an_allowed_call_is_left():
    """An allowed call in one chunk, a refused one with the finish reason in the next: the client must still run
    the allowed call, so the finish reason stays `tool_calls`."""
    def chunk(*choices):
        return es.chunk({"choices": list(choices)})

    chunks = [chunk(bedrock_mistral_choice("", [mistral_call("run", {"command": "ls"})])),
              chunk(bedrock_mistral_choice("", [mistral_call("shell", {"command": "id"})], "tool_calls"))]
    _, out = guarded(toolcalls.BEDROCK_MISTRAL, chunks)
    events = [json.loads(base64.b64decode(json.loads(m.payload)["bytes"]))
              for m in eventstream.EventStreamDecoder().feed(b"".join(out))]
    [last] = events[-1]["choices"]
    assert REFUSAL in last["message"]["content"] and last["stop_reason"] == "tool_calls"
    assert events[0]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "run"


def test_mistral_conversations_arguments_given_as_an_object_are_judged_by_their_values():
    """Mistral's SDK takes a call's arguments as an object too: read as its JSON, so an `args` condition sees them
    (as a Python repr it would close like JSON and parse as nothing, and pass)."""
    delta = {"type": "function.call.delta", "id": "fc_1", "output_index": 1, "name": "run", "tool_call_id": "call_1",
             "arguments": {"command": "sudo rm -rf /srv"}}
    _, out = guarded(toolcalls.MISTRAL_CONVERSATIONS, sse(delta, named=True))
    assert REFUSAL.encode() in b"".join(out) and b"rm -rf" not in b"".join(out)


TURN_RULES = """
- id: redact-pii
  when: {findings: [EMAIL_ADDRESS]}
  action: redact
- id: no-mail-after-injection
  when:
    tools: ["send_*"]
    findings: {entities: [PROMPT_INJECTION], sources: [tool_result]}
  action: strip
- id: watch-mail
  when: {tools: [send_email]}
  action: block
  mode: monitor
- id: no-shell
  when: {tools: [shell]}
  action: block
"""
INJECTED = Finding("PROMPT_INJECTION", 0, 40, 0.9, source="tool_result")
PII = Finding("EMAIL_ADDRESS", 0, 12, 1.0, source="user")


@pytest.mark.parametrize("name,findings,expected", [
    # the turn's tool result carried an injection: the tool stripped from its offer is refused when called anyway,
    # and this enforced refusal wins over the monitored one of the call alone (watch-mail)
    ("send_email", [INJECTED], ("no-mail-after-injection", "enforce")),
    # first match, as for the request: redact-pii decided that turn, so send_email was offered and stays allowed
    ("send_email", [PII, INJECTED], ("watch-mail", "monitor")),
    ("send_email", [], ("watch-mail", "monitor")),  # no injection in the turn: only recorded
    ("send_sms", [], None),
    # a rule matching the findings alone (redact) does not shadow the tool rules after it
    ("shell", [PII], ("no-shell", "enforce")),
])
def test_a_call_is_also_judged_with_the_findings_of_its_turn(tmp_path, name, findings, expected):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrules:\n" + textwrap.indent(textwrap.dedent(TURN_RULES).strip(), "  ") + "\n")
    x = parse(*REQUESTS[toolcalls.CHAT], host="api.openai.com", hints=("openai",)).exchange
    d = forbidding(load(path, CATALOG), Subject(""), CATALOG.services["openai"], x, "gpt-4o", {},
                   ToolCall(name, "{}", value={}), findings)
    assert (None if d is None else (d.rule, d.mode)) == expected
