"""OpenAI Chat Completions, legacy Completions and Embeddings: the formats every OpenAI-compatible host speaks.

Also the helpers the other OpenAI modules share (usage, content parts, error bodies).
Source [SDK]: openai-python (marks: docs/providers.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from core.exchange import (Attachment, Exchange, JsonPath, Message, TextPart, ToolCall, ToolDefinition, ToolResult,
                           joined)
from providers.base import (BodyError, BufferedJson, HttpRequest, Reassembly, ResponseParser, SseParser, json_body,
                            objects, text_parts, with_leaves)
from providers.uploads import Warn, base64_attachment

_NON_TEXT_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file"}


def json_object(req: HttpRequest, what: str, *required: str) -> dict[str, Any]:
    """The body as a JSON object with the required keys present; BodyError naming what is missing otherwise."""
    body = json_body(req)
    if not isinstance(body, dict):
        raise BodyError(f"{what} body must be a JSON object")
    missing = [k for k in required if k not in body]
    if missing:
        raise BodyError(f"{what} body needs {', '.join(repr(k) for k in missing)}")
    return body


def common(body: dict[str, Any], exchange: Exchange) -> None:
    if body.get("model") is not None:
        exchange.model = str(body["model"])
    exchange.stream = body.get("stream") is True


def usage(exchange: Exchange, data: Any) -> None:
    """Token counts, whichever naming the endpoint uses (chat: prompt/completion, responses: input/output)."""
    if not isinstance(data, dict):
        return
    for key, attr in (("prompt_tokens", "input_tokens"), ("input_tokens", "input_tokens"),
                      ("completion_tokens", "output_tokens"), ("output_tokens", "output_tokens")):
        if isinstance(data.get(key), int):
            setattr(exchange.usage, attr, data[key])


def upstream_error(exchange: Exchange, data: Any) -> bool:
    """Note an error body (`{"error": {...}}`) as a warning; True if it was one."""
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        exchange.warn(f"upstream error: {str(message)[:500]}")
        return True
    return False


def event_object(data: Any) -> dict[str, Any] | None:
    """An SSE payload as an object; None for the `[DONE]` sentinel. Anything else raises ValueError, which the
    SSE parser counts as an event not understood (and reports once)."""
    if isinstance(data, dict):
        return data
    if data == "[DONE]":
        return None
    raise ValueError(f"unexpected event payload {str(data)[:100]!r}")


def json_response(exchange: Exchange, on_json) -> BufferedJson:
    def handle(data: Any) -> None:
        if not upstream_error(exchange, data):
            on_json(data, exchange)
    return BufferedJson(exchange, handle)


def sse_or_json(stream: Callable[[Exchange], ResponseParser], on_json) -> Callable[[Exchange, str], ResponseParser]:
    """The responder of an endpoint that answers either way: its `stream` parser for an SSE answer, else the JSON
    body, read by `on_json` (`json_response`)."""
    def responder(exchange: Exchange, content_type: str) -> ResponseParser:
        if content_type == "text/event-stream":
            return stream(exchange)
        return json_response(exchange, on_json)
    return responder


class Ignore:
    """A response that carries nothing to audit (audio bytes, file metadata)."""

    def feed(self, chunk: bytes) -> None:
        pass

    def finish(self) -> None:
        pass


def prompt_parts(value: Any, path: JsonPath, exchange: Exchange) -> list[TextPart]:
    """`prompt` / `input` fields: a string, a list of strings, or token ids (which cannot be inspected)."""
    if isinstance(value, str):
        return [TextPart(value, path)]
    if isinstance(value, list):
        parts = [TextPart(v, (*path, i)) for i, v in enumerate(value) if isinstance(v, str)]
        if len(parts) < len(value):
            exchange.warn(f"{'/'.join(map(str, path))}: token-id input not inspected")
        return parts
    if value is not None:
        exchange.warn(f"{'/'.join(map(str, path))}: unexpected {type(value).__name__}")
    return []


def content_attachment(part: dict[str, Any], warn: Warn | None = None) -> Attachment:
    """An image, audio or file content part (chat `image_url` / `input_audio` / `file`); `warn` hears why a file
    that could have been read was not (an encrypted PDF)."""
    kind = _NON_TEXT_PARTS[part["type"]]
    inner = part.get(part["type"])
    if isinstance(inner, str):  # some compatible hosts send image_url as a bare string
        inner = {"url": inner}
    if not isinstance(inner, dict):
        return Attachment(kind=kind)
    data = inner.get("url") or inner.get("data") or inner.get("file_data") or ""
    name = str(inner.get("filename") or inner.get("file_id") or "")
    mime = f"audio/{inner['format']}" if kind == "audio" and inner.get("format") else ""
    if not isinstance(data, str):
        return Attachment(kind=kind, name=name, mime_type=mime)
    if data.startswith(("http://", "https://")):
        return Attachment(kind=kind, name=name or data[:200], mime_type=mime)
    return base64_attachment(data, name, mime, kind, warn)


def function_tools(tools: Any, exchange: Exchange, path: JsonPath = ("tools",)) -> None:
    """Tool definitions in the chat shape (`{type, function: {...}}`), the flat Responses shape
    (`{type: function, name, ...}`) and built-ins (`{type: code_interpreter}`), plus legacy `functions`; `path`:
    where the list is in the body."""
    if not isinstance(tools, list):
        return
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            exchange.warn(f"tools/{i}: not understood")
            continue
        fn = tool.get("function") or tool.get("custom")
        if not isinstance(fn, dict):
            fn = tool if "name" in tool else {"name": str(tool.get("type", ""))}
        exchange.tools.append(ToolDefinition(str(fn.get("name", "")), str(fn.get("description", "") or ""),
                                             fn.get("parameters"), (*path, i)))


def function_definitions(tools: Any, exchange: Exchange) -> None:
    """Tool definitions in the chat shape only (`{type: "function", function: {name, description, parameters}}`),
    as Cohere v2 and Ollama take them: any other entry is a warning. OpenAI's own endpoints take more shapes
    (`function_tools`)."""
    for i, tool in enumerate(tools or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict):
            exchange.tools.append(ToolDefinition(str(fn.get("name", "")), str(fn.get("description", "")),
                                                 fn.get("parameters"), ("tools", i)))
        else:
            exchange.warn(f"tools/{i}: not understood")


def function_calls(raw: dict[str, Any], path: JsonPath) -> Iterator[tuple[dict[str, Any], dict[str, Any], JsonPath]]:
    """Each `tool_calls[] = {id, type: "function", function: {name, arguments}}` entry of a chat message at `path`
    (the shape OpenAI, Cohere v2 and Ollama share): the entry, its `function` object and the path of its
    `arguments`. Entries without a function object are skipped; how the arguments read is the format's call."""
    for j, tc in enumerate(raw.get("tool_calls") or []):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if isinstance(fn, dict):
            yield tc, fn, (*path, "tool_calls", j, "function", "arguments")


