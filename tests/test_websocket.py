"""WebSocket conversations (OpenAI Realtime, Gemini Live, Microsoft Copilot): message fixtures built from the field
names in docs/providers.md (from the sources it names, not from captures), fed to the pure state machines the addon
drives. Malformed, oversized and unknown traffic never raises and ends up audited as unparsed."""

from __future__ import annotations

import base64
import json

import pytest

from core.interaction import redact_query
from providers import websocket_base
from providers.websocket import Turn, conversation_for


def feed(conv, *messages) -> list[Turn]:
    """messages: (from_client, payload) with payload a dict (sent as JSON text) or raw bytes."""
    turns: list[Turn] = []
    for from_client, payload in messages:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        turns += conv.message(from_client, raw, not isinstance(payload, bytes))
    return turns


C, S = True, False  # client, server
EMAIL, KEY = "jane.doe@acme-corp.com", "AKIAZ7Q4XK2M3PLR5TVW"


def walked(x) -> list[str]:
    """The texts the whole-message walk added to a turn, in order."""
    return [p.text for p in x.request_parts() if p.source == "walk"]

# --- OpenAI Realtime -------------------------------------------------------------------------------------------

REALTIME_TURN = [
    (C, {"type": "session.update", "session": {"type": "realtime", "instructions": "You are a terse assistant.",
                                               "tools": [{"type": "function", "name": "lookup",
                                                          "description": "Look up", "parameters": {}}]}}),
    (S, {"type": "session.updated", "session": {"model": "gpt-realtime-2025-08-28"}}),
    (C, {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is Project Falcon?"}]}}),
    (C, {"type": "response.create"}),
    (S, {"type": "response.created", "response": {"id": "r1"}}),
    (S, {"type": "response.output_text.delta", "delta": "A secret "}),
    (S, {"type": "response.output_text.delta", "delta": "plan."}),
    (S, {"type": "response.done", "response": {"status": "completed",
                                               "usage": {"input_tokens": 12, "output_tokens": 4}}}),
]


def test_realtime_turn():
    conv = conversation_for("openai", ("openai",), "/v1/realtime?model=gpt-realtime")
    turns = feed(conv, *REALTIME_TURN[:-1])
    assert turns == []  # nothing is recorded before the turn ends
    [turn] = feed(conv, REALTIME_TURN[-1])
    x = turn.exchange
    assert (x.service, x.operation, x.model, x.stream) == ("openai", "realtime", "gpt-realtime-2025-08-28", True)
    assert x.system_text == "You are a terse assistant."
    assert x.messages[0].role == "user" and x.messages[0].text == "What is Project Falcon?"
    assert (x.completion, x.finish_reason, x.usage.input_tokens, x.usage.output_tokens) == \
        ("A secret plan.", "completed", 12, 4)
    assert [t.name for t in x.tools] == ["lookup"] and x.parsed and not x.warnings
    assert turn.request_bytes > 0 and turn.response_bytes > 0


def test_realtime_function_call_audio_and_transcripts():
    conv = conversation_for("openai", ("openai",), "/v1/realtime?model=gpt-realtime")
    [first] = feed(conv,
                   (C, {"type": "input_audio_buffer.append", "audio": "AAAA" * 100}),
                   (S, {"type": "conversation.item.input_audio_transcription.completed", "transcript": "Call it"}),
                   (S, {"type": "response.output_audio_transcript.delta", "delta": "Calling."}),
                   (S, {"type": "response.function_call_arguments.done", "name": "lookup", "call_id": "call-1",
                        "arguments": "{\"q\": \"falcon\"}"}),
                   (S, {"type": "response.done", "response": {"status": "completed"}}))
    x = first.exchange
    assert x.messages[0].text == "Call it"
    assert [(a.kind, a.size) for a in x.messages[0].attachments] == [("audio", 300)]
    assert x.completion == "Calling."
    assert [(c.name, c.arguments, c.id) for c in x.completion_tool_calls] == [("lookup", '{"q": "falcon"}',
                                                                               "call-1")]
    [second] = feed(conv, (C, {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call-1", "output": "{\"found\": true}"}}),
                    (C, {"type": "response.create", "response": {"instructions": "Answer now."}}),
                    (S, {"type": "response.output_text.delta", "delta": "Found."}),
                    (S, {"type": "response.done", "response": {"status": "completed"}}))
    x = second.exchange
    assert x.messages[0].tool_results[0].call_id == "call-1" and x.system_text == "Answer now."
    assert x.completion == "Found."


def test_realtime_model_from_azure_deployment():
    conv = conversation_for("azure-openai", ("azure-openai", "openai"),
                            "/openai/realtime?api-version=2025-04-01-preview&deployment=my-rt")
    [turn] = feed(conv, *REALTIME_TURN[:2], (S, {"type": "response.done", "response": {}}))
    assert turn.exchange.model == "gpt-realtime-2025-08-28"  # the server's word wins over the deployment name
    conv = conversation_for("azure-openai", ("azure-openai",), "/openai/realtime?deployment=my-rt")
    assert feed(conv, (S, {"type": "response.done", "response": {}}))[0].exchange.model == "my-rt"


# --- the whole-message walk ------------------------------------------------------------------------------------

def test_realtime_fields_the_parser_does_not_read_are_walked_into_the_turn():
    conv = conversation_for("openai", ("openai",), "/v1/realtime?model=gpt-realtime")
    [turn] = feed(conv,
                  (C, {"type": "session.update", "session": {
                      "instructions": "Be terse.", "metadata": {"owner": EMAIL},
                      "tools": [{"type": "function", "name": "lookup", "description": f"Use key {KEY}"}]}}),
                  (C, {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
                      {"type": "input_text", "text": "What is Falcon?"}, {"type": "input_note", "note": "pssst"}]}}),
                  (C, {"type": "session.update", "session": {"instructions": "Now verbose."}}),  # mid-turn
                  (C, {"type": "x.future_event", "payload": {KEY: 4111111111111111}}),
                  (C, {"type": "response.create", "response": {"metadata": {"ticket": "T-9"}}}),
                  (S, {"type": "response.output_text.delta", "delta": "Falcon is a plan."}),
                  (S, {"type": "response.done", "response": {"status": "completed"}}))
    x = turn.exchange
    assert x.parsed and x.read and x.model == "gpt-realtime"
    assert x.system_text == "Be terse." and x.messages[0].text == "What is Falcon?"  # the parser's, as before
    by_path = {p.path: p.text for p in x.extra if p.source == "walk" and p.path}
    assert by_path[("session", "metadata", "owner")] == EMAIL
    assert by_path[("session", "tools", 0, "description")] == f"Use key {KEY}"
    assert by_path[("item", "content", 1, "note")] == "pssst"  # a content part type the parser skips
    assert by_path[("session", "instructions")] == "Now verbose."  # not in this turn's system prompt: walked
    assert by_path[("response", "metadata", "ticket")] == "T-9"
    texts = walked(x)
    assert "4111111111111111" in texts  # a long number, under a key that is itself a secret
    keys = {k for p in x.extra if p.source == "walk" and p.path is None for k in p.text.split("\n")}
    assert {KEY, "metadata", "owner", "note", "payload"} <= keys
    # what the parser took is not read twice; repeated strings (event types, keys) are scanned once per turn
    assert "What is Falcon?" not in texts and "Be terse." not in texts
    assert texts.count("session.update") == 1 and len(texts) == len(set(texts))
    assert "parser /item/content/*/text" in x.coverage and "parser /session/instructions" in x.coverage
    assert {"walk /session/metadata/owner", "walk /type x4", "walk (again) /type"} <= set(x.coverage)
    sources = dict(zip((p.text for p in x.request_parts()), x.request_sources()))
    assert sources[EMAIL] == "other" and sources["What is Falcon?"] == "user"
    assert sources[f"Use key {KEY}"] == "tool_definition"  # scored as a tool's description (tool poisoning)


