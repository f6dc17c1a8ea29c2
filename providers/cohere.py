"""Cohere wire formats: v2 chat (OpenAI-like messages, SSE stream of typed events), v1 chat (`message`,
`preamble`, `chat_history`; NDJSON stream), v1/v2 embed.

Source [SDK]: cohere-python (marks: docs/providers.md). The v1 chat body and its stream events are also what Cohere
Command models take and send on Bedrock's InvokeModel, so providers/bedrock.py uses `parse_v1_chat`, `v1_response`
and `V1StreamReader` from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from core.exchange import Exchange, Message, TextPart, ToolCall, ToolDefinition, ToolResult
from providers import openai_chat, uploads
from providers.base import (BodyError, BufferedJson, HttpRequest, NdjsonParser, Reassembly, ResponseParser, SseParser,
                            json_body, objects, text_parts, tool_call)

_PATHS = {"/v2/chat": "v2.chat", "/v1/chat": "v1.chat", "/v2/embed": "v2.embed", "/v1/embed": "v1.embed",
          "/v1/generate": "v1.generate"}
_SHAPES = {"v2.chat": (b'"messages"',), "v1.chat": (b'"message"',), "v1.generate": (b'"prompt"',),
           "v1.embed": (b'"texts"', b'"images"', b'"inputs"'), "v2.embed": (b'"texts"', b'"images"', b'"inputs"')}
_V1_ROLES = {"USER": "user", "CHATBOT": "assistant", "SYSTEM": "system", "TOOL": "tool"}


class CohereProvider:
    name = "cohere"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        operation = _PATHS.get(req.path.rstrip("/")) if req.method == "POST" else None
        if operation is None or "cohere" in hints:
            return operation
        # another host: claim the path only with Cohere's body shape, so a stranger's /v1/chat is not called
        # a malformed Cohere request (which the parse-error policy may block)
        return operation if any(key in req.body for key in _SHAPES[operation]) else None

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        if not isinstance(body, dict):
            raise BodyError("Cohere body must be a JSON object")
        exchange.model = str(body.get("model") or "")
        exchange.stream = body.get("stream") is True
        if operation == "v2.chat":
            _parse_v2_chat(body, exchange)
        elif operation == "v1.chat":
            parse_v1_chat(body, exchange)
        elif operation == "v1.generate":
            if not isinstance(body.get("prompt"), str):
                raise BodyError("generate body needs a 'prompt' string")
            exchange.messages.append(Message("user", [TextPart(body["prompt"], ("prompt",))]))
        else:
            _parse_embed(body, exchange)

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        if exchange.operation == "v2.chat":
            if content_type == "text/event-stream":
                reader = V2StreamReader(exchange)
                return SseParser(exchange, lambda _event, data: reader.add(data), reader.done)
            return BufferedJson(exchange, lambda data: v2_response(data, exchange))
        if exchange.operation in ("v1.chat", "v1.generate"):
            if exchange.stream and content_type != "application/json":
                v1 = V1StreamReader(exchange)
                return NdjsonParser(exchange, v1.add, v1.done)
            return BufferedJson(exchange, lambda data: v1_response(data, exchange))
        return BufferedJson(exchange, lambda data: _meta_usage(data.get("meta"), exchange))


def _parse_v2_chat(body: dict[str, Any], exchange: Exchange) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BodyError("v2 chat body needs a 'messages' list")
    for i, raw in objects(messages, "messages", exchange):
        path = ("messages", i)
        role = str(raw.get("role", ""))
        content = raw.get("content")
        parts = text_parts(content, (*path, "content"), exchange)
        if role == "system":
            exchange.system.extend(parts)
            continue
        message = Message(role=role, parts=parts)
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":  # OpenAI-shaped image part
                    message.attachments.append(openai_chat.content_attachment(part))
        if isinstance(raw.get("tool_plan"), str):
            message.parts.append(TextPart(raw["tool_plan"], (*path, "tool_plan")))
        message.tool_calls.extend(openai_chat.tool_calls(raw, path))
        if role == "tool":
            message.tool_results.append(ToolResult(str(raw.get("tool_call_id", "")), _tool_content(content),
                                                   (*path, "content") if isinstance(content, str) else None))
            message.parts = []
        exchange.messages.append(message)
    _documents(body.get("documents"), exchange)
    openai_chat.function_definitions(body.get("tools"), exchange)


def _tool_content(content: Any) -> str:
    """A tool result's content: a string, or text and document parts (documents as their JSON)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    out = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif isinstance(part, dict) and "document" in part:
            out.append(orjson.dumps(part["document"], default=str).decode())
    return "\n".join(out)


