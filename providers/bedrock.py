"""Amazon Bedrock runtime: Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream.

Source [SDK]: botocore's bedrock-runtime service model; each vendor body below has its own mark (marks:
docs/providers.md). The model is the URL-encoded `modelId` in the path (`/model/{modelId}/converse`) and streaming
is chosen by the path, never by the body. Streams are `application/vnd.amazon.eventstream` binary frames
(providers/eventstream.py).

InvokeModel carries the model vendor's own JSON; the vendor is read from the model id (after an inference-profile
prefix such as `us.` or an ARN), with the body's shape as the fallback:
  anthropic.*    [SDK]          Anthropic Messages (and legacy `prompt`) body, Anthropic stream events in the chunks
  amazon.nova*   [DOC]          Converse-like body; stream chunks are `{eventName: payload}`
  amazon.titan*  [UNCONFIRMED]  `inputText`, `results[].outputText` (and Titan embeddings)
  meta.llama*    [DOC]          `prompt`, `generation` (the answer's fields [UNCONFIRMED])
  mistral.*      [UNCONFIRMED]  `prompt` → `outputs[].text`, or OpenAI-style `messages` → `choices` (whose stream
                                chunks may carry a `message` rather than a `delta`, and name `stop_reason`)
  cohere.*       [UNCONFIRMED]  Cohere v1 chat (providers/cohere.py) and Cohere embeddings
  openai.gpt-oss* [DOC]         OpenAI chat body → a chat completion object; stream chunks are chat.completion.chunk
                                objects [UNCONFIRMED]
  others (ai21, deepseek, qwen ...) [UNCONFIRMED]: OpenAI-style `messages` → `choices`
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import unquote

import orjson

from core.exchange import Attachment, Exchange, Message, TextPart, ToolCall, ToolDefinition, ToolResult
from providers import anthropic, cohere, openai_chat, uploads
from providers.base import (BodyError, BufferedJson, CompletionBuffer, DecodedStream, HttpRequest, Reassembly,
                            ResponseParser, block_message, json_body, objects, tool_call)
from providers.eventstream import EventMessage, EventStreamDecoder

_PATH = re.compile(r"^/model/(?P<model>[^/]+)/(?P<verb>converse|converse-stream|invoke|invoke-with-response-stream"
                   r"|count-tokens)$")
_GUARDRAIL_PATH = re.compile(r"^/guardrail/(?P<id>[^/]+)/version/(?P<version>[^/]+)/apply$")
_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")


class BedrockProvider:
    name = "bedrock"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if req.method == "POST" and _GUARDRAIL_PATH.match(req.path):
            return "guardrail.apply"
        m = _PATH.match(req.path) if req.method == "POST" else None
        if m is None:
            return None
        return "converse" if m["verb"].startswith("converse") else "count_tokens" if m["verb"] == "count-tokens" \
            else "invoke"

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        if operation == "guardrail.apply":
            _apply_guardrail(req, exchange)
            return
        m = _PATH.match(req.path)
        assert m is not None  # recognises() matched it
        exchange.model = unquote(m["model"])
        exchange.stream = m["verb"].endswith("-stream")
        body = json_body(req)
        if not isinstance(body, dict):
            raise BodyError("Bedrock body must be a JSON object")
        if operation == "converse":
            if not isinstance(body.get("messages"), list):
                raise BodyError("Converse body needs a 'messages' list")
            parse_converse(body, exchange)
            return
        if operation == "count_tokens":
            _count_tokens(body, exchange, req)
            return
        vendor = vendor_of(exchange.model, body)
        _INVOKE_BODIES[vendor](body, exchange, req)

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        if exchange.operation == "guardrail.apply":
            return BufferedJson(exchange, lambda data: _guardrail_response(data, exchange))
        if exchange.operation == "count_tokens":
            return BufferedJson(exchange, lambda data: _converse_usage({"inputTokens": data.get("inputTokens")},
                                                                       exchange))
        if exchange.operation == "converse":
            if content_type == "application/vnd.amazon.eventstream":
                reader = ConverseStreamReader(exchange)
                return EventStreamParser(exchange, reader.add, reader.done)
            return BufferedJson(exchange, lambda data: converse_response(data, exchange))
        reader = NativeReader(exchange, vendor_of(exchange.model, None))
        if content_type == "application/vnd.amazon.eventstream":
            return EventStreamParser(exchange, reader.add_chunk_event, reader.done)
        return BufferedJson(exchange, lambda data: (reader.add_response(data), reader.done()))


def base_model(model_id: str) -> str:
    """`anthropic.claude-3-5-sonnet-20240620-v1:0` from an inference-profile id or an ARN of either."""
    model = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    for prefix in _PROFILE_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def vendor_of(model_id: str, body: dict[str, Any] | None) -> str:
    """The native body family of a model, from its id, else from the body's keys ("openai" as the last resort)."""
    model = base_model(model_id)
    for prefix, vendor in (("anthropic.", "anthropic"), ("amazon.nova", "nova"), ("amazon.titan", "titan"),
                           ("meta.", "llama"), ("mistral.", "mistral"), ("cohere.", "cohere")):
        if model.startswith(prefix):
            return vendor
    if body is None:
        return "openai"
    if "anthropic_version" in body:
        return "anthropic"
    if "inputText" in body:
        return "titan"
    if isinstance(body.get("message"), str) or "texts" in body:
        return "cohere"
    if "messages" in body and "schemaVersion" in body:
        return "nova"
    if "messages" not in body and isinstance(body.get("prompt"), str):
        return "llama"
    return "openai"


