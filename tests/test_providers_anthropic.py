"""Anthropic: Messages (system string or blocks, images and documents, tool use and results, tools),
count_tokens, legacy complete, the SSE stream one byte at a time, the Vertex and Bedrock envelopes, Anthropic
bodies on other hosts, and malformed or truncated input."""

from __future__ import annotations

import base64
import json

import pytest

from core.exchange import Exchange
from providers import anthropic
from tests.support.pdf import pdf
from tests.support.wire import parse, respond

MESSAGES = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are a lawyer.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Review this contract."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "document", "title": "nda.txt",
             "source": {"type": "text", "media_type": "text/plain", "data": "Party A owes 1M"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": base64.b64encode(pdf("Clause 1 binds Party A")).decode()}},
            {"type": "document", "source": {"type": "base64", "media_type": "text/csv",
                                            "data": base64.b64encode(b"a,b\n1,2").decode()}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "NDA law"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "NDAs are enforceable"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "second"}]}]},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [{"name": "search", "description": "Web search", "input_schema": {"type": "object"}},
              {"type": "web_search_20250305", "name": "web_search"}],
}


def test_messages_request():
    p = parse("/v1/messages", MESSAGES, host="api.anthropic.com", hints=("anthropic",))
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.parsed) == \
        ("anthropic", "messages", "claude-sonnet-4-5", False, True)
    assert ex.system_text == "You are a lawyer." and ex.system[0].path == ("system", 0, "text")
    user, assistant, results, thanks = ex.messages
    assert [(t.text, t.path) for t in user.parts] == [
        ("Review this contract.", ("messages", 0, "content", 0, "text")),
        ("Party A owes 1M", ("messages", 0, "content", 2, "source", "data"))]
    image, nda, pdf, csv = user.attachments
    assert (image.kind, image.mime_type, image.inspected) == ("image", "image/png", False)
    assert (nda.kind, nda.name, nda.inspected) == ("document", "nda.txt", True)
    assert (pdf.mime_type, pdf.inspected) == ("application/pdf", True) and "Clause 1 binds Party A" in pdf.text
    assert (csv.text, csv.inspected) == ("a,b\n1,2", True)
    assert [(c.name, json.loads(c.arguments), c.id) for c in assistant.tool_calls] == \
        [("search", {"q": "NDA law"}, "toolu_1")]
    # the input is an object, not JSON text: each value is addressable (redaction can rewrite it in place), each
    # key is scanned as a part of its own (no path: a finding there cannot be rewritten)
    assert [(t.text, t.path, t.context) for t in assistant.tool_calls[0].leaves] == [
        ("q", None, ""), ("NDA law", ("messages", 1, "content", 1, "input", "q"), "q")]
    assert [(r.call_id, r.text, r.path) for r in results.tool_results] == [
        ("toolu_1", "NDAs are enforceable", ("messages", 2, "content", 0, "content")),
        ("toolu_2", "second", ("messages", 2, "content", 1, "content", 0, "text"))]
    assert thanks.parts[0].path == ("messages", 3, "content")
    assert [(t.name, t.parameters) for t in ex.tools] == [("search", {"type": "object"}), ("web_search", None)]
    assert ex.warnings == []


def test_system_as_string():
    ex = parse("/v1/messages", {"model": "m", "max_tokens": 5, "system": "Terse.",
                                "messages": [{"role": "user", "content": "hi"}]}).exchange
    assert (ex.system_text, ex.system[0].path) == ("Terse.", ("system",))


RESPONSE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "fine."},
                        {"type": "tool_use", "id": "toolu_9", "name": "search", "input": {"q": "x"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 7}}


def test_messages_response():
    ex = respond(parse("/v1/messages", MESSAGES), "application/json", RESPONSE).exchange
    assert (ex.completion, ex.model, ex.finish_reason) == ("It is fine.", "claude-sonnet-4-5-20250929", "tool_use")
    assert (ex.usage.input_tokens, ex.usage.output_tokens) == (120, 7)  # cached prompt tokens count as input
    assert (ex.completion_tool_calls[0].name, json.loads(ex.completion_tool_calls[0].arguments)) == \
        ("search", {"q": "x"})


def sse(*events: dict) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


