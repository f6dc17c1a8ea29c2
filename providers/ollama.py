"""Ollama native API: /api/chat, /api/generate, /api/embed (and the legacy /api/embeddings).

Source [SDK]: Ollama's server routes (marks: docs/providers.md). Streaming is the DEFAULT in Ollama: a body without
`"stream": false` gets an NDJSON stream (one JSON object per line, the last with `done: true` and the token counts).
The same reader folds the streamed objects and the single non-streamed object, which has the same shape.

The paths are generic (`/api/chat` exists elsewhere), so a request is claimed only with the catalog's `ollama`
hint or a body that names a model.
"""

from __future__ import annotations

from typing import Any

import orjson

from core.exchange import Attachment, Exchange, Message, TextPart, ToolCall, ToolResult
from providers import openai_chat, uploads
from providers.base import (BodyError, BufferedJson, HttpRequest, NdjsonParser, Reassembly, ResponseParser, json_body,
                            objects, tool_call)

_PATHS = {"/api/chat": "chat", "/api/generate": "generate", "/api/embed": "embed", "/api/embeddings": "embed"}


class OllamaProvider:
    name = "ollama"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        operation = _PATHS.get(req.path.rstrip("/")) if req.method == "POST" else None
        if operation and ("ollama" in hints or b'"model"' in req.body):
            return operation
        return None

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        if not isinstance(body, dict):
            raise BodyError("Ollama body must be a JSON object")
        exchange.model = str(body.get("model") or "")
        exchange.stream = operation != "embed" and body.get("stream") is not False
        if operation == "chat":
            _chat(body, exchange)
        elif operation == "generate":
            if not isinstance(body.get("prompt", ""), str):
                raise BodyError("generate body 'prompt' must be a string")
            if isinstance(body.get("system"), str):
                exchange.system.append(TextPart(body["system"], ("system",)))
            message = Message("user", [TextPart(body["prompt"], ("prompt",))] if body.get("prompt") else [])
            if isinstance(body.get("suffix"), str) and body["suffix"]:
                message.parts.append(TextPart(body["suffix"], ("suffix",)))
            message.attachments = _images(body.get("images"))
            exchange.messages.append(message)
        else:
            inputs = body.get("input", body.get("prompt"))
            if isinstance(inputs, str):
                parts = [TextPart(inputs, ("input" if "input" in body else "prompt",))]
            elif isinstance(inputs, list):
                parts = [TextPart(t, ("input", i)) for i, t in enumerate(inputs) if isinstance(t, str)]
            else:
                raise BodyError("embed body needs 'input'")
            exchange.messages.append(Message("user", parts))

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        reader = ResponseReader(exchange)
        if content_type == "application/json":
            return BufferedJson(exchange, lambda data: (reader.add(data), reader.done()))
        return NdjsonParser(exchange, reader.add, reader.done)


def _chat(body: dict[str, Any], exchange: Exchange) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BodyError("chat body needs a 'messages' list")
    for i, raw in objects(messages, "messages", exchange):
        role = str(raw.get("role", ""))
        parts = [TextPart(raw["content"], ("messages", i, "content"))] if isinstance(raw.get("content"), str) \
            and raw["content"] else []
        if role == "system":
            exchange.system.extend(parts)
            continue
        message = Message(role, parts, _images(raw.get("images")))
        message.tool_calls = [tool_call(str(fn.get("name", "")), fn.get("arguments"), at)  # arguments: an object here
                              for _, fn, at in openai_chat.function_calls(raw, ("messages", i))]
        if role == "tool":
            message.tool_results.append(ToolResult(str(raw.get("tool_call_id") or raw.get("tool_name") or ""),
                                                   message.text, ("messages", i, "content") if parts else None))
            message.parts = []
        exchange.messages.append(message)
    openai_chat.function_definitions(body.get("tools"), exchange)


def _images(images: Any) -> list[Attachment]:
    return [uploads.base64_attachment(img, "", "", "image") for img in images or [] if isinstance(img, str)] \
        if isinstance(images, list) else []


def _args(arguments: Any) -> str:
    """Ollama sends tool arguments as an object; the model keeps them as JSON text."""
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments, default=str).decode()


class ResponseReader(Reassembly):
    """Folds chat (`message.content`, `message.tool_calls`) and generate (`response`) objects; thinking text is
    not part of the answer. The `done` object carries `done_reason` and the token counts."""

    def add(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        ex = self.exchange
        if data.get("error"):
            ex.warn(f"upstream error: {str(data['error'])[:500]}")
            return
        message = data.get("message")
        if isinstance(message, dict):
            self.text.add(message.get("content") if isinstance(message.get("content"), str) else None)
            for tc in message.get("tool_calls") or []:
                fn = tc.get("function") or {}
                ex.completion_tool_calls.append(ToolCall(str(fn.get("name", "")), _args(fn.get("arguments"))))
        elif isinstance(data.get("response"), str):
            self.text.add(data["response"])
        if data.get("model"):
            ex.model = str(data["model"])
        if data.get("done"):
            ex.finish_reason = str(data.get("done_reason") or "stop")
        if isinstance(data.get("prompt_eval_count"), int):
            ex.usage.input_tokens = data["prompt_eval_count"]
        if isinstance(data.get("eval_count"), int):
            ex.usage.output_tokens = data["eval_count"]


PROVIDER = OllamaProvider()
