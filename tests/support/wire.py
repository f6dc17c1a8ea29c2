"""Drive a provider parser like the Extract addon does, without mitmproxy: request bytes in, a response fed in
chunks (one byte at a time if asked, to prove incremental decoding), the finished exchange out."""

from __future__ import annotations

import json
from typing import Any

import providers
from providers import Parsed


def parse(path: str, body: Any, host: str = "example.test", method: str = "POST", service: str = "test",
          hints: tuple[str, ...] = (), headers: dict[str, str] | None = None) -> Parsed:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = providers.HttpRequest.from_url_parts(method, host, path, headers or {"content-type": "application/json"},
                                               raw)
    return providers.parse_request(req, service, hints)


def respond(parsed: Parsed, content_type: str, body: bytes | list[bytes] | Any, step: int = 0) -> Parsed:
    """Feed a response (a JSON value, bytes, or a list of chunks) and finish; `step` re-chunks the bytes."""
    parser = providers.response_parser(parsed, content_type)
    assert parser is not None
    if isinstance(body, list) and all(isinstance(c, bytes) for c in body):
        chunks = body
    else:
        chunks = [body if isinstance(body, bytes) else json.dumps(body).encode()]
    if step:
        data = b"".join(chunks)
        chunks = [data[i:i + step] for i in range(0, len(data), step)]
    for c in chunks:
        parser.feed(c)
    parser.finish()
    return parsed


def assert_paths_resolve(parsed: Parsed, body: Any) -> int:
    """Every addressable text part's path leads to exactly its text in the request body: what redaction relies on
    to rewrite a finding in place (the whole-body walk's parts too). Returns how many of the parser's were checked."""
    checked = 0
    for part in parsed.exchange.request_parts():
        if part.path is None:
            continue
        node = body
        for key in part.path:
            if isinstance(node, str):  # the path runs on into JSON text held by a string (tool-call arguments)
                node = json.loads(node)
            node = node[key]
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            node = json.dumps(node)  # a number value is scanned as its JSON text
        assert node == part.text, (part.path, node, part.text)
        checked += part.source == "parser"
    return checked
