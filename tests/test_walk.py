"""The whole-body walk and the canonical parse (providers/walk.py), without a proxy."""

from __future__ import annotations

import base64
import json

import pytest

import providers
from providers.base import HttpRequest
from providers.walk import MAX_DEPTH, AmbiguousBody, canonical_json
from tests.support.wire import assert_paths_resolve

KEY = "AKIAZ7Q4XK2M3PLR5TVW"


def parse(body: bytes, path: str = "/v1/chat/completions", content_type: str = "application/json",
          method: str = "POST") -> providers.Parsed:
    headers = {"content-type": content_type} if content_type else {}
    req = HttpRequest.from_url_parts(method, "api.openai.com", path, headers, body)
    return providers.parse_request(req, "openai", ("openai",))


def walked(parsed: providers.Parsed) -> dict:
    return {p.path: p.text for p in parsed.exchange.request_parts() if p.source == "walk" and p.path is not None}


def test_every_string_no_parser_reads_is_a_part_at_its_path():
    body = {"model": "gpt-4o", "user": KEY, "metadata": {"note": "x"}, "seed": 4111111111111111, "n": 1,
            "messages": [{"role": "user", "name": "bob", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "description": "does f",
                                                        "parameters": {"properties": {"q": {"default": "d"}}}}}]}
    p = parse(json.dumps(body).encode())
    texts = walked(p)
    assert texts[("user",)] == KEY and texts[("metadata", "note")] == "x" and texts[("messages", 0, "name")] == "bob"
    assert texts[("tools", 0, "function", "description")] == "does f"
    assert texts[("tools", 0, "function", "parameters", "properties", "q", "default")] == "d"
    assert ("messages", 0, "content") not in texts  # the parser's part, not read twice
    parts = p.exchange.request_parts()
    assert any(t.text == "4111111111111111" and t.context == "seed" for t in parts)  # a long number, scanned
    assert not any(t.text == "1" for t in parts)  # short numbers cannot be anything a recognizer looks for
    keys = [t.text for t in parts if t.source == "walk" and t.path is None and "\n" in t.text]
    assert keys and {"metadata", "note", "default"} <= set(keys[0].split("\n"))
    assert assert_paths_resolve(p, body) >= 1  # every walked path leads to its text: redaction can rewrite it
    assert "walk /user" in p.exchange.coverage and "parser /messages/*/content" in p.exchange.coverage


def test_an_endpoint_no_parser_knows_is_read_not_unparsed():
    p = parse(json.dumps({"input": [f"is {KEY} ok?"]}).encode(), path="/v1/moderations")
    x = p.exchange
    assert x.operation == "unknown" and not x.parsed and x.read and not p.ambiguous
    assert walked(p) == {("input", 0): f"is {KEY} ok?"}
    assert any("whole-body walk" in w for w in x.warnings)


@pytest.mark.parametrize("body,why", [
    (b'{"a": 1, "a": 2}', "repeats a key"),
    (b'{"m": [{"c": "x", "c": "y"}]}', "repeats a key"),
    (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
    (b'{"a": "\xff"}', "UTF-8"),
    (b'{"a": "\\ud800"}', "surrogate"),
    (b'{"a": NaN}', "not valid JSON"),
    (b'{"a": 1e400}', "infinity"),
    (b'{"a": ' + b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2) + b"}", "deeper"),
    (b'{"a": ', "not valid JSON"),
])
def test_ambiguous_json_is_refused_with_why(body, why):
    with pytest.raises(AmbiguousBody, match=why):
        canonical_json(body)
    p = parse(body)
    assert why in p.ambiguous and not p.exchange.read


def test_escaped_quotes_and_colons_in_strings_are_not_keys():
    assert canonical_json(b'{"a": "x\\":\\"", "b": "v:", "c": {"k\\\\": 1}}') == {"a": 'x":"', "b": "v:",
                                                                                   "c": {"k\\": 1}}


def test_an_encoded_text_file_in_json_is_read_as_its_text():
    data = base64.b64encode((f"config\nkey={KEY}\n" * 80).encode()).decode()
    p = parse(json.dumps({"model": "m", "input": [{"blob": f"data:text/plain;base64,{data}"}]}).encode(),
              path="/v1/anything")
    [upload] = [t for t in p.exchange.request_parts() if t.source == "upload"]
    assert KEY in upload.text and any(line.startswith("upload /input/*/blob") for line in p.exchange.coverage)


def test_non_json_bodies_are_read_by_their_type():
    form = parse(f"prompt=hi&token={KEY}".encode(), content_type="application/x-www-form-urlencoded")
    assert KEY in [t.text for t in form.exchange.request_parts()] and form.exchange.read
    text = parse(f"remember {KEY}".encode(), content_type="text/plain")
    assert any(KEY in t.text for t in text.exchange.request_parts()) and text.exchange.read
    lines = parse(b'{"a": 1}\n{"a": "' + KEY.encode() + b'"}\n', content_type="application/x-ndjson")
    assert not lines.ambiguous and any(KEY in t.text for t in lines.exchange.request_parts())
    binary = parse(b"\x00\x01\x02\x03 binary", content_type="application/octet-stream")
    assert not binary.exchange.read and any("not inspected" in c for c in binary.exchange.coverage)


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl", "application/x-jsonlines",
                                          "application/json-seq", "application/stream+json"])
def test_json_lines_are_read_as_text_under_each_of_their_names(content_type):
    """One list of JSON-lines names (core/mediatypes.py): `application/stream+json` lines, which the answers'
    stages read as NDJSON already, are no longer refused as a body that is not one JSON value."""
    body = b'{"a": 1}\n{"a": "' + KEY.encode() + b'"}\n'
    lines = parse(body, path="/v1/anything", content_type=content_type)
    assert not lines.ambiguous and any(KEY in t.text for t in lines.exchange.request_parts())


def test_multipart_fields_are_all_read():
    body = (b"--zz\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n"
            b"--zz\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\n" + KEY.encode() + b"\r\n"
            b"--zz\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\nsecond\r\n--zz--\r\n")
    p = parse(body, path="/v1/unknown-upload", content_type="multipart/form-data; boundary=zz")
    texts = [t.text for t in p.exchange.request_parts()]
    assert KEY in texts and "second" in texts and p.exchange.read


@pytest.mark.parametrize("fields", [
    [(b"Host", b"api.openai.com"), (b"Content-Type", b"application/json"), (b"accept", b"text/html"),
     (b"ACCEPT", b"application/json"), (b"X-\xff", b"\xfe\xc3 not UTF-8"), (b"Accept-Encoding", b"gzip")],
    [(b"A", b"1"), (b"a", b""), (b"A", b"3")],
    [],
], ids=["repeated names in three spellings, bytes that are not UTF-8", "empty values", "none"])
def test_folded_headers_are_what_mitmproxy_headers_give(fields):
    from mitmproxy.http import Headers

    from providers.base import folded_headers

    headers = Headers(fields)
    assert list(folded_headers(headers.fields).items()) == list(dict(headers).items())
