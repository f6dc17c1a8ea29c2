"""Perplexity web app (www.perplexity.ai): perplexity_ask. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). `POST /rest/sse/perplexity_ask` with the question in `query_str` and the
rest under `params` (`model_preference`, `attachments` as URLs). The SSE frames repeat the answer as it grows:
`blocks[]` whose `markdown_block` has the `answer` so far (or `chunks`), and in newer builds `diff_block` patches
[UNCONFIRMED] to the same block; older frames carry `answer` or a JSON `text`. The last non-empty answer wins.
"""

from __future__ import annotations

from typing import Any

import orjson

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import MAX_COMPLETION_CHARS, HttpRequest, ResponseParser, json_body
from providers.webapp import SoftSseParser, WebAppProvider, str_field


class PerplexityWebProvider(WebAppProvider):
    name = "perplexity-web"
    paths = {"/rest/sse/perplexity_ask": "conversation"}

    def parse(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("query_str"), str):
            raise TypeError("no 'query_str' string")
        exchange.stream = True
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        exchange.model = str_field(params, "model_preference")
        message = Message("user", parts=[TextPart(body["query_str"], ("query_str",))])
        for url in params.get("attachments") or []:
            if isinstance(url, str):
                message.attachments.append(Attachment(kind="file", name=url[:300]))
        exchange.messages.append(message)

    def answer(self, exchange: Exchange) -> ResponseParser:
        return AskStream(exchange)


class AskStream(SoftSseParser):
    def __init__(self, exchange: Exchange):
        super().__init__(exchange, "perplexity-web", self._on_event, self._on_finish)
        self.answer = ""
        self.chunks: list[str] = []

    def _on_event(self, event: str, data: Any) -> None:
        if event == "end_of_stream" or data in ("", "[DONE]", "{}"):
            self.soft.understood()
            return
        if not isinstance(data, dict):
            raise TypeError("frame is not an object")
        self.soft.understood()
        if data.get("display_model"):
            self.exchange.model = str(data["display_model"])
        if data.get("status") in ("COMPLETED", "completed"):
            self.exchange.finish_reason = "completed"
        for block in data.get("blocks") or []:
            if isinstance(block, dict):
                self._block(block)
        if isinstance(data.get("answer"), str) and data["answer"]:
            self._set(data["answer"])
        elif isinstance(data.get("text"), str) and data["text"].startswith(("[", "{")):
            self._legacy_text(data["text"])

    def _block(self, block: dict) -> None:
        markdown = block.get("markdown_block")
        if isinstance(markdown, dict):
            if isinstance(markdown.get("answer"), str) and markdown["answer"]:
                self._set(markdown["answer"])
            elif isinstance(markdown.get("chunks"), list):
                self.chunks = [c for c in markdown["chunks"] if isinstance(c, str)]
        diff = block.get("diff_block")
        if isinstance(diff, dict) and diff.get("field") == "markdown_block":
            for patch in diff.get("patches") or []:
                if not isinstance(patch, dict):
                    continue
                path, value = str(patch.get("path") or ""), patch.get("value")
                if path == "/answer" and isinstance(value, str):
                    self._set(value)
                elif path.startswith("/chunks") and isinstance(value, str):
                    self.chunks.append(value)
                elif path in ("", "/") and isinstance(value, dict):
                    self._block({"markdown_block": value})

    def _legacy_text(self, text: str) -> None:
        try:
            steps = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        for step in steps if isinstance(steps, list) else [steps]:
            content = step.get("content") if isinstance(step, dict) else None
            answer = content.get("answer") if isinstance(content, dict) else None
            if isinstance(answer, str):
                try:
                    answer = str_field(orjson.loads(answer), "answer") or answer
                except orjson.JSONDecodeError:
                    pass
                self._set(answer)

    def _set(self, answer: str) -> None:
        self.answer = answer[:MAX_COMPLETION_CHARS]

    def _on_finish(self) -> None:
        self.exchange.completion = self.answer or "".join(self.chunks)[:MAX_COMPLETION_CHARS]


PROVIDER = PerplexityWebProvider()