STREAM = sse(
    {"type": "message_start", "message": {"id": "msg_1", "model": "claude-sonnet-4-5", "content": [],
                                          "usage": {"input_tokens": 25, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Héllo"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ' "Paris"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
)


def test_messages_stream_byte_by_byte():
    p = parse("/v1/messages", dict(MESSAGES, stream=True))
    assert p.exchange.stream
    ex = respond(p, "text/event-stream", STREAM, step=1).exchange
    assert (ex.completion, ex.model, ex.finish_reason) == ("Héllo world", "claude-sonnet-4-5", "tool_use")
    assert (ex.usage.input_tokens, ex.usage.output_tokens) == (25, 15)
    assert [(c.name, c.arguments, c.id) for c in ex.completion_tool_calls] == \
        [("get_weather", '{"city": "Paris"}', "toolu_1")]
    assert ex.warnings == []


def test_count_tokens_and_legacy_complete():
    p = parse("/v1/messages/count_tokens", {"model": "claude-sonnet-4-5",
                                            "messages": [{"role": "user", "content": "count me"}]})
    assert (p.exchange.operation, p.exchange.messages[0].text) == ("messages.count_tokens", "count me")
    assert respond(p, "application/json", {"input_tokens": 11}).exchange.usage.input_tokens == 11

    p = parse("/v1/complete", {"model": "claude-2.1", "prompt": "\n\nHuman: Hi\n\nAssistant:",
                               "max_tokens_to_sample": 10, "stream": True})
    assert (p.exchange.operation, p.exchange.messages[0].parts[0].path) == ("complete", ("prompt",))
    ex = respond(p, "text/event-stream", b'event: completion\ndata: {"type": "completion", "completion": " Hel", '
                 b'"model": "claude-2.1"}\n\nevent: ping\ndata: {"type": "ping"}\n\nevent: completion\ndata: '
                 b'{"type": "completion", "completion": "lo", "stop_reason": "stop_sequence"}\n\n', step=4).exchange
    assert (ex.completion, ex.finish_reason, ex.model) == (" Hello", "stop_sequence", "claude-2.1")
    ex = respond(parse("/v1/complete", {"model": "claude-2.1", "prompt": "x"}), "application/json",
                 {"type": "completion", "completion": "Yes", "stop_reason": "max_tokens"}).exchange
    assert (ex.completion, ex.finish_reason) == ("Yes", "max_tokens")


def test_vertex_form_takes_model_and_stream_from_the_url():
    body = {k: v for k, v in MESSAGES.items() if k != "model"} | {"anthropic_version": "vertex-2023-10-16"}
    path = "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929"
    p = parse(path + ":rawPredict", body, host="us-east5-aiplatform.googleapis.com", hints=("vertex",))
    assert (p.provider.name, p.exchange.operation, p.exchange.model, p.exchange.stream) == \
        ("anthropic", "messages", "claude-sonnet-4-5@20250929", False)
    p = parse(path + ":streamRawPredict", dict(body, stream=True), host="aiplatform.googleapis.com")
    assert (p.exchange.model, p.exchange.stream) == ("claude-sonnet-4-5@20250929", True)
    assert respond(p, "text/event-stream", STREAM).exchange.completion == "Héllo world"
    p = parse("/v1/projects/p1/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict",
              {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]})
    assert (p.exchange.operation, p.exchange.model) == ("messages.count_tokens", "claude-sonnet-4-5")


@pytest.mark.parametrize("host,path", [("api.deepseek.com", "/anthropic/v1/messages"),
                                       ("myres.services.ai.azure.com", "/anthropic/v1/messages"),
                                       ("ollama.com", "/v1/messages"), ("api.x.ai", "/v1/messages")])
def test_anthropic_bodies_on_other_hosts(host, path):
    p = parse(path, MESSAGES, host=host, hints=("openai",))
    assert (p.provider.name, p.exchange.operation, p.exchange.system_text) == \
        ("anthropic", "messages", "You are a lawyer.")


def test_bedrock_body_api_for_the_bedrock_parser():
    """InvokeModel for anthropic.* models: no model, no stream in the body; the caller knows both from the URL."""
    ex = Exchange(service="bedrock", operation="invoke", model="anthropic.claude-3-5-sonnet-20240620-v1:0",
                  stream=True)
    body = {k: v for k, v in MESSAGES.items() if k != "model"} | {"anthropic_version": "bedrock-2023-05-31"}
    anthropic.parse_body(body, ex)
    assert (ex.model, ex.stream, ex.system_text, len(ex.messages)) == \
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", True, "You are a lawyer.", 4)
    events = anthropic.MessageEvents(ex)
    for line in STREAM.split(b"\n"):
        if line.startswith(b"data: "):
            events.event(json.loads(line[6:]))
    events.done()
    assert (ex.completion, ex.usage.output_tokens) == ("Héllo world", 15)
    legacy = Exchange()
    anthropic.parse_body({"prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 5}, legacy)
    assert legacy.messages[0].text.startswith("\n\nHuman: hi")
    anthropic.message_response({"type": "completion", "completion": "hey"}, legacy)
    assert legacy.completion == "hey"


@pytest.mark.parametrize("path,body", [
    ("/v1/messages", b'{"model": "m", "messages": [{"role": "user"'),
    ("/v1/messages", b'{"model": "m", "messages": "hi"}'),
    ("/v1/messages", b'["messages"]'),
    ("/v1/messages", b""),
    ("/v1/complete", b'{"model": "m", "prompt": ["a"]}'),
    ("/v1/messages/count_tokens", b'{"model": "m"}'),
])
def test_malformed_requests_are_unparsed(path, body):
    p = parse(path, body)
    assert p.exchange.operation != "unknown" and not p.exchange.parsed and p.exchange.warnings


def test_odd_shapes_are_warnings_not_errors():
    ex = parse("/v1/messages", {"model": "m", "system": 5, "tools": ["x"],
                                "messages": ["bad", {"role": "user", "content": 7},
                                             {"role": "user", "content": [5, {"type": "mystery"}]}]}).exchange
    assert ex.parsed and len(ex.warnings) == 4


@pytest.mark.parametrize("content_type,body,expect_warning", [
    ("text/event-stream", STREAM[: len(STREAM) // 2], False),  # cut mid-stream: keeps what arrived
    ("text/event-stream", b'event: message_start\ndata: {"type": "message_start", "message": 5}\n\n'
                          b'event: content_block_delta\ndata: [1]\n\n', True),
    ("text/event-stream", b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
                          b'"message": "Overloaded"}}\n\n', True),
    ("application/json", b'{"type": "message", "content": [{"type": "text", "text": "cut', True),
    ("application/json", b'{"type": "message", "content": "not a list", "usage": []}', False),
    ("application/json", b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}', True),
])
def test_malformed_and_truncated_responses_never_raise(content_type, body, expect_warning):
    ex = respond(parse("/v1/messages", MESSAGES), content_type, body, step=7).exchange
    assert isinstance(ex.completion, str)
    assert bool(ex.warnings) == expect_warning
