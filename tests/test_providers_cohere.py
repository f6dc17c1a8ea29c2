"""Cohere v2 and v1 chat, embed: request fixtures, responses whole and streamed (v2 SSE, v1 NDJSON), hostile input."""

from __future__ import annotations

import json

import pytest

from tests.support.wire import assert_paths_resolve, parse, respond

V2 = {"model": "command-a-03-2025", "stream": False,
      "messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                                {"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                   {"role": "assistant", "tool_plan": "I will look it up.",
                    "tool_calls": [{"id": "c1", "type": "function",
                                    "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}]}],
      "documents": ["Paris is in France.", {"id": "d2", "data": {"title": "Memo", "snippet": "internal memo"}}],
      "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather",
                                                  "parameters": {"type": "object"}}}]}


def test_v2_chat_request_and_response():
    p = parse("/v2/chat", V2, host="api.cohere.com")
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.parsed) == \
        ("cohere", "v2.chat", "command-a-03-2025", False, True)
    assert ex.system_text == "Be brief."
    user, assistant, tool, doc1, doc2 = ex.messages
    assert user.text == "Weather in Paris?" and user.attachments[0].mime_type == "image/png"
    assert assistant.text == "I will look it up." and assistant.tool_calls[0].path == \
        ("messages", 2, "tool_calls", 0, "function", "arguments")
    assert tool.tool_results[0].text == "sunny"
    assert (doc1.role, doc1.text, doc2.text) == ("document", "Paris is in France.", "Memo\ninternal memo")
    assert doc2.parts[1].path == ("documents", 1, "data", "snippet")
    assert ex.tools[0].name == "weather"
    assert assert_paths_resolve(p, V2) == 7

    respond(p, "application/json", {"id": "r", "finish_reason": "COMPLETE",
                                    "message": {"role": "assistant", "content": [{"type": "text", "text": "Sunny."}]},
                                    "usage": {"billed_units": {"input_tokens": 20, "output_tokens": 3},
                                              "tokens": {"input_tokens": 120, "output_tokens": 3}}})
    assert (ex.completion, ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == \
        ("Sunny.", "COMPLETE", 20, 3)


def v2_events() -> bytes:
    events = [{"type": "message-start", "id": "x", "delta": {"message": {"role": "assistant"}}},
              {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
              {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Sun"}}}},
              {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "ny."}}}},
              {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
                  "id": "c9", "type": "function", "function": {"name": "weather", "arguments": ""}}}}},
              {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
                  "function": {"arguments": "{}"}}}}},
              {"type": "message-end", "delta": {"finish_reason": "COMPLETE",
                                                "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 2}}}}]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("step", [0, 1, 9])
def test_v2_chat_stream(step):
    p = parse("/v2/chat", dict(V2, stream=True))
    ex = respond(p, "text/event-stream", v2_events(), step).exchange
    assert (ex.stream, ex.completion, ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == \
        (True, "Sunny.", "COMPLETE", 5, 2)
    assert [(c.id, c.name, c.arguments) for c in ex.completion_tool_calls] == [("c9", "weather", "{}")]
    assert ex.warnings == []


V1 = {"model": "command-r", "message": "And tomorrow?", "preamble": "Be brief.",
      "chat_history": [{"role": "USER", "message": "Weather today?"}, {"role": "CHATBOT", "message": "Sunny."},
                       {"role": "SYSTEM", "message": "Use metric."}],
      "tool_results": [{"call": {"name": "forecast", "parameters": {"day": 1}}, "outputs": [{"t": "rain"}]}],
      "tools": [{"name": "forecast", "description": "Forecast", "parameter_definitions": {"day": {"type": "int"}}}]}


def test_v1_chat_request_response_and_ndjson_stream():
    p = parse("/v1/chat", V1)
    ex = p.exchange
    assert (ex.operation, ex.model, ex.system_text) == ("v1.chat", "command-r", "Be brief.\nUse metric.")
    assert [(m.role, m.text) for m in ex.messages] == [("user", "Weather today?"), ("assistant", "Sunny."),
                                                       ("user", "And tomorrow?")]
    assert ex.messages[-1].parts[0].path == ("message",)
    assert ex.messages[-1].tool_results[0].call_id == "forecast"
    respond(p, "application/json", {"text": "Rain.", "finish_reason": "COMPLETE",
                                    "meta": {"billed_units": {"input_tokens": 7.0, "output_tokens": 2.0}}})
    assert (ex.completion, ex.usage.input_tokens, ex.usage.output_tokens) == ("Rain.", 7, 2)

    p = parse("/v1/chat", dict(V1, stream=True))
    lines = [{"is_finished": False, "event_type": "stream-start", "generation_id": "g"},
             {"is_finished": False, "event_type": "text-generation", "text": "Ra"},
             {"is_finished": False, "event_type": "text-generation", "text": "in."},
             {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE",
              "response": {"text": "Rain.", "meta": {"billed_units": {"input_tokens": 7, "output_tokens": 2}}}}]
    body = b"\n".join(json.dumps(x).encode() for x in lines) + b"\n"
    ex = respond(p, "application/stream+json", body, step=5).exchange
    assert (ex.completion, ex.finish_reason, ex.usage.output_tokens, ex.warnings) == ("Rain.", "COMPLETE", 2, [])


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
def test_embed(path):
    p = parse(path, {"model": "embed-v4.0", "texts": ["alpha", "beta"], "input_type": "search_document",
                     "images": ["data:image/jpeg;base64,AAAA"]})
    ex = p.exchange
    assert (ex.operation, ex.model, ex.messages[0].text) == (path[1:3] + ".embed", "embed-v4.0", "alpha\nbeta")
    assert ex.messages[0].parts[1].path == ("texts", 1)
    respond(p, "application/json", {"embeddings": {"float": [[0.1]]}, "meta": {"billed_units": {"input_tokens": 4}}})
    assert ex.usage.input_tokens == 4
    p = parse(path, {"model": "embed-v4.0", "inputs": [{"content": [{"type": "text", "text": "gamma"}]}]})
    assert p.exchange.messages[0].text == "gamma"


@pytest.mark.parametrize("path", ["/v1/chat", "/v2/chat", "/v1/embed", "/v2/embed"])
@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b'{"messages": {}}', b'{"message": 5}',
                                  b'{"messages": [1, {"role": "tool", "content": 3}], "documents": {"a": 1}}',
                                  b'{"message": "x", "chat_history": [1, {"role": 2}], "tool_results": [4]}'])
def test_malformed_requests_never_raise(path, body):
    p = parse(path, body, host="api.cohere.com", hints=("cohere",))
    assert p.provider.name == "cohere"
    if body in (b"", b"{", b"[1]"):
        assert not p.exchange.parsed


@pytest.mark.parametrize("stream,content_type,body", [
    (False, "application/json", b'{"message": {"content": [{"type": "text", "text": "trunc'),
    (False, "application/json", b'{"message": 5}'),
    (True, "text/event-stream", b'data: {"type": "content-delta", "delta": {"message": {"content": {"text": "a"}}}}'
                                b'\n\ndata: {"type": "content-delta", "delta": 7}\n\ndata: {"ty'),
])
def test_malformed_v2_responses_warn(stream, content_type, body):
    p = parse("/v2/chat", dict(V2, stream=stream))
    ex = respond(p, content_type, body, step=4).exchange
    assert ex.warnings


def test_truncated_v1_stream_keeps_what_arrived():
    p = parse("/v1/chat", dict(V1, stream=True))
    body = b'{"event_type": "text-generation", "text": "Hel"}\nnot json\n{"event_type": "text-generation", "te'
    ex = respond(p, "application/x-ndjson", body, step=3).exchange
    assert ex.completion == "Hel" and ex.warnings == ["stream: 2 lines not understood"]


def test_v1_generate():
    p = parse("/v1/generate", {"model": "command", "prompt": "Write a haiku", "max_tokens": 20})
    ex = p.exchange
    assert (ex.operation, ex.messages[0].text, ex.messages[0].parts[0].path) == ("v1.generate", "Write a haiku",
                                                                                 ("prompt",))
    respond(p, "application/json", {"generations": [{"text": "Autumn moon", "finish_reason": "COMPLETE"}],
                                    "meta": {"billed_units": {"input_tokens": 3, "output_tokens": 2}}})
    assert (ex.completion, ex.finish_reason, ex.usage.output_tokens) == ("Autumn moon", "COMPLETE", 2)
    p = parse("/v1/generate", {"model": "command", "prompt": "Write", "stream": True})
    lines = [{"text": "Autumn ", "is_finished": False}, {"text": "moon", "is_finished": False},
             {"is_finished": True, "finish_reason": "COMPLETE",
              "response": {"meta": {"billed_units": {"output_tokens": 2}}}}]
    ex = respond(p, "application/stream+json", b"\n".join(json.dumps(x).encode() for x in lines), step=3).exchange
    assert (ex.completion, ex.finish_reason, ex.usage.output_tokens) == ("Autumn moon", "COMPLETE", 2)
    assert not parse("/v1/generate", {"prompt": 5}).exchange.parsed


def test_other_hosts_need_the_cohere_body_shape():
    assert parse("/v1/chat", {"query": "x"}).provider is None
    assert parse("/v1/chat", {"query": "x"}, hints=("cohere",)).provider.name == "cohere"
    assert parse("/v1/chat", {"message": "x"}).provider.name == "cohere"
    assert parse("/v2/embed", {"texts": ["x"]}).provider.name == "cohere"
