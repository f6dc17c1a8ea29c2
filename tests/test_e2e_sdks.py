"""End to end with the official SDKs of Google (google-genai), Cohere, Mistral and AWS (boto3 bedrock-runtime):
each SDK goes through the real gateway to the fake upstream, gets its answer, and the audit event holds the model,
the prompt and the completion. The Bedrock stream test proves the event-stream decoding both ways: botocore
decodes the frames the gateway passed through, the gateway decoded them for the audit."""

from __future__ import annotations

import base64
import json
import ssl
import threading

import httpx
import pytest

from tests.conftest import wait_for_events
from tests.support import eventstream_frames as es
from tests.support.upstream import Reply, sse


def ssl_context(gateway) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(gateway.ca))


def http_client(gateway) -> httpx.Client:
    return httpx.Client(proxy=gateway.proxy_url, verify=ssl_context(gateway), timeout=30)


def one_event(gateway, marker: str, **expected) -> dict:
    [event] = wait_for_events(gateway, lambda e: marker in e["prompt"]
                              and all(e[k] == v for k, v in expected.items()))
    assert event["parsed"] and event["error"] == "" and event["status"] == 200, event
    return event


# --- Google Gemini (google-genai) -------------------------------------------------------------------------------

def genai_client(gateway):
    from google import genai
    from google.genai import types
    return genai.Client(api_key="AIza-test-not-a-key", http_options=types.HttpOptions(
        client_args={"proxy": gateway.proxy_url, "verify": ssl_context(gateway)}, timeout=30_000))


def route_gemini(upstream, model_verb: str, handler) -> None:
    """The SDK's default API version changes between releases (v1beta, v1): answer on both."""
    for version in ("v1beta", "v1"):
        upstream.route(f"/{version}/models/{model_verb}", handler)


def gemini_response(text: str, finish: str | None = "STOP", usage: dict | None = None) -> dict:
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    out = {"candidates": [candidate], "modelVersion": "gemini-2.0-flash-001"}
    if usage:
        out["usageMetadata"] = usage
    return out


def test_google_genai_generate_content(gateway, upstream, marker):
    route_gemini(upstream, "gemini-2.0-flash:generateContent", lambda rec: Reply(body=json.dumps(
        gemini_response(f"Paris ({marker})", usage={"promptTokenCount": 9, "candidatesTokenCount": 4})).encode()))
    from google.genai import types
    client = genai_client(gateway)  # keep a reference: the SDK closes its HTTP client when the Client is collected
    answer = client.models.generate_content(
        model="gemini-2.0-flash", contents=f"Capital of France? {marker}",
        config=types.GenerateContentConfig(system_instruction="You are terse."))
    assert answer.text == f"Paris ({marker})"
    event = one_event(gateway, marker, service="gemini", stream=False)
    assert (event["operation"], event["model"]) == ("generateContent", "gemini-2.0-flash-001")
    assert "[system] You are terse." in event["prompt"]
    assert f"[user] Capital of France? {marker}" in event["prompt"]
    assert event["completion"] == f"Paris ({marker})"
    assert (event["input_tokens"], event["output_tokens"]) == (9, 4)


def test_google_genai_generate_content_stream(gateway, upstream, marker):
    """alt=sse: the SDK reads the first chunk while the upstream still holds back the last one."""
    gate = threading.Event()
    frames = [f"data: {json.dumps(gemini_response(t, finish=None))}\r\n\r\n" for t in ("Hel", "lo ")] + \
        [f"data: {json.dumps(gemini_response(marker, usage={'promptTokenCount': 5, 'candidatesTokenCount': 3}))}"
         "\r\n\r\n"]
    route_gemini(upstream, "gemini-2.0-flash:streamGenerateContent",
                 lambda rec: Reply(content_type="text/event-stream", chunks=sse(frames, gate=gate)))
    client = genai_client(gateway)
    stream = client.models.generate_content_stream(model="gemini-2.0-flash",
                                                                  contents=f"Say hello {marker}")
    first = next(stream)
    assert not gate.is_set() and first.text == "Hel"
    gate.set()
    assert "Hel" + "".join(c.text for c in stream) == f"Hello {marker}"
    event = one_event(gateway, marker, service="gemini", stream=True)
    assert event["completion"] == f"Hello {marker}" and event["model"] == "gemini-2.0-flash-001"
    assert (event["input_tokens"], event["output_tokens"]) == (5, 3)


