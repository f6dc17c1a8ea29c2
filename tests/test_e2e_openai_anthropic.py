"""End to end with the real `openai` and `anthropic` SDKs through the running gateway to fake upstreams: the SDK
gets its answer, and the audit event holds model, prompt, completion and tokens. Compressed traffic too: a gzip
streamed response, a brotli JSON response, a zstd request body, and compression bombs both ways."""

from __future__ import annotations

import gzip
import json
import ssl
import threading
import zlib

import anthropic
import brotli
import httpx2
import openai
import pytest
import zstandard

from tests.conftest import wait_for_events
from tests.support.upstream import Reply, sse
from tests.test_e2e_foundation import chat_reply, chunk, openai_client


def _http(gateway) -> httpx2.Client:
    return httpx2.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=str(gateway.ca)),
                         timeout=30)


def anthropic_client(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test-not-real", http_client=_http(gateway), max_retries=0)


def _mine(marker: str, **fields):
    return lambda e: marker in e["prompt"] and all(e[k] == v for k, v in fields.items())


# --- OpenAI ----------------------------------------------------------------------------------------------------

def _response_object(text: str, status: str = "completed") -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4.1-2025-04-14", "status": status,
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": 17, "output_tokens": 4, "total_tokens": 21,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


def test_openai_responses(gateway, upstream, marker):
    upstream.route("/v1/responses", lambda rec: Reply(body=json.dumps(_response_object(f"Bonjour {marker}"))
                                                      .encode()))
    answer = openai_client(gateway).responses.create(model="gpt-4.1", instructions="Answer in French.",
                                                     input=f"Say hello {marker}")
    assert answer.output_text == f"Bonjour {marker}"
    [event] = wait_for_events(gateway, _mine(marker, operation="responses"))
    assert (event["model"], event["completion"], event["stream"]) == ("gpt-4.1-2025-04-14", f"Bonjour {marker}",
                                                                      False)
    assert "[system] Answer in French." in event["prompt"] and f"[user] Say hello {marker}" in event["prompt"]
    assert (event["input_tokens"], event["output_tokens"]) == (17, 4)


def test_openai_responses_streamed(gateway, upstream, marker):
    def frame(kind: str, **data) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': 0, **data})}\n\n"

    final = _response_object(f"Hi {marker}")
    frames = [frame("response.created", response={**final, "status": "in_progress", "output": [], "usage": None}),
              frame("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta="Hi ",
                    logprobs=[]),
              frame("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=marker,
                    logprobs=[]),
              frame("response.completed", response=final)]
    upstream.route("/v1/responses", lambda rec: Reply(content_type="text/event-stream", chunks=sse(frames)))
    deltas = [e.delta for e in openai_client(gateway).responses.create(model="gpt-4.1", input=f"Greet {marker}",
                                                                       stream=True)
              if e.type == "response.output_text.delta"]
    assert "".join(deltas) == f"Hi {marker}"
    [event] = wait_for_events(gateway, _mine(marker, operation="responses", stream=True))
    assert (event["completion"], event["model"]) == (f"Hi {marker}", "gpt-4.1-2025-04-14")
    assert (event["input_tokens"], event["output_tokens"]) == (17, 4)


def test_openai_embeddings(gateway, upstream, marker):
    upstream.route("/v1/embeddings", lambda rec: Reply(body=json.dumps({
        "object": "list", "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
        "usage": {"prompt_tokens": 6, "total_tokens": 6}}).encode()))
    result = openai_client(gateway).embeddings.create(model="text-embedding-3-small", input=[f"vector {marker}"],
                                                      encoding_format="float")
    assert result.data[0].embedding == [0.25, -0.5]
    [event] = wait_for_events(gateway, _mine(marker, operation="embeddings"))
    assert (event["model"], event["input_tokens"], event["prompt"]) == ("text-embedding-3-small", 6,
                                                                        f"[user] vector {marker}")


def test_openai_file_upload_records_the_file(gateway, upstream, marker):
    upstream.route("/v1/files", lambda rec: Reply(body=json.dumps({
        "id": "file-1", "object": "file", "bytes": 24, "created_at": 1, "filename": "notes.txt",
        "purpose": "assistants", "status": "processed"}).encode()))
    created = openai_client(gateway).files.create(file=(f"notes-{marker}.txt", b"customer list: alice, bob\n"),
                                                  purpose="assistants")
    assert created.id == "file-1"
    [event] = wait_for_events(gateway, _mine(marker, operation="files"))
    assert f"<file notes-{marker}.txt 26B>" in event["prompt"]  # text-like: inspected, so no "not inspected"


# --- Anthropic -------------------------------------------------------------------------------------------------

def test_anthropic_messages(gateway, upstream, marker):
    upstream.route("/v1/messages", lambda rec: Reply(body=json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6-20260101",
        "content": [{"type": "text", "text": f"Paris {marker}"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 14, "output_tokens": 5}}).encode()))
    message = anthropic_client(gateway).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, system="You are terse.",
        messages=[{"role": "user", "content": f"Capital of France? {marker}"}])
    assert message.content[0].text == f"Paris {marker}"
    [event] = wait_for_events(gateway, _mine(marker, operation="messages"))
    assert (event["service"], event["model"], event["completion"]) == ("anthropic", "claude-sonnet-4-6-20260101",
                                                                       f"Paris {marker}")
    assert "[system] You are terse." in event["prompt"] and f"[user] Capital of France? {marker}" in event["prompt"]
    assert (event["input_tokens"], event["output_tokens"], event["stream"]) == (14, 5, False)


