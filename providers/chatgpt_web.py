"""ChatGPT web app (chatgpt.com, chat.openai.com): conversations and file uploads. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). A prompt is `POST /backend-api/f/conversation` (older
`/backend-api/conversation`, logged out `/backend-anon/conversation`); the answer is SSE, either the modern
"delta encoding v1" (JSON-patch-like `{p, o, v}` frames, see `webapp.PatchDocument`, one document per channel `c`)
or the legacy stream of whole-message snapshots. Both can interleave typed frames (`message_stream_complete`,
`title_generation`, ...), which are skipped.

Uploads are three requests: `POST /backend-api/files` announces name, type and size; the bytes go by `PUT` to a
signed URL on `*.oaiusercontent.com` (where a text-like file's content is extracted for DLP); then
`POST /backend-api/files/process_upload_stream` (or the older `.../files/{id}/uploaded`) links it to the chat.

The Codex backend (`/backend-api/codex/responses`) is an OpenAI Responses API body: this provider does not claim
it, so the registry hands it to the OpenAI provider, which the catalog also hints for ChatGPT hosts.
"""

from __future__ import annotations

import re
from typing import Any

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import CompletionBuffer, HttpRequest, ResponseParser, json_body
from providers.uploads import file_attachment, kind_of
from providers.webapp import PatchDocument, SoftSseParser, WebAppProvider, str_field, unparsed

_CONVERSATION = re.compile(r"^/(?:backend-api(?:/f)?|backend-anon|unauth-mweb)/conversation(?:/updates)?$")
_UPLOADED = re.compile(r"^/backend-api/files/[^/]+/uploaded$")


