"""Bedrock runtime: Converse and ConverseStream, InvokeModel per vendor body, the binary event stream (checked
against botocore's own decoder), and hostile frames."""

from __future__ import annotations

import base64
import binascii
import json
import struct

import pytest
from botocore.eventstream import EventStreamBuffer

from providers.eventstream import EventStreamDecoder
from tests.support import eventstream_frames as es
from tests.support.wire import assert_paths_resolve, parse, respond

CONVERSE = {
    "system": [{"text": "You are terse."}],
    "messages": [
        {"role": "user", "content": [
            {"text": "Summarise"},
            {"document": {"format": "txt", "name": "notes", "source": {"text": "confidential notes"}}},
            {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
            {"document": {"format": "csv", "name": "data",
                          "source": {"bytes": base64.b64encode(b"id,ssn").decode()}}}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "search", "input": {"q": "x"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "found"},
                                                                                   {"json": {"n": 1}}]}}]},
    ],
    "toolConfig": {"tools": [{"toolSpec": {"name": "search", "description": "Search",
                                           "inputSchema": {"json": {"type": "object"}}}}]},
    "inferenceConfig": {"maxTokens": 100},
}
MODEL = "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
MODEL_PATH = "us.anthropic.claude-3-5-sonnet-20240620-v1%3A0"