# ---- Converse (and Nova, whose native body is Converse-shaped) -------------------------------------------------

def parse_converse(body: dict[str, Any], exchange: Exchange, prefix: tuple = ()) -> None:
    """A Converse body (or one nested at `prefix`, as in CountTokens): system blocks, messages, tool specs."""
    for i, block in enumerate(body.get("system") or []):
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            exchange.system.append(TextPart(block["text"], (*prefix, "system", i, "text")))
        elif isinstance(block, dict) and isinstance((block.get("guardContent") or {}).get("text"), dict):
            text = block["guardContent"]["text"].get("text")
            if isinstance(text, str):
                exchange.system.append(TextPart(text, (*prefix, "system", i, "guardContent", "text", "text")))
    for i, raw in objects(body.get("messages") or [], "messages", exchange):
        exchange.messages.append(_converse_message(raw, (*prefix, "messages", i), exchange))
    tool_config = body.get("toolConfig") if isinstance(body.get("toolConfig"), dict) else {}
    for i, tool in enumerate(tool_config.get("tools") or []):
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if isinstance(spec, dict):
            schema = spec.get("inputSchema")
            exchange.tools.append(ToolDefinition(str(spec.get("name", "")), str(spec.get("description", "")),
                                                 schema.get("json") if isinstance(schema, dict) else None,
                                                 (*prefix, "toolConfig", "tools", i)))


def _converse_message(raw: dict[str, Any], path: tuple, exchange: Exchange) -> Message:
    message, blocks = block_message(raw, path)  # Nova tolerates a bare string as the content
    for p, block in blocks:
        if isinstance(block.get("text"), str):
            message.parts.append(TextPart(block["text"], (*p, "text")))
        elif isinstance(block.get("toolUse"), dict):
            tu = block["toolUse"]
            message.tool_calls.append(tool_call(str(tu.get("name", "")), tu.get("input"), (*p, "toolUse", "input"),
                                                str(tu.get("toolUseId", ""))))
        elif isinstance(block.get("toolResult"), dict):
            tr = block["toolResult"]
            for k, item in enumerate(tr.get("content") or []):
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    message.tool_results.append(ToolResult(str(tr.get("toolUseId", "")), item["text"],
                                                           (*p, "toolResult", "content", k, "text")))
                elif isinstance(item, dict) and "json" in item:
                    message.tool_results.append(ToolResult(str(tr.get("toolUseId", "")), _dumps(item["json"])))
        else:
            for kind in ("image", "document", "video", "audio"):
                if isinstance(block.get(kind), dict):
                    attachment, text = _media(kind, block[kind])
                    message.attachments.append(attachment)
                    if text is not None:
                        message.parts.append(TextPart(text, (*p, kind, "source", "text")))
                    break
    return message


