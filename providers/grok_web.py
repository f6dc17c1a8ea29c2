"""Grok web app (grok.com): new conversations and follow-up responses. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). `POST /rest/app-chat/conversations/new` (follow-ups
`POST /rest/app-chat/conversations/{id}/responses` [UNCONFIRMED]) with the text in `message`, the model in
`modelName`, custom instructions in `customInstructions` and uploads referenced in `fileAttachments` /
`imageAttachments`. The answer is newline-delimited JSON: tokens at `result.response.token` (follow-ups:
`result.token`), reasoning tokens flagged `isThinking`; a closing `modelResponse.message` holds the whole answer and
wins when present.
"""

from __future__ import annotations

import re
from typing import Any

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import CompletionBuffer, HttpRequest, NdjsonParser, ResponseParser, json_body
from providers.webapp import SoftResponse, WebAppProvider, str_field

_CHAT = re.compile(r"^/rest/app-chat/conversations/(?:new|[^/]+/responses)$")


class GrokWebProvider(WebAppProvider):
    name = "grok-web"

    def operation(self, req: HttpRequest) -> str | None:
        return "conversation" if req.method == "POST" and _CHAT.match(req.path) else None

    def parse(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("message"), str):
            raise TypeError("no 'message' string")
        exchange.stream = True
        exchange.model = str_field(body, "modelName")
        if isinstance(body.get("customInstructions"), str) and body["customInstructions"]:
            exchange.system.append(TextPart(body["customInstructions"], ("customInstructions",)))
        message = Message("user", parts=[TextPart(body["message"], ("message",))])
        for key, kind in (("fileAttachments", "file"), ("imageAttachments", "image")):
            for ref in body.get(key) or []:
                name = ref if isinstance(ref, str) else str_field(ref, "fileName", "name", "fileMetadataId")
                message.attachments.append(Attachment(kind=kind, name=name[:300]))
        exchange.messages.append(message)

    def answer(self, exchange: Exchange) -> ResponseParser:
        return ResponseLines(exchange)


class ResponseLines(NdjsonParser):
    def __init__(self, exchange: Exchange):
        super().__init__(exchange, self._on_object, self._on_finish)
        self.soft = SoftResponse(exchange, "grok-web")
        self.text = CompletionBuffer(exchange)
        self.final = ""

    def feed(self, chunk: bytes) -> None:
        if chunk.strip():
            self.soft.saw_data()
        super().feed(chunk)

    def _on_object(self, obj: Any) -> None:
        result = obj["result"]
        if not isinstance(result, dict):
            raise TypeError("result is not an object")
        self.soft.understood()
        response = result.get("response") if isinstance(result.get("response"), dict) else result
        if isinstance(response.get("token"), str) and not response.get("isThinking"):
            self.text.add(response["token"])
        final = response.get("modelResponse")
        if isinstance(final, dict):
            self.final = str_field(final, "message") or self.final
            self.exchange.model = str_field(final, "model") or self.exchange.model
        if response.get("isSoftStop") is True or isinstance(final, dict):
            self.exchange.finish_reason = "stop"

    def _on_finish(self) -> None:
        self.exchange.completion = self.final or self.text.text()
        self.soft.conclude()


PROVIDER = GrokWebProvider()
