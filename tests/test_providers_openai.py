"""OpenAI family: every operation from request fixtures to the reassembled response (whole, and streamed one byte
at a time), Azure and OpenAI-compatible hosts, uploads, and malformed or truncated input."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.wire import parse, respond


def sse(*events: dict | str, named: bool = False) -> bytes:
    out = []
    for e in events:
        if isinstance(e, str):
            out.append(f"data: {e}\n\n")
        elif named:
            out.append(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n")
        else:
            out.append(f"data: {json.dumps(e)}\n\n")
    return "".join(out).encode()


def multipart(fields: dict[str, str], files: list[tuple[str, str, str, bytes]],
              boundary: str = "b0undary") -> tuple[bytes, dict]:
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for field, filename, ctype, data in files:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                 f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


# --- Chat Completions ------------------------------------------------------------------------------------------

CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "file", "file": {"filename": "notes.txt", "file_data": "data:text/plain;base64,"
                                      + base64.b64encode(b"secret plan").decode()}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found it"},
    ],
    "tools": [{"type": "function", "function": {"name": "lookup", "description": "Find",
                                                "parameters": {"type": "object"}}}],
}


def test_chat_request():
    ex = parse("/v1/chat/completions", CHAT, hints=("openai",)).exchange
    assert (ex.operation, ex.model, ex.stream, ex.parsed) == ("chat.completions", "gpt-4o", False, True)
    assert ex.system_text == "You are terse.\nAnswer in French."
    assert ex.system[1].path == ("messages", 1, "content", 0, "text")
    user, assistant, tool = ex.messages
    assert user.text == "What is in these?" and user.parts[0].path == ("messages", 2, "content", 0, "text")
    image, file, audio = user.attachments
    assert (image.kind, image.mime_type, image.inspected) == ("image", "image/png", False)
    assert (file.kind, file.name, file.text, file.inspected) == ("file", "notes.txt", "secret plan", True)
    assert (audio.kind, audio.mime_type) == ("audio", "audio/wav")
    assert assistant.tool_calls[0].name == "lookup"
    assert assistant.tool_calls[0].path == ("messages", 3, "tool_calls", 0, "function", "arguments")
    assert (tool.tool_results[0].call_id, tool.tool_results[0].text) == ("call_1", "found it")
    assert tool.tool_results[0].path == ("messages", 4, "content")
    assert [t.name for t in ex.tools] == ["lookup"]
    assert "secret plan" in [p.text for p in ex.request_parts()]


def test_chat_response_whole_and_streamed():
    body = {"model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Bonjour", "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    ex = respond(parse("/v1/chat/completions", CHAT), "application/json", body).exchange
    assert (ex.completion, ex.model, ex.finish_reason) == ("Bonjour", "gpt-4o-2024-08-06", "tool_calls")
    assert (ex.usage.input_tokens, ex.usage.output_tokens) == (9, 2)
    assert ex.completion_tool_calls[0].name == "lookup"

    stream = sse({"model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "Bon"}}]},
                 {"choices": [{"index": 0, "delta": {"content": "jour", "tool_calls": [
                     {"index": 0, "id": "c3", "function": {"name": "look", "arguments": '{"q"'}}]}}]},
                 {"choices": [{"index": 0, "delta": {"tool_calls": [
                     {"index": 0, "function": {"name": "up", "arguments": ':"y"}'}}]}, "finish_reason": "stop"}]},
                 {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}, "[DONE]")
    ex = respond(parse("/v1/chat/completions", dict(CHAT, stream=True)), "text/event-stream", stream, step=1).exchange
    assert (ex.stream, ex.completion, ex.finish_reason) == (True, "Bonjour", "stop")
    assert (ex.completion_tool_calls[0].name, ex.completion_tool_calls[0].arguments) == ("lookup", '{"q":"y"}')
    assert (ex.usage.input_tokens, ex.usage.output_tokens) == (5, 3)


@pytest.mark.parametrize("host,path", [
    ("api.groq.com", "/openai/v1/chat/completions"),
    ("api.together.xyz", "/v1/chat/completions"),
    ("api.fireworks.ai", "/inference/v1/chat/completions"),
    ("api.deepseek.com", "/chat/completions"),
    ("api.x.ai", "/v1/chat/completions"),
    ("api.perplexity.ai", "/chat/completions"),
    ("openrouter.ai", "/api/v1/chat/completions"),
    ("api.cerebras.ai", "/v1/chat/completions"),
    ("router.huggingface.co", "/v1/chat/completions"),
    ("api.mistral.ai", "/v1/chat/completions"),
    ("eu.api.openai.com", "/v1/chat/completions"),
    ("myres.openai.azure.com", "/openai/v1/chat/completions"),
])
def test_openai_compatible_hosts_are_recognised_by_path_and_shape(host, path):
    p = parse(path, {"model": "m-1", "messages": [{"role": "user", "content": "hi"}]}, host=host)
    assert (p.provider.name, p.exchange.operation, p.exchange.model, p.exchange.messages[0].text) == \
        ("openai", "chat.completions", "m-1", "hi")


def test_azure_deployment_path_names_the_model():
    p = parse("/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
              {"messages": [{"role": "user", "content": "hi"}]}, host="myres.openai.azure.com",
              hints=("azure-openai", "openai"))
    assert (p.exchange.operation, p.exchange.model) == ("chat.completions", "prod-gpt4o")
    p = parse("/openai/deployments/emb-small/embeddings?api-version=2024-10-21", {"input": "x"})
    assert (p.exchange.operation, p.exchange.model) == ("embeddings", "emb-small")


# --- Legacy completions and embeddings -------------------------------------------------------------------------

def test_legacy_completions():
    p = parse("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["Say", "this"], "suffix": "end"})
    assert p.exchange.operation == "completions"
    assert [(t.text, t.path) for t in p.exchange.messages[0].parts] == \
        [("Say", ("prompt", 0)), ("this", ("prompt", 1)), ("end", ("suffix",))]
    ex = respond(p, "application/json", {"model": "gpt-3.5-turbo-instruct", "choices": [
        {"text": "ok", "finish_reason": "length"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}).exchange
    assert (ex.completion, ex.finish_reason, ex.usage.output_tokens) == ("ok", "length", 1)

    p = parse("/v1/completions", {"model": "x", "prompt": "Once", "stream": True})
    ex = respond(p, "text/event-stream", sse({"choices": [{"text": "upon"}]}, {"choices": [{"text": " a time",
                 "finish_reason": "stop"}]}, "[DONE]"), step=3).exchange
    assert (ex.completion, ex.finish_reason) == ("upon a time", "stop")


def test_token_prompts_are_noted_not_inspected():
    ex = parse("/v1/completions", {"model": "x", "prompt": [[1, 2, 3]]}).exchange
    assert ex.parsed and any("token-id" in w for w in ex.warnings)


def test_embeddings():
    p = parse("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["alpha", "beta"]})
    assert (p.exchange.operation, p.exchange.messages[0].text) == ("embeddings", "alpha\nbeta")
    ex = respond(p, "application/json", {"object": "list", "data": [{"embedding": [0.1], "index": 0}],
                                         "model": "text-embedding-3-small",
                                         "usage": {"prompt_tokens": 4, "total_tokens": 4}}).exchange
    assert (ex.usage.input_tokens, ex.model, ex.completion) == (4, "text-embedding-3-small", "")


# --- Responses API ---------------------------------------------------------------------------------------------

RESPONSES = {
    "model": "gpt-4.1",
    "instructions": "Be brief.",
    "input": [
        {"role": "developer", "content": "No jokes."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Summarise"},
            {"type": "input_image", "image_url": "https://example.com/cat.png"},
            {"type": "input_file", "filename": "a.csv", "file_data": "data:text/csv;base64," +
             base64.b64encode(b"name,ssn\nbob,123-45-6789").decode()}]},
        {"type": "function_call", "call_id": "fc1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "fc1", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ],
    "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": {}},
              {"type": "web_search"}],
}


def test_responses_request():
    ex = parse("/v1/responses", RESPONSES).exchange
    assert (ex.operation, ex.model, ex.parsed) == ("responses", "gpt-4.1", True)
    assert ex.system_text == "Be brief.\nNo jokes."
    assert ex.system[0].path == ("instructions",) and ex.system[1].path == ("input", 0, "content")
    user, call, output = ex.messages
    assert user.text == "Summarise" and user.parts[0].path == ("input", 1, "content", 0, "text")
    image, csv = user.attachments
    assert (image.kind, image.name) == ("image", "https://example.com/cat.png")
    assert (csv.name, csv.inspected, csv.text) == ("a.csv", True, "name,ssn\nbob,123-45-6789")
    assert (call.tool_calls[0].name, call.tool_calls[0].path) == ("get_weather", ("input", 2, "arguments"))
    assert (output.tool_results[0].text, output.tool_results[0].path) == ("sunny", ("input", 3, "output"))
    assert [t.name for t in ex.tools] == ["get_weather", "web_search"]
    assert ex.warnings == []


def test_responses_string_input_and_response():
    p = parse("/v1/responses", {"model": "gpt-4.1", "input": "Hi there"})
    assert p.exchange.messages[0].parts[0].path == ("input",)
    ex = respond(p, "application/json", {"id": "resp_1", "model": "gpt-4.1-2025-04-14", "status": "completed",
                                         "output": [{"type": "reasoning", "summary": []},
                                                    {"type": "message", "role": "assistant", "content": [
                                                        {"type": "output_text", "text": "Hello!"}]},
                                                    {"type": "function_call", "name": "f", "arguments": "{}",
                                                     "call_id": "c"}],
                                         "usage": {"input_tokens": 8, "output_tokens": 3}}).exchange
    assert (ex.completion, ex.model, ex.finish_reason) == ("Hello!", "gpt-4.1-2025-04-14", "completed")
    assert (ex.usage.input_tokens, ex.usage.output_tokens) == (8, 3)
    assert ex.completion_tool_calls[0].name == "f"


def test_responses_stream():
    events = [
        {"type": "response.created", "response": {"model": "gpt-4.1", "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "m1"}},
        {"type": "response.output_text.delta", "item_id": "m1", "delta": "Hel"},
        {"type": "response.output_text.delta", "item_id": "m1", "delta": "lo"},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "lookup", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": '{"q":'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": '"z"}'},
        {"type": "response.completed", "response": {"model": "gpt-4.1-2025", "status": "completed", "output": [],
                                                    "usage": {"input_tokens": 12, "output_tokens": 4}}},
    ]
    p = parse("/v1/responses", {"model": "gpt-4.1", "input": "x", "stream": True})
    ex = respond(p, "text/event-stream", sse(*events, named=True), step=1).exchange
    assert (ex.completion, ex.model, ex.finish_reason) == ("Hello", "gpt-4.1-2025", "completed")
    assert [(c.name, c.arguments, c.id) for c in ex.completion_tool_calls] == [("lookup", '{"q":"z"}', "call_9")]
    assert (ex.usage.input_tokens, ex.usage.output_tokens) == (12, 4)


def test_responses_incomplete_and_error_events():
    p = parse("/v1/responses", {"model": "m", "input": "x", "stream": True})
    ex = respond(p, "text/event-stream", sse(
        {"type": "response.output_text.delta", "delta": "par"},
        {"type": "error", "message": "server overloaded"},
        {"type": "response.incomplete", "response": {"status": "incomplete",
                                                     "incomplete_details": {"reason": "max_output_tokens"}}},
        named=True)).exchange
    assert ex.completion == "par" and ex.finish_reason == "incomplete: max_output_tokens"
    assert any("server overloaded" in w for w in ex.warnings)


# --- Assistants ------------------------------------------------------------------------------------------------

def test_assistants_threads_messages_runs():
    ex = parse("/v1/assistants", {"model": "gpt-4o", "instructions": "You are a tutor.",
                                  "tools": [{"type": "code_interpreter"}]}).exchange
    assert (ex.operation, ex.system_text, ex.tools[0].name) == ("assistants", "You are a tutor.", "code_interpreter")

    ex = parse("/v1/threads", {"messages": [{"role": "user", "content": "Hi", "attachments": [
        {"file_id": "file-1", "tools": [{"type": "file_search"}]}]}]}).exchange
    assert (ex.operation, ex.messages[0].text, ex.messages[0].attachments[0].name) == ("threads", "Hi", "file-1")

    ex = parse("/v1/threads/thread_1/messages", {"role": "user", "content": [
        {"type": "text", "text": "Solve 3x+1=4"},
        {"type": "image_file", "image_file": {"file_id": "file-2"}}]}).exchange
    assert (ex.operation, ex.messages[0].text) == ("threads.messages", "Solve 3x+1=4")
    assert ex.messages[0].parts[0].path == ("content", 0, "text")

    p = parse("/v1/threads/thread_1/runs", {"assistant_id": "asst_1", "additional_instructions": "Be kind.",
                                            "additional_messages": [{"role": "user", "content": "More"}],
                                            "stream": True})
    assert (p.exchange.operation, p.exchange.system_text, p.exchange.stream) == ("threads.runs", "Be kind.", True)
    stream = (sse({"object": "thread.run", "model": "gpt-4o", "status": "queued"}, named=False)
              .replace(b"data:", b"event: thread.run.created\ndata:")
              + b'event: thread.message.delta\ndata: {"delta": {"content": [{"index": 0, "type": "text", '
                b'"text": {"value": "x = "}}]}}\n\n'
              + b'event: thread.message.delta\ndata: {"delta": {"content": [{"index": 0, "type": "text", '
                b'"text": {"value": "1"}}]}}\n\n'
              + b'event: thread.run.completed\ndata: {"object": "thread.run", "model": "gpt-4o", "status": '
                b'"completed", "usage": {"prompt_tokens": 30, "completion_tokens": 5}}\n\n'
              + b"event: done\ndata: [DONE]\n\n")
    ex = respond(p, "text/event-stream", stream, step=5).exchange
    assert (ex.completion, ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == \
        ("x = 1", "completed", 30, 5)

    ex = parse("/v1/threads/runs", {"assistant_id": "a", "thread": {"messages": [{"role": "user",
                                                                                 "content": "Go"}]}}).exchange
    assert (ex.operation, ex.messages[0].text) == ("threads.runs", "Go")

    p = parse("/v1/threads/t/runs/r/submit_tool_outputs", {"tool_outputs": [{"tool_call_id": "c", "output": "42"}]})
    assert p.exchange.operation == "threads.runs.submit_tool_outputs"
    assert p.exchange.messages[0].tool_results[0].path == ("tool_outputs", 0, "output")
    ex = respond(p, "application/json", {"object": "thread.run", "status": "requires_action", "model": "gpt-4o",
                                         "required_action": {"submit_tool_outputs": {"tool_calls": [
                                             {"id": "c2", "function": {"name": "calc", "arguments": "{}"}}]}}}).exchange
    assert ex.finish_reason == "requires_action" and ex.completion_tool_calls[0].name == "calc"


# --- Files, uploads, audio, images -----------------------------------------------------------------------------

def test_file_upload_text_is_extracted_binary_is_not():
    body, headers = multipart({"purpose": "assistants"}, [("file", "report.csv", "text/csv", b"id,email\n1,a@b.c\n")])
    p = parse("/v1/files", body, headers=headers)
    [att] = p.exchange.messages[0].attachments
    assert (p.exchange.operation, att.name, att.mime_type, att.size) == ("files", "report.csv", "text/csv", 17)
    assert (att.text, att.inspected) == ("id,email\n1,a@b.c\n", True)
    assert "a@b.c" in " ".join(t.text for t in p.exchange.request_parts())
    ex = respond(p, "application/json", {"id": "file-1", "object": "file", "filename": "report.csv"}).exchange
    assert ex.warnings == []

    body, headers = multipart({"purpose": "vision"}, [("file", "photo.png", "image/png", b"\x89PNG\0\0" * 100)])
    [att] = parse("/v1/files", body, headers=headers).exchange.messages[0].attachments
    assert (att.kind, att.size, att.text, att.inspected) == ("image", 600, None, False)
    assert "not inspected" in parse("/v1/files", body, headers=headers).exchange.prompt_text

    body, headers = multipart({}, [("file", "main.py", "application/octet-stream", b"API_KEY = 'x'\n")])
    [att] = parse("/v1/files", body, headers=headers).exchange.messages[0].attachments
    assert att.inspected and att.text == "API_KEY = 'x'\n"  # source code by extension


def test_uploads_metadata_and_parts():
    p = parse("/v1/uploads", {"filename": "big.jsonl", "purpose": "batch", "bytes": 123456,
                              "mime_type": "application/jsonl"})
    [att] = p.exchange.messages[0].attachments
    assert (p.exchange.operation, att.name, att.size, att.inspected) == ("uploads", "big.jsonl", 123456, False)
    body, headers = multipart({}, [("data", "blob", "application/octet-stream", b"\0" * 64)])
    p = parse("/v1/uploads/upload_1/parts", body, headers=headers)
    assert (p.exchange.operation, p.exchange.messages[0].attachments[0].size) == ("uploads.parts", 64)
    assert parse("/v1/uploads/upload_1/complete", {"part_ids": ["p1"]}).exchange.operation == "uploads.complete"


def test_audio_transcription():
    body, headers = multipart({"model": "whisper-1", "prompt": "Names: Alice Smith", "stream": "true"},
                              [("file", "call.mp3", "audio/mpeg", b"ID3" + b"\0" * 500)])
    p = parse("/v1/audio/transcriptions", body, headers=headers)
    ex = p.exchange
    assert (ex.operation, ex.model, ex.stream) == ("audio.transcriptions", "whisper-1", True)
    assert ex.messages[0].text == "Names: Alice Smith"
    assert (ex.messages[0].attachments[0].kind, ex.messages[0].attachments[0].size) == ("audio", 503)
    ex = respond(p, "text/event-stream", sse({"type": "transcript.text.delta", "delta": "Hello "},
                                             {"type": "transcript.text.delta", "delta": "Alice"},
                                             {"type": "transcript.text.done", "text": "Hello Alice",
                                              "usage": {"input_tokens": 14, "output_tokens": 3}}), step=2).exchange
    assert (ex.completion, ex.usage.input_tokens) == ("Hello Alice", 14)

    body, headers = multipart({"model": "whisper-1"}, [("file", "a.wav", "audio/wav", b"RIFF")])
    ex = respond(parse("/v1/audio/translations", body, headers=headers), "application/json",
                 {"text": "Good morning"}).exchange
    assert (ex.operation, ex.completion) == ("audio.translations", "Good morning")
    ex = respond(parse("/v1/audio/transcriptions", body, headers=headers), "text/plain",
                 "héllo wörld".encode(), step=1).exchange
    assert ex.completion == "héllo wörld"


def test_speech_and_images():
    p = parse("/v1/audio/speech", {"model": "gpt-4o-mini-tts", "input": "Read this aloud", "voice": "alloy",
                                   "instructions": "Cheerful"})
    assert (p.exchange.operation, p.exchange.messages[0].text, p.exchange.system_text) == \
        ("audio.speech", "Read this aloud", "Cheerful")
    ex = respond(p, "audio/mpeg", b"ID3\xff\xfb" * 100).exchange
    assert ex.warnings == [] and ex.completion == ""

    p = parse("/v1/images/generations", {"model": "gpt-image-1", "prompt": "A red fox", "n": 1})
    assert (p.exchange.operation, p.exchange.messages[0].parts[0].path) == ("images.generations", ("prompt",))
    ex = respond(p, "application/json", {"data": [{"b64_json": "AAAA", "revised_prompt": "A red fox in snow"}],
                                         "usage": {"input_tokens": 10, "output_tokens": 4160}}).exchange
    assert (ex.completion, ex.usage.output_tokens) == ("A red fox in snow", 4160)

    body, headers = multipart({"prompt": "Add a hat", "model": "gpt-image-1"},
                              [("image[]", "cat.png", "image/png", b"\x89PNG"),
                               ("mask", "m.png", "image/png", b"\x89")])
    ex = parse("/v1/images/edits", body, headers=headers).exchange
    assert (ex.operation, ex.messages[0].text, [a.name for a in ex.messages[0].attachments]) == \
        ("images.edits", "Add a hat", ["cat.png", "m.png"])


# --- Recognition and hostile input -----------------------------------------------------------------------------

def test_generic_paths_need_the_expected_shape():
    """`/files` with JSON (ChatGPT web's upload announcement) is not an OpenAI API upload; GETs are not claimed."""
    assert parse("/backend-api/files", {"file_name": "a.txt", "file_size": 3}).exchange.operation == "unknown"
    assert parse("/v1/threads/t/messages", b"", method="GET").exchange.operation == "unknown"
    unknown = parse("/v1/fine_tuning/jobs", {"model": "x"}, hints=("openai",)).exchange
    assert (unknown.operation, unknown.parsed) == ("unknown", False)


MALFORMED = [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"'),
    ("/v1/chat/completions", b'{"messages": {"role": "user"}}'),
    ("/v1/completions", b'{"model": "x"}'),
    ("/v1/completions", b"[1, 2]"),
    ("/v1/responses", b'{"model": "x", "input": 42}'),
    ("/v1/responses", b'{"model": "x"}'),
    ("/v1/responses", b"\xff\xfe"),
    ("/v1/embeddings", b'{"model": "x"}'),
    ("/v1/threads/t/messages", b'{"role": "user"}'),
    ("/v1/threads/t/runs", b'{"model": "x"}'),
    ("/v1/threads/t/runs", b'{"assistant_id": "a", "additional_messages": "nope"}'),
    ("/v1/threads/t/runs/r/submit_tool_outputs", b'{"tool_outputs": "x"}'),
    ("/v1/audio/speech", b'{"voice": "alloy"}'),
    ("/v1/images/generations", b'{"model": "x", "n": 1}'),
    ("/v1/uploads", b'{"purpose": "batch"}'),
]


@pytest.mark.parametrize("path,body", MALFORMED)
def test_malformed_requests_are_unparsed_not_errors(path, body):
    p = parse(path, body)
    assert p.exchange.operation != "unknown" and not p.exchange.parsed and p.error
    assert p.exchange.warnings


def test_malformed_multipart_is_unparsed_and_truncated_keeps_what_it_saw():
    headers = {"content-type": "multipart/form-data; boundary=zz"}
    p = parse("/v1/files", b"this is not multipart at all", headers=headers)
    assert (p.exchange.operation, p.exchange.parsed) == ("files", False)
    body, headers = multipart({"purpose": "assistants"}, [("file", "n.txt", "text/plain", b"hello " * 100)])
    p = parse("/v1/files", body[:200], headers=headers)
    assert p.exchange.parsed and any("truncated" in w for w in p.exchange.warnings)


@pytest.mark.parametrize("path,request_body,ctype,response", [
    ("/v1/chat/completions", {"messages": [], "stream": True}, "text/event-stream",
     b'data: {"choices": [{"delta": {"content": "par'),
    ("/v1/chat/completions", {"messages": [], "stream": True}, "text/event-stream",
     b'data: {"choices": "nope"}\n\ndata: [1, 2]\n\ndata: {"choices": [{"delta": {"content": "ok"}}]}\n\n'),
    ("/v1/chat/completions", {"messages": []}, "application/json", b'{"choices": [{"message": '),
    ("/v1/chat/completions", {"messages": []}, "application/json", b'{"error": {"message": "rate limited"}}'),
    ("/v1/responses", {"input": "x", "stream": True}, "text/event-stream",
     b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": 5}\n\n'
     b'event: response.completed\ndata: {"type": "response.completed", "response": []}\n\n'),
    ("/v1/responses", {"input": "x"}, "application/json", b'{"output": "weird", "usage": 3}'),
    ("/v1/threads/t/runs", {"assistant_id": "a", "stream": True}, "text/event-stream",
     b'event: thread.message.delta\ndata: {"delta": {"content": [{"type": "text", "text": 7}]}}\n\n'),
    ("/v1/embeddings", {"input": "x"}, "application/json", b"\x1f\x8b not json"),
])
def test_malformed_and_truncated_responses_never_raise(path, request_body, ctype, response):
    p = parse(path, request_body)
    ex = respond(p, ctype, response, step=3).exchange
    assert isinstance(ex.completion, str)
    if response.endswith(b'"par') or b"not json" in response or b"rate limited" in response:
        assert ex.warnings


@pytest.mark.parametrize("data,text", [
    ("name;city\nJosé;Zürich\n".encode("cp1252"), "name;city\nJosé;Zürich\n"),  # legacy 8-bit export
    ("id,note\n1,日本\n".encode("utf-16"), "id,note\n1,日本\n"),
    (b"\xef\xbb\xbfa,b\n", "a,b\n"),
    (b"a,b\n\x00\x01\x02", None),  # NULs: binary data behind a text name
])
def test_text_like_upload_encodings(data, text):
    body, headers = multipart({}, [("file", "export.csv", "text/csv", data)])
    [att] = parse("/v1/files", body, headers=headers).exchange.messages[0].attachments
    assert (att.text, att.inspected) == (text, text is not None)


def test_long_text_file_is_read_to_its_end():
    data = "é".encode() * (600 * 1024)  # 1.2 MB of two-byte characters: no cap cuts it (the body limit bounds it)
    body, headers = multipart({}, [("file", "big.txt", "text/plain", data)])
    [att] = parse("/v1/files", body, headers=headers).exchange.messages[0].attachments
    assert att.size == len(data) and att.inspected
    assert att.text == "é" * (600 * 1024)
