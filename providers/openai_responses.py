"""OpenAI Responses API (`/responses`): instructions, input items, function calls and their outputs, and the
typed SSE event stream.

Source [SDK]: openai-python (marks: docs/providers.md).
"""

from __future__ import annotations

from typing import Any

from core.exchange import Attachment, Exchange, JsonPath, Message, TextPart, ToolCall, ToolResult
from providers import mcp
from providers.base import (BodyError, CompletionBuffer, HttpRequest, ResponseParser, SseParser, block_message,
                            json_body, with_leaves)
from providers.openai_chat import (common, event_object, function_tools, json_response, sse_or_json,
                                   upstream_error, usage)
from providers.uploads import base64_attachment

_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
#: Items of a call the client runs (providers/toolcalls.py judges them in answers); an mcp_call ran at the provider.
CLIENT_CALL_ITEMS = ("function_call", "custom_tool_call", "local_shell_call", "shell_call", "computer_call",
                     "apply_patch_call")
#: Input items that carry no text of the user's (model reasoning, references to stored items, hosted tool state).
_SILENT_ITEMS = {"reasoning", "item_reference", "compaction", "web_search_call", "file_search_call",
                 "image_generation_call", "code_interpreter_call", "mcp_list_tools", "mcp_approval_response"}


def parse_request(req: HttpRequest, exchange: Exchange) -> None:
    body = json_body(req)
    if not isinstance(body, dict) or not ("input" in body or "prompt" in body or "previous_response_id" in body):
        raise BodyError("responses body needs 'input' (or a stored 'prompt')")
    common(body, exchange)
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        exchange.system.append(TextPart(instructions, ("instructions",)))
    elif isinstance(instructions, list):
        _items(instructions, ("instructions",), exchange)
    data = body.get("input")
    if isinstance(data, str):
        exchange.messages.append(Message(role="user", parts=[TextPart(data, ("input",))]))
    elif isinstance(data, list):
        _items(data, ("input",), exchange)
    elif data is not None:
        raise BodyError(f"'input' must be a string or a list, not {type(data).__name__}")
    prompt = body.get("prompt")
    if isinstance(prompt, dict) and isinstance(prompt.get("variables"), dict):
        parts = [TextPart(v, ("prompt", "variables", k)) for k, v in prompt["variables"].items() if isinstance(v, str)]
        if parts:
            exchange.messages.append(Message(role="user", parts=parts))
    function_tools(body.get("tools"), exchange)
    mcp.hosted_servers(body.get("tools"), ("tools",), exchange)  # `type: mcp` entries: the server the model calls


def _items(items: list[Any], path: JsonPath, exchange: Exchange) -> None:
    for i, item in enumerate(items):
        here = (*path, i)
        if not isinstance(item, dict):
            exchange.warn(f"{'/'.join(map(str, here))}: not an object")
            continue
        kind = item.get("type") or ("message" if "role" in item else "")
        if kind == "message":
            _message(item, here, exchange)
        elif kind in CLIENT_CALL_ITEMS or kind == "mcp_call":
            key = "arguments" if "arguments" in item else "input"
            args = item.get(key)
            exchange.messages.append(Message(role="assistant", tool_calls=[with_leaves(ToolCall(
                str(item.get("name") or kind), args if isinstance(args, str) else str(args or ""),
                str(item.get("call_id") or item.get("id") or ""), (*here, key) if isinstance(args, str) else None))]))
        elif kind.endswith("_output"):
            output = item.get("output")
            if isinstance(output, str):
                result = ToolResult(str(item.get("call_id", "")), output, (*here, "output"))
            else:
                texts = [p.get("text") for p in output or [] if isinstance(p, dict) and isinstance(p.get("text"), str)]
                result = ToolResult(str(item.get("call_id", "")), "\n".join(texts))
            exchange.messages.append(Message(role="tool", tool_results=[result]))
        elif kind not in _SILENT_ITEMS:
            exchange.warn(f"{'/'.join(map(str, here))}: item type {kind!r} not inspected")


