"""Google Gemini wire format: the Gemini Developer API, Vertex AI, and the Gemini CLI / Code Assist envelope.

Source [SDK]: google-genai, and Google's docs for the two stream forms; the Code Assist envelope is [OBS] (marks:
docs/providers.md). The model and the stream flag live in the URL (`models/{model}:streamGenerateContent`), not the
body. A stream is SSE with `?alt=sse`, otherwise one JSON array whose elements arrive over time; both are
reassembled element by element as the bytes pass, never buffered whole.

The Code Assist backend (cloudcode-pa.googleapis.com, used by the Gemini CLI) wraps the same body in
`{model, project, request: {...}}` and its answers in `{response: {...}}`.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote

import orjson

from core.exchange import Attachment, Exchange, Message, TextPart, ToolCall, ToolDefinition, ToolResult
from providers import uploads
from providers.base import (BodyError, BufferedJson, HttpRequest, Reassembly, ResponseParser, SseParser, json_body,
                            tool_call)

_MODEL_PATH = re.compile(r"^/(?:.*/)?(?:models|tunedModels)/(?P<model>[^/:]+):(?P<verb>[A-Za-z]+)$")
_CODE_ASSIST_PATH = re.compile(r"^/v1internal:(?P<verb>[A-Za-z]+)$")
_UPLOAD_PATH = re.compile(r"^/upload/v1(?:beta|alpha)?/files$")
_CACHE_PATH = re.compile(r"^/v1[a-z0-9]*/(?:projects/[^/]+/locations/[^/]+/)?cachedContents$")
_VERBS = {"generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents", "predict",
          "predictLongRunning"}
#: Text fields of `:predict` instances: Imagen and Veo prompts, Vertex text-embedding content and title.
_INSTANCE_TEXT = ("prompt", "content", "text", "title")
_ROLES = {"model": "assistant", "function": "tool"}
_UPPER = re.compile(r"([A-Z])")


@functools.lru_cache(maxsize=64)
def _snake(name: str) -> str:
    return _UPPER.sub(r"_\1", name).lower()


def _key(obj: dict[str, Any], name: str) -> str:
    """The key a request field is under. The API takes proto3 JSON, which accepts the camelCase name and the
    original snake_case one alike; a parser that read only one spelling would let the other pass uninspected."""
    return name if name in obj else _snake(name)


def _get(obj: dict[str, Any], name: str) -> Any:
    return obj.get(_key(obj, name))


class GeminiProvider:
    name = "gemini"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if req.method != "POST":
            return None
        if _UPLOAD_PATH.match(req.path):
            return "files.upload"
        if _CACHE_PATH.match(req.path):
            return "cachedContents"  # context caching: a prompt prefix stored for later requests
        m = _MODEL_PATH.match(req.path) or _CODE_ASSIST_PATH.match(req.path)
        if m is None or m["verb"] not in _VERBS:
            return None
        return "generateContent" if m["verb"] == "streamGenerateContent" else m["verb"]

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        if operation == "files.upload":
            exchange.messages.append(Message("user", attachments=[_upload(req)]))
            return
        body = json_body(req)
        if not isinstance(body, dict):
            raise BodyError("Gemini body must be a JSON object")
        m = _MODEL_PATH.match(req.path)
        exchange.stream = req.path.endswith(":streamGenerateContent")
        prefix: tuple = ()
        if m is not None:
            exchange.model = unquote(m["model"])
        elif operation == "cachedContents":
            exchange.model = str(body.get("model") or "").rpartition("models/")[2]
        else:  # Code Assist envelope: the Gemini body is under `request`, the model beside it
            exchange.model = str(body.get("model") or "")
            if not isinstance(body.get("request"), dict):
                raise BodyError("Code Assist body needs a 'request' object")
            body, prefix = body["request"], ("request",)
        if operation in ("predict", "predictLongRunning"):
            _instances(body, exchange)
            return
        if operation == "embedContent":
            if not isinstance(body.get("content"), dict):
                raise BodyError("embedContent body needs a 'content' object")
            exchange.messages.append(_content(body.get("content"), (*prefix, "content"), exchange, "user"))
            return
        if operation == "batchEmbedContents":
            requests = body.get("requests")
            if not isinstance(requests, list):
                raise BodyError("batchEmbedContents body needs a 'requests' list")
            for i, r in enumerate(requests):
                if isinstance(r, dict):
                    exchange.messages.append(_content(r.get("content"), (*prefix, "requests", i, "content"),
                                                      exchange, "user"))
            return
        if operation == "countTokens" and isinstance(_get(body, "generateContentRequest"), dict):
            key = _key(body, "generateContentRequest")
            body, prefix = body[key], (*prefix, key)
        contents = body.get("contents")
        if operation in ("generateContent", "cachedContents") and not isinstance(contents, list):
            raise BodyError(f"{operation} body needs a 'contents' list")
        system_key = _key(body, "systemInstruction")
        system = body.get(system_key)
        if isinstance(system, str):
            exchange.system.append(TextPart(system, (*prefix, system_key)))
        elif system is not None:
            exchange.system.extend(_content(system, (*prefix, system_key), exchange, "system").parts)
        for i, content in enumerate(contents or []):
            exchange.messages.append(_content(content, (*prefix, "contents", i), exchange, "user"))
        for i, tool in enumerate(body.get("tools") or []):
            if not isinstance(tool, dict):
                exchange.warn(f"tools/{i}: not an object")
                continue
            key = _key(tool, "functionDeclarations")
            for j, decl in enumerate(_get(tool, "functionDeclarations") or []):
                if isinstance(decl, dict):
                    exchange.tools.append(ToolDefinition(
                        str(decl.get("name", "")), str(decl.get("description", "")),
                        decl.get("parameters") or _get(decl, "parametersJsonSchema"), (*prefix, "tools", i, key, j)))

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        if exchange.operation == "files.upload":
            return BufferedJson(exchange, lambda data: _upload_response(data, exchange))
        reader = ResponseReader(exchange)
        if content_type == "text/event-stream":
            return SseParser(exchange, lambda _event, data: reader.add(data), reader.done)
        if exchange.stream:
            return JsonArrayParser(exchange, reader.add, reader.done)
        return BufferedJson(exchange, lambda data: (reader.add(data), reader.done()))


def _instances(body: dict[str, Any], exchange: Exchange) -> None:
    """`:predict` bodies (Imagen, Veo, Vertex embeddings): the text fields of each instance, and its images."""
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise BodyError("predict body needs an 'instances' list")
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            continue
        message = Message("user", [TextPart(instance[k], ("instances", i, k)) for k in _INSTANCE_TEXT
                                   if isinstance(instance.get(k), str)])
        for key in ("image", "referenceImage"):
            image = instance.get(key)
            if isinstance(image, dict) and isinstance(_get(image, "bytesBase64Encoded"), str):
                message.attachments.append(uploads.base64_attachment(
                    _get(image, "bytesBase64Encoded"), "", str(_get(image, "mimeType") or ""), "image"))
        exchange.messages.append(message)


def _upload(req: HttpRequest) -> Attachment:
    """Files API, resumable protocol. The `start` request names the file (JSON metadata and X-Goog-Upload-Header-*
    headers); the `upload` requests that follow carry its bytes, with neither name nor type. Those bytes are
    inspected when they are text; tying them to the name would take the upload id of another request."""
    command = req.headers.get("x-goog-upload-command", "")
    if "upload" in command or req.content_type not in ("application/json", ""):
        attachment = uploads.file_attachment("", "text/plain", len(req.body), req.body)  # text if it decodes as text
        attachment.mime_type = ""
        attachment.name = f"upload offset {req.headers.get('x-goog-upload-offset', '0')}"
        return attachment
    try:
        meta = orjson.loads(req.body) if req.body else {}
    except orjson.JSONDecodeError as e:
        raise BodyError(f"file metadata: invalid JSON: {e}") from None
    file = meta.get("file") if isinstance(meta, dict) and isinstance(meta.get("file"), dict) else {}
    mime = str(_get(file, "mimeType") or req.headers.get("x-goog-upload-header-content-type", ""))
    size = _get(file, "sizeBytes") or req.headers.get("x-goog-upload-header-content-length") or 0
    return Attachment(_kind(mime), str(_get(file, "displayName") or file.get("name") or ""), mime,
                      int(size) if str(size).isdigit() else 0)


def _upload_response(data: Any, exchange: Exchange) -> None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        exchange.warn(f"upstream error: {str(data['error'].get('message', ''))[:500]}")


def _content(raw: Any, path: tuple, exchange: Exchange, default_role: str) -> Message:
    """A Gemini `Content` ({role, parts[]}) as a Message; unknown parts become warnings."""
    if not isinstance(raw, dict):
        exchange.warn(f"{'/'.join(map(str, path))}: not a Content object")
        return Message(role=default_role)
    role = str(raw.get("role") or default_role)
    message = Message(role=_ROLES.get(role, role))
    parts = raw.get("parts")
    if not isinstance(parts, list):
        if parts is not None:
            exchange.warn(f"{'/'.join(map(str, path))}/parts: not a list")
        return message
    for j, part in enumerate(parts):
        p = (*path, "parts", j)
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            message.parts.append(TextPart(part["text"], (*p, "text")))
        elif isinstance(_get(part, "inlineData"), dict):
            message.attachments.append(_inline(_get(part, "inlineData")))
        elif isinstance(_get(part, "fileData"), dict):
            fd = _get(part, "fileData")
            mime = str(_get(fd, "mimeType") or "")
            message.attachments.append(Attachment(_kind(mime), str(_get(fd, "fileUri") or "")[:500], mime))
        elif isinstance(_get(part, "functionCall"), dict):
            key = _key(part, "functionCall")
            fc = part[key]
            message.tool_calls.append(tool_call(str(fc.get("name", "")), fc.get("args"), (*p, key, "args"),
                                                str(fc.get("id") or "")))
        elif isinstance(_get(part, "functionResponse"), dict):
            fr = _get(part, "functionResponse")
            message.tool_results.append(ToolResult(str(fr.get("id") or fr.get("name") or ""),
                                                   _json(fr.get("response"))))
    return message


def _kind(mime: str) -> str:
    return "document" if mime == "application/pdf" else uploads.kind_of(mime)


def _inline(data: dict[str, Any]) -> Attachment:
    """Inline base64 data: its decoded size, and its text when it is text-like (providers/uploads.py rules)."""
    mime = str(_get(data, "mimeType") or "")
    b64 = data.get("data") if isinstance(data.get("data"), str) else ""
    return uploads.base64_attachment(b64, str(_get(data, "displayName") or ""), mime, _kind(mime))


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


class ResponseReader(Reassembly):
    """Folds GenerateContentResponse objects (one, or one per stream element) into the exchange: answer text
    without thought parts, function calls, the last finish reason and usage, the model version."""

    def add(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if isinstance(data.get("response"), dict) and "candidates" not in data:
            data = data["response"]  # Code Assist envelope
        if isinstance(data.get("error"), dict):
            self.exchange.warn(f"upstream error: {str(data['error'].get('message', ''))[:500]}")
            return
        ex = self.exchange
        for candidate in data.get("candidates") or []:
            content = candidate.get("content") or {}
            for part in content.get("parts") or []:
                if part.get("thought"):
                    continue
                if isinstance(part.get("text"), str):
                    self.text.add(part["text"])
                elif isinstance(part.get("functionCall"), dict):
                    fc = part["functionCall"]
                    ex.completion_tool_calls.append(ToolCall(str(fc.get("name", "")), _json(fc.get("args")),
                                                             str(fc.get("id") or "")))
            if candidate.get("finishReason"):
                ex.finish_reason = str(candidate["finishReason"])
        block = (data.get("promptFeedback") or {}).get("blockReason")
        if block:
            ex.finish_reason = ex.finish_reason or f"blocked:{block}"
            ex.warn(f"prompt blocked by the provider: {block}")
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            ex.usage.input_tokens = usage.get("promptTokenCount", ex.usage.input_tokens)
            ex.usage.output_tokens = usage.get("candidatesTokenCount", ex.usage.output_tokens)
        if isinstance(data.get("totalTokens"), int):  # countTokens
            ex.usage.input_tokens = data["totalTokens"]
        if data.get("modelVersion"):
            ex.model = str(data["modelVersion"])


_JSON_TOKENS = re.compile(rb'["\\{}\[\]]')


class JsonArrayParser:
    """Incremental reader of a streamed JSON array (`[{...},\\n{...}]`), handing each element to `on_element` as
    soon as its closing brace arrives. A bare object (an error answer) counts as one element.

    It scans only the structural bytes (quotes, backslashes, brackets), keeping the state of strings and nesting
    between chunks. An element larger than MAX_ELEMENT is dropped with a warning; bytes that break the structure
    stop the reading with a warning, the client's stream is unaffected."""

    MAX_ELEMENT = 4 * 1024 * 1024

    def __init__(self, exchange: Exchange, on_element, on_finish=None):
        self.exchange = exchange
        self.on_element = on_element
        self.on_finish = on_finish
        self.buf = bytearray()  # bytes of the current element (or of nothing, between elements)
        self.depth = 0  # nesting including the outer array
        self.base = 0  # 1 inside the outer array, 0 for a bare object
        self.in_string = False
        self.escaped = False
        self.skipping = False  # the current element is too large: wait for its end
        self.broken = ""
        self.bad_elements = 0

    def feed(self, chunk: bytes) -> None:
        if self.broken:
            return
        start = 0  # where the current element starts in this chunk (after the last element ended)
        pos = 0
        for m in _JSON_TOKENS.finditer(chunk):
            i = m.start()
            c = chunk[i]
            if self.escaped:
                self.escaped = False
                if i == pos:  # the escaped character itself is structural: skip it
                    pos = i + 1
                    continue
            pos = i + 1
            if self.in_string:
                if c == 0x5C:  # backslash
                    self.escaped = True
                elif c == 0x22:
                    self.in_string = False
                continue
            if c == 0x22:
                self.in_string = True
            elif c in (0x7B, 0x5B):  # { [
                if self.depth == 0 and c == 0x5B:
                    self.base = 1
                    self.depth = 1
                    start = i + 1
                    continue
                if self.depth == self.base:
                    start = i
                    self.buf.clear()
                self.depth += 1
            else:  # } ]
                self.depth -= 1
                if self.depth < 0:
                    self.broken = "unbalanced brackets"
                    self.exchange.warn(f"stream: not a JSON array ({self.broken})")
                    return
                if self.depth == self.base and c == 0x7D:
                    self._element(chunk[start:i + 1])
                    start = i + 1
        if self.depth > self.base:
            self._keep(chunk[start:])
        if self.escaped and pos < len(chunk):
            self.escaped = False  # the escaped character was a plain one in this chunk

    def _keep(self, data: bytes) -> None:
        if self.skipping:
            return
        if len(self.buf) + len(data) > self.MAX_ELEMENT:
            self.exchange.warn(f"stream: element larger than {self.MAX_ELEMENT} bytes, not parsed")
            self.buf.clear()
            self.skipping = True
            return
        self.buf += data

    def _element(self, tail: bytes) -> None:
        if self.skipping:
            self.skipping = False
            self.buf.clear()
            return
        if len(self.buf) + len(tail) > self.MAX_ELEMENT:
            self.exchange.warn(f"stream: element larger than {self.MAX_ELEMENT} bytes, not parsed")
            self.buf.clear()
            return
        data = bytes(self.buf) + tail
        self.buf.clear()
        try:
            self.on_element(orjson.loads(data))
        except orjson.JSONDecodeError:
            self.bad_elements += 1
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            self.bad_elements += 1

    def finish(self) -> None:
        if not self.broken and (self.depth > 0 or self.in_string):
            self.exchange.warn("stream: truncated JSON array")
        if self.bad_elements:
            self.exchange.warn(f"stream: {self.bad_elements} elements not understood")
        if self.on_finish:
            self.on_finish()


PROVIDER = GeminiProvider()