def _documents(documents: Any, exchange: Exchange) -> None:
    """RAG documents travel beside the messages and can carry sensitive text: one `document` message each."""
    for i, doc in enumerate(documents if isinstance(documents, list) else []):
        if isinstance(doc, str):
            exchange.messages.append(Message("document", [TextPart(doc, ("documents", i))]))
            continue
        if not isinstance(doc, dict):
            continue
        data, path = (doc["data"], ("documents", i, "data")) if isinstance(doc.get("data"), dict) else \
            (doc, ("documents", i))
        parts = [TextPart(v, (*path, k)) for k, v in data.items() if isinstance(v, str) and k != "id"]
        if parts:
            exchange.messages.append(Message("document", parts))


def parse_v1_chat(body: dict[str, Any], exchange: Exchange) -> None:
    """A v1 chat body (also Cohere Command on Bedrock): `preamble`, `chat_history`, `message`, tool results."""
    if not isinstance(body.get("message"), str):
        raise BodyError("v1 chat body needs a 'message' string")
    if isinstance(body.get("preamble"), str):
        exchange.system.append(TextPart(body["preamble"], ("preamble",)))
    for i, turn in objects(body.get("chat_history") or [], "chat_history", exchange):
        role = _V1_ROLES.get(str(turn.get("role", "")).upper(), str(turn.get("role", "")).lower())
        parts = [TextPart(turn["message"], ("chat_history", i, "message"))] if isinstance(turn.get("message"), str) \
            else []
        if role == "system":
            exchange.system.extend(parts)
            continue
        message = Message(role, parts)
        for j, tc in enumerate(turn.get("tool_calls") or []):
            if isinstance(tc, dict):
                message.tool_calls.append(tool_call(str(tc.get("name", "")), tc.get("parameters"),
                                                    ("chat_history", i, "tool_calls", j, "parameters")))
        for tr in turn.get("tool_results") or []:
            message.tool_results.extend(_v1_tool_result(tr))
        exchange.messages.append(message)
    current = Message("user", [TextPart(body["message"], ("message",))])
    for tr in body.get("tool_results") or []:
        current.tool_results.extend(_v1_tool_result(tr))
    exchange.messages.append(current)
    _documents(body.get("documents"), exchange)
    for i, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict):
            exchange.tools.append(ToolDefinition(str(tool.get("name", "")), str(tool.get("description", "")),
                                                 tool.get("parameter_definitions"), ("tools", i)))


def _v1_tool_result(tr: Any) -> list[ToolResult]:
    if not isinstance(tr, dict):
        return []
    call = tr.get("call") if isinstance(tr.get("call"), dict) else {}
    return [ToolResult(str(call.get("name", "")), _dumps(tr.get("outputs")))]


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _parse_embed(body: dict[str, Any], exchange: Exchange) -> None:
    texts = body.get("texts")
    message = Message("user")
    if isinstance(texts, list):
        message.parts = [TextPart(t, ("texts", i)) for i, t in enumerate(texts) if isinstance(t, str)]
    for i, item in enumerate(body.get("inputs") or []):
        if isinstance(item, dict):
            message.parts.extend(text_parts(item.get("content"), ("inputs", i, "content"), exchange))
    for image in body.get("images") or []:
        if isinstance(image, str):
            message.attachments.append(uploads.base64_attachment(image, "", "", "image"))
    if not message.parts and not message.attachments:
        raise BodyError("embed body needs 'texts', 'inputs' or 'images'")
    exchange.messages.append(message)