#: Converse document formats whose bytes are text: decoded and inspected like a text upload.
_DOCUMENT_TYPES = {"txt": "text/plain", "csv": "text/csv", "md": "text/markdown", "html": "text/html",
                   "pdf": "application/pdf", "doc": "application/msword", "xls": "application/vnd.ms-excel",
                   "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                   "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def _media(kind: str, media: dict[str, Any]) -> tuple[Attachment, str | None]:
    """An image/document/video/audio block: inline bytes (text documents decoded for inspection), the S3
    location as the name, or a document's `source.text`, returned to be an addressable prompt part."""
    source = media.get("source") if isinstance(media.get("source"), dict) else {}
    fmt = str(media.get("format") or "")
    mime = _DOCUMENT_TYPES.get(fmt, "") if kind == "document" else f"{kind}/{fmt}" if fmt else ""
    name = str(media.get("name") or "")
    if isinstance(source.get("bytes"), str):
        return uploads.base64_attachment(source["bytes"], name, mime, kind), None
    attachment = Attachment(kind, name, mime)
    s3 = source.get("s3Location")
    if isinstance(s3, dict):
        attachment.name = attachment.name or str(s3.get("uri", ""))[:500]
    text = source.get("text") if isinstance(source.get("text"), str) else None
    if text is not None:
        attachment.size, attachment.inspected = len(text.encode()), True
    return attachment, text


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _converse_usage(usage: Any, exchange: Exchange) -> None:
    if isinstance(usage, dict):
        exchange.usage.input_tokens = usage.get("inputTokens", exchange.usage.input_tokens)
        exchange.usage.output_tokens = usage.get("outputTokens", exchange.usage.output_tokens)


def converse_response(data: dict[str, Any], exchange: Exchange, text: CompletionBuffer | None = None) -> None:
    """A Converse response (also Nova's InvokeModel response): output.message.content, stopReason, usage."""
    message = (data.get("output") or {}).get("message") or {}
    texts = []
    for block in message.get("content") or []:
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            tu = block["toolUse"]
            exchange.completion_tool_calls.append(ToolCall(str(tu.get("name", "")), _dumps(tu.get("input")),
                                                           str(tu.get("toolUseId", ""))))
    if text is not None:
        text.add("\n".join(texts))
    else:
        exchange.completion = "\n".join(texts)
    exchange.finish_reason = str(data.get("stopReason") or exchange.finish_reason)
    _converse_usage(data.get("usage"), exchange)


class ConverseStreamReader(Reassembly):
    """ConverseStream events (and Nova's native stream chunks, which are the same events keyed by name)."""

    def add(self, event_type: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        index = int(data.get("contentBlockIndex", 0) or 0)
        if event_type == "contentBlockStart":
            tu = (data.get("start") or {}).get("toolUse")
            if isinstance(tu, dict):
                self.calls[index] = ToolCall(str(tu.get("name", "")), "", str(tu.get("toolUseId", "")))
        elif event_type == "contentBlockDelta":
            delta = data.get("delta") or {}
            if isinstance(delta.get("text"), str):
                self.text.add(delta["text"])
            elif isinstance(delta.get("toolUse"), dict):
                self.call(index).arguments += str(delta["toolUse"].get("input") or "")
        elif event_type == "messageStop":
            self.exchange.finish_reason = str(data.get("stopReason") or "")
        elif event_type == "metadata":
            _converse_usage(data.get("usage"), self.exchange)


class EventStreamParser(DecodedStream):
    """A response parser for the binary event stream: decodes frames, hands `(event_type, json payload)` of each
    event to `on_event`, turns exception frames into warnings, reports framing errors and truncation."""

    def __init__(self, exchange: Exchange, on_event, on_finish):
        super().__init__(exchange, EventStreamDecoder(), on_finish)
        self.on_event = on_event

    def dispatch(self, frame: EventMessage) -> None:
        try:
            payload = orjson.loads(frame.payload) if frame.payload else {}
        except orjson.JSONDecodeError:
            self.bad += 1
            return
        if frame.message_type != "event":
            detail = payload.get("message", "") if isinstance(payload, dict) else ""
            self.exchange.warn(f"stream {frame.message_type}: {frame.event_type}: {str(detail)[:500]}")
            return
        self.hand_on(self.on_event, frame.event_type, payload)

    def flush(self) -> None:
        error = self.decoder.finish()  # it holds no frame at the end, only why the stream ended badly
        if error:
            self.exchange.warn(f"event stream: {error}")


def _count_tokens(body: dict[str, Any], exchange: Exchange, req: HttpRequest) -> None:
    """CountTokens: `input.converse` (a Converse body) or `input.invokeModel.body` (a native body as a base64
    blob, read for inspection; its parts cannot be rewritten in place, so they carry no path)."""
    given = body.get("input") if isinstance(body.get("input"), dict) else {}
    if isinstance(given.get("converse"), dict):
        parse_converse(given["converse"], exchange, ("input", "converse"))
        return
    blob = (given.get("invokeModel") or {}).get("body") if isinstance(given.get("invokeModel"), dict) else None
    if not isinstance(blob, str):
        raise BodyError("count-tokens body needs 'input.converse' or 'input.invokeModel.body'")
    try:
        raw = base64.b64decode(blob, validate=True)
        native = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BodyError("count-tokens invokeModel body is not base64 JSON") from None
    if not isinstance(native, dict):
        raise BodyError("count-tokens invokeModel body must be a JSON object")
    inner = HttpRequest(req.method, req.host, req.path, req.query, req.headers, raw)
    _INVOKE_BODIES[vendor_of(exchange.model, native)](native, exchange, inner)
    for part in exchange.system:
        part.path = None
    for message in exchange.messages:
        for item in (*message.parts, *message.tool_calls, *message.tool_results):
            item.path = None


def _apply_guardrail(req: HttpRequest, exchange: Exchange) -> None:
    """ApplyGuardrail: text checked by a Bedrock guardrail, a user's input or a model's output (`source`)."""
    m = _GUARDRAIL_PATH.match(req.path)
    assert m is not None  # recognises() matched it
    exchange.model = f"guardrail:{unquote(m['id'])}/{m['version']}"
    body = json_body(req)
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise BodyError("ApplyGuardrail body needs a 'content' list")
    role = "assistant" if body.get("source") == "OUTPUT" else "user"
    message = Message(role)
    for i, block in enumerate(body["content"]):
        text = block.get("text") if isinstance(block, dict) else None
        if isinstance(text, dict) and isinstance(text.get("text"), str):
            message.parts.append(TextPart(text["text"], ("content", i, "text", "text")))
    exchange.messages.append(message)


def _guardrail_response(data: Any, exchange: Exchange) -> None:
    """The guardrail's action and the text it returns in place of the input (masked or a canned message)."""
    exchange.finish_reason = str(data.get("action") or "")
    exchange.completion = "\n".join(str(o.get("text") or "") for o in data.get("outputs") or [])


# ---- InvokeModel native bodies ---------------------------------------------------------------------------------

def _anthropic_body(body: dict[str, Any], exchange: Exchange, req: HttpRequest) -> None:
    """Anthropic Messages (or legacy `prompt`) body as Bedrock takes it: providers/anthropic.py reads it; model and
    stream stay as the URL set them."""
    anthropic.parse_body(body, exchange)


def _nova_body(body: dict[str, Any], exchange: Exchange, req: HttpRequest) -> None:
    if not isinstance(body.get("messages"), list):
        raise BodyError("Nova body needs a 'messages' list")
    parse_converse(body, exchange)


def _titan_body(body: dict[str, Any], exchange: Exchange, req: HttpRequest) -> None:
    if not isinstance(body.get("inputText"), str):
        raise BodyError("Titan body needs an 'inputText' string")
    exchange.messages.append(Message("user", [TextPart(body["inputText"], ("inputText",))]))


def _prompt_body(body: dict[str, Any], exchange: Exchange, req: HttpRequest) -> None:
    """Llama and Mistral text bodies: one templated `prompt` (Mistral chat models also take `messages`)."""
    if isinstance(body.get("messages"), list):
        _openai_body(body, exchange, req)
        return
    if not isinstance(body.get("prompt"), str):
        raise BodyError("body needs a 'prompt' string")
    exchange.messages.append(Message("user", [TextPart(body["prompt"], ("prompt",))]))


def _cohere_body(body: dict[str, Any], exchange: Exchange, req: HttpRequest) -> None:
    if isinstance(body.get("texts"), list):  # Cohere embeddings
        exchange.messages.append(Message("user", [TextPart(t, ("texts", i)) for i, t in enumerate(body["texts"])
                                                  if isinstance(t, str)]))
        return
    cohere.parse_v1_chat(body, exchange)


def _openai_body(body: dict[str, Any], exchange: Exchange, req: HttpRequest) -> None:
    """OpenAI-style `messages` (gpt-oss, AI21 Jamba, DeepSeek, Qwen, Mistral chat): the OpenAI chat parser, with
    the model kept from the path."""
    model = exchange.model
    openai_chat.parse_chat(req, exchange)
    exchange.model = model
    exchange.stream = req.path.endswith("-stream")


_INVOKE_BODIES = {"anthropic": _anthropic_body, "nova": _nova_body, "titan": _titan_body, "llama": _prompt_body,
                  "mistral": _prompt_body, "cohere": _cohere_body, "openai": _openai_body}


_ANTHROPIC_EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop", "ping", "error"}


class NativeReader:
    """Folds InvokeModel responses and InvokeModelWithResponseStream chunks of every vendor family.

    Each stream chunk is one native JSON object (base64 in the event's `bytes`); the same object shapes, whole,
    are the non-streamed responses. `amazon-bedrock-invocationMetrics` in the last chunk carries token counts for
    every vendor. A model id that names no vendor (a provisioned-model ARN) is read by shape: Anthropic objects
    by their `type`, the rest by the generic keys."""

    def __init__(self, exchange: Exchange, vendor: str):
        self.exchange = exchange
        self.vendor = vendor
        self.text = CompletionBuffer(exchange)
        self.converse = ConverseStreamReader(exchange, self.text)
        # family readers that own the completion, created when the first object of their family arrives
        self.anthropic: anthropic.MessageEvents | None = None
        self.cohere: cohere.V1StreamReader | None = None

    def add_chunk_event(self, event_type: str, payload: Any) -> None:
        if event_type != "chunk" or not isinstance(payload, dict):
            return
        try:
            native = orjson.loads(base64.b64decode(payload.get("bytes") or "", validate=True))
        except (binascii.Error, ValueError, orjson.JSONDecodeError):
            self.exchange.warn("stream chunk: bytes are not base64 JSON")
            return
        self.add_stream_object(native)

    def add_stream_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        ex = self.exchange
        metrics = obj.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            ex.usage.input_tokens = metrics.get("inputTokenCount", ex.usage.input_tokens)
            ex.usage.output_tokens = metrics.get("outputTokenCount", ex.usage.output_tokens)
        if self.vendor == "anthropic" or (self.vendor == "openai" and obj.get("type") in _ANTHROPIC_EVENTS):
            self.anthropic = self.anthropic or anthropic.MessageEvents(ex)
            self.anthropic.event(obj)
        elif self.vendor == "nova":
            for name, data in obj.items():
                if name != "amazon-bedrock-invocationMetrics":
                    self.converse.add(name, data)
        elif self.vendor == "cohere":
            self.cohere = self.cohere or cohere.V1StreamReader(ex)
            self.cohere.add(obj)
        else:
            self._generic(obj, delta=True)

    def add_response(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if self.vendor == "anthropic" or (self.vendor == "openai" and data.get("type") == "message"):
            anthropic.message_response(data, self.exchange)
            self.text.add(self.exchange.completion)  # done() writes the buffer back
        elif self.vendor == "nova":
            converse_response(data, self.exchange, self.text)
        elif self.vendor == "cohere":
            if "embeddings" not in data:
                cohere.v1_response(data, self.exchange)
                self.text.add(self.exchange.completion)
        else:
            self._generic(data, delta=False)

    def _generic(self, data: dict[str, Any], delta: bool) -> None:
        """Llama (`generation`), Titan (`outputText`, `results[]`), Mistral (`outputs[]`), OpenAI-style
        (`choices[]` with `message`, `delta` or `text`, and their tool calls); token counts under each family's
        names."""
        ex = self.exchange
        if isinstance(data.get("generation"), str):
            self.text.add(data["generation"])
        if isinstance(data.get("outputText"), str):
            self.text.add(data["outputText"])
        for result in data.get("results") or []:
            self.text.add(result.get("outputText"))
            ex.finish_reason = str(result.get("completionReason") or ex.finish_reason)
            if isinstance(result.get("tokenCount"), int):
                ex.usage.output_tokens = result["tokenCount"]
        for output in data.get("outputs") or []:
            self.text.add(output.get("text"))
            ex.finish_reason = str(output.get("stop_reason") or ex.finish_reason)
        for choice in data.get("choices") or []:
            # a stream's chunk may carry the `message` whole rather than a `delta` (Mistral Large [UNCONFIRMED])
            pieces = delta and isinstance(choice.get("delta"), dict)
            message = choice.get("delta" if pieces else "message") or {}
            self.text.add(message.get("content") if isinstance(message.get("content"), str) else choice.get("text"))
            if pieces:
                for tc in message.get("tool_calls") or []:
                    openai_chat.grow_call(self.converse.call(int(tc.get("index", 0))), tc)
            else:
                ex.completion_tool_calls.extend(openai_chat.answer_calls(message))
            ex.finish_reason = str(choice.get("finish_reason") or choice.get("stop_reason") or ex.finish_reason)
        for key in ("stop_reason", "completionReason"):
            if data.get(key):
                ex.finish_reason = str(data[key])
        for key, field in (("prompt_token_count", "input_tokens"), ("inputTextTokenCount", "input_tokens"),
                           ("generation_token_count", "output_tokens"),
                           ("totalOutputTextTokenCount", "output_tokens")):
            if isinstance(data.get(key), int):
                setattr(ex.usage, field, data[key])
        usage = data.get("usage")
        if isinstance(usage, dict):
            ex.usage.input_tokens = usage.get("prompt_tokens", ex.usage.input_tokens)
            ex.usage.output_tokens = usage.get("completion_tokens", ex.usage.output_tokens)
        if data.get("model"):
            ex.model = str(data["model"])

    def done(self) -> None:
        if self.anthropic is not None:
            self.anthropic.done()
            return
        if self.cohere is not None:
            self.cohere.done()
            return
        self.converse.done()  # the text it writes is this reader's: the two share it


PROVIDER = BedrockProvider()