def test_realtime_audio_is_recorded_as_binary_without_being_decoded(monkeypatch):
    from providers import walk

    def no_sniffing(*args, **kwargs):
        raise AssertionError("an audio chunk the parser read must not be decoded")

    monkeypatch.setattr(walk, "base64_attachment", no_sniffing)
    conv = conversation_for("openai", ("openai",), "/v1/realtime?model=gpt-realtime")
    short, long = "AAAA" * 50, "AAAA" * 4096  # under and over walk.ENCODED_MIN: neither is text
    appends = [(C, {"type": "input_audio_buffer.append", "event_id": f"ev{n}", "audio": chunk})
               for n, chunk in enumerate([short, long] * 20)]
    [turn] = feed(conv, *appends, (S, {"type": "response.done", "response": {}}))
    x = turn.exchange
    texts = walked(x)
    assert not any("AAAA" in t for t in texts)
    assert "not inspected (binary) /audio x40" in x.coverage
    assert texts.count("input_audio_buffer.append") == 1 and "ev39" in texts
    assert texts.count("type\nevent_id\naudio") == 1  # the keys, once per turn
    assert [(a.kind, a.size) for a in x.messages[0].attachments] == [("audio", 20 * (150 + 12288))]
    # binary in an event the parser does not know: sniffed as binary (its first bytes only), nothing kept of it
    monkeypatch.undo()
    unknown = [(C, {"type": "x.audio", "chunk": base64.b64encode(bytes([n]) * 6000).decode()})
               for n in range(128, 158)]
    [turn] = feed(conv, *unknown, (S, {"type": "response.done", "response": {}}))
    assert "not inspected (binary) /chunk x30" in turn.exchange.coverage and len(conv.walk.seen) < 10


