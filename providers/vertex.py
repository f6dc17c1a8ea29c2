"""Vertex AI partner models other than Gemini and Claude: Mistral, Codestral, Llama and other publishers'
models served at `…/publishers/{publisher}/models/{model}:rawPredict` (or `:streamRawPredict`).

This path form is [UNCONFIRMED] per publisher (marks: docs/providers.md). Their bodies are the publisher's own API,
which for these publishers is the OpenAI chat format (`messages`, or `prompt` + `suffix` for fill-in-the-middle), so
the OpenAI parsers read them; this module only moves the model and the stream flag from the URL. Gemini
(`publishers/google`) is read by providers/gemini.py and Claude (`publishers/anthropic`) by providers/anthropic.py.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from core.exchange import Exchange
from providers import openai_chat
from providers.base import HttpRequest, ResponseParser

_PATH = re.compile(r"/publishers/(?P<publisher>[^/]+)/models/(?P<model>[^/:]+):(?P<verb>rawPredict|streamRawPredict)$")


class VertexPartnerProvider:
    name = "vertex"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        m = _PATH.search(req.path) if req.method == "POST" else None
        if m is None or m["publisher"] in ("anthropic", "google"):
            return None
        return "completions" if b'"messages"' not in req.body else "chat.completions"

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        m = _PATH.search(req.path)
        assert m is not None  # recognises() matched it
        if operation == "chat.completions":
            openai_chat.parse_chat(req, exchange)
        else:
            openai_chat.parse_completions(req, exchange)
        exchange.model = exchange.model or unquote(m["model"])
        exchange.stream = exchange.stream or m["verb"] == "streamRawPredict"

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        if exchange.operation == "chat.completions":
            return openai_chat.chat_responder(exchange, content_type)
        return openai_chat.completions_responder(exchange, content_type)


PROVIDER = VertexPartnerProvider()
