"""Consumer web apps (ChatGPT, Claude, Gemini, Perplexity, DeepSeek, Mistral web): fixtures built from the field
names in docs/providers.md (all [OBS]), fed through the registry with the shipped catalog's format hints, streams
split into small chunks so no frame arrives whole. Malformed input must never raise and never count as a parse *error*
(which `gateway_on_parse_error=block` would turn into a block): it is audited as unparsed."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

import providers
from core.rulesfile import SHIPPED_RULES
from core.catalog import Catalog
from providers.base import HttpRequest

CATALOG = Catalog.load(SHIPPED_RULES / "endpoints.yaml")


def parse(host: str, path: str, body: bytes | dict, content_type: str = "application/json",
          method: str = "POST") -> providers.Parsed:
    service = CATALOG.match(host).service
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    req = HttpRequest.from_url_parts(method, host, path, {"content-type": content_type}, raw)
    return providers.parse_request(req, service.id, service.formats)


def answer(parsed: providers.Parsed, body: bytes | str, content_type: str = "text/event-stream", step: int = 7):
    parser = providers.response_parser(parsed, content_type)
    data = body.encode() if isinstance(body, str) else body
    for i in range(0, len(data), step):
        parser.feed(data[i:i + step])
    parser.finish()
    return parsed.exchange


def sse(*frames, event: str | None = None) -> str:
    out = []
    for f in frames:
        name, data = f if isinstance(f, tuple) else (event, f)
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {payload}\n\n")
    return "".join(out)


def assert_soft_failure(parsed: providers.Parsed) -> None:
    assert parsed.exchange.parsed is False
    assert parsed.exchange.warnings
    assert parsed.error == ""  # unparsed, not an error: never blocked by accident


# --- ChatGPT ---------------------------------------------------------------------------------------------------

CHATGPT_REQUEST = {
    "action": "next", "model": "gpt-4o", "conversation_id": "c-1", "parent_message_id": "p-1",
    "supported_encodings": ["v1"], "timezone_offset_min": -60,
    "messages": [{
        "id": "m-u", "author": {"role": "user"},
        "content": {"content_type": "multimodal_text", "parts": [
            {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-img", "size_bytes": 2048,
             "width": 10, "height": 10}, "Describe this picture and my notes"]},
        "metadata": {"attachments": [
            {"id": "file-img", "name": "cat.png", "mime_type": "image/png", "size": 2048},
            {"id": "file-txt", "name": "notes.txt", "mime_type": "text/plain", "size": 99}]}}],
}


def assistant(mid: str, parts: list, **metadata) -> dict:
    return {"message": {"id": mid, "author": {"role": "assistant"}, "recipient": "all", "status": "in_progress",
                        "content": {"content_type": "text", "parts": parts}, "metadata": metadata},
            "conversation_id": "c-1"}


CHATGPT_V1_STREAM = sse(
    ("delta_encoding", '"v1"'),
    {"type": "resume_conversation_token", "token": "t"},
    ("delta", {"p": "", "o": "add", "c": 0, "v": {
        "message": {"id": "m-tool", "author": {"role": "tool"}, "content": {"content_type": "text", "parts": ["x"]}},
        "conversation_id": "c-1"}}),
    {"type": "input_message", "input_message": {"id": "m-u"}},
    ("delta", {"p": "", "o": "add", "c": 1,
               "v": assistant("m-a", [""], model_slug="gpt-4o", resolved_model_slug="gpt-4o-2024-11-20")}),
    ("delta", {"p": "/message/content/parts/0", "o": "append", "v": "Hel"}),
    ("delta", {"v": "lo, "}),
    ("delta", {"v": "wor"}),
    ("delta", {"p": "", "o": "patch", "v": [
        {"p": "/message/content/parts/0", "o": "append", "v": "ld"},
        {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
        {"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "stop"}}}]}),
    {"type": "message_stream_complete", "conversation_id": "c-1"},
    "[DONE]",
)


def test_chatgpt_conversation_request():
    parsed = parse("chatgpt.com", "/backend-api/f/conversation", CHATGPT_REQUEST)
    x = parsed.exchange
    assert (parsed.provider.name, x.service, x.operation, x.model, x.stream, x.parsed) == \
        ("chatgpt-web", "chatgpt", "conversation", "gpt-4o", True, True)
    [message] = x.messages
    assert message.role == "user" and message.text == "Describe this picture and my notes"
    assert message.parts[0].path == ("messages", 0, "content", "parts", 1)
    # the image pointer once (not again from metadata), the text file from metadata
    assert [(a.kind, a.name, a.size) for a in message.attachments] == \
        [("image", "file-service://file-img", 2048), ("file", "notes.txt", 99)]


@pytest.mark.parametrize("path", ["/backend-api/conversation", "/backend-anon/conversation"])
def test_chatgpt_older_conversation_paths(path):
    assert parse("chatgpt.com", path, CHATGPT_REQUEST).exchange.operation == "conversation"


def test_chatgpt_delta_encoded_stream_carries_path_and_operation_over():
    parsed = parse("chatgpt.com", "/backend-api/f/conversation", CHATGPT_REQUEST)
    x = answer(parsed, CHATGPT_V1_STREAM)
    assert x.completion == "Hello, world"  # the tool message on channel 0 is not the answer
    assert (x.model, x.finish_reason, x.parsed) == ("gpt-4o-2024-11-20", "stop", True)
    assert not x.warnings


def test_chatgpt_legacy_snapshot_stream():
    parsed = parse("chat.openai.com", "/backend-api/conversation", CHATGPT_REQUEST)
    x = answer(parsed, sse(assistant("m-a", ["Hel"], model_slug="text-davinci-002-render-sha"),
                           assistant("m-a", ["Hello there"], model_slug="text-davinci-002-render-sha",
                                     finish_details={"type": "stop"}), "[DONE]"))
    assert (x.completion, x.model, x.finish_reason) == ("Hello there", "text-davinci-002-render-sha", "stop")


def test_chatgpt_file_upload_flow():
    announce = parse("chatgpt.com", "/backend-api/files",
                     {"file_name": "salaries.csv", "file_size": 27, "mime_type": "text/csv", "use_case": "my_files"})
    assert announce.exchange.operation == "upload"
    [att] = announce.exchange.messages[0].attachments
    assert (att.name, att.mime_type, att.size, att.inspected) == ("salaries.csv", "text/csv", 27, False)
    answer(announce, b'{"status": "success", "upload_url": "https://files.oaiusercontent.com/file-1?sig=x", '
                     b'"file_id": "file-1"}', "application/json")

    content = parse("files.oaiusercontent.com", "/file-1", b"name,salary\nalice,100000\n", "text/csv", "PUT")
    assert content.exchange.operation == "upload.content"
    [att] = content.exchange.messages[0].attachments
    assert att.text == "name,salary\nalice,100000\n" and att.inspected and att.size == 25

    process = parse("chatgpt.com", "/backend-api/files/process_upload_stream",
                    {"file_id": "file-1", "use_case": "my_files", "index_for_retrieval": True,
                     "file_name": "salaries.csv", "entry_surface": "chat_composer"})
    assert process.exchange.operation == "upload.process"
    assert process.exchange.messages[0].attachments[0].name == "salaries.csv"
    answer(process, b'{"file_id": "file-1", "event": "file_ready"}\n', "text/event-stream")
    assert process.exchange.parsed


def test_chatgpt_codex_is_left_to_the_openai_responses_parser():
    parsed = parse("chatgpt.com", "/backend-api/codex/responses",
                   {"model": "gpt-5-codex", "instructions": "You are Codex.", "stream": True, "store": False,
                    "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]})
    x = parsed.exchange
    assert (parsed.provider.name, x.service, x.operation, x.model) == ("openai", "chatgpt", "responses", "gpt-5-codex")
    assert x.system_text == "You are Codex." and x.messages[0].text == "hi"


def test_chatgpt_parser_only_claims_its_own_hosts():
    parsed = parse("api.openai.com", "/backend-api/conversation", CHATGPT_REQUEST)
    assert parsed.provider is None or parsed.provider.name != "chatgpt-web"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"action": "next", "messages": "nope"}',
                                  b'{"messages": [5]}', b'{"messages": [{"content": {"parts": 7}}]}'])
def test_chatgpt_malformed_requests_are_unparsed_not_errors(body):
    assert_soft_failure(parse("chatgpt.com", "/backend-api/f/conversation", body))


@pytest.mark.parametrize("stream", [
    "<html>Just a moment...</html>",
    'data: {"unexpected": true}\n\n',
    "event: delta\ndata: [1, 2, 3]\n\n",
    'data: {"p": "/message/content/parts/0", "o": "explode", "v": 1}\n\ndata: [DONE]\n\n',
])
def test_chatgpt_unknown_streams_never_crash(stream):
    parsed = parse("chatgpt.com", "/backend-api/f/conversation", CHATGPT_REQUEST)
    x = answer(parsed, stream)
    assert x.completion == "" and x.warnings


def test_chatgpt_truncated_stream_keeps_what_arrived():
    parsed = parse("chatgpt.com", "/backend-api/f/conversation", CHATGPT_REQUEST)
    cut = CHATGPT_V1_STREAM[:CHATGPT_V1_STREAM.index('"wor"') + 3]
    x = answer(parsed, cut)
    assert x.completion == "Hello, "


def test_chatgpt_stream_handoff_is_noted():
    parsed = parse("chatgpt.com", "/backend-api/f/conversation", CHATGPT_REQUEST)
    x = answer(parsed, sse(("delta_encoding", '"v1"'), {"type": "stream_handoff", "topic_id": "conversation-turn-1"}))
    assert x.parsed and any("stream_handoff" in w for w in x.warnings)


def test_chatgpt_runaway_stream_is_capped(monkeypatch):
    from providers import webapp
    monkeypatch.setattr(webapp, "MAX_COMPLETION_CHARS", 100)
    monkeypatch.setattr(webapp.PatchDocument.__init__, "__defaults__", (200,))
    parsed = parse("chatgpt.com", "/backend-api/f/conversation", CHATGPT_REQUEST)
    frames = [("delta", {"p": "", "o": "add", "v": assistant("m", [""])}),
              ("delta", {"p": "/message/content/parts/0", "o": "append", "v": "x" * 50})]
    frames += [("delta", {"v": "y" * 50})] * 20
    x = answer(parsed, sse(*frames), step=4096)
    assert len(x.completion) <= 200 and any("larger than" in w for w in x.warnings)


# --- Claude ----------------------------------------------------------------------------------------------------

CLAUDE_PATH = "/api/organizations/org-1/chat_conversations/conv-1/completion"
CLAUDE_REQUEST = {
    "prompt": "Summarise the attached file", "parent_message_uuid": "p-1", "model": "claude-sonnet-4-5",
    "timezone": "Europe/Paris", "locale": "en-US", "rendering_mode": "messages",
    "attachments": [{"file_name": "plan.txt", "file_type": "text/plain", "file_size": 21,
                     "extracted_content": "Project Falcon budget"}],
    "files": ["f-uuid-1"], "personalized_styles": [{"name": "Concise", "prompt": "Be concise."}],
}
CLAUDE_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {"id": "m", "model": "claude-sonnet-4-5-20250929"}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Falcon costs "}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "money."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
    ("message_limit", {"type": "message_limit", "message_limit": {"type": "within_limit"}}),
    ("message_stop", {"type": "message_stop"}),
)


def test_claude_completion_request_with_extracted_attachment():
    x = parse("claude.ai", CLAUDE_PATH, CLAUDE_REQUEST).exchange
    assert (x.service, x.operation, x.model, x.stream, x.parsed) == \
        ("claude", "conversation", "claude-sonnet-4-5", True, True)
    [m] = x.messages
    assert [(p.text, p.path) for p in m.parts] == [
        ("Summarise the attached file", ("prompt",)),
        ("Project Falcon budget", ("attachments", 0, "extracted_content"))]
    assert [(a.name, a.inspected) for a in m.attachments] == [("plan.txt", True), ("f-uuid-1", False)]
    assert x.system_text == "Be concise."


def test_claude_stream_like_the_anthropic_api():
    parsed = parse("claude.ai", CLAUDE_PATH, CLAUDE_REQUEST)
    x = answer(parsed, CLAUDE_STREAM)
    assert (x.completion, x.model, x.finish_reason, x.parsed) == \
        ("Falcon costs money.", "claude-sonnet-4-5-20250929", "end_turn", True)


def test_claude_2023_shapes():
    parsed = parse("claude.ai", CLAUDE_PATH, {"completion": {"prompt": "Old hello", "model": "claude-2"},
                                              "organization_uuid": "o", "conversation_uuid": "c", "text": "Old hello",
                                              "attachments": []})
    assert parsed.exchange.messages[0].parts[0].path == ("completion", "prompt")
    x = answer(parsed, sse({"completion": "Hi", "stop_reason": None, "model": "claude-2"},
                           {"completion": " there", "stop_reason": "stop_sequence", "model": "claude-2"}))
    assert (x.completion, x.finish_reason, x.model) == ("Hi there", "stop_sequence", "claude-2")


@pytest.mark.parametrize("body", [b"{}", b'{"prompt": 5}', b"garbage", b'{"prompt": "x", "attachments": 3}'])
def test_claude_malformed_requests_are_unparsed(body):
    assert_soft_failure(parse("claude.ai", CLAUDE_PATH, body))


def test_claude_unknown_stream_is_unparsed():
    parsed = parse("claude.ai", CLAUDE_PATH, CLAUDE_REQUEST)
    x = answer(parsed, sse({"type": "brand_new_event", "stuff": 1}))
    assert not x.parsed and any("not understood" in w for w in x.warnings)


# --- Gemini web ------------------------------------------------------------------------------------------------

GEMINI_PATH = "/_/BardChatUi/data/assistant.lamda.BardFrontendService/StreamGenerate"


def gemini_form(prompt: str = "What is 2+2? Project Falcon") -> bytes:
    inner = [[prompt, 0, None, [[["/contrib_service/ttl_1d/abc", 1], "report.pdf"]]], ["en"],
             ["c_1", "r_1", "rc_1"]]
    return urlencode({"f.req": json.dumps([None, json.dumps(inner)]), "at": "csrf-token"}).encode()


def gemini_chunks(*texts: str) -> str:
    out = ")]}'\n\n"
    for text in texts:
        payload = json.dumps([None, ["c_1", "r_1"], None, None, [["rc_1", [text]]]])
        line = json.dumps([["wrb.fr", None, payload]])
        out += f"{len(line)}\n{line}\n"
    line = json.dumps([["di", 90], ["af.httprm", 90, "-1", 5]])
    return out + f"{len(line)}\n{line}\n"


def test_gemini_web_prompt_from_the_nested_f_req():
    x = parse("gemini.google.com", GEMINI_PATH, gemini_form(), "application/x-www-form-urlencoded").exchange
    assert (x.service, x.operation, x.stream, x.parsed) == ("gemini-web", "conversation", True, True)
    assert x.messages[0].text == "What is 2+2? Project Falcon"
    assert [a.name for a in x.messages[0].attachments] == ["report.pdf"]


def test_gemini_web_response_last_snapshot_wins():
    parsed = parse("gemini.google.com", "/u/1" + GEMINI_PATH, gemini_form(), "application/x-www-form-urlencoded")
    x = answer(parsed, gemini_chunks("The answer", "The answer is 4."), "application/json")
    assert (x.completion, x.parsed) == ("The answer is 4.", True)


def test_gemini_web_response_past_the_cap_is_read_as_far_as_it_goes(monkeypatch):
    """The cap of providers.base.CappedBody: what came before it is read, the rest is not, and one warning says so;
    BufferedJson drops all of a JSON body past its cap (half a JSON value does not parse)."""
    from providers import gemini_web
    from providers.base import BufferedJson

    first = gemini_chunks("The answer is 4.")
    monkeypatch.setattr(gemini_web, "MAX_RESPONSE_BYTES", len(first) + 10)
    parsed = parse("gemini.google.com", GEMINI_PATH, gemini_form(), "application/x-www-form-urlencoded")
    x = answer(parsed, first + gemini_chunks("Something else entirely"), "application/json", step=16)
    assert x.completion == "The answer is 4." and sum("larger than" in w for w in x.warnings) == 1
    got = []
    parser = BufferedJson(x, got.append)
    parser.body.cap = 8
    for piece in (b'{"a":', b' 1}', b" "):
        parser.feed(piece)
    parser.finish()
    assert got == [] and not parser.body.data and sum("not parsed" in w for w in x.warnings) == 1


@pytest.mark.parametrize("body", [b"at=x", b"f.req=notjson", urlencode({"f.req": "[null, 5]"}).encode(),
                                  urlencode({"f.req": json.dumps([None, json.dumps([[1]])])}).encode()])
def test_gemini_web_malformed_requests_are_unparsed(body):
    assert_soft_failure(parse("gemini.google.com", GEMINI_PATH, body, "application/x-www-form-urlencoded"))


@pytest.mark.parametrize("body", ["<html>sign in</html>", ")]}'\n\n12\n[[\"wrb.fr\", null, \"{\"]]",
                                  ")]}'\n\n" + json.dumps([["wrb.fr", None, json.dumps([1, 2])]])])
def test_gemini_web_unknown_responses_are_unparsed(body):
    parsed = parse("gemini.google.com", GEMINI_PATH, gemini_form(), "application/x-www-form-urlencoded")
    x = answer(parsed, body, "application/json")
    assert not x.parsed and x.completion == ""


# --- Perplexity ------------------------------------------------------------------------------------------------

PPLX_REQUEST = {"query_str": "Who founded Falcon Corp?", "params": {
    "attachments": ["https://ppl-ai-file-upload.s3.amazonaws.com/web/direct-files/1/deck.pdf"],
    "frontend_uuid": "u", "mode": "copilot", "model_preference": "pplx_pro", "sources": ["web"], "version": "2.18"}}


def test_perplexity_ask():
    parsed = parse("www.perplexity.ai", "/rest/sse/perplexity_ask", PPLX_REQUEST)
    x = parsed.exchange
    assert (x.service, x.operation, x.model, x.messages[0].text) == \
        ("perplexity-web", "conversation", "pplx_pro", "Who founded Falcon Corp?")
    assert x.messages[0].parts[0].path == ("query_str",)
    assert x.messages[0].attachments[0].name.endswith("deck.pdf")
    x = answer(parsed, sse(
        {"status": "PENDING", "blocks": [{"intended_usage": "ask_text", "markdown_block": {"answer": "Al",
                                                                                           "chunks": ["Al"]}}]},
        {"status": "PENDING", "blocks": [{"intended_usage": "ask_text", "diff_block": {
            "field": "markdown_block", "patches": [{"op": "replace", "path": "/answer", "value": "Alice did."}]}}]},
        {"status": "COMPLETED", "display_model": "pplx_pro", "blocks": []},
        ("end_of_stream", "{}"), event="message"))
    assert (x.completion, x.finish_reason, x.parsed) == ("Alice did.", "completed", True)


def test_perplexity_chunks_only():
    parsed = parse("www.perplexity.ai", "/rest/sse/perplexity_ask", PPLX_REQUEST)
    x = answer(parsed, sse({"blocks": [{"markdown_block": {"chunks": ["Ali", "ce."]}}]}))
    assert x.completion == "Alice."


@pytest.mark.parametrize("body", [b'{"query": "renamed"}', b"[]", b"x"])
def test_perplexity_malformed_requests_are_unparsed(body):
    assert_soft_failure(parse("www.perplexity.ai", "/rest/sse/perplexity_ask", body))


# --- DeepSeek --------------------------------------------------------------------------------------------------

DEEPSEEK_REQUEST = {"chat_session_id": "s-1", "parent_message_id": None, "prompt": "Explain Falcon",
                    "ref_file_ids": ["file-9"], "thinking_enabled": True, "search_enabled": False}
DEEPSEEK_STREAM = sse(
    ("ready", {"request_message_id": 1, "response_message_id": 2}),
    {"v": {"response": {"message_id": 2, "role": "ASSISTANT", "status": "WIP", "accumulated_token_usage": 0,
                        "fragments": [{"id": 1, "type": "THINK", "content": "Hmm"}]}}},
    {"p": "response/fragments/-1/content", "o": "APPEND", "v": ", thinking"},
    {"v": " more"},
    {"p": "response/fragments", "o": "APPEND", "v": [{"id": 2, "type": "RESPONSE", "content": "Fal"}]},
    {"p": "response/fragments/-1/content", "v": "con "},
    {"v": "is a plan."},
    {"p": "response", "o": "BATCH", "v": [{"p": "accumulated_token_usage", "v": 42},
                                         {"p": "quasi_status", "v": "FINISHED"}]},
    {"p": "response/status", "o": "SET", "v": "FINISHED"},
    ("close", {"click_behavior": "none"}),
)


def test_deepseek_completion_and_fragment_patches():
    parsed = parse("chat.deepseek.com", "/api/v0/chat/completion", DEEPSEEK_REQUEST)
    x = parsed.exchange
    assert (x.service, x.operation, x.model, x.messages[0].text) == \
        ("deepseek-web", "conversation", "thinking", "Explain Falcon")
    assert x.messages[0].attachments[0].name == "file-9"
    x = answer(parsed, DEEPSEEK_STREAM)
    assert (x.completion, x.finish_reason, x.usage.output_tokens, x.parsed) == \
        ("Falcon is a plan.", "finished", 42, True)  # the THINK fragment is not the answer
    assert not x.warnings


def test_deepseek_older_content_path():
    parsed = parse("chat.deepseek.com", "/api/v0/chat/completion", DEEPSEEK_REQUEST)
    x = answer(parsed, sse({"v": {"response": {"content": "", "status": "WIP"}}},
                           {"p": "response/content", "o": "APPEND", "v": "Old"}, {"v": " style"}))
    assert x.completion == "Old style"


@pytest.mark.parametrize("stream", ["not sse at all", 'data: {"hello": 1}\n\n', 'data: {"p": 5, "v": []}\n\n'])
def test_deepseek_unknown_streams_never_crash(stream):
    parsed = parse("chat.deepseek.com", "/api/v0/chat/completion", DEEPSEEK_REQUEST)
    x = answer(parsed, stream)
    assert x.completion == "" and x.warnings


# --- Mistral Le Chat -------------------------------------------------------------------------------------------

MISTRAL_REQUEST = {"chatId": "chat-1", "mode": "append", "messageInput": "Translate Falcon",
                   "messageId": "m-1", "messageFiles": [{"name": "spec.pdf", "type": "application/pdf"}],
                   "features": ["beta-websearch"], "clientPromptData": {"currentDate": "2026-01-01"}}


def test_mistral_chat_data_stream():
    parsed = parse("chat.mistral.ai", "/api/chat", MISTRAL_REQUEST)
    x = parsed.exchange
    assert (x.service, x.operation, x.messages[0].text, x.messages[0].parts[0].path) == \
        ("mistral-chat", "conversation", "Translate Falcon", ("messageInput",))
    assert x.messages[0].attachments[0].name == "spec.pdf"
    x = answer(parsed, 'f:{"messageId":"m-2"}\n0:"Fau"\n0:"con \\u00e9"\n2:[{"x":1}]\n'
                       'e:{"finishReason":"stop","usage":{"promptTokens":5,"completionTokens":2}}\n'
                       'd:{"finishReason":"stop"}\n', "text/plain")
    assert (x.completion, x.finish_reason, x.usage.input_tokens, x.usage.output_tokens, x.parsed) == \
        ("Faucon é", "stop", 5, 2, True)


def test_mistral_message_input_as_parts():
    x = parse("chat.mistral.ai", "/api/chat", {"mode": "start", "messageInput": [{"type": "text", "text": "Hi"}]}
              ).exchange
    assert x.messages[0].parts[0].path == ("messageInput", 0, "text")


@pytest.mark.parametrize("body", [b'{"message": "renamed"}', b'{"messageInput": 3}', b"{"])
def test_mistral_malformed_requests_are_unparsed(body):
    assert_soft_failure(parse("chat.mistral.ai", "/api/chat", body))


def test_mistral_unknown_stream_is_unparsed():
    parsed = parse("chat.mistral.ai", "/api/chat", MISTRAL_REQUEST)
    x = answer(parsed, "<html>oops</html>\n{not a prefix}\n", "text/html")
    assert not x.parsed and x.completion == ""


# --- Grok web and Poe -----------------------------------------------------------------------------------------

GROK_REQUEST = {"modelName": "grok-4", "message": "Plan Falcon launch", "customInstructions": "Answer in French",
                "fileAttachments": ["file-meta-1"], "imageAttachments": [], "temporary": True,
                "disableSearch": False}


def test_grok_new_conversation_ndjson_tokens():
    parsed = parse("grok.com", "/rest/app-chat/conversations/new", GROK_REQUEST)
    x = parsed.exchange
    assert (x.service, x.operation, x.model, x.system_text, x.messages[0].text) == \
        ("grok", "conversation", "grok-4", "Answer in French", "Plan Falcon launch")
    assert x.messages[0].attachments[0].name == "file-meta-1"
    lines = [{"result": {"conversation": {"conversationId": "c1"}}},
             {"result": {"response": {"token": "hmm", "isThinking": True, "responseId": "r1"}}},
             {"result": {"response": {"token": "Lan", "isThinking": False}}},
             {"result": {"response": {"token": "cement.", "isThinking": False, "isSoftStop": True}}}]
    x = answer(parsed, "".join(json.dumps(line) + "\n" for line in lines), "application/json")
    assert (x.completion, x.finish_reason, x.parsed) == ("Lancement.", "stop", True)


def test_grok_follow_up_and_final_model_response():
    parsed = parse("grok.com", "/rest/app-chat/conversations/c1/responses", GROK_REQUEST)
    lines = [{"result": {"token": "Par"}}, {"result": {"token": "tial"}},
             {"result": {"modelResponse": {"message": "Whole answer.", "model": "grok-4-0709"}}}]
    x = answer(parsed, "".join(json.dumps(line) + "\n" for line in lines), "application/json")
    assert (x.completion, x.model) == ("Whole answer.", "grok-4-0709")


@pytest.mark.parametrize("stream", ["<html>blocked</html>", '{"error": {"code": 8}}\n'])
def test_grok_unknown_streams_are_unparsed(stream):
    parsed = parse("grok.com", "/rest/app-chat/conversations/new", GROK_REQUEST)
    x = answer(parsed, stream, "application/json")
    assert not x.parsed and x.completion == ""


def test_poe_send_message_mutation():
    body = {"queryName": "chatHelpers_sendMessageMutation_Mutation", "extensions": {"hash": "abc"},
            "variables": {"bot": "Claude-Sonnet-4", "query": "Review Falcon", "chatId": None,
                          "attachments": [{"name": "a.txt"}]}}
    parsed = parse("poe.com", "/api/gql_POST", body)
    x = parsed.exchange
    assert (x.service, x.operation, x.model, x.messages[0].text, x.messages[0].parts[0].path) == \
        ("poe", "conversation", "Claude-Sonnet-4", "Review Falcon", ("variables", "query"))
    assert any("not captured" in w for w in x.warnings) and x.parsed
    other = parse("poe.com", "/api/gql_POST", {"queryName": "settingsPageQuery", "variables": {}})
    assert (other.exchange.operation, other.exchange.messages) == ("graphql", [])


# --- uploads ---------------------------------------------------------------------------------------------------

def multipart(filename: str, content: bytes, mime: str, extra: dict | None = None) -> tuple[bytes, str]:
    boundary = "----gwtest"
    out = b""
    for name, value in (extra or {}).items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {mime}\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("host,path", [("claude.ai", "/api/convert_document"),
                                       ("claude.ai", "/api/org-1/upload"),
                                       ("chat.deepseek.com", "/api/v0/file/upload_file")])
def test_multipart_uploads_extract_text_like_files(host, path):
    body, ctype = multipart("secrets.md", b"# Falcon\nbudget 12M\n", "text/markdown", {"orgUuid": "org-1"})
    parsed = parse(host, path, body, ctype)
    x = parsed.exchange
    assert (x.operation, x.parsed) == ("upload", True)
    [att] = x.messages[0].attachments
    assert (att.name, att.size, att.text, att.inspected) == ("secrets.md", 20, "# Falcon\nbudget 12M\n", True)
    answer(parsed, b'{"extracted_content": "# Falcon"}', "application/json")
    assert x.completion == ""

    body, ctype = multipart("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png")
    [att] = parse(host, path, body, ctype).exchange.messages[0].attachments
    assert (att.kind, att.size, att.text, att.inspected) == ("image", 108, None, False)


@pytest.mark.parametrize("body", [b"not multipart", b'{"file": "x"}'])
def test_malformed_uploads_are_unparsed(body):
    assert_soft_failure(parse("claude.ai", "/api/convert_document", body, "application/json"))


# --- all apps --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,path", [("chatgpt.com", "/backend-api/f/conversation"), ("claude.ai", CLAUDE_PATH),
                                       ("www.perplexity.ai", "/rest/sse/perplexity_ask"),
                                       ("chat.deepseek.com", "/api/v0/chat/completion"),
                                       ("chat.mistral.ai", "/api/chat")])
@pytest.mark.parametrize("stream", [b"\xff\xfe\x00garbage", b"data: " + b"{" * 5000 + b"\n\n", b"data: [1\n\n"])
def test_hostile_streams_never_raise(host, path, stream):
    parsed = parse(host, path, b"{}")
    parser = providers.response_parser(parsed, "text/event-stream")
    parser.feed(stream)
    parser.finish()


def test_unrelated_paths_on_app_hosts_are_not_claimed():
    for host, path in [("chatgpt.com", "/backend-api/models"), ("claude.ai", "/api/organizations/o/projects"),
                       ("chat.deepseek.com", "/api/v0/users/current")]:
        parsed = parse(host, path, b"{}")
        assert parsed.provider is None or not parsed.provider.name.endswith("-web")
