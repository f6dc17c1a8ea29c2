"""Anthropic wire format: Messages (`/v1/messages`), count_tokens, legacy `/v1/complete`, and the typed SSE stream.

The same body travels in other envelopes, recognised by path and shape rather than host:
- Anthropic-compatible hosts put it under their own prefix (`api.deepseek.com/anthropic/v1/messages`, Azure
  Foundry `{resource}.services.ai.azure.com/anthropic/v1/messages`, Ollama `/v1/messages`);
- Vertex AI moves the model to the URL (`.../publishers/anthropic/models/{model}:rawPredict | :streamRawPredict`)
  and adds `anthropic_version`;
- Bedrock InvokeModel sends the body without `model` and `stream` (both in the URL). The Bedrock parser owns that
  transport and its event stream, and calls `parse_body`, `message_response` and `MessageEvents` from here.

Source [SDK]: the anthropic Python SDK's types and its Vertex and Bedrock clients (marks: docs/providers.md).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson

from core.exchange import Attachment, Exchange, JsonPath, Message, TextPart, ToolCall, ToolDefinition, ToolResult
from providers import mcp
from providers.base import (BodyError, BufferedJson, HttpRequest, Reassembly, ResponseParser, SseParser,
                            block_message, json_body, objects, tool_call)
from providers.uploads import base64_attachment

_MESSAGES = re.compile(r"(?:^|/)v1/messages$")
_COUNT_TOKENS = re.compile(r"(?:^|/)v1/messages/count_tokens$")
_COMPLETE = re.compile(r"(?:^|/)v1/complete$")
_VERTEX = re.compile(r"/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)$")


class AnthropicProvider:
    name = "anthropic"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if req.method != "POST":
            return None
        path = req.path.rstrip("/")
        if _MESSAGES.search(path):
            return "messages"
        if _COUNT_TOKENS.search(path):
            return "messages.count_tokens"
        if _COMPLETE.search(path):
            return "complete"
        m = _VERTEX.search(path)
        if m:
            return "messages.count_tokens" if m.group(1) == "count-tokens" else "messages"
        return None

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        m = _VERTEX.search(req.path.rstrip("/"))
        if m and m.group(1) != "count-tokens":
            exchange.model = unquote(m.group(1))
            exchange.stream = m.group(2) == "streamRawPredict"
        parse_body(body, exchange, operation)

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        if content_type == "text/event-stream":
            return MessageStream(exchange)
        if exchange.operation == "messages.count_tokens":
            return BufferedJson(exchange, lambda data: _count_tokens(data, exchange))
        return BufferedJson(exchange, lambda data: message_response(data, exchange))


def parse_body(body: Any, exchange: Exchange, operation: str = "") -> None:
    """Fill the exchange from an Anthropic request body (a decoded JSON value): Messages or, when it carries
    `prompt` instead of `messages`, a legacy Text Completion. Model and stream are taken from the body only when
    present, so a caller that found them in the URL (Vertex, Bedrock) sets them first. BodyError if malformed.

    Public for the Bedrock parser (InvokeModel with an `anthropic.*` model id)."""
    if not isinstance(body, dict):
        raise BodyError("Anthropic body must be a JSON object")
    if body.get("model") is not None:
        exchange.model = str(body["model"])
    if "stream" in body:
        exchange.stream = body.get("stream") is True
    if operation == "complete" or ("prompt" in body and "messages" not in body):
        if not isinstance(body.get("prompt"), str):
            raise BodyError("complete body needs a 'prompt' string")
        exchange.messages.append(Message(role="user", parts=[TextPart(body["prompt"], ("prompt",))]))
        return
    if not isinstance(body.get("messages"), list):
        raise BodyError("messages body needs a 'messages' list")
    _system(body.get("system"), exchange)
    for i, raw in objects(body["messages"], "messages", exchange):
        _message(raw, ("messages", i), exchange)
    for i, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict):
            exchange.tools.append(ToolDefinition(str(tool.get("name") or tool.get("type") or ""),
                                                 str(tool.get("description") or ""), tool.get("input_schema"),
                                                 ("tools", i)))
        else:
            exchange.warn(f"tools/{i}: not understood")
    mcp.hosted_servers(body.get("mcp_servers"), ("mcp_servers",), exchange)  # MCP servers Anthropic calls for us


def _system(system: Any, exchange: Exchange) -> None:
    if isinstance(system, str):
        exchange.system.append(TextPart(system, ("system",)))
    elif isinstance(system, list):
        for i, block in enumerate(system):
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                exchange.system.append(TextPart(block["text"], ("system", i, "text")))
    elif system is not None:
        exchange.warn(f"system: unexpected {type(system).__name__}")


def _message(raw: dict[str, Any], path: JsonPath, exchange: Exchange) -> None:
    message, blocks = block_message(raw, path)
    for at, block in blocks:
        _block(block, at, message, exchange)
    content = raw.get("content")
    if not isinstance(content, (str, list)):
        exchange.warn(f"{'/'.join(map(str, path))}/content: unexpected {type(content).__name__}")
    if message.role == "system":  # newest API versions accept system turns
        exchange.system.extend(message.parts)
    else:
        exchange.messages.append(message)


def _block(block: dict[str, Any], path: JsonPath, message: Message, exchange: Exchange) -> None:
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        message.parts.append(TextPart(block["text"], (*path, "text")))
    elif kind in ("image", "document"):
        message.attachments.append(_source_attachment(block, path, message, exchange))
    elif kind in ("tool_use", "server_tool_use"):
        message.tool_calls.append(tool_call(str(block.get("name", "")), block.get("input"), (*path, "input"),
                                            str(block.get("id", ""))))
    elif kind == "tool_result":
        inner = block.get("content")
        call_id = str(block.get("tool_use_id", ""))
        if isinstance(inner, str):
            message.tool_results.append(ToolResult(call_id, inner, (*path, "content")))
            return
        before = len(message.tool_results)
        for k, b in enumerate(inner if isinstance(inner, list) else ()):  # one result per text block, each in place
            if isinstance(b, dict) and isinstance(b.get("text"), str):
                message.tool_results.append(ToolResult(call_id, b["text"], (*path, "content", k, "text")))
            elif isinstance(b, dict) and b.get("type") in ("image", "document"):
                message.attachments.append(_source_attachment(b, (*path, "content", k), message, exchange))
        if len(message.tool_results) == before:
            message.tool_results.append(ToolResult(call_id, ""))  # a result with no text is still a result


def _source_attachment(block: dict[str, Any], path: JsonPath | None, message: Message,
                       exchange: Exchange) -> Attachment:
    """An image or document block. A plain-text document (`source.type: text`) is text the user sent: it becomes
    an addressable text part (so DLP can redact it) and the attachment is marked inspected."""
    kind = str(block.get("type"))
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    name = str(block.get("title") or source.get("file_id") or source.get("url") or "")[:200]
    mime = str(source.get("media_type") or "")
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return base64_attachment(source["data"], name, mime, kind, exchange.warn)
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        message.parts.append(TextPart(source["data"], (*path, "source", "data") if path else None))
        return Attachment(kind=kind, name=name, mime_type=mime or "text/plain",
                          size=len(source["data"].encode()), inspected=True)
    if source.get("type") == "content" and isinstance(source.get("content"), list):
        for k, b in enumerate(source["content"]):
            if isinstance(b, dict) and isinstance(b.get("text"), str):
                message.parts.append(TextPart(b["text"], (*path, "source", "content", k, "text") if path else None))
        return Attachment(kind=kind, name=name, mime_type=mime, inspected=True)
    return Attachment(kind=kind, name=name, mime_type=mime)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def _usage(exchange: Exchange, usage: Any) -> None:
    """Input tokens are the whole prompt: Anthropic reports cached parts separately, so they are added back."""
    if not isinstance(usage, dict):
        return
    parts = [usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
    if any(isinstance(p, int) for p in parts):
        exchange.usage.input_tokens = sum(p for p in parts if isinstance(p, int))
    if isinstance(usage.get("output_tokens"), int):
        exchange.usage.output_tokens = usage["output_tokens"]


def _error(exchange: Exchange, data: Any) -> bool:
    if isinstance(data, dict) and data.get("type") == "error":
        error = data.get("error")
        message = error.get("message", error) if isinstance(error, dict) else error
        exchange.warn(f"upstream error: {str(message)[:500]}")
        return True
    return False


def message_response(data: Any, exchange: Exchange) -> None:
    """A non-streamed Message (or legacy Completion) body. Public for the Bedrock parser."""
    if not isinstance(data, dict) or _error(exchange, data):
        return
    exchange.model = str(data.get("model") or exchange.model)
    if "completion" in data:  # legacy /v1/complete
        exchange.completion = str(data.get("completion") or "")
    else:
        texts = []
        for block in data.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                texts.append(str(block.get("text", "")))
            elif block.get("type") in ("tool_use", "server_tool_use"):
                exchange.completion_tool_calls.append(ToolCall(str(block.get("name", "")),
                                                               _json_text(block.get("input")),
                                                               str(block.get("id", ""))))
        exchange.completion = "".join(texts)
    exchange.finish_reason = str(data.get("stop_reason") or exchange.finish_reason)
    _usage(exchange, data.get("usage"))


def _count_tokens(data: Any, exchange: Exchange) -> None:
    if isinstance(data, dict) and not _error(exchange, data):
        _usage(exchange, {"input_tokens": data.get("input_tokens")})


class MessageEvents(Reassembly):
    """Reassembles a Messages stream from its event objects, whatever carries them: SSE here, the Bedrock event
    stream for InvokeModelWithResponseStream. Feed each decoded event object to `event`, then call `done`."""

    def event(self, data: Any) -> None:
        """One event object; ValueError if it is not an object (the SSE parser counts those)."""
        if not isinstance(data, dict):
            raise ValueError(f"unexpected event payload {str(data)[:100]!r}")
        if _error(self.exchange, data):
            return
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self.exchange.model = str(message.get("model") or self.exchange.model)
            _usage(self.exchange, message.get("usage"))
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "text":
                self.text.add(block.get("text"))
            elif block.get("type") in ("tool_use", "server_tool_use"):
                self.calls[int(data.get("index", 0))] = ToolCall(str(block.get("name", "")), "",
                                                                 str(block.get("id", "")))
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text.add(delta.get("text"))
            elif delta.get("type") == "input_json_delta":
                self.call(int(data.get("index", 0))).arguments += str(delta.get("partial_json") or "")
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            self.exchange.finish_reason = str(delta.get("stop_reason") or self.exchange.finish_reason)
            _usage(self.exchange, data.get("usage"))
        elif kind == "completion":  # legacy /v1/complete stream
            self.text.add(data.get("completion"))
            self.exchange.model = str(data.get("model") or self.exchange.model)
            self.exchange.finish_reason = str(data.get("stop_reason") or self.exchange.finish_reason)


class MessageStream(SseParser):
    """The SSE transport of MessageEvents (`event: <type>` / `data: {"type": <type>, ...}`; ping frames ignored)."""

    def __init__(self, exchange: Exchange):
        self.events = MessageEvents(exchange)
        super().__init__(exchange, lambda event, data: self.events.event(data), self.events.done)


PROVIDER = AnthropicProvider()
