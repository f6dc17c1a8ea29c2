"""Ollama /api/chat, /api/generate, /api/embed (NDJSON streams by default), and Mistral's own endpoints (chat and
FIM through the OpenAI parsers, agents completions, conversations started, continued and restarted)."""

from __future__ import annotations

import json

import pytest

from tests.support.wire import assert_paths_resolve, parse, respond

CHAT = {"model": "llama3.2", "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Look at this", "images": ["iVBORw0KGgo="]},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calc", "arguments": {"x": 1}}}]},
    {"role": "tool", "content": "2", "tool_name": "calc"}],
    "tools": [{"type": "function", "function": {"name": "calc", "description": "Add", "parameters": {}}}]}


def ndjson(objs: list[dict]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


@pytest.mark.parametrize("step", [0, 1, 11])
def test_chat_streams_by_default(step):
    p = parse("/api/chat", CHAT, host="ollama.com", hints=("ollama",))
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream) == ("ollama", "chat", "llama3.2", True)
    assert ex.system_text == "Be brief."
    user, assistant, tool = ex.messages
    assert user.text == "Look at this" and user.parts[0].path == ("messages", 1, "content")
    assert user.attachments[0].kind == "image"
    assert assistant.tool_calls[0].arguments == '{"x":1}'
    assert (tool.tool_results[0].call_id, tool.tool_results[0].text) == ("calc", "2")
    assert assert_paths_resolve(p, CHAT) == 4  # three texts and the tool call's argument
    body = ndjson([{"model": "llama3.2", "message": {"role": "assistant", "content": "He", "thinking": "hmm"},
                    "done": False},
                   {"model": "llama3.2", "message": {"role": "assistant", "content": "llo"}, "done": False},
                   {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True,
                    "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 2}])
    respond(p, "application/x-ndjson", body, step)
    assert (ex.completion, ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens, ex.warnings) == \
        ("Hello", "stop", 26, 2, [])


def test_chat_not_streamed():
    p = parse("/api/chat", dict(CHAT, stream=False))
    assert p.provider.name == "ollama" and not p.exchange.stream
    respond(p, "application/json", {"model": "llama3.2", "message": {"role": "assistant", "content": "Hi",
                                    "tool_calls": [{"function": {"name": "calc", "arguments": {"x": 2}}}]},
                                    "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 1})
    assert p.exchange.completion == "Hi" and p.exchange.completion_tool_calls[0].name == "calc"


def test_generate_and_embed():
    p = parse("/api/generate", {"model": "codellama", "prompt": "def add(", "suffix": "return x", "system": "code"})
    ex = p.exchange
    assert (ex.operation, ex.stream, ex.system_text, ex.messages[0].text) == \
        ("generate", True, "code", "def add(\nreturn x")
    respond(p, "application/x-ndjson", ndjson([{"response": "a, b):", "done": False},
                                               {"response": "", "done": True, "eval_count": 4}]))
    assert (ex.completion, ex.usage.output_tokens) == ("a, b):", 4)
    p = parse("/api/embed", {"model": "nomic-embed-text", "input": ["one", "two"]})
    assert (p.exchange.operation, p.exchange.stream, p.exchange.messages[0].text) == ("embed", False, "one\ntwo")
    respond(p, "application/json", {"embeddings": [[0.1]], "prompt_eval_count": 2})
    assert p.exchange.usage.input_tokens == 2


def test_generic_path_without_a_model_is_not_claimed():
    p = parse("/api/chat", {"text": "hello"}, host="example.test")
    assert p.provider is None or p.provider.name != "ollama"


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed"])
@pytest.mark.parametrize("body", [b'"model"', b'{"model": 1, "messages": 2, "prompt": 3, "input": 4}',
                                  b'{"model": "m", "messages": [1, {"images": 5, "tool_calls": [7]}], "tools": [1]}'])
def test_malformed_requests_never_raise(path, body):
    p = parse(path, body, hints=("ollama",))
    assert p.provider.name == "ollama"


def test_truncated_and_garbage_stream():
    p = parse("/api/chat", CHAT)
    body = b'{"message": {"content": "ok"}, "done": false}\n\n[1]\n{"error": "model crashed"}\n{"message": {"cont'
    ex = respond(p, "application/x-ndjson", body, step=4).exchange
    assert ex.completion == "ok"
    assert "upstream error: model crashed" in ex.warnings and "stream: 1 lines not understood" in ex.warnings


def test_ndjson_line_cap():
    from providers.base import NdjsonDecoder
    p = parse("/api/chat", CHAT)
    decoder = NdjsonDecoder(p.exchange)
    decoder.MAX_LINE = 10
    assert decoder.feed(b'{"a": "' + b"x" * 20) == []
    assert decoder.feed(b'"}\n{"b": 1}\n') == [{"b": 1}]
    assert p.exchange.warnings == ["stream: line too long, dropped"]


# --- Mistral ------------------------------------------------------------------------------------------------

def test_mistral_chat_and_fim_use_the_openai_parsers():
    p = parse("/v1/chat/completions", {"model": "mistral-large-latest", "safe_prompt": True, "random_seed": 1,
                                       "messages": [{"role": "user",
                                                     "content": [{"type": "text", "text": "Bonjour"}]}]},
              host="api.mistral.ai", hints=("mistral", "openai"))
    assert (p.provider.name, p.exchange.operation, p.exchange.model, p.exchange.messages[0].text) == \
        ("openai", "chat.completions", "mistral-large-latest", "Bonjour")
    p = parse("/v1/fim/completions", {"model": "codestral-latest", "prompt": "def f(", "suffix": "return 1"},
              host="codestral.mistral.ai", hints=("mistral", "openai"))
    assert (p.provider.name, p.exchange.model, p.exchange.messages[0].text) == \
        ("openai", "codestral-latest", "def f(\nreturn 1")
    respond(p, "application/json", {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x):"},
                                                 "finish_reason": "stop"}], "model": "codestral-2501"})
    assert p.exchange.completion == "x):"


def test_mistral_agents_completions():
    p = parse("/v1/agents/completions", {"agent_id": "ag-123", "stream": True,
                                         "messages": [{"role": "user", "content": "Plan my trip"}]},
              hints=("mistral", "openai"))
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.messages[0].text) == \
        ("mistral", "agents.completions", "agent:ag-123", True, "Plan my trip")
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in [
        {"choices": [{"index": 0, "delta": {"content": "Go "}}]},
        {"choices": [{"index": 0, "delta": {"content": "east."}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 4, "completion_tokens": 2}}]) + b"data: [DONE]\n\n"
    respond(p, "text/event-stream", body, step=6)
    assert (ex.completion, ex.finish_reason, ex.usage.output_tokens) == ("Go east.", "stop", 2)


def test_mistral_conversations():
    p = parse("/v1/conversations", {"model": "mistral-medium-latest", "instructions": "Be kind.",
                                    "inputs": [{"role": "user", "content": "Hi there", "type": "message.input"},
                                               {"type": "function.result", "tool_call_id": "f1", "result": "42"}]})
    ex = p.exchange
    assert (ex.operation, ex.system_text, ex.messages[0].text, ex.messages[1].tool_results[0].text) == \
        ("conversations", "Be kind.", "Hi there", "42")
    respond(p, "application/json", {"conversation_id": "c", "outputs": [
        {"type": "message.output", "role": "assistant", "content": [{"type": "text", "text": "Hello!"}],
         "model": "mistral-medium-2505"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    assert (ex.completion, ex.model, ex.usage.input_tokens) == ("Hello!", "mistral-medium-2505", 5)

    p = parse("/v1/conversations", {"agent_id": "ag-1", "inputs": "Hi", "stream": True})
    assert p.exchange.model == "agent:ag-1"
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in [
        {"type": "conversation.response.started", "conversation_id": "c"},
        {"type": "message.output.delta", "content": "Hel"}, {"type": "message.output.delta", "content": "lo"},
        {"type": "conversation.response.done", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}])
    respond(p, "text/event-stream", body, step=5)
    assert (p.exchange.completion, p.exchange.usage.output_tokens) == ("Hello", 2)


def test_mistral_conversations_offer_functions_and_stream_their_calls():
    """The functions a conversation offers are its tools (the built-in ones run at Mistral); a streamed call is
    reassembled by output index as the SDK's run helper does: name and id once, the arguments growing."""
    p = parse("/v1/conversations", {"model": "mistral-medium-latest", "inputs": "Weather?", "stream": True, "tools": [
        {"type": "web_search"}, {"type": "function", "function": {"name": "forecast", "description": "Forecast",
                                                                   "parameters": {"type": "object"}}}]})
    ex = p.exchange
    assert [(t.name, t.path) for t in ex.tools] == [("forecast", ("tools", 1))] and not ex.warnings
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in [
        {"type": "message.output.delta", "id": "m", "output_index": 0, "content": "Checking."},
        *({"type": "function.call.delta", "id": "f", "output_index": 1, "name": "forecast", "tool_call_id": "t1",
           "arguments": piece} for piece in ('{"day": ', '1}')),
        {"type": "conversation.response.done", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}])
    respond(p, "text/event-stream", body, step=7)
    assert ex.completion == "Checking." and ex.finish_reason == "stop"
    assert [(c.id, c.name, c.arguments) for c in ex.completion_tool_calls] == [("t1", "forecast", '{"day": 1}')]


def test_mistral_conversations_continued_and_restarted():
    """Their body is a conversation's, less the model, agent and tools it was started with."""
    for path, operation in [("/v1/conversations/conv_1", "conversations.append"),
                            ("/v1/conversations/conv_1/restart", "conversations.restart")]:
        p = parse(path, {"inputs": "Go on", "from_entry_id": "msg_0", "stream": True})
        ex = p.exchange
        assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.messages[0].text, ex.tools) == \
            ("mistral", operation, "", True, "Go on", [])
        respond(p, "text/event-stream", b'event: message.output.delta\ndata: {"type": "message.output.delta", '
                                        b'"content": "Gone on."}\n\n')
        assert ex.completion == "Gone on."


def test_openai_conversations_are_not_claimed_by_mistral():
    p = parse("/v1/conversations", {"items": [{"type": "message", "role": "user", "content": "x"}]})
    assert p.provider is None or p.provider.name != "mistral"
    p = parse("/v1/conversations/conv_1", {"metadata": {"topic": "x"}})  # OpenAI's update of one
    assert p.provider is None or p.provider.name != "mistral"


@pytest.mark.parametrize("body", [b'{"inputs": 5', b'{"inputs": 5}', b'["inputs"]', b'{"inputs": [1, {"content": 3}]}'])
def test_malformed_mistral_bodies_never_raise(body):
    for path in ("/v1/conversations", "/v1/agents/completions"):
        p = parse(path, body)
        assert p.provider.name == "mistral"
        assert p.exchange.parsed == (body == b'{"inputs": [1, {"content": 3}]}' and path == "/v1/conversations")
