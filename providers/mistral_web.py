"""Mistral Le Chat (chat.mistral.ai): the streaming chat endpoint. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). `POST /api/chat` with the text in `messageInput` (a string, or a list of
`{type: "text", text}` parts) and files in `messageFiles`. The answer is a line-prefixed data stream in the Vercel
AI style: `0:"<JSON string: a text chunk>"`, and other prefixes [UNCONFIRMED] for data (`2:`), errors (`3:`), finish
(`d:` / `e:` with `finishReason` and `usage`); unknown prefixes are ignored.
"""

from __future__ import annotations

from typing import Any

import orjson

from core.exchange import Attachment, Exchange, Message
from providers.base import CompletionBuffer, HttpRequest, ResponseParser, text_parts
from providers.webapp import SoftResponse, WebAppProvider, str_field

MAX_LINE = 4 * 1024 * 1024


class MistralWebProvider(WebAppProvider):
    name = "mistral-web"
    paths = {"/api/chat": "conversation"}

    def prompt(self, req: HttpRequest, body: dict[str, Any], exchange: Exchange) -> None:
        exchange.model = str_field(body, "model", "agentId")
        content = body.get("messageInput")
        if content is None and body.get("mode") == "retry":
            return
        if not isinstance(content, (str, list)):
            raise TypeError("no 'messageInput'")
        message = Message("user", parts=text_parts(content, ("messageInput",), exchange))
        for f in body.get("messageFiles") or []:
            name = f if isinstance(f, str) else str_field(f, "name", "fileName", "id")
            mime = str_field(f, "type", "mimeType") if isinstance(f, dict) else ""
            message.attachments.append(Attachment(kind="file", name=name, mime_type=mime))
        exchange.messages.append(message)

    def answer(self, exchange: Exchange) -> ResponseParser:
        return DataStream(exchange)


class DataStream:
    """Incremental reader of `<prefix>:<JSON>` lines; a line too long is dropped with a warning."""

    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.soft = SoftResponse(exchange, "mistral-web")
        self.text = CompletionBuffer(exchange)
        self.buf = b""
        self.skipping = False
        self.bad_lines = 0

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while (nl := self.buf.find(b"\n")) >= 0:
            line, self.buf = self.buf[:nl], self.buf[nl + 1:]
            if self.skipping:
                self.skipping = False
                continue
            self._line(line)
        if len(self.buf) > MAX_LINE:
            self.exchange.warn("mistral-web: stream line too long, dropped")
            self.buf, self.skipping = b"", True

    def finish(self) -> None:
        if self.buf and not self.skipping:
            self._line(self.buf)
        self.buf = b""
        if self.bad_lines:
            self.exchange.warn(f"mistral-web: {self.bad_lines} stream lines not understood")
        self.exchange.completion = self.text.text()
        self.soft.conclude()

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        self.soft.saw_data()
        prefix, sep, payload = line.partition(b":")
        if not sep or not prefix.strip().isalnum() or len(prefix) > 4:
            self.bad_lines += 1
            return
        try:
            value: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.bad_lines += 1
            return
        self.soft.understood()
        kind = prefix.strip().decode()
        if kind == "0" and isinstance(value, str):
            self.text.add(value)
        elif kind == "3":
            self.exchange.warn(f"mistral-web: stream error: {str(value)[:300]}")
        elif kind in ("d", "e") and isinstance(value, dict):
            self.exchange.finish_reason = str_field(value, "finishReason") or self.exchange.finish_reason
            usage = value.get("usage")
            if isinstance(usage, dict):
                if isinstance(usage.get("promptTokens"), int):
                    self.exchange.usage.input_tokens = usage["promptTokens"]
                if isinstance(usage.get("completionTokens"), int):
                    self.exchange.usage.output_tokens = usage["completionTokens"]


PROVIDER = MistralWebProvider()
