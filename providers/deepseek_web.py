"""DeepSeek web app (chat.deepseek.com): chat completion. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). `POST /api/v0/chat/completion` (also `edit_message`, `regenerate`-style
`continue`) with the text in `prompt` and uploaded files referenced by id in `ref_file_ids`. The SSE answer starts
with `event: ready`, then JSON-patch-like `{v, p, o}` frames (`webapp.PatchDocument`): a first snapshot
`{"v": {"response": {...}}}`, then appends to `response/fragments/-1/content`; fragments are typed RESPONSE
(the answer), THINK (reasoning) or SEARCH. Older builds appended to `response/content` directly. Ends with
`event: close`. Files go up as multipart to `POST /api/v0/file/upload_file` [UNCONFIRMED path].
"""

from __future__ import annotations

from typing import Any

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import MAX_COMPLETION_CHARS, HttpRequest, ResponseParser
from providers.webapp import PatchDocument, SoftSseParser, WebAppProvider, str_field, unparsed


class DeepSeekWebProvider(WebAppProvider):
    name = "deepseek-web"
    paths = {"/api/v0/chat/completion": "conversation", "/api/v0/chat/edit_message": "conversation",
             "/api/v0/chat/continue": "conversation", "/api/v0/chat/regenerate": "conversation",
             "/api/v0/file/upload_file": "upload"}

    def prompt(self, req: HttpRequest, body: dict[str, Any], exchange: Exchange) -> None:
        exchange.model = str_field(body, "model_type", "model")
        if body.get("thinking_enabled") is True and not exchange.model:
            exchange.model = "thinking"
        prompt = body.get("prompt")
        if prompt is None and req.path.endswith(("/continue", "/regenerate")):
            return
        if not isinstance(prompt, str):
            raise TypeError("no 'prompt' string")
        message = Message("user", parts=[TextPart(prompt, ("prompt",))])
        for ref in body.get("ref_file_ids") or []:
            if isinstance(ref, str):
                message.attachments.append(Attachment(kind="file", name=ref))
        exchange.messages.append(message)

    def answer(self, exchange: Exchange) -> ResponseParser:
        return CompletionStream(exchange)


class CompletionStream(SoftSseParser):
    def __init__(self, exchange: Exchange):
        super().__init__(exchange, "deepseek-web", self._on_event, self._on_finish)
        self.doc = PatchDocument(exchange)
        self.legacy: list[str] = []  # OpenAI-like `choices[].delta.content` frames of the first builds

    def _on_event(self, event: str, data: Any) -> None:
        if event in ("ready", "close", "update_session", "title", "toast") or data == "[DONE]":
            self.soft.understood()
            return
        if not isinstance(data, dict):
            raise TypeError("frame is not an object")
        if "v" in data:
            self.soft.understood()
            self.doc.apply_frame(data)
        elif isinstance(data.get("choices"), list):
            self.soft.understood()
            for choice in data["choices"]:
                delta = choice.get("delta") or {}
                if isinstance(delta.get("content"), str) and delta.get("type", "text") == "text":
                    self.legacy.append(delta["content"])
        else:
            raise TypeError("unknown frame")

    def _on_finish(self) -> None:
        response = self.doc.resolve("response")
        text = ""
        if isinstance(response, dict):
            fragments = response.get("fragments")
            if isinstance(fragments, list):
                text = "".join(f["content"] for f in fragments if isinstance(f, dict)
                               and f.get("type") == "RESPONSE" and isinstance(f.get("content"), str))
            elif isinstance(response.get("content"), str):
                text = response["content"]
            status = response.get("status") or response.get("quasi_status")
            if isinstance(status, str):
                self.exchange.finish_reason = status.lower()
            usage = response.get("accumulated_token_usage")
            if isinstance(usage, int):
                self.exchange.usage.output_tokens = usage
        elif self.doc.doc is not None and not self.legacy:
            unparsed(self.exchange, "deepseek-web: the stream has no 'response' document")
        self.exchange.completion = (text or "".join(self.legacy))[:MAX_COMPLETION_CHARS]
        if self.doc.bad_ops:
            self.exchange.warn(f"deepseek-web: {self.doc.bad_ops} stream operations not understood")


PROVIDER = DeepSeekWebProvider()