def test_walked_text_per_turn_is_capped_and_the_audit_says_so(monkeypatch):
    monkeypatch.setattr(websocket_base, "MAX_PROMPT_CHARS", 1000)
    conv = conversation_for("openai", ("openai",), "/v1/realtime?model=gpt-realtime")
    notes = [(C, {"type": "x.note", "note": f"{n:03d}" + "n" * 97}) for n in range(30)]
    [turn] = feed(conv, *notes, (S, {"type": "response.done", "response": {}}))
    x = turn.exchange
    chars = sum(len(t) for t in walked(x))
    assert 1000 <= chars < 1000 + 120  # the cap, and at most the message that reached it
    assert "not inspected (over the walk cap) /note x20" in x.coverage
    assert [w for w in x.warnings if "walk" in w] == ["openai-realtime: the whole-message walk stopped at 1000 "
                                                      "characters for this turn: later WebSocket text was not "
                                                      "inspected"]
    [second] = feed(conv, (C, {"type": "x.note", "note": "fresh"}), (S, {"type": "response.done", "response": {}}))
    assert "fresh" in walked(second.exchange) and not second.exchange.warnings  # each turn has its own cap


def test_gemini_live_unread_setup_fields_are_walked_and_media_is_binary():
    conv = conversation_for("gemini", ("gemini",), LIVE_PATH)
    [turn] = feed(conv,
                  (C, {"setup": {"model": "models/gemini-live", "generationConfig": {
                      "speechConfig": {"voiceName": f"voice {EMAIL}"}},
                      "tools": [{"googleSearch": {}}, {"function_declarations": [
                          {"name": "weather", "description": "Weather"},
                          {"name": "notes", "description": f"Always copy {EMAIL} in."}]}]}}),
                  (C, {"realtimeInput": {"mediaChunks": [{"mimeType": "audio/pcm", "data": "AAAA" * 10}]}}),
                  (S, {"serverContent": {"turnComplete": True}}))
    x = turn.exchange
    assert f"voice {EMAIL}" in walked(x) and "audio/pcm" in walked(x)
    assert [t.path for t in x.tools] == [("setup", "tools", 1, "function_declarations", 0),
                                         ("setup", "tools", 1, "function_declarations", 1)]
    sources = dict(zip((p.text for p in x.request_parts()), x.request_sources()))
    assert sources[f"Always copy {EMAIL} in."] == "tool_definition" and sources[f"voice {EMAIL}"] == "other"
    assert "not inspected (binary) /realtimeInput/mediaChunks/*/data" in x.coverage


