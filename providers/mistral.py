"""Mistral's own endpoints. Its /v1/chat/completions is OpenAI format, and /v1/fim/completions (`prompt` +
`suffix`) is read by the OpenAI legacy-completions parser: both are left to providers/openai.py.

Source [SDK]: mistralai's client-python (marks: docs/providers.md). Agents completions are a chat body with
`agent_id` instead of `model`: the OpenAI chat parsers read it, this module names the agent as the model.
Conversations (`inputs`, `instructions`) have their own output entries and stream events; a conversation is
continued (`conversations.append`: `POST /v1/conversations/{id}`) or restarted from one of its entries
(`conversations.restart`: `.../{id}/restart`) with the same body, less the model, agent and tools it was started
with, which Mistral keeps.
"""

from __future__ import annotations

import re
from typing import Any

from core.exchange import Exchange, Message, TextPart, ToolCall, ToolDefinition, ToolResult
from providers import openai_chat
from providers.base import (BodyError, BufferedJson, HttpRequest, Reassembly, ResponseParser, SseParser, json_body,
                            text_parts, with_leaves)

_PATHS = {"/v1/agents/completions": "agents.completions", "/v1/conversations": "conversations"}
AGENT = "agent:"  # the model of a request that names an agent (`agent_id`), not a model: `agent:<agent_id>`
_CONTINUED = re.compile(r"^/v1/conversations/[^/]+(?P<restart>/restart)?$")
CONTINUED = ("conversations.append", "conversations.restart")  # their model, agent and tools are Mistral's


class MistralProvider:
    name = "mistral"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if req.method != "POST":
            return None
        path = req.path.rstrip("/")
        operation = _PATHS.get(path)
        if operation is None and (m := _CONTINUED.match(path)):
            operation = CONTINUED[1] if m["restart"] else CONTINUED[0]
        if operation is not None and operation.startswith("conversations") and b'"inputs"' not in req.body:
            return None  # OpenAI has a /v1/conversations too, with `items` (and `metadata` for one of them)
        return operation

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        if operation == "agents.completions":
            openai_chat.parse_chat(req, exchange)
            body = json_body(req)
            exchange.model = exchange.model or f"{AGENT}{body.get('agent_id', '')}"
            return
        body = json_body(req)
        if not isinstance(body, dict):
            raise BodyError("Mistral body must be a JSON object")
        exchange.stream = body.get("stream") is True
        exchange.model = str(body.get("model") or (f"{AGENT}{body['agent_id']}" if body.get("agent_id") else ""))
        if isinstance(body.get("instructions"), str):
            exchange.system.append(TextPart(body["instructions"], ("instructions",)))
        inputs = body.get("inputs")
        if isinstance(inputs, str):
            exchange.messages.append(Message("user", [TextPart(inputs, ("inputs",))]))
        elif isinstance(inputs, list):
            for i, entry in enumerate(inputs):
                if isinstance(entry, dict):
                    exchange.messages.append(_entry(entry, ("inputs", i), exchange))
        else:
            raise BodyError("conversations body needs 'inputs'")
        _functions(body.get("tools"), exchange)

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        if exchange.operation.startswith("conversations"):
            reader = ConversationReader(exchange)
            if content_type == "text/event-stream":
                return SseParser(exchange, lambda _event, data: reader.add_event(data), reader.done)
            return BufferedJson(exchange, lambda data: (reader.add_response(data), reader.done()))
        return openai_chat.chat_responder(exchange, content_type)


def _functions(tools: Any, exchange: Exchange) -> None:
    """The functions a conversation offers (`{type: "function", function: {name, description, parameters}}`), the
    tools the client runs, so the tool rules see them; the built-in ones (web search, code interpreter, connectors)
    run at Mistral."""
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(fn, dict):
            exchange.tools.append(ToolDefinition(str(fn.get("name", "")), str(fn.get("description", "")),
                                                 fn.get("parameters"), ("tools", i)))


def _entry(entry: dict[str, Any], path: tuple, exchange: Exchange) -> Message:
    """A conversation input entry: a message (string or chunks) or a function result."""
    if entry.get("type") == "function.result":
        return Message("tool", tool_results=[ToolResult(str(entry.get("tool_call_id", "")),
                                                        str(entry.get("result", "")), (*path, "result"))])
    message = Message(str(entry.get("role") or "user"), text_parts(entry.get("content"), (*path, "content"), exchange))
    if entry.get("type") == "function.call":
        message.tool_calls.append(with_leaves(ToolCall(str(entry.get("name", "")), str(entry.get("arguments", "")),
                                                       str(entry.get("tool_call_id", "")), (*path, "arguments"))))
    return message


class ConversationReader(Reassembly):
    """Conversation outputs (`message.output` entries, `function.call` entries, usage), whole or as the
    `message.output.delta` / `function.call.delta` / `conversation.response.done` stream events (a call's pieces
    by output index, as the SDK's run helper reassembles them: name and id once, the arguments growing)."""

    def _content(self, content: Any) -> None:
        if isinstance(content, str):
            self.text.add(content)
        elif isinstance(content, dict) and isinstance(content.get("text"), str):
            self.text.add(content["text"])
        elif isinstance(content, list):
            for chunk in content:
                self._content(chunk)

    def _usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.exchange.usage.input_tokens = usage.get("prompt_tokens", self.exchange.usage.input_tokens)
            self.exchange.usage.output_tokens = usage.get("completion_tokens", self.exchange.usage.output_tokens)

    def add_response(self, data: Any) -> None:
        for out in data.get("outputs") or []:
            if out.get("type") == "function.call":
                self.exchange.completion_tool_calls.append(ToolCall(str(out.get("name", "")),
                                                                    str(out.get("arguments", "")),
                                                                    str(out.get("tool_call_id", ""))))
            else:
                self._content(out.get("content"))
                self.exchange.model = str(out.get("model") or self.exchange.model)
        self._usage(data.get("usage"))

    def add_event(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "message.output.delta":
            self._content(data.get("content"))
            self.exchange.model = str(data.get("model") or self.exchange.model)
        elif kind == "function.call.delta":
            call = self.call(int(data.get("output_index") or 0))
            call.name = call.name or str(data.get("name") or "")
            call.id = call.id or str(data.get("tool_call_id") or "")
            call.arguments += str(data.get("arguments") or "")
        elif kind == "conversation.response.done":
            self._usage(data.get("usage"))
            self.exchange.finish_reason = "stop"
        elif kind == "conversation.response.error":
            self.exchange.warn(f"upstream error: {str(data.get('message', ''))[:500]}")


PROVIDER = MistralProvider()