def _message(item: dict[str, Any], path: JsonPath, exchange: Exchange) -> None:
    message, parts = block_message(item, path, "user")
    for at, part in parts:
        kind = part.get("type")
        if kind in _TEXT_PARTS and isinstance(part.get("text") or part.get("refusal"), str):
            key = "text" if isinstance(part.get("text"), str) else "refusal"
            message.parts.append(TextPart(part[key], (*at, key)))
        elif kind == "input_image":
            url = part.get("image_url")
            message.attachments.append(
                base64_attachment(url, str(part.get("file_id") or ""), "", "image")
                if isinstance(url, str) and url.startswith("data:")
                else Attachment(kind="image", name=str(url or part.get("file_id") or "")[:200]))
        elif kind == "input_file":
            name = str(part.get("filename") or part.get("file_id") or part.get("file_url") or "")[:200]
            data = part.get("file_data")
            message.attachments.append(base64_attachment(data, name, "", "file", exchange.warn)
                                       if isinstance(data, str) else Attachment(kind="file", name=name))
        elif kind == "input_audio":
            inner = part.get("input_audio") or {}
            message.attachments.append(base64_attachment(str(inner.get("data") or ""), "",
                                                         f"audio/{inner.get('format', '')}", "audio"))
    if message.role in ("system", "developer"):
        exchange.system.extend(message.parts)
    else:
        exchange.messages.append(message)


def response_object(data: dict[str, Any], exchange: Exchange) -> None:
    """A `response` object (the whole body, or the payload of `response.completed` in a stream)."""
    if data.get("model"):
        exchange.model = str(data["model"])
    texts: list[str] = []
    calls: list[ToolCall] = []
    for item in data.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text") or part.get("refusal"), str):
                    texts.append(part.get("text") or part["refusal"])
        elif item.get("type") in ("function_call", "custom_tool_call"):
            args = item.get("arguments", item.get("input", ""))
            calls.append(ToolCall(str(item.get("name", "")), args if isinstance(args, str) else str(args),
                                  str(item.get("call_id", ""))))
    exchange.completion = exchange.completion or "".join(texts)
    exchange.completion_tool_calls = exchange.completion_tool_calls or calls
    _status(data, exchange)
    usage(exchange, data.get("usage"))


def _status(data: dict[str, Any], exchange: Exchange) -> None:
    status = str(data.get("status") or "")
    details = data.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason"):
        status = f"{status}: {details['reason']}"
    exchange.finish_reason = status or exchange.finish_reason
    if isinstance(data.get("error"), dict):
        exchange.warn(f"response failed: {str(data['error'].get('message', ''))[:500]}")


class ResponsesStream(SseParser):
    """Reassembles the Responses event stream: text deltas, function-call arguments (by output item), and the
    terminal `response.completed | incomplete | failed` event that carries usage and status."""

    def __init__(self, exchange: Exchange):
        super().__init__(exchange, self._on_event, self._on_finish)
        self.text = CompletionBuffer(exchange)
        self.calls: dict[str, ToolCall] = {}
        self.final: dict[str, Any] | None = None

    def _on_event(self, event: str, data: Any) -> None:
        data = event_object(data)
        if data is None:
            return
        kind = str(data.get("type") or event)
        if kind == "error" or upstream_error(self.exchange, data):
            if kind == "error":
                self.exchange.warn(f"stream error: {str(data.get('message', data))[:500]}")
            return
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            self.text.add(data.get("delta"))
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = data.get("item") or {}
            if item.get("type") in ("function_call", "custom_tool_call"):
                call = self._call(data, item)
                call.name = str(item.get("name") or call.name)
                call.id = str(item.get("call_id") or call.id)
                args = item.get("arguments", item.get("input"))
                if kind.endswith(".done") and isinstance(args, str):
                    call.arguments = args
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            self._call(data).arguments += str(data.get("delta") or "")
        elif kind in ("response.function_call_arguments.done", "response.custom_tool_call_input.done"):
            call = self._call(data)
            final = data.get("arguments", data.get("input"))
            call.arguments = final if isinstance(final, str) else call.arguments
            call.name = str(data.get("name") or call.name)
        elif isinstance(data.get("response"), dict):  # created, in_progress, completed, incomplete, failed
            response = data["response"]
            if response.get("model"):
                self.exchange.model = str(response["model"])
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                self.final = response

    def _call(self, data: dict[str, Any], item: dict[str, Any] | None = None) -> ToolCall:
        key = str(data.get("item_id") or (item or {}).get("id") or data.get("output_index", ""))
        return self.calls.setdefault(key, ToolCall("", ""))

    def _on_finish(self) -> None:
        self.exchange.completion = self.text.text()
        self.exchange.completion_tool_calls = list(self.calls.values())
        if self.final is not None:
            response_object(self.final, self.exchange)


responder = sse_or_json(ResponsesStream, response_object)


def input_tokens_response(data: dict[str, Any], exchange: Exchange) -> None:
    usage(exchange, data)


def input_tokens_responder(exchange: Exchange, content_type: str) -> ResponseParser:
    return json_response(exchange, input_tokens_response)