# --- Gemini Live -----------------------------------------------------------------------------------------------

LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key=AIzaSECRET"


def test_gemini_live_turn_in_binary_frames():
    conv = conversation_for("gemini", ("gemini",), LIVE_PATH)
    frames = [
        (C, {"setup": {"model": "models/gemini-2.0-flash-live-001",
                       "systemInstruction": {"parts": [{"text": "Speak like a pirate."}]},
                       "tools": [{"functionDeclarations": [{"name": "weather", "description": "Weather"}]}]}}),
        (S, json.dumps({"setupComplete": {}}).encode()),
        (C, {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hello Falcon"}]}],
                               "turnComplete": True}}),
        (S, json.dumps({"serverContent": {"modelTurn": {"parts": [{"text": "Ahoy "}]}}}).encode()),
        (S, json.dumps({"serverContent": {"modelTurn": {"parts": [{"text": "matey"}]}}}).encode()),
        (S, json.dumps({"serverContent": {"turnComplete": True},
                        "usageMetadata": {"promptTokenCount": 9, "responseTokenCount": 3}}).encode()),
    ]
    [turn] = feed(conv, *frames)
    x = turn.exchange
    assert (x.operation, x.model, x.system_text) == ("live", "gemini-2.0-flash-live-001", "Speak like a pirate.")
    assert x.messages[0].text == "Hello Falcon" and x.completion == "Ahoy matey"
    assert (x.usage.input_tokens, x.usage.output_tokens, x.finish_reason) == (9, 3, "turn_complete")
    assert [t.name for t in x.tools] == ["weather"] and x.parsed


def test_gemini_live_snake_case_tool_calls_and_audio():
    conv = conversation_for("vertex-ai", ("vertex", "gemini"), "/ws/google.cloud.aiplatform.v1.LlmBidiService/"
                                                                "BidiGenerateContent")
    [turn] = feed(conv,
                  (C, {"setup": {"model": "gemini-live", "system_instruction": "Be brief."}}),
                  (C, {"realtime_input": {"media_chunks": [{"mime_type": "audio/pcm", "data": "AAAA" * 10}]}}),
                  (S, {"server_content": {"input_transcription": {"text": "weather in Paris"}}}),
                  (S, {"tool_call": {"function_calls": [{"id": "f1", "name": "weather", "args": {"city": "Paris"}}]}}),
                  (C, {"tool_response": {"function_responses": [{"id": "f1", "response": {"temp": 20}}]}}),
                  (S, {"server_content": {"output_transcription": {"text": "Twenty degrees."}}}),
                  (S, {"server_content": {"turn_complete": True}}))
    x = turn.exchange
    assert x.system_text == "Be brief."
    assert x.messages[0].text == "weather in Paris"
    assert x.completion_tool_calls[0].name == "weather" and json.loads(x.completion_tool_calls[0].arguments) == \
        {"city": "Paris"}
    assert any(tr.call_id == "f1" for m in x.messages for tr in m.tool_results)
    assert x.completion == "Twenty degrees."
    assert any(a.kind == "audio" and a.size == 30 for m in x.messages for a in m.attachments)


# --- Microsoft Copilot -----------------------------------------------------------------------------------------

def test_copilot_turns():
    conv = conversation_for("copilot", ("copilot-web",), "/c/api/chat?api-version=2&accessToken=SECRET")
    frames = [
        (C, {"event": "setOptions", "supportedCards": ["image"]}),
        (C, {"event": "send", "conversationId": "conv-1", "mode": "smart",
             "content": [{"type": "text", "text": "Draft a memo about Falcon"}]}),
        (S, {"event": "received", "messageId": "u1"}),
        (S, {"event": "startMessage", "messageId": "a1"}),
        (S, {"event": "appendText", "messageId": "a1", "text": "Memo: "}),
        (S, {"event": "appendText", "messageId": "a1", "text": "Falcon is on track."}),
        (S, {"event": "partCompleted", "messageId": "a1"}),
        (S, {"event": "done", "messageId": "a1"}),
    ]
    [turn] = feed(conv, *frames)
    x = turn.exchange
    assert (x.service, x.operation, x.model) == ("copilot", "conversation", "smart")
    assert x.messages[0].text == "Draft a memo about Falcon" and x.completion == "Memo: Falcon is on track."
    assert x.finish_reason == "done" and x.parsed
    [second] = feed(conv, (C, {"event": "send", "content": [{"type": "text", "text": "Shorter"}]}),
                    (S, {"event": "appendText", "text": "OK."}), (S, {"event": "done"}))
    assert (second.exchange.messages[0].text, second.exchange.completion) == ("Shorter", "OK.")


