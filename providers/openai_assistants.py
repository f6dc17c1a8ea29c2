"""OpenAI Assistants v2 (beta): assistants, threads, thread messages, runs, tool outputs, and the `thread.*`
event stream.

Instructions are the system prompt; thread messages are user (or assistant) turns; `submit_tool_outputs` sends
tool results. A run's answer arrives as `thread.message.delta` events when streamed; a non-streamed run returns
only the run object (the answer is fetched later from the thread), so its completion stays empty.
Source [SDK]: openai-python (marks: docs/providers.md).
"""

from __future__ import annotations

from typing import Any

from core.exchange import Attachment, Exchange, JsonPath, Message, TextPart, ToolResult
from providers.base import BodyError, HttpRequest, Reassembly, SseParser, text_parts
from providers.openai_chat import (answer_calls, common, content_attachment, event_object, function_tools,
                                   json_object, sse_or_json, upstream_error, usage)


def _instructions(body: dict[str, Any], exchange: Exchange) -> None:
    for key in ("instructions", "additional_instructions"):
        if isinstance(body.get(key), str):
            exchange.system.append(TextPart(body[key], (key,)))


def _thread_message(raw: Any, path: JsonPath, exchange: Exchange) -> None:
    if not isinstance(raw, dict):
        exchange.warn(f"{'/'.join(map(str, path))}: not an object")
        return
    content = raw.get("content")
    message = Message(role=str(raw.get("role") or "user"), parts=text_parts(content, (*path, "content"), exchange))
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            message.attachments.append(content_attachment(part))
        elif part.get("type") == "image_file":
            message.attachments.append(Attachment(kind="image", name=str((part.get("image_file") or {})
                                                                         .get("file_id", ""))))
    for att in raw.get("attachments") or []:
        if isinstance(att, dict):
            message.attachments.append(Attachment(kind="file", name=str(att.get("file_id", ""))))
    exchange.messages.append(message)


def _messages(messages: Any, path: JsonPath, exchange: Exchange) -> None:
    if messages is None:
        return
    if not isinstance(messages, list):
        raise BodyError(f"'{'/'.join(map(str, path))}' must be a list")
    for i, raw in enumerate(messages):
        _thread_message(raw, (*path, i), exchange)


def parse_assistant(req: HttpRequest, exchange: Exchange) -> None:
    body = json_object(req, "assistant")
    common(body, exchange)
    _instructions(body, exchange)
    function_tools(body.get("tools"), exchange)


def parse_thread(req: HttpRequest, exchange: Exchange) -> None:
    body = json_object(req, "thread")
    _messages(body.get("messages"), ("messages",), exchange)


def parse_message(req: HttpRequest, exchange: Exchange) -> None:
    body = json_object(req, "thread message", "content")
    _thread_message(body, (), exchange)


def parse_run(req: HttpRequest, exchange: Exchange) -> None:
    """A run on a thread, or create-and-run (`/threads/runs` with `thread.messages`)."""
    body = json_object(req, "run", "assistant_id")
    common(body, exchange)
    _instructions(body, exchange)
    _messages(body.get("additional_messages"), ("additional_messages",), exchange)
    if isinstance(body.get("thread"), dict):
        _messages(body["thread"].get("messages"), ("thread", "messages"), exchange)
    function_tools(body.get("tools"), exchange)


def parse_tool_outputs(req: HttpRequest, exchange: Exchange) -> None:
    body = json_object(req, "submit_tool_outputs", "tool_outputs")
    exchange.stream = body.get("stream") is True
    if not isinstance(body["tool_outputs"], list):
        raise BodyError("'tool_outputs' must be a list")
    results = [ToolResult(str(o.get("tool_call_id", "")), str(o.get("output", "")),
                          ("tool_outputs", i, "output") if isinstance(o.get("output"), str) else None)
               for i, o in enumerate(body["tool_outputs"]) if isinstance(o, dict)]
    exchange.messages.append(Message(role="tool", tool_results=results))


def run_object(data: dict[str, Any], exchange: Exchange) -> None:
    """A run (`thread.run`): model, status, usage once finished, tool calls when it requires action."""
    if data.get("object") != "thread.run":
        return
    exchange.model = str(data.get("model") or exchange.model)
    exchange.finish_reason = str(data.get("status") or exchange.finish_reason)
    usage(exchange, data.get("usage"))
    action = data.get("required_action") or {}
    exchange.completion_tool_calls.extend(answer_calls(action.get("submit_tool_outputs") or {}))


class AssistantStream(SseParser):
    """`thread.message.delta` text, and the run events (`thread.run.*`) for model, status, usage and tool calls."""

    def __init__(self, exchange: Exchange):
        self.answer = Reassembly(exchange)
        super().__init__(exchange, self._on_event, self.answer.done)

    def _on_event(self, event: str, data: Any) -> None:
        data = event_object(data)
        if data is None:
            return
        if event == "error" or upstream_error(self.exchange, data):
            if event == "error":
                self.exchange.warn(f"stream error: {str(data.get('message', data))[:500]}")
            return
        if event == "thread.message.delta":
            for part in (data.get("delta") or {}).get("content") or []:
                if isinstance(part, dict) and part.get("type") == "text":
                    self.answer.text.add((part.get("text") or {}).get("value"))
        elif event.startswith("thread.run.") and not event.startswith("thread.run.step"):
            self.exchange.completion_tool_calls = []
            run_object(data, self.exchange)


responder = sse_or_json(AssistantStream, run_object)
