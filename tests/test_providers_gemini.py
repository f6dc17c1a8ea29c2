"""Gemini Developer API, Vertex AI and Code Assist: request fixtures per operation, responses whole, as SSE and as
a streamed JSON array, and hostile input."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.wire import assert_paths_resolve, parse, respond

FILE_URI = "https://generativelanguage.googleapis.com/v1beta/files/abc"
GENERATE = {
    "systemInstruction": {"parts": [{"text": "You are terse."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "What is in this file?"},
                                   {"inlineData": {"mimeType": "text/plain",
                                                   "data": base64.b64encode(b"secret plan").decode()}},
                                   {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                                   {"fileData": {"mimeType": "application/pdf", "fileUri": FILE_URI}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "plan"}, "id": "c1"}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "id": "c1", "response": {"r": "ok"}}}]},
    ],
    "tools": [{"functionDeclarations": [{"name": "lookup", "description": "Find things",
                                         "parameters": {"type": "object"}}]}, {"googleSearch": {}}],
    "generationConfig": {"temperature": 0.1},
}

ANSWER = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "thinking...", "thought": True},
                                                           {"text": "It is a plan."},
                                                           {"functionCall": {"name": "lookup", "args": {"q": "x"}}}]},
                    "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17},
    "modelVersion": "gemini-2.0-flash-001",
}


def test_generate_content_request_and_response():
    p = parse("/v1beta/models/gemini-2.0-flash:generateContent", GENERATE,
              host="generativelanguage.googleapis.com")
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.parsed) == \
        ("gemini", "generateContent", "gemini-2.0-flash", False, True)
    assert ex.system_text == "You are terse."
    assert ex.system[0].path == ("systemInstruction", "parts", 0, "text")
    user = ex.messages[0]
    assert user.role == "user" and user.text == "What is in this file?"
    assert user.parts[0].path == ("contents", 0, "parts", 0, "text")
    text_file, image, pdf = user.attachments
    assert (text_file.kind, text_file.text, text_file.inspected) == ("file", "secret plan", True)
    assert (image.kind, image.mime_type, image.inspected) == ("image", "image/png", False)
    assert (pdf.kind, pdf.name) == ("document", FILE_URI)
    assert ex.messages[1].role == "assistant"
    assert (ex.messages[1].tool_calls[0].name, json.loads(ex.messages[1].tool_calls[0].arguments)) == \
        ("lookup", {"q": "plan"})
    assert ex.messages[2].tool_results[0].call_id == "c1"
    assert [t.name for t in ex.tools] == ["lookup"]
    assert "secret plan" in [p.text for p in ex.request_parts()]
    assert assert_paths_resolve(p, GENERATE) == 3  # two texts and the function call's argument

    respond(p, "application/json", ANSWER)
    assert ex.completion == "It is a plan."  # the thought part is not the answer
    assert ex.completion_tool_calls[0].name == "lookup"
    assert (ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens, ex.model) == \
        ("STOP", 12, 5, "gemini-2.0-flash-001")


def frames(texts: list[str]) -> list[dict]:
    out = [{"candidates": [{"content": {"role": "model", "parts": [{"text": t}]}}],
            "usageMetadata": {"promptTokenCount": 4}} for t in texts]
    out[-1]["candidates"][0]["finishReason"] = "STOP"
    out[-1]["usageMetadata"] = {"promptTokenCount": 4, "candidatesTokenCount": 3}
    return out


@pytest.mark.parametrize("step", [0, 1, 7])
def test_stream_generate_content_sse(step):
    p = parse("/v1beta/models/gemini-2.5-pro:streamGenerateContent", {"contents": [{"parts": [{"text": "hi"}]}]})
    assert (p.exchange.operation, p.exchange.stream) == ("generateContent", True)
    body = b"".join(f"data: {json.dumps(f)}\r\n\r\n".encode() for f in frames(["Hel", "lo", " there"]))
    ex = respond(p, "text/event-stream", body, step).exchange
    assert ex.completion == "Hello there"
    assert (ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == ("STOP", 4, 3)
    assert ex.warnings == []


@pytest.mark.parametrize("step", [0, 1, 5])
def test_stream_generate_content_json_array(step):
    """Without alt=sse the server streams one JSON array; elements are read as their bytes pass."""
    p = parse("/v1beta/models/gemini-2.5-pro:streamGenerateContent", {"contents": [{"parts": [{"text": "hi"}]}]})
    tricky = ['He said "}]" ', "and \\ left", " {done}"]
    body = ("[" + ",\r\n".join(json.dumps(f, indent=2) for f in frames(tricky)) + "]").encode()
    ex = respond(p, "application/json", body, step).exchange
    assert ex.completion == "".join(tricky)
    assert ex.usage.output_tokens == 3 and ex.warnings == []


def test_vertex_paths_and_count_tokens():
    p = parse("/v1beta1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.0-flash-001:countTokens",
              {"generateContentRequest": {"contents": [{"role": "user", "parts": [{"text": "count me"}]}],
                                          "systemInstruction": {"parts": [{"text": "sys"}]}}},
              host="us-central1-aiplatform.googleapis.com")
    ex = p.exchange
    assert (ex.operation, ex.model, ex.messages[0].text, ex.system_text) == \
        ("countTokens", "gemini-2.0-flash-001", "count me", "sys")
    assert ex.messages[0].parts[0].path == ("generateContentRequest", "contents", 0, "parts", 0, "text")
    respond(p, "application/json", {"totalTokens": 9})
    assert ex.usage.input_tokens == 9


def test_embed_content_and_batch():
    p = parse("/v1beta/models/text-embedding-004:embedContent", {"content": {"parts": [{"text": "embed me"}]}})
    assert (p.exchange.operation, p.exchange.messages[0].text) == ("embedContent", "embed me")
    p = parse("/v1beta/models/gemini-embedding-001:batchEmbedContents",
              {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
                            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}}]})
    assert [m.text for m in p.exchange.messages] == ["a", "b"]
    assert p.exchange.messages[1].parts[0].path == ("requests", 1, "content", "parts", 0, "text")


def test_code_assist_envelope():
    body = {"model": "gemini-2.5-pro", "project": "proj-1",
            "request": {"contents": [{"role": "user", "parts": [{"text": "fix my code"}]}],
                        "systemInstruction": {"role": "user", "parts": [{"text": "You are Gemini CLI"}]}}}
    p = parse("/v1internal:streamGenerateContent", body, host="cloudcode-pa.googleapis.com")
    ex = p.exchange
    assert (ex.operation, ex.model, ex.stream, ex.messages[0].text) == \
        ("generateContent", "gemini-2.5-pro", True, "fix my code")
    assert ex.messages[0].parts[0].path == ("request", "contents", 0, "parts", 0, "text")
    chunks = b"".join(f"data: {json.dumps({'response': f, 'traceId': 't'})}\n\n".encode()
                      for f in frames(["a", "b"]))
    respond(p, "text/event-stream", chunks)
    assert ex.completion == "ab"


def test_model_name_is_url_decoded():
    p = parse("/v1beta/tunedModels/my%2Dmodel:generateContent", {"contents": []})
    assert p.exchange.model == "my-model"


def test_blocked_prompt_and_error_answers_are_recorded():
    p = parse("/v1beta/models/gemini-2.0-flash:generateContent", {"contents": [{"parts": [{"text": "x"}]}]})
    respond(p, "application/json", {"promptFeedback": {"blockReason": "SAFETY"}})
    assert p.exchange.finish_reason == "blocked:SAFETY"
    p = parse("/v1beta/models/gemini-2.0-flash:streamGenerateContent", {"contents": [{"parts": [{"text": "x"}]}]})
    respond(p, "application/json", {"error": {"code": 429, "message": "quota"}})
    assert any("quota" in w for w in p.exchange.warnings)


def test_other_paths_are_not_claimed():
    vertex_claude = parse("/v1/projects/p/locations/l/publishers/anthropic/models/claude:rawPredict",
                          {"messages": []})
    assert vertex_claude.provider is None or vertex_claude.provider.name != "gemini"
    assert parse("/v1beta/models/gemini:generateContent", {}, method="GET").provider is None


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"contents": "no"}', b'{"contents": [1, {"parts": 5}]}',
                                  b'{"contents": [{"parts": [{"inlineData": {"data": 5}}]}]}',
                                  b'{"contents": [], "systemInstruction": 7, '
                                  b'"tools": [3, {"functionDeclarations": [1]}]}',
                                  b'{"request": 1}'])
def test_malformed_requests_never_raise(body):
    for path in ("/v1beta/models/m:generateContent", "/v1beta/models/m:embedContent",
                 "/v1beta/models/m:batchEmbedContents", "/v1internal:generateContent"):
        p = parse(path, body)
        assert p.provider.name == "gemini"
        if body in (b"", b"{", b"[]", b'{"contents": "no"}'):
            assert not p.exchange.parsed and p.exchange.warnings


@pytest.mark.parametrize("content_type,body", [
    ("application/json", b'{"candidates": [{"content": {"parts": [{"text": "tru'),
    ("application/json", b"not json"),
    ("application/json", b'{"candidates": 5}'),
    ("text/event-stream", b'data: {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\n\ndata: {"cand'),
    ("text/event-stream", b"data: [1, 2]\n\ndata: {\"candidates\": [7]}\n\n"),
])
def test_malformed_and_truncated_responses_warn(content_type, body):
    for stream in (False, True):
        p = parse(f"/v1beta/models/m:{'streamGenerateContent' if stream else 'generateContent'}",
                  {"contents": [{"parts": [{"text": "x"}]}]})
        ex = respond(p, content_type, body, step=3).exchange
        assert ex.warnings or ex.completion in ("a", "")


def test_truncated_json_array_stream_keeps_what_arrived():
    p = parse("/v1beta/models/m:streamGenerateContent", {"contents": [{"parts": [{"text": "x"}]}]})
    body = ("[" + json.dumps(frames(["one "])[0]) + ",\n" + json.dumps(frames(["two"])[0])[:30]).encode()
    ex = respond(p, "application/json", body, step=4).exchange
    assert ex.completion == "one "
    assert "stream: truncated JSON array" in ex.warnings


def test_json_array_rejects_unbalanced_and_oversized_elements():
    from providers.gemini import JsonArrayParser
    p = parse("/v1beta/models/m:streamGenerateContent", {"contents": []})
    ex = p.exchange
    got = []
    parser = JsonArrayParser(ex, got.append)
    parser.MAX_ELEMENT = 50
    parser.feed(b'[{"a": "' + b"x" * 100 + b'"}, {"b": 1}]')
    parser.feed(b"]]]")
    parser.finish()
    assert got == [{"b": 1}]
    assert any("larger than" in w for w in ex.warnings) and any("unbalanced" in w for w in ex.warnings)


def test_files_upload_start_and_bytes():
    start = parse("/upload/v1beta/files", {"file": {"displayName": "notes.txt", "mimeType": "text/plain",
                                                    "sizeBytes": "12"}},
                  headers={"content-type": "application/json", "x-goog-upload-protocol": "resumable",
                           "x-goog-upload-command": "start", "x-goog-upload-header-content-length": "12"})
    ex = start.exchange
    assert (start.provider.name, ex.operation, ex.parsed) == ("gemini", "files.upload", True)
    [att] = ex.messages[0].attachments
    assert (att.kind, att.name, att.mime_type, att.size, att.inspected) == \
        ("file", "notes.txt", "text/plain", 12, False)
    respond(start, "application/json", b"")

    chunk = parse("/upload/v1beta/files?upload_id=abc", b"secret plan!",
                  headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"})
    [att] = chunk.exchange.messages[0].attachments
    assert (att.size, att.text, att.inspected) == (12, "secret plan!", True)
    assert "secret plan!" in [p.text for p in chunk.exchange.request_parts()]
    binary = parse("/upload/v1beta/files?upload_id=abc", b"\x89PNG\x00\x01",
                   headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "8"})
    [att] = binary.exchange.messages[0].attachments
    assert (att.size, att.text, att.inspected, att.name) == (6, None, False, "upload offset 8")
    bad = parse("/upload/v1beta/files", b"{nope", headers={"content-type": "application/json",
                                                             "x-goog-upload-command": "start"})
    assert not bad.exchange.parsed


def test_snake_case_field_names_are_read_too():
    """proto3 JSON accepts snake_case names: a client using them must not slip past inspection."""
    body = {"system_instruction": {"parts": [{"text": "sys"}]},
            "contents": [{"role": "user", "parts": [{"text": "hi"},
                                                    {"inline_data": {"mime_type": "text/csv",
                                                                     "data": base64.b64encode(b"a,b").decode()}},
                                                    {"file_data": {"mime_type": "image/png", "file_uri": "gs://b/x"}}]},
                         {"role": "model", "parts": [{"function_call": {"name": "f", "args": {}}}]}],
            "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {"type": "object"}}]}]}
    ex = parse("/v1beta/models/m:generateContent", body).exchange
    assert ex.system_text == "sys" and ex.system[0].path == ("system_instruction", "parts", 0, "text")
    csv, image = ex.messages[0].attachments
    assert (csv.text, csv.inspected, image.name, image.kind) == ("a,b", True, "gs://b/x", "image")
    assert ex.messages[1].tool_calls[0].name == "f" and ex.tools[0].parameters == {"type": "object"}
    ex = parse("/v1beta/models/m:countTokens",
               {"generate_content_request": {"contents": [{"parts": [{"text": "c"}]}]}}).exchange
    assert ex.messages[0].parts[0].path == ("generate_content_request", "contents", 0, "parts", 0, "text")
    start = parse("/upload/v1beta/files", {"file": {"display_name": "n.txt", "mime_type": "text/plain",
                                                    "size_bytes": 30}},
                  headers={"content-type": "application/json", "x-goog-upload-command": "start"})
    att = start.exchange.messages[0].attachments[0]
    assert (att.name, att.mime_type, att.size) == ("n.txt", "text/plain", 30)


def test_cached_contents_are_prompts_too():
    body = {"model": "models/gemini-1.5-flash-001", "ttl": "300s",
            "systemInstruction": {"parts": [{"text": "You answer from the contract."}]},
            "contents": [{"role": "user", "parts": [{"text": "The contract says: confidential terms"}]}]}
    p = parse("/v1beta/cachedContents", body)
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.parsed) == \
        ("gemini", "cachedContents", "gemini-1.5-flash-001", True)
    assert ex.messages[0].text == "The contract says: confidential terms" and assert_paths_resolve(p, body) == 2
    respond(p, "application/json", {"name": "cachedContents/abc", "usageMetadata": {"totalTokenCount": 9}})
    vertex = parse("/v1beta1/projects/p/locations/us-central1/cachedContents",
                   dict(body, model="projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash"))
    assert vertex.exchange.model == "gemini-2.0-flash"
    assert not parse("/v1beta/cachedContents", {"model": "m"}).exchange.parsed
    assert parse("/v1beta/cachedContents", {}, method="GET").provider is None


def test_predict_instances():
    body = {"instances": [{"prompt": "a cat in a hat", "image": {"bytesBase64Encoded": "iVBORw0KGgo=",
                                                                 "mimeType": "image/png"}}],
            "parameters": {"sampleCount": 1}}
    p = parse("/v1beta/models/imagen-3.0-generate-002:predict", body)
    ex = p.exchange
    assert (ex.operation, ex.model, ex.messages[0].text, ex.messages[0].attachments[0].kind) == \
        ("predict", "imagen-3.0-generate-002", "a cat in a hat", "image")
    assert assert_paths_resolve(p, body) == 1
    respond(p, "application/json", {"predictions": [{"bytesBase64Encoded": "AAAA", "mimeType": "image/png"}]})
    vertex = parse("/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict",
                   {"instances": [{"content": "embed me", "title": "doc", "task_type": "RETRIEVAL_DOCUMENT"}]})
    assert vertex.exchange.messages[0].text == "embed me\ndoc"
    assert not parse("/v1beta/models/veo-2.0:predictLongRunning", {"instances": 3}).exchange.parsed


# --- Vertex AI partner models (providers/vertex.py) -----------------------------------------------------------

def test_vertex_partner_models_use_the_openai_parsers():
    base = "/v1/projects/p/locations/us-central1/publishers"
    body = {"model": "mistral-large-2411", "messages": [{"role": "user", "content": "Bonjour"}], "stream": False}
    p = parse(f"{base}/mistralai/models/mistral-large-2411:rawPredict", body,
              hints=("vertex", "gemini", "anthropic", "openai"))
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.messages[0].text) == \
        ("vertex", "chat.completions", "mistral-large-2411", False, "Bonjour")
    respond(p, "application/json", {"choices": [{"message": {"role": "assistant", "content": "Salut"},
                                                 "finish_reason": "stop"}]})
    assert ex.completion == "Salut"
    p = parse(f"{base}/mistralai/models/codestral-2501:streamRawPredict", {"prompt": "def f(", "suffix": "pass"})
    assert (p.exchange.operation, p.exchange.model, p.exchange.stream, p.exchange.messages[0].text) == \
        ("completions", "codestral-2501", True, "def f(\npass")
    claude = parse(f"{base}/anthropic/models/claude-3-5-sonnet:rawPredict",
                   {"anthropic_version": "vertex-2023-10-16", "messages": [{"role": "user", "content": "x"}]})
    assert claude.provider.name == "anthropic"
    assert not parse(f"{base}/meta/models/llama-3.3:rawPredict", b"{bad").exchange.parsed
