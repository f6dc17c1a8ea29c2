"""OpenAI wire format, on api.openai.com, its regional hosts, Azure OpenAI / Foundry, and every OpenAI-compatible
host (Groq, Together, Fireworks, DeepSeek, xAI, Perplexity, OpenRouter, Cerebras, Hugging Face router, Mistral).

Recognition is by the END of the path plus the body's shape, never by host: compatible hosts put the API under
their own prefixes (`/openai/v1`, `/inference/v1`, `/api/v1`, none at all), and Azure puts a deployment in it
(`/openai/deployments/{name}/chat/completions`, where the deployment name is the model when the body has none).
Paths that only OpenAI uses (`/chat/completions`, `/responses`, `/embeddings`, `/completions`) are claimed by path
alone, so a malformed body there is audited as an unparsed OpenAI exchange; generic paths (`/files`, `/threads`,
`/audio/...`) are claimed only when the body has the expected shape (JSON object, or multipart for uploads), so
another vendor's `/files` is left to its own parser.

The operations live in providers/openai_*.py (one module per API family); this module routes to them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from core.exchange import Exchange
from providers import openai_assistants as assistants
from providers import openai_chat as chat
from providers import openai_media as media
from providers import openai_responses as responses
from providers.base import HttpRequest, ResponseParser
# Re-exported for the parsers of formats that embed OpenAI chat (Mistral, Bedrock's OpenAI-style bodies).
from providers.openai_chat import ChatStream, chat_response  # noqa: F401


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    path: re.Pattern[str]  # searched at the end of the path
    parse: Callable[[HttpRequest, Exchange], None]
    responder: Callable[[Exchange, str], ResponseParser]
    shape: str = "path"  # path: claimed by path alone | json: needs a JSON object body | multipart


def _op(name: str, suffix: str, parse, responder, shape: str = "path") -> Operation:
    return Operation(name, re.compile(f"/{suffix}$"), parse, responder, shape)


_SEG = "[^/]+"
OPERATIONS: tuple[Operation, ...] = (
    _op("chat.completions", "chat/completions", chat.parse_chat, chat.chat_responder),
    _op("completions", "completions", chat.parse_completions, chat.completions_responder),
    _op("responses", "responses", responses.parse_request, responses.responder),
    _op("responses.input_tokens", "responses/input_tokens", responses.parse_request,
        responses.input_tokens_responder),
    _op("embeddings", "embeddings", chat.parse_embeddings, chat.embeddings_responder),
    _op("assistants", f"assistants(?:/{_SEG})?", assistants.parse_assistant, assistants.responder, "json"),
    _op("threads", "threads", assistants.parse_thread, assistants.responder, "json"),
    _op("threads.messages", f"threads/{_SEG}/messages", assistants.parse_message, assistants.responder, "json"),
    _op("threads.runs", f"threads(?:/{_SEG})?/runs", assistants.parse_run, assistants.responder, "json"),
    _op("threads.runs.submit_tool_outputs", f"threads/{_SEG}/runs/{_SEG}/submit_tool_outputs",
        assistants.parse_tool_outputs, assistants.responder, "json"),
    _op("files", "files", media.parse_file, media.metadata_responder, "multipart"),
    _op("uploads", "uploads", media.parse_upload, media.metadata_responder, "json"),
    _op("uploads.parts", f"uploads/{_SEG}/parts", media.parse_file, media.metadata_responder, "multipart"),
    _op("uploads.complete", f"uploads/{_SEG}/complete", media.parse_upload_complete, media.metadata_responder,
        "json"),
    _op("audio.transcriptions", "audio/transcriptions", media.parse_transcription, media.transcription_responder,
        "multipart"),
    _op("audio.translations", "audio/translations", media.parse_transcription, media.transcription_responder,
        "multipart"),
    _op("audio.speech", "audio/speech", media.parse_speech, media.metadata_responder, "json"),
    _op("images.generations", "images/generations", media.parse_image_generation, media.image_responder, "json"),
    _op("images.edits", "images/edits", media.parse_image_edit, media.image_responder, "multipart"),
    _op("images.variations", "images/variations", media.parse_image_edit, media.image_responder, "multipart"),
)
BY_NAME = {op.name: op for op in OPERATIONS}
_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")


def _has_shape(op: Operation, req: HttpRequest) -> bool:
    if op.shape == "multipart":
        return req.content_type == "multipart/form-data"
    if op.shape == "json":
        return req.body.lstrip()[:1] == b"{"
    return True


def deployment(path: str) -> str:
    """The Azure deployment named in the path ("" if none)."""
    m = _DEPLOYMENT.search(path)
    return unquote(m.group(1)) if m else ""


class OpenAIProvider:
    name = "openai"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if req.method != "POST":
            return None
        path = req.path.rstrip("/")
        for op in OPERATIONS:
            if op.path.search(path) and _has_shape(op, req):
                return op.name
        return None

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        name = deployment(req.path)
        if name:
            exchange.model = name  # the body's model, if any, wins below
        BY_NAME[operation].parse(req, exchange)

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        return BY_NAME[exchange.operation].responder(exchange, content_type)


PROVIDER = OpenAIProvider()