def test_gemini_json_array_stream_without_alt_sse(gateway, upstream, marker):
    """No SDK asks for it, but the API streams a JSON array when `alt=sse` is absent: reassembled for the audit."""
    elements = [gemini_response(t, finish=None) for t in ("one ", "two ")] + [gemini_response(marker)]
    body = ("[" + ",\r\n".join(json.dumps(e) for e in elements) + "]").encode()
    gate = threading.Event()
    upstream.route("/v1beta/models/gemini-1.5-pro:streamGenerateContent",
                   lambda rec: Reply(content_type="application/json",
                                     chunks=sse([body[i:i + 40] for i in range(0, len(body), 40)], gate=gate)))
    with http_client(gateway).stream(
            "POST", "https://generativelanguage.googleapis.com/v1beta/models/gemini-1.5-pro:streamGenerateContent",
            json={"contents": [{"role": "user", "parts": [{"text": f"Count {marker}"}]}]},
            headers={"x-goog-api-key": "AIza-test"}) as r:
        chunks = r.iter_bytes()
        received = next(chunks)  # arrives while the upstream still holds back its last chunk: not buffered
        assert not gate.is_set() and received
        gate.set()
        received += b"".join(chunks)
    assert r.status_code == 200 and json.loads(received) == elements
    event = one_event(gateway, marker, service="gemini", stream=True)
    assert event["completion"] == f"one two {marker}"


