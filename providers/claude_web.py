"""Claude web app (claude.ai): sending a message. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). `POST /api/organizations/{org}/chat_conversations/{conv}/completion` (and
`retry_completion`) with the user text in `prompt`; documents converted in the browser travel as
`attachments[].extracted_content` and are inspected as text (with their JSON path, so redaction can rewrite them);
uploaded files are only referenced by id in `files[]` and are not inspected here; their uploads (multipart
`POST /api/convert_document`, `/api/{org}/upload` [UNCONFIRMED]) are read as attachments, text-like files
extracted. The 2023 body nested the prompt
under `completion`. The answer is SSE with the Anthropic API's events (`content_block_delta` text deltas,
`message_delta` stop reason); the very old stream sent `{completion: "<delta>", stop_reason, model}` frames.
"""

from __future__ import annotations

import re
from typing import Any

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import CompletionBuffer, HttpRequest, ResponseParser
from providers.uploads import kind_of
from providers.webapp import SoftSseParser, WebAppProvider, str_field

_COMPLETION = re.compile(r"^/api/organizations/[^/]+/chat_conversations/[^/]+/(?:retry_)?completion$")
_UPLOAD = re.compile(r"^/api/(?:convert_document|[^/]+/upload)$")


class ClaudeWebProvider(WebAppProvider):
    name = "claude-web"

    def operation(self, req: HttpRequest) -> str | None:
        if req.method != "POST":
            return None
        if _COMPLETION.match(req.path):
            return "conversation"
        return "upload" if _UPLOAD.match(req.path) else None

    def prompt(self, req: HttpRequest, body: dict[str, Any], exchange: Exchange) -> None:
        base: tuple = ()
        if "prompt" not in body and isinstance(body.get("completion"), dict):  # 2023 shape
            body, base = body["completion"] | {"attachments": body.get("attachments")}, ("completion",)
        exchange.model = str_field(body, "model")
        message = Message("user")
        if isinstance(body.get("prompt"), str):
            message.parts.append(TextPart(body["prompt"], (*base, "prompt")))
        elif not body.get("prompt") and "retry" in req.path:
            pass  # a retry resends nothing new
        else:
            raise TypeError("no 'prompt' string")
        for i, att in enumerate(body.get("attachments") or []):
            if not isinstance(att, dict):
                continue
            name, mime = str_field(att, "file_name"), str_field(att, "file_type")
            text = att.get("extracted_content")
            if isinstance(text, str) and text:
                message.parts.append(TextPart(text, ("attachments", i, "extracted_content")))
            message.attachments.append(Attachment(kind="file", name=name, mime_type=mime,
                                                  size=att["file_size"] if isinstance(att.get("file_size"), int)
                                                  else len(text or ""), inspected=isinstance(text, str)))
        for ref in body.get("files") or []:
            name = ref if isinstance(ref, str) else str_field(ref, "file_name", "file_uuid", "uuid")
            kind = kind_of(str_field(ref, "file_kind", "mime_type")) if isinstance(ref, dict) else "file"
            message.attachments.append(Attachment(kind=kind, name=name))
        for i, style in enumerate(body.get("personalized_styles") or []):
            if isinstance(style, dict) and isinstance(style.get("prompt"), str):
                exchange.system.append(TextPart(style["prompt"], ("personalized_styles", i, "prompt")))
        exchange.messages.append(message)

    def answer(self, exchange: Exchange) -> ResponseParser:
        return CompletionStream(exchange)


class CompletionStream(SoftSseParser):
    def __init__(self, exchange: Exchange):
        super().__init__(exchange, "claude-web", self._on_event, self._on_finish)
        self.text = CompletionBuffer(exchange)

    def _on_event(self, event: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise TypeError("frame is not an object")
        kind = data.get("type") or event
        if kind == "message_start":
            self.exchange.model = str_field(data.get("message"), "model") or self.exchange.model
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text.add(delta.get("text"))
        elif kind == "message_delta":
            self.exchange.finish_reason = str_field(data.get("delta"), "stop_reason") or self.exchange.finish_reason
        elif kind == "error":
            self.exchange.warn(f"claude-web: stream error: {str(data.get('error'))[:300]}")
        elif isinstance(data.get("completion"), str):  # the very old stream: completion deltas
            self.text.add(data["completion"])
            self.exchange.finish_reason = str_field(data, "stop_reason") or self.exchange.finish_reason
            self.exchange.model = str_field(data, "model") or self.exchange.model
        elif kind not in ("content_block_start", "content_block_stop", "message_stop", "message_limit", "ping"):
            raise TypeError(f"unknown event {kind!r}")
        self.soft.understood()

    def _on_finish(self) -> None:
        self.exchange.completion = self.text.text()


PROVIDER = ClaudeWebProvider()
