"""Gemini web app (gemini.google.com, bard.google.com): StreamGenerate. Best effort, fails soft.

Format [OBS], positions drift across builds (marks: docs/providers.md). The request is a form post whose `f.req`
field is JSON `[null, "<inner JSON string>"]`; the prompt is `inner[0][0]` and `inner[0][3]` lists uploaded files.
The text sits inside a JSON string inside a form field, so it has no JSON path: DLP inspects it, but redaction
cannot rewrite it in place (the policy can still block).

The answer starts with the anti-XSSI prefix `)]}'` followed by length-prefixed JSON arrays; entries
`["wrb.fr", <rpc>, "<JSON string>"]` carry a payload whose `[4][0][1][0]` is the candidate text so far. Each
chunk repeats the whole text, so the last one wins. The body is collected (capped) and read at the end, because
the length prefixes count UTF-16 units and chunks split anywhere.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import orjson

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import MAX_COMPLETION_CHARS, CappedBody, HttpRequest, ResponseParser
from providers.webapp import SoftResponse, WebAppProvider, unparsed

MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class GeminiWebProvider(WebAppProvider):
    name = "gemini-web"

    def operation(self, req: HttpRequest) -> str | None:
        if req.method == "POST" and "/BardChatUi/data/" in req.path and req.path.endswith("StreamGenerate"):
            return "conversation"
        return None

    def parse(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        exchange.stream = True
        form = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
        if "f.req" not in form:
            raise ValueError("no f.req form field")
        outer = orjson.loads(form["f.req"][0])
        inner = orjson.loads(outer[1])
        first = inner[0]
        if not isinstance(first, list) or not isinstance(first[0], str):
            raise TypeError("f.req inner[0][0] is not the prompt string")
        message = Message("user", parts=[TextPart(first[0])])
        files = first[3] if len(first) > 3 and isinstance(first[3], list) else []
        for entry in files:
            message.attachments.append(Attachment(kind="file", name=_file_name(entry)))
        exchange.messages.append(message)

    def answer(self, exchange: Exchange) -> ResponseParser:
        return StreamGenerateResponse(exchange)


def _file_name(entry: Any) -> str:
    """Upload entries look like `[["/contrib_service/...", 1], "name.png"]`; take the name if it is there."""
    if isinstance(entry, list):
        strings = [e for e in entry if isinstance(e, str)]
        if strings:
            return strings[-1][:300]
        if entry and isinstance(entry[0], list) and entry[0] and isinstance(entry[0][0], str):
            return entry[0][0][:300]
    return ""


class StreamGenerateResponse:
    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.body = CappedBody(exchange, MAX_RESPONSE_BYTES,
                               f"gemini-web: response larger than {MAX_RESPONSE_BYTES} bytes, the rest not read")

    def feed(self, chunk: bytes) -> None:
        self.body.add(chunk)

    def finish(self) -> None:
        soft = SoftResponse(self.exchange, "gemini-web")
        text = self.body.take().decode("utf-8", "replace")
        if text.startswith(")]}'"):
            text = text[4:]
        if text.strip():
            soft.saw_data()
        answer = ""
        for value in _json_values(text):
            for payload in _wrb_payloads(value):
                soft.understood()
                candidate = _candidate(payload)
                if candidate is not None:
                    answer = candidate
        self.exchange.completion = answer[:MAX_COMPLETION_CHARS]
        soft.conclude()
        if soft.recognised and not answer:
            unparsed(self.exchange, "gemini-web: no candidate text found in the response")


def _json_values(text: str):
    """The JSON values of a length-prefixed chunk stream: skip the length lines, decode what follows. A chunk
    that does not decode is skipped up to the next line."""
    decoder = json.JSONDecoder()
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and (text[pos].isspace() or text[pos].isdigit()):
            pos += 1
        if pos >= end:
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            nl = text.find("\n", pos)
            if nl < 0:
                return
            pos = nl + 1
            continue
        yield value


def _wrb_payloads(value: Any):
    if not isinstance(value, list):
        return
    for entry in value:
        if isinstance(entry, list) and len(entry) > 2 and entry[0] == "wrb.fr" and isinstance(entry[2], str):
            try:
                yield orjson.loads(entry[2])
            except orjson.JSONDecodeError:
                continue


def _candidate(payload: Any) -> str | None:
    try:
        text = payload[4][0][1][0]
    except (IndexError, KeyError, TypeError):
        return None
    return text if isinstance(text, str) else None


PROVIDER = GeminiWebProvider()