def test_google_genai_files_upload(gateway, upstream, marker):
    """The Files API's resumable upload: the start request names the file, the next one carries its bytes, which
    the gateway inspects as text."""
    import io

    from google.genai import types
    content = f"Quarterly plan {marker}".encode()

    def handler(rec):
        if "upload_id=" not in rec.path:
            url = "https://generativelanguage.googleapis.com" + rec.path.split("?")[0] + "?upload_id=u1"
            return Reply(body=b"{}", headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        return Reply(body=json.dumps({"file": {"name": "files/f1", "displayName": "plan.txt",
                                               "mimeType": "text/plain", "sizeBytes": str(len(content)),
                                               "uri": "https://generativelanguage.googleapis.com/v1beta/files/f1",
                                               "state": "ACTIVE"}}).encode(),
                     headers={"x-goog-upload-status": "final"})
    upstream.route("/upload/", handler)
    client = genai_client(gateway)
    file = client.files.upload(file=io.BytesIO(content),
                               config=types.UploadFileConfig(mime_type="text/plain", display_name="plan.txt"))
    assert file.name == "files/f1"
    # the start request names the file (its bytes are not in it); the upload request's bytes are text, inspected
    wait_for_events(gateway, lambda e: e["operation"] == "files.upload" and e["service"] == "gemini"
                    and f"<file plan.txt {len(content)}B not inspected>" in e["prompt"])
    assert any(r.body == content for r in upstream.requests)
    wait_for_events(gateway, lambda e: e["operation"] == "files.upload" and e["path"].endswith("upload_id=u1")
                    and f"<file upload offset 0 {len(content)}B>" in e["prompt"] and e["status"] == 200)


def test_google_genai_on_vertex_ai(gateway, upstream, marker):
    """Vertex AI: the model is in the long publishers path, the answer comes back the same way."""
    from google.genai import types
    from google.oauth2.credentials import Credentials
    upstream.route("/v1beta1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:",
                   lambda rec: Reply(body=json.dumps(gemini_response(f"Vertex ({marker})")).encode()))
    from google import genai
    client = genai.Client(vertexai=True, project="proj-1", location="us-central1",
                          credentials=Credentials(token="ya29.test-not-a-token"),
                          http_options=types.HttpOptions(client_args={"proxy": gateway.proxy_url,
                                                                      "verify": ssl_context(gateway)}))
    answer = client.models.generate_content(model="gemini-2.0-flash", contents=f"Where am I? {marker}")
    assert answer.text == f"Vertex ({marker})"
    event = one_event(gateway, marker, service="vertex-ai", stream=False)
    assert (event["operation"], event["completion"]) == ("generateContent", f"Vertex ({marker})")
    assert event["host"] == "us-central1-aiplatform.googleapis.com"


def test_gemini_cli_code_assist_envelope(gateway, upstream, marker):
    """The Gemini CLI's backend wraps the Gemini body in {model, project, request} and answers {response}."""
    frames = [f"data: {json.dumps({'response': gemini_response(t, finish=None), 'traceId': 't1'})}\r\n\r\n"
              for t in ("Fixed ", marker)]
    upstream.route("/v1internal:streamGenerateContent", lambda rec: Reply(content_type="text/event-stream",
                                                                          chunks=sse(frames)))
    r = http_client(gateway).post(
        "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse",
        json={"model": "gemini-2.5-pro", "project": "proj-1",
              "request": {"contents": [{"role": "user", "parts": [{"text": f"Fix this {marker}"}]}]}})
    assert r.status_code == 200 and r.text.count("data:") == 2
    event = one_event(gateway, marker, service="gemini-code-assist", stream=True)
    assert (event["model"], event["completion"]) == ("gemini-2.0-flash-001", f"Fixed {marker}")


# --- Cohere -----------------------------------------------------------------------------------------------------

def cohere_client(gateway):
    import cohere
    return cohere.ClientV2(api_key="co-test-not-a-key", httpx_client=http_client(gateway))


def test_cohere_chat(gateway, upstream, marker):
    upstream.route("/v2/chat", lambda rec: Reply(body=json.dumps({
        "id": "c1", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": f"Bonjour ({marker})"}]},
        "usage": {"billed_units": {"input_tokens": 6, "output_tokens": 3}}}).encode()))
    answer = cohere_client(gateway).chat(model="command-a-03-2025", messages=[
        {"role": "system", "content": "Speak French."}, {"role": "user", "content": f"Say hello {marker}"}])
    assert answer.message.content[0].text == f"Bonjour ({marker})"
    event = one_event(gateway, marker, service="cohere", stream=False)
    assert (event["operation"], event["model"]) == ("v2.chat", "command-a-03-2025")
    assert "[system] Speak French." in event["prompt"] and f"[user] Say hello {marker}" in event["prompt"]
    assert event["completion"] == f"Bonjour ({marker})"
    assert (event["input_tokens"], event["output_tokens"]) == (6, 3)


def test_cohere_chat_stream(gateway, upstream, marker):
    events = [{"type": "message-start", "id": "x", "delta": {"message": {"role": "assistant"}}},
              {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Bon"}}}},
              {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": f"jour {marker}"}}}},
              {"type": "message-end", "delta": {"finish_reason": "COMPLETE",
                                                "usage": {"billed_units": {"input_tokens": 4, "output_tokens": 2}}}}]
    upstream.route("/v2/chat", lambda rec: Reply(content_type="text/event-stream", chunks=sse(
        [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events])))
    pieces = [e.delta.message.content.text for e in cohere_client(gateway).chat_stream(
        model="command-r-plus", messages=[{"role": "user", "content": f"Say hello {marker}"}])
        if e.type == "content-delta"]
    assert "".join(pieces) == f"Bonjour {marker}"
    event = one_event(gateway, marker, service="cohere", stream=True)
    assert (event["model"], event["completion"], event["output_tokens"]) == ("command-r-plus", f"Bonjour {marker}", 2)


def test_cohere_v1_chat_stream_ndjson(gateway, upstream, marker):
    """The v1 client streams newline-delimited JSON; the gateway reassembles it as it passes."""
    import cohere
    lines = [{"is_finished": False, "event_type": "stream-start", "generation_id": "g"},
             {"is_finished": False, "event_type": "text-generation", "text": "Hal"},
             {"is_finished": False, "event_type": "text-generation", "text": f"lo {marker}"},
             {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE",
              "response": {"text": f"Hallo {marker}", "meta": {"billed_units": {"input_tokens": 3,
                                                                                 "output_tokens": 2}}}}]
    upstream.route("/v1/chat", lambda rec: Reply(content_type="application/stream+json",
                                                 chunks=[json.dumps(x).encode() + b"\n" for x in lines]))
    client = cohere.Client(api_key="co-test-not-a-key", httpx_client=http_client(gateway))
    pieces = [e.text for e in client.chat_stream(model="command-r", message=f"Say hallo {marker}",
                                                 preamble="Speak German.") if e.event_type == "text-generation"]
    assert "".join(pieces) == f"Hallo {marker}"
    event = one_event(gateway, marker, service="cohere", stream=True)
    assert (event["operation"], event["completion"], event["output_tokens"]) == ("v1.chat", f"Hallo {marker}", 2)
    assert "[system] Speak German." in event["prompt"]


# --- Ollama (no SDK in the environment: raw HTTP, as the ollama client sends it) --------------------------------

def test_ollama_chat_ndjson_stream_is_not_buffered(gateway, upstream, marker):
    gate = threading.Event()
    lines = [{"model": "llama3.2", "message": {"role": "assistant", "content": "Hi "}, "done": False},
             {"model": "llama3.2", "message": {"role": "assistant", "content": marker}, "done": False},
             {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True,
              "done_reason": "stop", "prompt_eval_count": 9, "eval_count": 2}]
    upstream.route("/api/chat", lambda rec: Reply(content_type="application/x-ndjson", chunks=sse(
        [json.dumps(x) + "\n" for x in lines], gate=gate)))
    with http_client(gateway).stream("POST", "https://ollama.com/api/chat", json={
            "model": "llama3.2", "messages": [{"role": "user", "content": f"Greet {marker}"}]}) as r:
        lines_read = r.iter_lines()
        assert json.loads(next(lines_read))["message"]["content"] == "Hi "
        assert not gate.is_set()
        gate.set()
        rest = [json.loads(x) for x in lines_read if x]
    assert rest[-1]["done"] is True
    event = one_event(gateway, marker, service="ollama", stream=True)
    assert (event["operation"], event["model"], event["completion"]) == ("chat", "llama3.2", f"Hi {marker}")
    assert (event["input_tokens"], event["output_tokens"]) == (9, 2)


# --- Mistral ----------------------------------------------------------------------------------------------------

def mistral_client(gateway):
    from mistralai.client import Mistral
    return Mistral(api_key="mistral-test-not-a-key", client=http_client(gateway))


def test_mistral_chat_complete(gateway, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: Reply(body=json.dumps({
        "id": "m1", "object": "chat.completion", "created": 1, "model": "mistral-large-2411",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Salut ({marker})"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}}).encode()))
    answer = mistral_client(gateway).chat.complete(model="mistral-large-latest", messages=[
        {"role": "user", "content": f"Say hi {marker}"}])
    assert answer.choices[0].message.content == f"Salut ({marker})"
    event = one_event(gateway, marker, service="mistral", stream=False)
    assert (event["operation"], event["model"]) == ("chat.completions", "mistral-large-2411")
    assert event["completion"] == f"Salut ({marker})" and (event["input_tokens"], event["output_tokens"]) == (8, 3)


def test_mistral_chat_stream(gateway, upstream, marker):
    def chunk(delta, finish=None, usage=None):
        return "data: " + json.dumps({"id": "m", "object": "chat.completion.chunk", "created": 1,
                                      "model": "mistral-small-2503",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                      **({"usage": usage} if usage else {})}) + "\n\n"
    frames = [chunk({"role": "assistant", "content": "Sa"}), chunk({"content": f"lut {marker}"}, "stop",
                                                                     {"prompt_tokens": 5, "completion_tokens": 2,
                                                                      "total_tokens": 7}), "data: [DONE]\n\n"]
    upstream.route("/v1/chat/completions", lambda rec: Reply(content_type="text/event-stream", chunks=sse(frames)))
    pieces = [e.data.choices[0].delta.content for e in mistral_client(gateway).chat.stream(
        model="mistral-small-latest", messages=[{"role": "user", "content": f"Say hi {marker}"}])]
    assert "".join(pieces) == f"Salut {marker}"
    event = one_event(gateway, marker, service="mistral", stream=True)
    assert (event["model"], event["completion"], event["output_tokens"]) == \
        ("mistral-small-2503", f"Salut {marker}", 2)


def test_mistral_agents_complete_and_conversations_start(gateway, upstream, marker):
    upstream.route("/v1/agents/completions", lambda rec: Reply(body=json.dumps({
        "id": "a1", "object": "chat.completion", "created": 1, "model": "mistral-medium-2505",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Planned ({marker})"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}).encode()))
    client = mistral_client(gateway)
    answer = client.agents.complete(agent_id="ag-123", messages=[{"role": "user", "content": f"Plan {marker}"}])
    assert answer.choices[0].message.content == f"Planned ({marker})"
    event = one_event(gateway, marker, service="mistral", operation="agents.completions")
    assert (event["model"], event["completion"]) == ("mistral-medium-2505", f"Planned ({marker})")

    upstream.route("/v1/conversations", lambda rec: Reply(body=json.dumps({
        "object": "conversation.response", "conversation_id": "c1",
        "outputs": [{"object": "entry", "type": "message.output", "role": "assistant", "id": "e1",
                     "created_at": "2025-01-01T00:00:00Z", "completed_at": "2025-01-01T00:00:01Z",
                     "model": "mistral-medium-2505", "content": f"Hello again {marker}"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode()))
    reply = client.beta.conversations.start(inputs=f"Hi {marker}", model="mistral-medium-latest",
                                            instructions="Be kind.")
    assert reply.outputs[0].content == f"Hello again {marker}"
    event = one_event(gateway, marker, service="mistral", operation="conversations")
    assert "[system] Be kind." in event["prompt"] and event["completion"] == f"Hello again {marker}"


# --- Amazon Bedrock (boto3) -------------------------------------------------------------------------------------

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@pytest.fixture
def bedrock(gateway, monkeypatch):
    import boto3
    from botocore.config import Config
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTNOTAREALKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-not-real")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.client("bedrock-runtime", region_name="us-east-1", verify=str(gateway.ca),
                        config=Config(proxies={"https": gateway.proxy_url}, retries={"max_attempts": 1}))


def test_boto3_bedrock_converse(gateway, upstream, bedrock, marker):
    upstream.route(f"/model/{MODEL.replace(':', '%3A')}/converse", lambda rec: Reply(body=json.dumps({
        "output": {"message": {"role": "assistant", "content": [{"text": f"Paris ({marker})"}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16},
        "metrics": {"latencyMs": 10}}).encode()))
    answer = bedrock.converse(modelId=MODEL, system=[{"text": "You are terse."}],
                              messages=[{"role": "user", "content": [{"text": f"Capital of France? {marker}"}]}])
    assert answer["output"]["message"]["content"][0]["text"] == f"Paris ({marker})"
    event = one_event(gateway, marker, service="bedrock", stream=False)
    assert (event["operation"], event["model"]) == ("converse", MODEL)
    assert "[system] You are terse." in event["prompt"] and f"[user] Capital of France? {marker}" in event["prompt"]
    assert event["completion"] == f"Paris ({marker})" and (event["input_tokens"], event["output_tokens"]) == (12, 4)


def test_boto3_bedrock_converse_stream(gateway, upstream, bedrock, marker):
    frames = [es.event("messageStart", {"role": "assistant"}),
              es.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
              es.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": f"lo {marker}"}}),
              es.event("contentBlockStop", {"contentBlockIndex": 0}),
              es.event("messageStop", {"stopReason": "end_turn"}),
              es.event("metadata", {"usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10},
                                    "metrics": {"latencyMs": 5}})]
    # split frames across chunk boundaries, as TCP may: the gateway reassembles them from the length prelude;
    # the last chunk waits for the test, which proves botocore decoded earlier frames before the stream ended
    data = b"".join(frames)
    gate = threading.Event()
    upstream.route(f"/model/{MODEL.replace(':', '%3A')}/converse-stream", lambda rec: Reply(
        content_type="application/vnd.amazon.eventstream",
        chunks=sse([data[i:i + 37] for i in range(0, len(data), 37)], gate=gate)))
    response = bedrock.converse_stream(modelId=MODEL, messages=[{"role": "user",
                                                                 "content": [{"text": f"Say hello {marker}"}]}])
    pieces, stop = [], None
    for ev in response["stream"]:
        if "contentBlockDelta" in ev:
            pieces.append(ev["contentBlockDelta"]["delta"]["text"])
            if len(pieces) == 1:
                assert not gate.is_set()
                gate.set()
        stop = ev.get("messageStop", {}).get("stopReason", stop)
    assert "".join(pieces) == f"Hello {marker}" and stop == "end_turn"
    event = one_event(gateway, marker, service="bedrock", stream=True)
    assert (event["operation"], event["model"], event["completion"]) == ("converse", MODEL, f"Hello {marker}")
    assert (event["input_tokens"], event["output_tokens"]) == (7, 3)
    assert event["warnings"] == []


def test_boto3_bedrock_invoke_model_with_response_stream(gateway, upstream, bedrock, marker):
    events = [{"type": "message_start", "message": {"model": "claude-3-5-sonnet-20240620",
                                                    "usage": {"input_tokens": 11, "output_tokens": 1}}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": marker}},
              {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
              {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 11,
                                                                             "outputTokenCount": 2}}]
    upstream.route(f"/model/{MODEL.replace(':', '%3A')}/invoke-with-response-stream", lambda rec: Reply(
        content_type="application/vnd.amazon.eventstream", chunks=[es.chunk(e) for e in events]))
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
            "messages": [{"role": "user", "content": f"Greet {marker}"}]}
    response = bedrock.invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(body))
    texts = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    assert "".join(t["delta"].get("text", "") for t in texts if t["type"] == "content_block_delta") == \
        f"Hi {marker}"
    event = one_event(gateway, marker, service="bedrock", stream=True)
    assert (event["operation"], event["completion"], event["output_tokens"]) == ("invoke", f"Hi {marker}", 2)
    assert f"[user] Greet {marker}" in event["prompt"]


def test_boto3_bedrock_agent_invoke_agent(gateway, upstream, marker, bedrock):
    """Agent answers are event-stream chunks of base64 text; `bedrock` sets the dummy credentials."""
    import boto3
    from botocore.config import Config
    agent = boto3.client("bedrock-agent-runtime", region_name="us-east-1", verify=str(gateway.ca),
                         config=Config(proxies={"https": gateway.proxy_url}, retries={"max_attempts": 1}))
    parts = ["Room ", f"booked {marker}"]
    upstream.route("/agents/AG1/agentAliases/AL1/sessions/s-1/text", lambda rec: Reply(
        content_type="application/vnd.amazon.eventstream",
        chunks=[es.event("chunk", {"bytes": base64.b64encode(p.encode()).decode()}) for p in parts]))
    response = agent.invoke_agent(agentId="AG1", agentAliasId="AL1", sessionId="s-1",
                                  inputText=f"Book a room {marker}")
    assert "".join(e["chunk"]["bytes"].decode() for e in response["completion"] if "chunk" in e) == "".join(parts)
    event = one_event(gateway, marker, service="bedrock", stream=True)
    assert (event["operation"], event["model"], event["completion"]) == \
        ("agent.invoke", "agent:AG1/AL1", f"Room booked {marker}")
    assert f"[user] Book a room {marker}" in event["prompt"]


def test_bedrock_truncated_event_stream_is_audited_with_the_reason(gateway, upstream, marker):
    frames = [es.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "partial"}}),
              es.event("messageStop", {"stopReason": "end_turn"})[:-6]]
    upstream.route("/model/amazon.nova-lite-v1%3A0/converse-stream", lambda rec: Reply(
        content_type="application/vnd.amazon.eventstream", chunks=frames))
    r = http_client(gateway).post(
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.nova-lite-v1%3A0/converse-stream",
        json={"messages": [{"role": "user", "content": [{"text": f"Hi {marker}"}]}]})
    assert r.content == b"".join(frames)  # passed through untouched
    [event] = wait_for_events(gateway, lambda e: marker in e["prompt"])
    assert event["completion"] == "partial" and event["model"] == "amazon.nova-lite-v1:0"
    assert any("truncated" in w for w in event["warnings"]), event["warnings"]


@pytest.mark.parametrize("url", [
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
    "https://bedrock-runtime.us-east-1.amazonaws.com/model/meta.llama3-8b-instruct-v1%3A0/invoke",
    "https://api.cohere.com/v2/chat",
    "https://api.cohere.com/v1/chat",
])
def test_malformed_bodies_are_refused_in_the_providers_shape_and_audited(gateway, upstream, marker, url):
    """Invalid JSON is not forwarded (the gateway cannot tell how the upstream would read it): the client gets a 400
    in its provider's error shape saying why, and the audit says it was refused."""
    path = url.split(".com", 1)[1]
    body = b'{"contents": [' + marker.encode()
    r = http_client(gateway).post(url, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and b"was not sent" in r.content and b"not valid JSON" in r.content
    assert not any(marker.encode() in rec.body for rec in upstream.requests)
    [event] = wait_for_events(gateway, lambda e: e["path"] == path and not e["parsed"] and e["status"] == 400
                              and e["request_bytes"] == len(body))
    assert event["decision"] == "block" and event["inspection"] == "unparsed"
    assert any("not valid JSON" in w for w in event["warnings"]) and event["event_id"] in r.text
    assert gateway.proc.poll() is None