def _meta_usage(meta: Any, exchange: Exchange) -> None:
    """v1 `meta` (and embed responses): billed units first, raw token counts as the fallback."""
    if not isinstance(meta, dict):
        return
    for key in ("tokens", "billed_units"):
        units = meta.get(key)
        if isinstance(units, dict):
            if isinstance(units.get("input_tokens"), (int, float)):
                exchange.usage.input_tokens = int(units["input_tokens"])
            if isinstance(units.get("output_tokens"), (int, float)):
                exchange.usage.output_tokens = int(units["output_tokens"])


def _v2_usage(usage: Any, exchange: Exchange) -> None:
    if isinstance(usage, dict):
        _meta_usage(usage, exchange)


def v2_response(data: dict[str, Any], exchange: Exchange) -> None:
    message = data.get("message") or {}
    texts = [c["text"] for c in message.get("content") or [] if c.get("type") == "text" and "text" in c]
    exchange.completion = "\n".join(texts)
    exchange.completion_tool_calls.extend(openai_chat.answer_calls(message))
    exchange.finish_reason = str(data.get("finish_reason") or "")
    _v2_usage(data.get("usage"), exchange)


class V2StreamReader(Reassembly):
    """v2 SSE events: `content-delta` text, `tool-call-start`/`-delta` by index, `message-end` finish and usage."""

    def add(self, data: Any) -> None:
        if not isinstance(data, dict):
            return  # [DONE]
        kind = data.get("type")
        delta = data.get("delta") or {}
        message = delta.get("message") or {}
        if kind == "content-delta":
            self.text.add((message.get("content") or {}).get("text"))
        elif kind in ("tool-call-start", "tool-call-delta"):
            openai_chat.grow_call(self.call(int(data.get("index", 0))), message.get("tool_calls") or {})
        elif kind == "message-end":
            self.exchange.finish_reason = str(delta.get("finish_reason") or "")
            _v2_usage(delta.get("usage"), self.exchange)
        elif kind == "message-start" and data.get("model"):
            self.exchange.model = str(data["model"])


def v1_response(data: dict[str, Any], exchange: Exchange) -> None:
    """A v1 chat response, or a v1 generate response (`generations[].text`)."""
    generations = data.get("generations")
    if isinstance(generations, list):
        exchange.completion = "\n".join(str(g.get("text") or "") for g in generations)
        exchange.finish_reason = str(generations[0].get("finish_reason") or "") if generations else ""
        _meta_usage(data.get("meta"), exchange)
        return
    exchange.completion = str(data.get("text") or "")
    exchange.completion_tool_calls.extend(_v1_calls(data))
    exchange.finish_reason = str(data.get("finish_reason") or "")
    _meta_usage(data.get("meta"), exchange)


def _v1_calls(data: dict[str, Any]) -> Iterator[ToolCall]:
    """v1 tool calls (`{name, parameters}`) of a response or a `tool-calls-generation` event; one at a time, so
    those before an entry of an unexpected shape are kept when it raises."""
    for tc in data.get("tool_calls") or []:
        yield ToolCall(str(tc.get("name", "")), _dumps(tc.get("parameters")))


class V1StreamReader(Reassembly):
    """v1 stream objects (`event_type`): `text-generation` text, `tool-calls-generation`, `stream-end` with the
    finish reason and the whole response's `meta` usage. Older generate streams send `{text, is_finished}` lines
    without an event type."""

    def add(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("event_type")
        if kind is None and not data.get("is_finished"):
            kind = "text-generation"
        elif kind is None:
            kind = "stream-end"
        if kind == "text-generation":
            self.text.add(data.get("text"))
        elif kind == "tool-calls-generation":
            self.exchange.completion_tool_calls.extend(_v1_calls(data))
        elif kind == "stream-end":
            self.exchange.finish_reason = str(data.get("finish_reason") or "")
            response = data.get("response") or {}
            _meta_usage(response.get("meta"), self.exchange)


PROVIDER = CohereProvider()