def tool_calls(raw: dict[str, Any], path: JsonPath) -> list[ToolCall]:
    """The tool calls of a chat message (OpenAI and Cohere v2), their arguments JSON text."""
    return [with_leaves(ToolCall(str(fn.get("name", "")), str(fn.get("arguments", "")), str(tc.get("id", "")), at))
            for tc, fn, at in function_calls(raw, path)]


def answer_calls(message: dict[str, Any]) -> Iterator[ToolCall]:
    """The tool calls of an answer's message (chat choices, Cohere v2 responses, Assistants runs), as sent; one at
    a time, so those before an entry of an unexpected shape are kept when it raises."""
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function") or {}
        yield ToolCall(str(fn.get("name", "")), str(fn.get("arguments", "")), str(tc.get("id", "")))


def grow_call(call: ToolCall, piece: dict[str, Any]) -> None:
    """One piece of a streamed tool call in the chat shape (`{id, function: {name, arguments}}`, Cohere v2 alike):
    name and arguments grow piece by piece, the id comes once."""
    fn = piece.get("function") or {}
    call.name += fn.get("name") or ""
    call.arguments += fn.get("arguments") or ""
    call.id = call.id or str(piece.get("id") or "")


def chat_message(raw: dict[str, Any], path: JsonPath, exchange: Exchange) -> None:
    """One chat-shaped message ({role, content, tool_calls, tool_call_id}) into the exchange."""
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
                message.attachments.append(content_attachment(part, exchange.warn))
    message.tool_calls.extend(tool_calls(raw, path))
    legacy = raw.get("function_call")
    if isinstance(legacy, dict):
        message.tool_calls.append(with_leaves(ToolCall(str(legacy.get("name", "")), str(legacy.get("arguments", "")),
                                                       "", (*path, "function_call", "arguments"))))
    if role in ("tool", "function"):
        result_path = (*path, "content") if isinstance(content, str) else None
        message.tool_results.append(ToolResult(str(raw.get("tool_call_id") or raw.get("name") or ""),
                                               joined(parts), result_path))
        message.parts = []
    exchange.messages.append(message)


