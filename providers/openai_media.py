"""OpenAI files, uploads, audio and images: the text fields they carry (prompts, speech input) and the files
they send, recorded as attachments (name, type, size; text extracted from text-like files).

Source [SDK]: openai-python (marks: docs/providers.md).
"""

from __future__ import annotations

from typing import Any

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import CompletionBuffer, HttpRequest, ResponseParser, SseParser
from providers.openai_chat import (Ignore, common, event_object, json_object, json_response, sse_or_json,
                                   upstream_error, usage)
from providers.uploads import Form, parse_form


def _form(req: HttpRequest, exchange: Exchange) -> Form:
    form = parse_form(req.body, req.headers.get("content-type", ""))
    if not form.complete:
        exchange.warn("multipart body truncated: parts after the cut not inspected")
    if form.field("model"):
        exchange.model = form.field("model") or ""
    exchange.stream = (form.field("stream") or "").strip().lower() == "true"
    return form


def _upload_message(form: Form, exchange: Exchange, kind: str = "") -> Message:
    """The user's turn: every `prompt` field (not addressable in a multipart body; a repeated one is read too, as
    the server may take either) and every file part."""
    message = Message(role="user", attachments=[p.attachment(kind, exchange.warn) for p in form.files()])
    message.parts.extend(TextPart(prompt) for prompt in form.fields("prompt") if prompt)
    return message


def parse_file(req: HttpRequest, exchange: Exchange) -> None:
    """`POST /files` (multipart `file` + `purpose`), also `/uploads/{id}/parts` (multipart `data`)."""
    exchange.messages.append(_upload_message(_form(req, exchange), exchange))


def parse_upload(req: HttpRequest, exchange: Exchange) -> None:
    """`POST /uploads` announces a large file: metadata only, the bytes follow in parts."""
    body = json_object(req, "upload", "filename")
    size = body.get("bytes")
    exchange.messages.append(Message(role="user", attachments=[Attachment(
        kind="file", name=str(body["filename"]), mime_type=str(body.get("mime_type") or ""),
        size=size if isinstance(size, int) else 0)]))


def parse_upload_complete(req: HttpRequest, exchange: Exchange) -> None:
    json_object(req, "upload completion", "part_ids")


def parse_transcription(req: HttpRequest, exchange: Exchange) -> None:
    """`/audio/transcriptions` and `/audio/translations`: the audio file and the free-text `prompt`."""
    exchange.messages.append(_upload_message(_form(req, exchange), exchange, "audio"))


def parse_speech(req: HttpRequest, exchange: Exchange) -> None:
    body = json_object(req, "speech", "input")
    common(body, exchange)
    if isinstance(body.get("instructions"), str):
        exchange.system.append(TextPart(body["instructions"], ("instructions",)))
    if isinstance(body["input"], str):
        exchange.messages.append(Message(role="user", parts=[TextPart(body["input"], ("input",))]))
    exchange.stream = body.get("stream_format") == "sse"


def parse_image_generation(req: HttpRequest, exchange: Exchange) -> None:
    body = json_object(req, "image generation", "prompt")
    common(body, exchange)
    if isinstance(body["prompt"], str):
        exchange.messages.append(Message(role="user", parts=[TextPart(body["prompt"], ("prompt",))]))


def parse_image_edit(req: HttpRequest, exchange: Exchange) -> None:
    """`/images/edits` and `/images/variations`: the images (and mask) as attachments, and the `prompt`."""
    exchange.messages.append(_upload_message(_form(req, exchange), exchange, "image"))


def transcription_response(data: dict[str, Any], exchange: Exchange) -> None:
    exchange.completion = str(data.get("text") or "")
    usage(exchange, data.get("usage"))


class TranscriptStream(SseParser):
    """`transcript.text.delta` events, then `transcript.text.done` with the whole text and usage."""

    def __init__(self, exchange: Exchange):
        super().__init__(exchange, self._on_event, self._on_finish)
        self.text = CompletionBuffer(exchange)
        self.done: str | None = None

    def _on_event(self, event: str, data: Any) -> None:
        data = event_object(data)
        if data is None or upstream_error(self.exchange, data):
            return
        if data.get("type") == "transcript.text.delta":
            self.text.add(data.get("delta"))
        elif data.get("type") == "transcript.text.done":
            self.done = data.get("text") if isinstance(data.get("text"), str) else None
            usage(self.exchange, data.get("usage"))

    def _on_finish(self) -> None:
        self.exchange.completion = self.done if self.done is not None else self.text.text()


class PlainText:
    """`response_format` text, srt or vtt: the body is the transcript itself."""

    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.text = CompletionBuffer(exchange)
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        cut = len(data) - 3 if len(data) > 3 else 0  # keep a UTF-8 sequence that may be split
        while cut > 0 and data[cut] & 0xC0 == 0x80:
            cut -= 1
        self.text.add(data[:cut].decode("utf-8", "replace"))
        self.tail = data[cut:]

    def finish(self) -> None:
        self.text.add(self.tail.decode("utf-8", "replace"))
        self.exchange.completion = self.text.text()


def transcription_responder(exchange: Exchange, content_type: str) -> ResponseParser:
    if content_type == "text/event-stream":
        return TranscriptStream(exchange)
    if content_type.startswith("text/"):
        return PlainText(exchange)
    return json_response(exchange, transcription_response)


def image_response(data: dict[str, Any], exchange: Exchange) -> None:
    """Images come back as URLs or base64; what is worth auditing is the rewritten prompt and the usage."""
    revised = [str(d["revised_prompt"]) for d in data.get("data") or []
               if isinstance(d, dict) and d.get("revised_prompt")]
    exchange.completion = "\n".join(revised)
    usage(exchange, data.get("usage"))


class ImageStream(SseParser):
    """`image_generation.partial_image` / `.completed` (and the `image_edit.*` twins): usage on completion."""

    def __init__(self, exchange: Exchange):
        super().__init__(exchange, self._on_event)

    def _on_event(self, event: str, data: Any) -> None:
        if isinstance(data, dict) and not upstream_error(self.exchange, data):
            if str(data.get("type", "")).endswith(".completed"):
                usage(self.exchange, data.get("usage"))


image_responder = sse_or_json(ImageStream, image_response)


def metadata_responder(exchange: Exchange, content_type: str) -> ResponseParser:
    """Files, uploads, speech: the response is an id or audio bytes, nothing a person wrote."""
    if content_type == "application/json":
        return json_response(exchange, lambda data, x: None)
    return Ignore()
