"""OpenAI wire format: Chat Completions (and every OpenAI-compatible host that speaks it).

Reference: ai-endpoints.md §1.1.1 (request), §2.1 (response), §2.2.1 (stream chunks).
"""

from __future__ import annotations

from typing import Any

from core.exchange import Attachment, Exchange, Message, ToolCall, ToolDefinition, ToolResult
from providers.base import (BodyError, BufferedJson, CompletionBuffer, HttpRequest, ResponseParser, SseParser,
                            json_body, text_parts)

_NON_TEXT_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file"}


class OpenAIProvider:
    name = "openai"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if req.method == "POST" and req.path.endswith("/chat/completions"):
            return "chat.completions"
        return None

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise BodyError("chat completion body needs a 'messages' list")
        exchange.model = str(body.get("model") or "")
        exchange.stream = body.get("stream") is True
        for i, raw in enumerate(body["messages"]):
            if not isinstance(raw, dict):
                exchange.warn(f"messages/{i}: not an object")
                continue
            self._message(raw, ("messages", i), exchange)
        for i, tool in enumerate(body.get("tools") or []):
            fn = tool.get("function") or tool.get("custom") if isinstance(tool, dict) else None
            if isinstance(fn, dict):
                exchange.tools.append(ToolDefinition(str(fn.get("name", "")), str(fn.get("description", "")),
                                                     fn.get("parameters")))
            else:
                exchange.warn(f"tools/{i}: not understood")

    def _message(self, raw: dict[str, Any], path: tuple, exchange: Exchange) -> None:
        role = str(raw.get("role", ""))
        content = raw.get("content")
        parts = text_parts(content, (*path, "content"), exchange)
        if role in ("system", "developer"):
            exchange.system.extend(parts)
            return
        message = Message(role=role, parts=parts)
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _NON_TEXT_PARTS:
                    message.attachments.append(_attachment(part))
        for j, tc in enumerate(raw.get("tool_calls") or []):
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict):
                message.tool_calls.append(ToolCall(str(fn.get("name", "")), str(fn.get("arguments", "")),
                                                   str(tc.get("id", "")),
                                                   (*path, "tool_calls", j, "function", "arguments")))
        if role == "tool":
            message.tool_results.append(ToolResult(str(raw.get("tool_call_id", "")),
                                                   "\n".join(p.text for p in parts)))
            message.parts = []
        exchange.messages.append(message)

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        if content_type == "text/event-stream":
            return ChatStream(exchange)
        return BufferedJson(exchange, lambda data: chat_response(data, exchange))


def _attachment(part: dict[str, Any]) -> Attachment:
    kind = _NON_TEXT_PARTS[part["type"]]
    inner = part.get(part["type"])
    data, name, mime = "", "", ""
    if isinstance(inner, dict):
        data = inner.get("url") or inner.get("data") or inner.get("file_data") or ""
        name = str(inner.get("filename") or inner.get("file_id") or "")
        mime = str(inner.get("format") or "")
    if isinstance(data, str) and data.startswith("data:"):
        mime = data[5:].split(";", 1)[0]
        size = len(data.split(",", 1)[-1]) * 3 // 4
    elif isinstance(data, str) and data.startswith(("http://", "https://")):
        name, size = name or data[:200], 0
    else:
        size = len(data) * 3 // 4 if isinstance(data, str) else 0
    return Attachment(kind=kind, name=name, mime_type=mime, size=size)


def _usage(exchange: Exchange, usage: Any) -> None:
    if isinstance(usage, dict):
        exchange.usage.input_tokens = usage.get("prompt_tokens", exchange.usage.input_tokens)
        exchange.usage.output_tokens = usage.get("completion_tokens", exchange.usage.output_tokens)


def chat_response(data: dict[str, Any], exchange: Exchange) -> None:
    choices = data.get("choices") or []
    texts = []
    for choice in choices:
        msg = choice.get("message") or {}
        if isinstance(msg.get("content"), str):
            texts.append(msg["content"])
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            exchange.completion_tool_calls.append(ToolCall(str(fn.get("name", "")), str(fn.get("arguments", "")),
                                                           str(tc.get("id", ""))))
        exchange.finish_reason = exchange.finish_reason or str(choice.get("finish_reason") or "")
    exchange.completion = "\n".join(texts)
    exchange.model = str(data.get("model") or exchange.model)
    _usage(exchange, data.get("usage"))


class ChatStream(SseParser):
    """Reassembles `chat.completion.chunk` frames: content deltas, tool-call argument deltas by index, the usage
    chunk that arrives last when `stream_options.include_usage` is set."""

    def __init__(self, exchange: Exchange):
        super().__init__(exchange, self._on_event, self._on_finish)
        self.text = CompletionBuffer(exchange)
        self.tool_calls: dict[int, ToolCall] = {}

    def _on_event(self, event: str, data: Any) -> None:
        if not isinstance(data, dict):
            return  # [DONE]
        if "error" in data:
            self.exchange.warn(f"stream error: {str(data['error'])[:500]}")
            return
        if data.get("model"):
            self.exchange.model = str(data["model"])
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            self.text.add(delta.get("content"))
            for tc in delta.get("tool_calls") or []:
                call = self.tool_calls.setdefault(int(tc.get("index", 0)), ToolCall("", ""))
                fn = tc.get("function") or {}
                call.name += fn.get("name") or ""
                call.arguments += fn.get("arguments") or ""
                call.id = call.id or str(tc.get("id") or "")
            if choice.get("finish_reason"):
                self.exchange.finish_reason = str(choice["finish_reason"])
        _usage(self.exchange, data.get("usage"))

    def _on_finish(self) -> None:
        self.exchange.completion = self.text.text()
        self.exchange.completion_tool_calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]


PROVIDER = OpenAIProvider()