# --- Chat Completions ------------------------------------------------------------------------------------------

def parse_chat(req: HttpRequest, exchange: Exchange) -> None:
    body = json_body(req)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise BodyError("chat completion body needs a 'messages' list")
    common(body, exchange)
    for i, raw in objects(body["messages"], "messages", exchange):
        chat_message(raw, ("messages", i), exchange)
    function_tools(body.get("tools"), exchange)
    function_tools(body.get("functions"), exchange, ("functions",))


def chat_response(data: dict[str, Any], exchange: Exchange) -> None:
    texts = []
    for choice in data.get("choices") or []:
        msg = choice.get("message") or {}
        if isinstance(msg.get("content"), str):
            texts.append(msg["content"])
        elif isinstance(msg.get("refusal"), str):
            texts.append(msg["refusal"])
        exchange.completion_tool_calls.extend(answer_calls(msg))
        exchange.finish_reason = exchange.finish_reason or str(choice.get("finish_reason") or "")
    exchange.completion = "\n".join(texts)
    exchange.model = str(data.get("model") or exchange.model)
    usage(exchange, data.get("usage"))


class ChatStream(SseParser):
    """Reassembles `chat.completion.chunk` frames: content deltas, tool-call argument deltas by index, the usage
    chunk that arrives last when `stream_options.include_usage` is set. Legacy completion chunks (`choices[].text`)
    are read by the same loop."""

    def __init__(self, exchange: Exchange):
        self.answer = Reassembly(exchange)
        super().__init__(exchange, self._on_event, self.answer.done)

    def _on_event(self, event: str, data: Any) -> None:
        data = event_object(data)
        if data is None or upstream_error(self.exchange, data):
            return
        if data.get("model"):
            self.exchange.model = str(data["model"])
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            self.answer.text.add(delta.get("content") if delta else choice.get("text"))
            for tc in delta.get("tool_calls") or []:
                grow_call(self.answer.call(int(tc.get("index", 0))), tc)
            if choice.get("finish_reason"):
                self.exchange.finish_reason = str(choice["finish_reason"])
        usage(self.exchange, data.get("usage"))


chat_responder = sse_or_json(ChatStream, chat_response)


# --- Legacy Completions ----------------------------------------------------------------------------------------

def parse_completions(req: HttpRequest, exchange: Exchange) -> None:
    """`prompt` (and the fill-in-the-middle `suffix`); a body with `messages` is chat-shaped (some compatible
    hosts, agents endpoints) and read as such."""
    body = json_body(req)
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        parse_chat(req, exchange)
        return
    if not isinstance(body, dict) or "prompt" not in body:
        raise BodyError("completions body needs a 'prompt'")
    common(body, exchange)
    parts = prompt_parts(body["prompt"], ("prompt",), exchange)
    if isinstance(body.get("suffix"), str):
        parts.append(TextPart(body["suffix"], ("suffix",)))
    exchange.messages.append(Message(role="user", parts=parts))


def completions_response(data: dict[str, Any], exchange: Exchange) -> None:
    choices = data.get("choices") or []
    if choices and isinstance(choices[0], dict) and "message" in choices[0]:
        chat_response(data, exchange)
        return
    exchange.completion = "\n".join(str(c.get("text") or "") for c in choices)
    exchange.finish_reason = str(choices[0].get("finish_reason") or "") if choices else ""
    exchange.model = str(data.get("model") or exchange.model)
    usage(exchange, data.get("usage"))


completions_responder = sse_or_json(ChatStream, completions_response)


# --- Embeddings ------------------------------------------------------------------------------------------------

def parse_embeddings(req: HttpRequest, exchange: Exchange) -> None:
    body = json_object(req, "embeddings", "input")
    common(body, exchange)
    exchange.messages.append(Message(role="user", parts=prompt_parts(body["input"], ("input",), exchange)))


def embeddings_response(data: dict[str, Any], exchange: Exchange) -> None:
    exchange.model = str(data.get("model") or exchange.model)
    usage(exchange, data.get("usage"))


def embeddings_responder(exchange: Exchange, content_type: str) -> ResponseParser:
    return json_response(exchange, embeddings_response)