# --- Character.AI ----------------------------------------------------------------------------------------------

def test_character_ai_turn_from_cumulative_candidates():
    conv = conversation_for("character-ai", ("character-ai-web",), "/ws/")
    human = {"author": {"author_id": "u1", "is_human": True}, "candidates": [{"raw_content": "Hi Falcon"}]}
    bot = {"author": {"author_id": "c1"}, "primary_candidate_id": "k1"}
    [turn] = feed(conv,
                  (C, {"command": "create_and_generate_turn", "request_id": "r1", "origin_id": "web-next",
                       "payload": {"chat_type": "TYPE_ONE_ON_ONE", "character_id": "char-7", "num_candidates": 1,
                                   "turn": {"turn_key": {"chat_id": "c", "turn_id": "t"}, "author": {"is_human": True},
                                            "candidates": [{"candidate_id": "k0", "raw_content": "Hi Falcon"}]}}}),
                  (S, {"command": "add_turn", "turn": human}),
                  (S, {"command": "add_turn", "turn": bot | {"candidates": [{"candidate_id": "k1",
                                                                             "raw_content": "Hel"}]}}),
                  (S, {"command": "update_turn", "turn": bot | {"candidates": [{"candidate_id": "k1",
                                                                                "raw_content": "Hello!",
                                                                                "is_final": True}]}}))
    x = turn.exchange
    assert (x.model, x.messages[0].text, x.completion, x.finish_reason) == \
        ("character:char-7", "Hi Falcon", "Hello!", "final")


# --- failure modes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,formats", [("/v1/realtime?model=m", ("openai",)), (LIVE_PATH, ("gemini",)),
                                          ("/c/api/chat", ("copilot-web",)), ("/ws/", ("character-ai-web",))])
def test_malformed_messages_never_raise(path, formats):
    conv = conversation_for("svc", formats, path)
    turns = feed(conv, (C, b"\xff\xfe not json"), (C, b'{"type": '), (S, b"[1, 2, 3]"), (S, b'"just a string"'),
                 (C, {"type": 5, "event": ["x"]}), (S, {"serverContent": "nope", "event": None, "type": None}),
                 (C, b""), (S, b"{}"))
    turns += conv.close("client went away")
    assert turns and all(isinstance(t.exchange.warnings, list) for t in turns)
    assert any("understood" in w for t in turns for w in t.exchange.warnings)


def test_unknown_protocol_is_one_unparsed_event_per_connection():
    conv = conversation_for("chatgpt", ("chatgpt-web", "openai"), "/backend-api/celsius/ws/user")
    assert feed(conv, (C, b"\x00\x01binary"), (S, {"hello": 1})) == []
    [turn] = conv.close()
    x = turn.exchange
    assert x.operation == "websocket" and not x.parsed and not x.read
    assert x.warnings == ["websocket: 2 WebSocket messages, none understood"]


def test_unknown_protocol_client_json_is_walked_not_unparsed():
    """Not understood, but read: what the client sent as JSON is inspected (server messages are not walked)."""
    conv = conversation_for("chatgpt", ("chatgpt-web", "openai"), "/backend-api/celsius/ws/user")
    assert feed(conv, (C, {"prompt": f"mail {EMAIL}"}), (S, {"answer": "server text"})) == []
    [turn] = conv.close()
    x = turn.exchange
    assert not x.parsed and x.read
    assert walked(x) == [f"mail {EMAIL}", "prompt"]
    assert x.warnings == ["websocket: 2 WebSocket messages, none understood; 1 from the client read by the "
                          "whole-message walk"]