class ChatGPTWebProvider(WebAppProvider):
    name = "chatgpt-web"

    def operation(self, req: HttpRequest) -> str | None:
        if req.host == "oaiusercontent.com" or req.host.endswith(".oaiusercontent.com"):
            return "upload.content" if req.method in ("PUT", "POST") else None
        if req.method != "POST":
            return None
        if _CONVERSATION.match(req.path):
            return "conversation"
        if req.path == "/backend-api/files":
            return "upload"
        if req.path == "/backend-api/files/process_upload_stream" or _UPLOADED.match(req.path):
            return "upload.process"
        return None

    def parse(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        if operation == "upload.content":
            name = req.path.rstrip("/").rsplit("/", 1)[-1]
            exchange.messages.append(Message("user", attachments=[
                file_attachment(name, req.content_type, len(req.body), req.body)]))
            return
        body = json_body(req)
        if not isinstance(body, dict):
            raise TypeError("body is not a JSON object")
        if operation == "upload":
            mime = str_field(body, "mime_type")
            exchange.messages.append(Message("user", attachments=[Attachment(
                kind=kind_of(mime), name=str_field(body, "file_name"), mime_type=mime,
                size=_int(body.get("file_size")))]))
            return
        if operation == "upload.process":
            exchange.messages.append(Message("user", attachments=[Attachment(
                kind="file", name=str_field(body, "file_name") or str_field(body, "file_id"))]))
            return
        exchange.model = str_field(body, "model")
        exchange.stream = True
        messages = body.get("messages")
        if messages is None and body.get("action") in ("variant", "continue"):
            return  # regenerate / continue: nothing new is sent
        if not isinstance(messages, list):
            raise TypeError("no 'messages' list")
        for i, raw in enumerate(messages):
            exchange.messages.append(_message(raw, ("messages", i), exchange))

    def answer(self, exchange: Exchange) -> ResponseParser:
        return ConversationStream(exchange)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _message(raw: Any, path: tuple, exchange: Exchange) -> Message:
    if not isinstance(raw, dict):
        raise TypeError(f"{'/'.join(map(str, path))}: not an object")
    author = raw.get("author") if isinstance(raw.get("author"), dict) else {}
    message = Message(role=str_field(author, "role") or "user")
    content = raw.get("content") if isinstance(raw.get("content"), dict) else {}
    parts = content.get("parts")
    if isinstance(parts, list):
        for j, part in enumerate(parts):
            if isinstance(part, str):
                message.parts.append(TextPart(part, (*path, "content", "parts", j)))
            elif isinstance(part, dict) and part.get("content_type") == "image_asset_pointer":
                message.attachments.append(Attachment(kind="image", name=str_field(part, "asset_pointer"),
                                                      size=_int(part.get("size_bytes"))))
    elif isinstance(content.get("text"), str):  # content_type "code" and friends
        message.parts.append(TextPart(content["text"], (*path, "content", "text")))
    else:
        unparsed(exchange, f"{'/'.join(map(str, path))}: content type {content.get('content_type')!r} not understood")
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    pointers = {a.name for a in message.attachments}
    for att in metadata.get("attachments") or []:
        if isinstance(att, dict) and f"file-service://{att.get('id')}" not in pointers:
            mime = str_field(att, "mime_type")
            message.attachments.append(Attachment(kind=kind_of(mime), name=str_field(att, "name", "id"),
                                                  mime_type=mime, size=_int(att.get("size"))))
    return message


class ConversationStream(SoftSseParser):
    """Reassembles the answer from either stream generation. Messages are collected by id (snapshots replace
    earlier snapshots of the same message); a delta-encoded channel's document is filed under its message id each
    time a new document replaces it and at the end."""

    def __init__(self, exchange: Exchange):
        super().__init__(exchange, "chatgpt-web", self._on_event, self._on_finish)
        self.channels: dict[Any, PatchDocument] = {}
        self.channel: Any = 0
        self.messages: dict[str, dict] = {}

    def _on_event(self, event: str, data: Any) -> None:
        if event == "delta_encoding" or data == "[DONE]":
            self.soft.understood()
            return
        if not isinstance(data, dict):
            raise TypeError("frame is not an object")
        if isinstance(data.get("error"), str) and data["error"]:
            self.exchange.warn(f"chatgpt-web: stream error: {data['error'][:300]}")
        if "v" in data and "type" not in data:
            self._patch(data)
        elif isinstance(data.get("message"), dict):
            self.soft.understood()
            self._file(data["message"])
        elif isinstance(data.get("type"), str):
            self.soft.understood()  # typed frames: input_message, title_generation, message_stream_complete, ...
            if data["type"] == "stream_handoff":
                self.exchange.warn("chatgpt-web: the answer continues over a WebSocket topic (stream_handoff); "
                                   "what follows is not in this event")
        else:
            raise TypeError("unknown frame")

    def _patch(self, data: dict) -> None:
        self.soft.understood()
        if "c" in data:
            self.channel = data["c"] if isinstance(data["c"], (int, str)) else 0
        doc = self.channels.get(self.channel)
        if doc is None:
            doc = self.channels[self.channel] = PatchDocument(self.exchange)
        replaces_root = not str(data.get("p") or "").strip("/") and str(data.get("o") or "add") in ("add", "replace")
        if replaces_root and ("p" in data or "o" in data) and isinstance(doc.doc, dict):
            self._file(doc.doc.get("message"))
        doc.apply_frame(data)

    def _file(self, message: Any) -> None:
        if isinstance(message, dict):
            self.messages[str(message.get("id") or len(self.messages))] = message

    def _on_finish(self) -> None:
        bad = 0
        for doc in self.channels.values():
            bad += doc.bad_ops
            if isinstance(doc.doc, dict):
                self._file(doc.doc.get("message"))
        if bad:
            self.exchange.warn(f"chatgpt-web: {bad} stream operations not understood")
        text = CompletionBuffer(self.exchange)
        for message in self.messages.values():
            self._read(message, text)
        self.exchange.completion = text.text()

    def _read(self, message: dict, text: CompletionBuffer) -> None:
        author = message.get("author") if isinstance(message.get("author"), dict) else {}
        content = message.get("content") if isinstance(message.get("content"), dict) else {}
        metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
        if author.get("role") != "assistant" or message.get("recipient", "all") != "all":
            return
        model = str_field(metadata, "resolved_model_slug", "model_slug")
        if model:
            self.exchange.model = model
        details = metadata.get("finish_details")
        if isinstance(details, dict) and isinstance(details.get("type"), str):
            self.exchange.finish_reason = details["type"]
        if content.get("content_type") not in ("text", "multimodal_text"):
            return  # thoughts, code, tool output: not the answer the user reads
        parts = [p for p in content.get("parts") or [] if isinstance(p, str) and p]
        if parts:
            if text.size:
                text.add("\n")
            text.add("".join(parts))


PROVIDER = ChatGPTWebProvider()