def _anthropic_frames(text: str) -> list[str]:
    def frame(data: dict) -> str:
        return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"
    half = len(text) // 2
    return [frame({"type": "message_start", "message": {
                "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 31, "output_tokens": 1}}}),
            frame({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            frame({"type": "ping"}),
            frame({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[:half]}}),
            frame({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[half:]}}),
            frame({"type": "content_block_stop", "index": 0}),
            frame({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": 9}}),
            frame({"type": "message_stop"})]


def test_anthropic_messages_streamed_unbuffered(gateway, upstream, marker):
    gate = threading.Event()
    upstream.route("/v1/messages", lambda rec: Reply(content_type="text/event-stream",
                                                     chunks=sse(_anthropic_frames(f"Once upon {marker}"), gate=gate)))
    with anthropic_client(gateway).messages.stream(
            model="claude-sonnet-4-6", max_tokens=100,
            messages=[{"role": "user", "content": f"Tell a story {marker}"}]) as stream:
        pieces = []
        for text in stream.text_stream:
            pieces.append(text)
            gate.set()  # the first delta arrived before the upstream sent its last frame
        final = stream.get_final_message()
    assert "".join(pieces) == f"Once upon {marker}" and final.usage.output_tokens == 9
    [event] = wait_for_events(gateway, _mine(marker, operation="messages", stream=True))
    assert (event["completion"], event["model"]) == (f"Once upon {marker}", "claude-sonnet-4-6")
    assert (event["input_tokens"], event["output_tokens"], event["error"]) == (31, 9, "")


# --- Content encodings -----------------------------------------------------------------------------------------

def _gzip_stream(frames: list[str]):
    """One gzip stream, flushed after every frame so each can be decoded as soon as it arrives."""
    comp = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    for i, f in enumerate(frames):
        yield comp.compress(f.encode()) + (comp.flush() if i == len(frames) - 1 else comp.flush(zlib.Z_SYNC_FLUSH))


def test_gzip_streamed_response_reaches_the_client_untouched_and_is_audited(gateway, upstream, marker):
    frames = [chunk({"role": "assistant", "content": "Zip"}), chunk({"content": f"ped {marker}"}, finish="stop"),
              chunk(None, usage={"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}),
              "data: [DONE]\n\n"]
    encoded = list(_gzip_stream(frames))
    upstream.route("/v1/chat/completions", lambda rec: Reply(content_type="text/event-stream", chunks=iter(encoded),
                                                             headers={"content-encoding": "gzip"}))
    stream = openai_client(gateway).chat.completions.create(
        model="gpt-4o", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"compress {marker}"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"Zipped {marker}"
    [event] = wait_for_events(gateway, _mine(marker, stream=True))
    assert event["completion"] == f"Zipped {marker}" and event["response_bytes"] == sum(map(len, encoded))
    assert (event["input_tokens"], event["output_tokens"]) == (8, 2)
    assert not [w for w in event["warnings"] if "decod" in w or "truncated" in w]


def test_brotli_json_response(gateway, upstream, marker):
    reply = chat_reply(f"brotli {marker}")
    upstream.route("/v1/chat/completions", lambda rec: Reply(body=brotli.compress(reply.body),
                                                             headers={"content-encoding": "br"}))
    answer = openai_client(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"br please {marker}"}])
    assert answer.choices[0].message.content == f"brotli {marker}"
    [event] = wait_for_events(gateway, _mine(marker))
    assert event["completion"] == f"brotli {marker}" and event["response_bytes"] == len(brotli.compress(reply.body))


def test_zstd_request_body_is_parsed_and_forwarded_untouched(gateway, upstream, marker):
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("got it"))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": f"zstd {marker}"}]}).encode()
    encoded = zstandard.ZstdCompressor().compress(body)
    r = _http(gateway).post("https://api.openai.com/v1/chat/completions", content=encoded,
                            headers={"content-type": "application/json", "content-encoding": "zstd"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "got it"
    assert any(rec.body == encoded for rec in upstream.requests)
    [event] = wait_for_events(gateway, _mine(marker))
    assert (event["parsed"], event["prompt"], event["request_bytes"]) == (True, f"[user] zstd {marker}",
                                                                          len(encoded))


def test_a_large_compressed_prompt_is_decoded_parsed_and_audited_off_the_event_loop(gateway, upstream, marker):
    """Over core.offload's threshold, decoding, parsing and building the audit event run in threads: the result
    must be what the inline path gives (the whole prompt read, its finding at the very end found, its hash)."""
    import hashlib

    upstream.route("/v1/chat/completions", lambda rec: chat_reply("read it all"))
    text = f"{marker} " + "Quarterly figures, line by line, for the board. " * 60_000 + "Mail jane.doe@acme-corp.com"
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()
    r = _http(gateway).post("https://api.openai.com/v1/chat/completions", content=gzip.compress(body),
                            headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "read it all"
    [event] = wait_for_events(gateway, lambda e: e["prompt"].startswith(f"[user] {marker}"))
    assert (event["parsed"], event["inspection"], event["entity_types"]) == (True, "inspected", ["EMAIL_ADDRESS"])
    assert event["prompt_sha256"] == hashlib.sha256(f"[user] {text}".encode()).hexdigest()


def test_request_compression_bomb_is_refused_and_audited(gateway, upstream, marker):
    """100 MiB of JSON whitespace compresses to ~100 KB; the gateway refuses it without expanding it."""
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("should not be reached"))
    seen = len(upstream.requests)
    bomb = gzip.compress(b'{"messages": [], "x": "' + b" " * (100 * 1024 * 1024) + b'"}', compresslevel=9)
    r = _http(gateway).post(f"https://api.openai.com/v1/chat/completions?{marker}", content=bomb,
                            headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 413 and "compression bomb" in r.json()["error"]["message"]
    assert len(upstream.requests) == seen  # nothing was forwarded
    [event] = wait_for_events(gateway, lambda e: marker in e["path"])
    assert (event["decision"], event["parsed"], event["status"]) == ("block", False, 413)
    assert any("compression bomb" in w for w in event["warnings"])
    assert gateway.proc.poll() is None


@pytest.mark.parametrize("coding", ["none", "identity;q=1", "UTF-8", "gzip"])
def test_a_body_the_gateway_cannot_decode_is_blocked_not_forwarded(gateway, upstream, marker, coding):
    """A plain JSON body labelled with an encoding the gateway cannot read would reach an upstream that ignores the
    label uninspected: it is refused whatever the policy's fail modes."""
    upstream.route("/v1/chat/completions", lambda rec: chat_reply("should not be reached"))
    seen = len(upstream.requests)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "AKIAIOSFODNN7EXAMPLE"}]})
    r = _http(gateway).post(f"https://api.openai.com/v1/chat/completions?{marker}", content=body.encode(),
                            headers={"content-type": "application/json", "content-encoding": coding})
    assert r.status_code == 415 and "could not be decoded" in r.json()["error"]["message"]
    assert len(upstream.requests) == seen
    [event] = wait_for_events(gateway, lambda e: marker in e["path"])
    assert (event["decision"], event["parsed"], event["status"]) == ("block", False, 415)


def test_response_compression_bombs(gateway, upstream, marker):
    """Buffered: replaced by a 502 that says why. Streamed: passed through untouched, parsing stops at the cap."""
    bomb = gzip.compress(bytes(100 * 1024 * 1024), compresslevel=9)
    upstream.route("/v1/chat/completions", lambda rec: Reply(body=bomb, headers={"content-encoding": "gzip"}))
    r = _http(gateway).post("https://api.openai.com/v1/chat/completions", json={
        "model": "gpt-4o", "messages": [{"role": "user", "content": f"bomb {marker}"}]})
    assert r.status_code == 502 and "compression bomb" in r.json()["error"]["message"]
    [event] = wait_for_events(gateway, _mine(marker))
    assert (event["decision"], event["status"]) == ("block", 502)
    assert any("compression bomb" in w for w in event["warnings"])

    upstream.route("/v1/chat/completions", lambda rec: Reply(
        content_type="text/event-stream", chunks=(bomb[i:i + 65536] for i in range(0, len(bomb), 65536)),
        headers={"content-encoding": "gzip"}))
    request = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": f"stream bomb {marker}"}]}
    with _http(gateway).stream("POST", "https://api.openai.com/v1/chat/completions", json=request) as r:
        received = sum(len(c) for c in r.iter_raw())
    assert received == len(bomb)  # the client got the stream as sent, still compressed
    [event] = wait_for_events(gateway, _mine(marker, stream=True))
    assert any("compression bomb" in w for w in event["warnings"]) and event["response_bytes"] == len(bomb)


# --- Other hosts, truncated streams ----------------------------------------------------------------------------

def test_azure_deployment_and_compatible_host(gateway, upstream, marker):
    """AzureOpenAI puts the deployment in the path and no model in the body; Groq serves OpenAI under /openai/v1."""
    reply = json.loads(chat_reply(f"azure {marker}").body)
    del reply["model"]  # so the audit shows what the request named: the deployment
    upstream.route("/openai/deployments/", lambda rec: Reply(body=json.dumps(reply).encode()))
    azure = openai.AzureOpenAI(api_key="k", api_version="2024-10-21", azure_endpoint="https://myres.openai.azure.com",
                               http_client=_http(gateway), max_retries=0)
    answer = azure.chat.completions.create(model="prod-gpt4o", messages=[{"role": "user", "content": f"az {marker}"}])
    assert answer.choices[0].message.content == f"azure {marker}"
    assert any(r.path.startswith("/openai/deployments/prod-gpt4o/chat/completions") for r in upstream.requests)
    [event] = wait_for_events(gateway, _mine(marker, service="azure-openai"))
    assert (event["operation"], event["model"], event["completion"]) == ("chat.completions", "prod-gpt4o",
                                                                         f"azure {marker}")

    upstream.route("/openai/v1/chat/completions", lambda rec: chat_reply(f"groq {marker}", model="llama-3.3-70b"))
    groq = openai.OpenAI(api_key="gsk_test", base_url="https://api.groq.com/openai/v1", http_client=_http(gateway),
                         max_retries=0)
    assert groq.chat.completions.create(model="llama-3.3-70b", messages=[
        {"role": "user", "content": f"groq {marker}"}]).choices[0].message.content == f"groq {marker}"
    [event] = wait_for_events(gateway, _mine(marker, service="groq"))
    assert (event["operation"], event["model"]) == ("chat.completions", "llama-3.3-70b")


def test_anthropic_stream_cut_by_the_upstream_is_audited_with_what_arrived(gateway, upstream, marker):
    def cut():
        yield from [f.encode() for f in _anthropic_frames(f"Partial {marker}")[:4]]
        raise ConnectionAbortedError("upstream died mid-stream")  # no terminating chunk: the body is cut

    upstream.route("/v1/messages", lambda rec: Reply(content_type="text/event-stream", chunks=cut()))
    client = anthropic_client(gateway)
    pieces = []
    try:
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                    messages=[{"role": "user", "content": f"cut {marker}"}]) as stream:
            pieces.extend(stream.text_stream)
    except (anthropic.APIError, httpx2.HTTPError):
        pass  # the SDK reports the broken stream; what matters is the gateway's record of it
    assert "".join(pieces) in ("", f"Partial {marker}"[: len(f"Partial {marker}") // 2])
    [event] = wait_for_events(gateway, _mine(marker, operation="messages", stream=True))
    assert event["completion"] == f"Partial {marker}"[: len(f"Partial {marker}") // 2]
    assert event["input_tokens"] == 31 and event["error"] != ""
    assert gateway.proc.poll() is None