def test_converse_request_and_response():
    p = parse(f"/model/{MODEL_PATH}/converse", CONVERSE, host="bedrock-runtime.us-east-1.amazonaws.com")
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.parsed) == \
        ("bedrock", "converse", MODEL, False, True)
    assert ex.system_text == "You are terse." and ex.system[0].path == ("system", 0, "text")
    user = ex.messages[0]
    assert user.text == "Summarise\nconfidential notes"
    assert user.parts[1].path == ("messages", 0, "content", 1, "document", "source", "text")
    assert [(a.kind, a.mime_type, a.inspected) for a in user.attachments] == \
        [("document", "text/plain", True), ("image", "image/png", False), ("document", "text/csv", True)]
    assert user.attachments[2].text == "id,ssn" and "id,ssn" in [p.text for p in ex.request_parts()]
    assert ex.messages[1].tool_calls[0].name == "search"
    assert [r.text for r in ex.messages[2].tool_results] == ["found", '{"n":1}']
    assert ex.tools[0].parameters == {"type": "object"}
    assert assert_paths_resolve(p, CONVERSE) == 5  # the toolUse input's value too

    respond(p, "application/json", {
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Done."}, {"toolUse": {"toolUseId": "t2", "name": "search", "input": {"q": "y"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 30, "outputTokens": 4, "totalTokens": 34}})
    assert (ex.completion, ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == \
        ("Done.", "tool_use", 30, 4)
    assert ex.completion_tool_calls[0].arguments == '{"q":"y"}'


def converse_stream_frames() -> list[bytes]:
    return [es.event("messageStart", {"role": "assistant", "p": "abc"}),
            es.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
            es.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
            es.event("contentBlockStop", {"contentBlockIndex": 0}),
            es.event("contentBlockStart", {"contentBlockIndex": 1,
                                           "start": {"toolUse": {"toolUseId": "t9", "name": "calc"}}}),
            es.event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a":'}}}),
            es.event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
            es.event("messageStop", {"stopReason": "end_turn"}),
            es.event("metadata", {"usage": {"inputTokens": 8, "outputTokens": 2, "totalTokens": 10},
                                  "metrics": {"latencyMs": 5}})]


@pytest.mark.parametrize("step", [0, 1, 13])
def test_converse_stream(step):
    p = parse(f"/model/{MODEL_PATH}/converse-stream", CONVERSE)
    assert p.exchange.stream
    ex = respond(p, "application/vnd.amazon.eventstream", converse_stream_frames(), step).exchange
    assert ex.completion == "Hello"
    assert [(c.id, c.name, c.arguments) for c in ex.completion_tool_calls] == [("t9", "calc", '{"a":1}')]
    assert (ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == ("end_turn", 8, 2)
    assert ex.warnings == []


def test_decoder_agrees_with_botocore():
    data = b"".join(converse_stream_frames()) + es.exception("throttlingException", "slow down")
    ours = EventStreamDecoder().feed(data)
    theirs = EventStreamBuffer()
    theirs.add_data(data)
    theirs = list(theirs)
    assert len(ours) == len(theirs) == 10
    for a, b in zip(ours, theirs):
        assert a.headers == b.headers and a.payload == b.payload


def test_decoder_reads_every_header_type():
    headers = (b"\x01a\x00" + b"\x01b\x01" + b"\x01c\x02\xff" + b"\x01d\x03\x00\x02" + b"\x01e\x04\x00\x00\x00\x03"
               + b"\x01f\x05" + struct.pack(">q", -4) + b"\x01g\x06\x00\x02hi" + b"\x01h\x08" + struct.pack(">q", 5)
               + b"\x01i\x09" + bytes(range(16)))
    total = 12 + len(headers) + 2 + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    body = prelude + headers + b"{}"
    frame = body + struct.pack(">I", binascii.crc32(body))
    [msg] = EventStreamDecoder().feed(frame)
    assert msg.headers == {"a": True, "b": False, "c": -1, "d": 2, "e": 3, "f": -4, "g": b"hi", "h": 5,
                           "i": "00010203-0405-0607-0809-0a0b0c0d0e0f"}


@pytest.mark.parametrize("mangle,reason", [
    (lambda f: f[:8] + b"\0\0\0\0" + f[12:], "prelude CRC mismatch"),
    (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "message CRC mismatch"),
    (lambda f: f[:-3], "truncated"),
    (lambda f: es.frame({}, b"x" * 10)[:0] + _prelude(30 * 1024 * 1024, 0) + f, "exceeds"),
    (lambda f: _prelude(100, 200 * 1024) + f, "headers of"),
    (lambda f: _prelude(10, 0) + f, "shorter than its headers"),
])
def test_hostile_frames_stop_the_decoder_with_a_reason(mangle, reason):
    p = parse(f"/model/{MODEL_PATH}/converse-stream", CONVERSE)
    good = converse_stream_frames()
    ex = respond(p, "application/vnd.amazon.eventstream", [good[1], mangle(good[2])]).exchange
    assert ex.completion in ("Hel", "")
    assert any(reason in w for w in ex.warnings), ex.warnings


def _prelude(total: int, headers_len: int) -> bytes:
    head = struct.pack(">II", total, headers_len)
    return head + struct.pack(">I", binascii.crc32(head))


def test_exception_frame_is_a_warning():
    p = parse(f"/model/{MODEL_PATH}/converse-stream", CONVERSE)
    ex = respond(p, "application/vnd.amazon.eventstream",
                 [converse_stream_frames()[1], es.exception("modelStreamErrorException", "boom")]).exchange
    assert ex.completion == "Hel"
    assert ex.warnings == ["stream exception: modelStreamErrorException: boom"]


ANTHROPIC_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "system": "Be brief.",
                  "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi Claude"},
                                                            {"type": "image", "source": {"type": "base64",
                                                                                         "media_type": "image/png",
                                                                                         "data": "iVBORw0KGgo="}}]}],
                  "tools": [{"name": "t", "description": "d", "input_schema": {}}]}