def test_unknown_protocol_server_messages_are_not_decoded(monkeypatch):
    conv = conversation_for("chatgpt", ("chatgpt-web", "openai"), "/backend-api/celsius/ws/user")
    decoded = []
    real = conv.decode
    monkeypatch.setattr(conv, "decode", lambda content, is_text: decoded.append(content) or real(content, is_text))
    feed(conv, (C, {"prompt": "hi"}), (S, {"answer": "x" * 1000}), (S, {"answer": "y"}))
    assert decoded == [b'{"prompt": "hi"}']
    [turn] = conv.close()
    assert turn.exchange.warnings == ["websocket: 3 WebSocket messages, none understood; 1 from the client read "
                                      "by the whole-message walk"]


def test_connection_closed_mid_turn_keeps_the_partial_answer():
    conv = conversation_for("copilot", ("copilot-web",), "/c/api/chat")
    assert feed(conv, (C, {"event": "send", "content": [{"type": "text", "text": "Hi"}]}),
                (S, {"event": "appendText", "text": "Hel"})) == []
    [turn] = conv.close("1006")
    assert turn.exchange.completion == "Hel"
    assert any("closed before the turn ended" in w for w in turn.exchange.warnings)


def test_client_messages_after_the_last_turn_are_an_event_of_their_own_that_says_so():
    """The text was sent, so it is audited; but no turn was cut short, and the warning does not say one was."""
    conv = conversation_for("openai", ("openai",), "/v1/realtime?model=gpt-realtime")
    hi = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    [first] = feed(conv, (C, {"type": "conversation.item.create", "item": hi}),
                   (S, {"type": "response.output_text.delta", "delta": "Hello."}),
                   (S, {"type": "response.done", "response": {"status": "completed"}}))
    assert not first.exchange.warnings
    feed(conv, (C, {"type": "session.update", "session": {"metadata": {"owner": EMAIL}}}))
    [trailing] = conv.close("1000")
    x = trailing.exchange
    assert EMAIL in walked(x) and not x.messages and not x.completion
    assert x.warnings == ["client messages after the last turn, read by the whole-message walk; then the "
                          "connection closed: 1000"]


def test_connection_without_turns_is_still_audited():
    conv = conversation_for("openai", ("openai",), "/v1/realtime?model=gpt-realtime")
    feed(conv, (S, {"type": "session.created", "session": {"model": "gpt-realtime"}}))
    [turn] = conv.close()
    assert turn.exchange.model == "gpt-realtime" and turn.exchange.parsed
    assert any("without a conversation turn" in w for w in turn.exchange.warnings)


def test_memory_is_bounded(monkeypatch):
    from providers import base
    monkeypatch.setattr(base, "MAX_COMPLETION_CHARS", 1000)
    monkeypatch.setattr(websocket_base, "MAX_PROMPT_CHARS", 1000)
    monkeypatch.setattr(websocket_base, "MAX_MESSAGE_BYTES", 10_000)
    conv = conversation_for("copilot", ("copilot-web",), "/c/api/chat")
    feed(conv, (C, {"event": "send", "content": [{"type": "text", "text": "p" * 5000}]}))
    feed(conv, *[(S, {"event": "appendText", "text": "x" * 100})] * 50)
    feed(conv, (S, b'{"event": "appendText", "text": "' + b"y" * 20_000 + b'"}'))  # too large: counted only
    [turn] = feed(conv, (S, {"event": "done"}))
    x = turn.exchange
    assert len(x.prompt_text) < 1100 and len(x.completion) == 1000
    assert any("prompt truncated" in w for w in x.warnings) and any("completion truncated" in w for w in x.warnings)
    assert conv.skipped_large == 1


def test_credentials_in_websocket_urls_are_redacted():
    assert redact_query("/c/api/chat?api-version=2&accessToken=eyJ.secret") == \
        "/c/api/chat?api-version=2&accessToken=REDACTED"
    assert "AIza" not in redact_query(LIVE_PATH)
    assert redact_query("/v1/realtime") == "/v1/realtime"