def test_invoke_anthropic_request_response_and_stream():
    p = parse(f"/model/{MODEL_PATH}/invoke", ANTHROPIC_BODY)
    ex = p.exchange
    assert (ex.operation, ex.model, ex.stream, ex.system_text, ex.messages[0].text) == \
        ("invoke", MODEL, False, "Be brief.", "Hi Claude")
    assert ex.messages[0].parts[0].path == ("messages", 0, "content", 0, "text")
    assert ex.messages[0].attachments[0].mime_type == "image/png" and ex.tools[0].name == "t"
    respond(p, "application/json", {"id": "m", "type": "message", "role": "assistant",
                                    "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
                                    "usage": {"input_tokens": 9, "output_tokens": 2}})
    assert (ex.completion, ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == \
        ("Hello!", "end_turn", 9, 2)

    p = parse(f"/model/{MODEL_PATH}/invoke-with-response-stream", ANTHROPIC_BODY)
    events = [{"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
              {"type": "content_block_start", "index": 1,
               "content_block": {"type": "tool_use", "id": "tu", "name": "t", "input": {}}},
              {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
              {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 6}},
              {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 9,
                                                                             "outputTokenCount": 6}}]
    ex = respond(p, "application/vnd.amazon.eventstream", [es.chunk(e) for e in events], step=11).exchange
    assert (ex.stream, ex.completion, ex.finish_reason, ex.usage.input_tokens, ex.usage.output_tokens) == \
        (True, "Hello", "tool_use", 9, 6)
    assert [(c.name, c.arguments) for c in ex.completion_tool_calls] == [("t", "{}")]


@pytest.mark.parametrize("model,body,response,chunks,prompt,completion", [
    ("amazon.nova-pro-v1:0",
     {"schemaVersion": "messages-v1", "system": [{"text": "sys"}],
      "messages": [{"role": "user", "content": [{"text": "hi nova"}]}]},
     {"output": {"message": {"content": [{"text": "hey"}]}}, "stopReason": "end_turn",
      "usage": {"inputTokens": 3, "outputTokens": 1}},
     [{"messageStart": {"role": "assistant"}}, {"contentBlockDelta": {"delta": {"text": "he"}}},
      {"contentBlockDelta": {"delta": {"text": "y"}}}, {"messageStop": {"stopReason": "end_turn"}},
      {"metadata": {"usage": {"inputTokens": 3, "outputTokens": 1}}}],
     "hi nova", "hey"),
    ("meta.llama3-70b-instruct-v1:0", {"prompt": "<|begin_of_text|>hi llama", "max_gen_len": 9},
     {"generation": "hey", "prompt_token_count": 3, "generation_token_count": 1, "stop_reason": "stop"},
     [{"generation": "he"}, {"generation": "y", "stop_reason": "stop",
                             "amazon-bedrock-invocationMetrics": {"inputTokenCount": 3, "outputTokenCount": 1}}],
     "<|begin_of_text|>hi llama", "hey"),
    ("amazon.titan-text-express-v1", {"inputText": "hi titan", "textGenerationConfig": {}},
     {"inputTextTokenCount": 3, "results": [{"outputText": "hey", "tokenCount": 1, "completionReason": "FINISH"}]},
     [{"outputText": "he", "index": 0}, {"outputText": "y", "completionReason": "FINISH", "inputTextTokenCount": 3,
                                          "totalOutputTextTokenCount": 1}],
     "hi titan", "hey"),
    ("mistral.mistral-large-2402-v1:0", {"prompt": "<s>[INST] hi mistral [/INST]"},
     {"outputs": [{"text": "hey", "stop_reason": "stop"}]},
     [{"outputs": [{"text": "he"}]}, {"outputs": [{"text": "y", "stop_reason": "stop"}]}],
     "<s>[INST] hi mistral [/INST]", "hey"),
    ("cohere.command-r-v1:0", {"message": "hi cohere", "preamble": "sys", "chat_history": []},
     {"text": "hey", "finish_reason": "COMPLETE"},
     [{"event_type": "stream-start"}, {"event_type": "text-generation", "text": "he"},
      {"event_type": "text-generation", "text": "y"},
      {"event_type": "stream-end", "finish_reason": "COMPLETE", "response": {"text": "hey"}}],
     "hi cohere", "hey"),
    ("openai.gpt-oss-120b-1:0", {"messages": [{"role": "user", "content": "hi oss"}], "max_tokens": 5},
     {"choices": [{"message": {"role": "assistant", "content": "hey"}, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
     [{"choices": [{"delta": {"content": "he"}}]}, {"choices": [{"delta": {"content": "y"}, "finish_reason": "stop"}]}],
     "hi oss", "hey"),
])
def test_invoke_vendor_bodies(model, body, response, chunks, prompt, completion):
    p = parse(f"/model/{model}/invoke", body)
    ex = p.exchange
    assert ex.parsed and ex.messages[-1].text == prompt and ex.model == model, ex.warnings
    respond(p, "application/json", response)
    assert ex.completion == completion and ex.finish_reason, (ex.completion, ex.finish_reason)
    p = parse(f"/model/{model}/invoke-with-response-stream", body)
    ex = respond(p, "application/vnd.amazon.eventstream", [es.chunk(c) for c in chunks], step=7).exchange
    assert ex.stream and ex.completion == completion and ex.finish_reason and not ex.warnings, ex


def test_vendor_from_arn_and_body_shape():
    from providers.bedrock import base_model, vendor_of
    assert base_model("arn:aws:bedrock:us-east-1:1:inference-profile/eu.meta.llama3-1-8b-instruct-v1:0") == \
        "meta.llama3-1-8b-instruct-v1:0"
    assert vendor_of("arn:aws:bedrock:us-east-1:1:provisioned-model/abc", {"anthropic_version": "x"}) == "anthropic"
    assert vendor_of("custom", {"inputText": "x"}) == "titan"
    p = parse("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Aprovisioned-model%2Fabc/invoke", ANTHROPIC_BODY)
    assert p.exchange.model == "arn:aws:bedrock:us-east-1:1:provisioned-model/abc"
    respond(p, "application/json", {"type": "message", "content": [{"type": "text", "text": "by shape"}]})
    assert p.exchange.completion == "by shape"


@pytest.mark.parametrize("path", [f"/model/{MODEL_PATH}/converse", f"/model/{MODEL_PATH}/invoke",
                                  "/model/meta.llama3/invoke", "/model/amazon.titan-text/invoke",
                                  "/model/cohere.command-r/invoke", "/model/amazon.nova-lite/invoke"])
@pytest.mark.parametrize("body", [b"", b"{oops", b"[]", b'{"messages": 3}', b'{"messages": [1, {"content": 4}]}',
                                  b'{"system": [5], "messages": [{"content": [{"image": 1}, {"toolResult": {}}]}]}'])
def test_malformed_requests_never_raise(path, body):
    p = parse(path, body)
    assert p.provider.name == "bedrock"
    if body in (b"", b"{oops", b"[]"):
        assert not p.exchange.parsed and p.exchange.warnings


@pytest.mark.parametrize("body", [b"not json", b'{"output": 5}', b'{"output": {"message": {"content": [7]}}}'])
def test_malformed_converse_response_warns(body):
    p = parse(f"/model/{MODEL_PATH}/converse", CONVERSE)
    assert respond(p, "application/json", body).exchange.warnings


def test_chunk_with_bad_base64_is_a_warning():
    p = parse("/model/meta.llama3/invoke-with-response-stream", {"prompt": "x"})
    ex = respond(p, "application/vnd.amazon.eventstream",
                 [es.event("chunk", {"bytes": "!!notbase64"}), es.chunk({"generation": "ok"}),
                  es.event("chunk", {"bytes": base64.b64encode(b"[1").decode()})]).exchange
    assert ex.completion == "ok" and len(ex.warnings) == 2


def test_json_payload_that_is_not_json():
    p = parse(f"/model/{MODEL_PATH}/converse-stream", CONVERSE)
    ex = respond(p, "application/vnd.amazon.eventstream",
                 [es.frame({":message-type": "event", ":event-type": "contentBlockDelta"}, b"{nope"),
                  es.event("contentBlockDelta", {"delta": 5})]).exchange
    assert ex.warnings == ["stream: 2 events not understood"]


@pytest.mark.parametrize("headers,reason", [(b"\x01a\x0a", "unknown type 10"), (b"\x01a\x07\x00\x09ab", "runs past")])
def test_bad_headers_stop_the_decoder(headers, reason):
    body = _prelude(12 + len(headers) + 4, len(headers)) + headers
    decoder = EventStreamDecoder()
    assert decoder.feed(body + struct.pack(">I", binascii.crc32(body))) == []
    assert reason in decoder.finish() and decoder.feed(b"more") == []


def test_many_frames_in_one_chunk_and_one_frame_in_many():
    frames = converse_stream_frames() * 50
    decoder = EventStreamDecoder()
    assert len(decoder.feed(b"".join(frames))) == len(frames)
    big = es.event("contentBlockDelta", {"delta": {"text": "x" * 100_000}})
    got = [m for i in range(0, len(big), 100) for m in decoder.feed(big[i:i + 100])]
    assert len(got) == 1 and decoder.finish() == "" and not decoder.buf


# --- agent runtime --------------------------------------------------------------------------------------------

AGENT_HINTS = ("bedrock", "anthropic", "openai")


def test_invoke_agent_text_chunks_and_return_control():
    p = parse("/agents/AG1/agentAliases/AL1/sessions/s-1/text", {"inputText": "Book a room", "enableTrace": False},
              hints=AGENT_HINTS)
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.stream, ex.messages[0].text) == \
        ("bedrock-agent", "agent.invoke", "agent:AG1/AL1", True, "Book a room")
    frames = [es.event("chunk", {"bytes": base64.b64encode("Room ".encode()).decode()}),
              es.event("trace", {"trace": {}}),
              es.event("chunk", {"bytes": base64.b64encode("booked ✓".encode()).decode()}),
              es.event("returnControl", {"invocationId": "i1", "invocationInputs": [
                  {"functionInvocationInput": {"function": "pay", "parameters": [{"name": "n", "value": "1"}]}}]})]
    respond(p, "application/vnd.amazon.eventstream", frames, step=9)
    assert ex.completion == "Room booked ✓" and ex.completion_tool_calls[0].name == "pay" and not ex.warnings


def test_inline_agent_retrieve_and_generate_and_retrieve():
    p = parse("/agents/s-2", {"inputText": "hi", "instruction": "You are a travel agent.",
                              "foundationModel": "anthropic.claude-3-haiku-20240307-v1:0"}, hints=AGENT_HINTS)
    assert (p.exchange.operation, p.exchange.model, p.exchange.system_text) == \
        ("agent.invoke_inline", "anthropic.claude-3-haiku-20240307-v1:0", "You are a travel agent.")
    body = {"input": {"text": "What is our refund policy?"},
            "retrieveAndGenerateConfiguration": {"type": "EXTERNAL_SOURCES", "externalSourcesConfiguration": {
                "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-sonnet-20240229-v1:0",
                "sources": [{"sourceType": "BYTE_CONTENT", "byteContent": {
                    "identifier": "policy.txt", "contentType": "text/plain",
                    "data": base64.b64encode(b"Refunds within 30 days").decode()}}]}}}
    p = parse("/retrieveAndGenerate", body, hints=AGENT_HINTS)
    ex = p.exchange
    assert (ex.operation, ex.model, ex.stream, ex.messages[0].text) == \
        ("retrieveAndGenerate", "anthropic.claude-3-sonnet-20240229-v1:0", False, "What is our refund policy?")
    assert ex.messages[0].attachments[0].text == "Refunds within 30 days" and assert_paths_resolve(p, body) == 1
    respond(p, "application/json", {"output": {"text": "30 days."}, "citations": [], "sessionId": "s"})
    assert ex.completion == "30 days."
    p = parse("/retrieveAndGenerateStream", body, hints=AGENT_HINTS)
    respond(p, "application/vnd.amazon.eventstream", [es.event("output", {"text": "30 "}),
                                                      es.event("citation", {}), es.event("output", {"text": "days."})])
    assert (p.exchange.stream, p.exchange.completion) == (True, "30 days.")
    p = parse("/knowledgebases/KB1/retrieve", {"retrievalQuery": {"text": "refunds"}}, hints=AGENT_HINTS)
    respond(p, "application/json", {"retrievalResults": [{"content": {"text": "a"}}, {"content": {"text": "b"}}]})
    assert (p.exchange.model, p.exchange.messages[0].text, p.exchange.completion) == \
        ("knowledge-base:KB1", "refunds", "a\n\nb")


def test_agent_paths_need_the_bedrock_hint_and_a_sound_body():
    assert parse("/agents/s-2", {"inputText": "hi"}).provider is None
    for path, body in (("/agents/s-2", {"inputText": 5}), ("/retrieveAndGenerate", {"input": "x"}),
                       ("/knowledgebases/K/retrieve", {}), ("/agents/A/agentAliases/B/sessions/C/text", b"{")):
        p = parse(path, body, hints=AGENT_HINTS)
        assert p.provider.name == "bedrock-agent" and not p.exchange.parsed
    p = parse("/agents/A/agentAliases/B/sessions/C/text", {"inputText": "x"}, hints=AGENT_HINTS)
    respond(p, "application/vnd.amazon.eventstream", [es.event("chunk", {"bytes": "%%%"})])
    assert p.exchange.warnings == ["agent chunk: bytes are not base64"]


def test_count_tokens_converse_and_invoke_model_forms():
    body = {"input": {"converse": {"system": [{"text": "sys"}], "messages": CONVERSE["messages"][:1]}}}
    p = parse(f"/model/{MODEL_PATH}/count-tokens", body)
    ex = p.exchange
    assert (p.provider.name, ex.operation, ex.model, ex.system_text) == ("bedrock", "count_tokens", MODEL, "sys")
    assert ex.messages[0].parts[0].path == ("input", "converse", "messages", 0, "content", 0, "text")
    assert assert_paths_resolve(p, body) == 3
    respond(p, "application/json", {"inputTokens": 42})
    assert ex.usage.input_tokens == 42
    native = base64.b64encode(json.dumps(ANTHROPIC_BODY).encode()).decode()
    p = parse(f"/model/{MODEL_PATH}/count-tokens", {"input": {"invokeModel": {"body": native}}})
    assert p.exchange.messages[0].text == "Hi Claude" and p.exchange.messages[0].parts[0].path is None
    oss = base64.b64encode(json.dumps({"messages": [{"role": "user", "content": "hi oss"}]}).encode()).decode()
    p = parse("/model/openai.gpt-oss-20b-1:0/count-tokens", {"input": {"invokeModel": {"body": oss}}})
    assert p.exchange.messages[0].text == "hi oss"
    for bad in ({"input": {}}, {"input": {"invokeModel": {"body": "%%"}}},
                {"input": {"invokeModel": {"body": base64.b64encode(b"[1]").decode()}}}):
        assert not parse(f"/model/{MODEL_PATH}/count-tokens", bad).exchange.parsed


def test_apply_guardrail():
    body = {"source": "INPUT", "content": [{"text": {"text": "my card is 4111 1111 1111 1111"}}, {"image": {}}]}
    p = parse("/guardrail/gr-1/version/DRAFT/apply", body)
    ex = p.exchange
    assert (ex.operation, ex.model, ex.messages[0].role, ex.messages[0].text) == \
        ("guardrail.apply", "guardrail:gr-1/DRAFT", "user", "my card is 4111 1111 1111 1111")
    assert assert_paths_resolve(p, body) == 1
    respond(p, "application/json", {"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "Sorry."}]})
    assert (ex.finish_reason, ex.completion) == ("GUARDRAIL_INTERVENED", "Sorry.")
    assert not parse("/guardrail/gr-1/version/1/apply", {"content": "x"}).exchange.parsed
