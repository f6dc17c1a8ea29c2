"""What every provider parser implements, and the pieces they share.

A provider family (OpenAI, Anthropic, Gemini, ...) is one module exposing a `Provider`. The registry
(`providers/__init__.py`) asks each provider whether it recognises a request (by path and body shape, with the
catalog's format hints as a tie-breaker), then uses it to build the `Exchange` from the request and to reassemble
the response, fed chunk by chunk whether it was streamed or not.

Parsers never raise on hostile input: they record what they could not understand in `Exchange.warnings` and set
`Exchange.parsed = False`, so the exchange is still decided and audited.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson

from core.exchange import Exchange, JsonPath, Message, TextPart, ToolCall

#: Typed content blocks of a message, each with its JSON path (`block_message`).
Blocks = list[tuple[JsonPath, dict[str, Any]]]
#: Reassembled completion text is capped: a runaway stream must not grow the gateway's memory without bound.
MAX_COMPLETION_CHARS = 1_000_000


@dataclass(slots=True)
class HttpRequest:
    """The parts of an HTTP request a parser may look at; built from a mitmproxy flow by the addon."""

    method: str
    host: str
    path: str  # without the query string
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    @classmethod
    def from_url_parts(cls, method: str, host: str, path_and_query: str, headers: dict[str, str],
                       body: bytes) -> HttpRequest:
        path, _, qs = path_and_query.partition("?")
        return cls(method.upper(), host.lower(), path, dict(parse_qsl(qs)),
                   {k.lower(): v for k, v in headers.items()}, body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def folded_headers(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """What `dict(headers)` of mitmproxy's Headers gives (each name under its first spelling, its values joined by
    ", "), in one pass over the raw fields: mitmproxy's looks every name up again across all the fields, about
    50 us for a dozen headers, on every request."""
    names: dict[bytes, str] = {}
    values: dict[bytes, list[str]] = {}
    for name, value in fields:
        key = name.lower()
        text = value.decode("utf-8", "surrogateescape")
        if key in values:
            values[key].append(text)
        else:
            names[key], values[key] = name.decode("utf-8", "surrogateescape"), [text]
    return {names[key]: ", ".join(v) for key, v in values.items()}


class BodyError(ValueError):
    """The body is not what this provider's format requires."""


def json_body(req: HttpRequest) -> Any:
    """The request body as JSON; BodyError with a short, quotable reason otherwise."""
    if not req.body:
        raise BodyError("empty body")
    try:
        return orjson.loads(req.body)
    except orjson.JSONDecodeError as e:
        raise BodyError(f"invalid JSON: {e}") from None


class ResponseParser(Protocol):
    """Reassembles a response, fed in the chunks it arrives in; writes completion, usage and finish into the
    exchange. `feed` must be cheap (it runs on the proxy's event loop for every chunk) and must never raise."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...


class Provider(Protocol):
    name: str

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        """The operation (e.g. `chat.completions`) if this provider understands the request, else None."""

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        """Fill the exchange from the request; raise BodyError when the body is malformed."""

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        """A parser for this exchange's response body with the given content type."""


def text_parts(content: Any, path: JsonPath, exchange: Exchange, text_types: tuple[str, ...] = ("text",),
               text_key: str = "text") -> list[TextPart]:
    """Text of a content field that is either a string or a list of typed parts, each with its JSON path.
    Non-text parts are the caller's business; unknown shapes become a warning rather than an error."""
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content, path)]
    if not isinstance(content, list):
        exchange.warn(f"{'/'.join(map(str, path))}: unexpected content type {type(content).__name__}")
        return []
    out = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            out.append(TextPart(part, (*path, i)))
        elif isinstance(part, dict) and part.get("type") in text_types and isinstance(part.get(text_key), str):
            out.append(TextPart(part[text_key], (*path, i, text_key)))
    return out


def block_message(raw: dict[str, Any], path: JsonPath, default_role: str = "") -> tuple[Message, Blocks]:
    """A message (`{role, content}` at `path`) in the formats whose content is either the text itself or a list of
    typed blocks (Anthropic, OpenAI Responses, Bedrock Converse): the Message with its role, and its one text part
    when the content is text; and the blocks that are objects, each with its path, for the format to read. Other
    content gives no blocks; whether it deserves a warning is the format's call."""
    message = Message(role=str(raw.get("role", default_role)))
    content = raw.get("content")
    if isinstance(content, str):
        message.parts.append(TextPart(content, (*path, "content")))
        return message, []
    blocks = content if isinstance(content, list) else []
    return message, [((*path, "content", j), block) for j, block in enumerate(blocks) if isinstance(block, dict)]


def json_leaves(value: Any, path: JsonPath) -> list[TextPart]:
    """Every string and number inside a JSON value, with its path (depth-first, in document order): the parts of
    a tool call whose arguments are an object rather than JSON text (Anthropic `input`, Gemini `args`, Bedrock
    `toolUse.input`), so DLP scans each value and redaction rewrites the strings in place. Numbers are scanned too
    (a card number sent as a number); redaction cannot rewrite them, so a finding there blocks. Each value's key is
    its `context`, scanned in front of it: under `"password"` a value is a secret that alone it may not look like.
    Keys are parts of their own, without a path: a value written as a key is found, and cannot be redacted."""
    out: list[TextPart] = []
    stack: list[tuple[Any, JsonPath, str]] = [(value, path, "")]
    while stack:
        node, at, key = stack.pop()
        if isinstance(node, str):
            out.append(TextPart(node, at, key))
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, (int, float)):
            out.append(TextPart(json.dumps(node), at, key))
        elif isinstance(node, dict):
            out.extend(TextPart(str(k)) for k in node)  # keys are scanned too; having no path, a finding there blocks
            stack.extend(reversed([(v, (*at, k), str(k)) for k, v in node.items()]))
        elif isinstance(node, list):  # items keep the key of their list
            stack.extend(reversed([(v, (*at, i), key) for i, v in enumerate(node)]))
    return out


def tool_call(name: str, arguments: Any, path: JsonPath, call_id: str = "") -> ToolCall:
    """A tool call whose arguments sit at `path`, as a JSON object or as JSON text: scanned value by value (leaves)
    when they are either, else as the text sent."""
    if isinstance(arguments, (dict, list)):
        return ToolCall(name, orjson.dumps(arguments, default=str).decode(), call_id, path,
                        json_leaves(arguments, path), arguments)
    return with_leaves(ToolCall(name, "" if arguments is None else str(arguments), call_id, path))


def with_leaves(call: ToolCall) -> ToolCall:
    """A tool call whose arguments are JSON text in a string (OpenAI `function.arguments`) gets that JSON's values
    as leaves, their paths running on into the string (dlp.redact rewrites the string as redacted JSON). Scanned
    as JSON text, escapes (`\\n`, `\\"`) would hide line structure and context from DLP; arguments that do not
    parse (cut off, not JSON) stay one part, the text as sent."""
    if call.path is None or not call.arguments.lstrip().startswith(("{", "[")):
        return call
    try:  # the standard parser: integers of any size stay exact; a repeated key is refused (_unique)
        value = json.loads(call.arguments, object_pairs_hook=_unique)
    except (ValueError, RecursionError):
        return call
    if isinstance(value, (dict, list)):
        call.leaves, call.value = json_leaves(value, call.path), value
    return call


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys all differ. With a repeated key, a parser keeps one of the values while the tool may
    read the other: such arguments are scanned as the text sent, never as the parsed values."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("repeated key")
    return dict(pairs)


def objects(items: Any, what: str, exchange: Exchange) -> Iterator[tuple[int, dict]]:
    """The object elements of a JSON list, with their indexes; any other element is a warning, not an error."""
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if isinstance(item, dict):
            yield i, item
        else:
            exchange.warn(f"{what}/{i}: not an object")


class CompletionBuffer:
    """Accumulates completion text up to MAX_COMPLETION_CHARS and notes truncation once."""

    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.pieces: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, text: str | None) -> None:
        if not text or self.truncated:
            return
        if self.size + len(text) > MAX_COMPLETION_CHARS:
            text = text[: MAX_COMPLETION_CHARS - self.size]
            self.truncated = True
            self.exchange.warn(f"completion truncated at {MAX_COMPLETION_CHARS} characters for the audit")
        self.pieces.append(text)
        self.size += len(text)

    def text(self) -> str:
        return "".join(self.pieces)


class Reassembly:
    """The answer of one response, built as its objects arrive (the one object of a plain body; each event, line,
    element or chunk of a stream): the text, capped, and the tool calls a stream sends in pieces, by the index it
    gives each. Every family's reader builds on it, so `done` writes every answer the same way: the text, and the
    streamed calls in index order after any the reader listed whole. `text` may be shared with an enclosing
    reader (Bedrock's native streams carry Converse events)."""

    def __init__(self, exchange: Exchange, text: CompletionBuffer | None = None):
        self.exchange = exchange
        self.text = text or CompletionBuffer(exchange)
        self.calls: dict[int, ToolCall] = {}

    def call(self, index: int) -> ToolCall:
        """The tool call streamed at `index`, begun empty by its first piece."""
        return self.calls.setdefault(index, ToolCall("", ""))

    def done(self) -> None:
        self.exchange.completion = self.text.text()
        self.exchange.completion_tool_calls += [self.calls[i] for i in sorted(self.calls)]


class CappedBody:
    """A response body's bytes, collected up to `cap`: the chunk that would pass it is not kept, nor any after it,
    and the exchange is warned once. `keep`: what came before the cap stays (to be read as far as it goes), else it
    is dropped too."""

    def __init__(self, exchange: Exchange, cap: int, warning: str, keep: bool = True):
        self.exchange, self.cap, self.warning, self.keep = exchange, cap, warning, keep
        self.data = bytearray()
        self.over = False

    def add(self, chunk: bytes) -> None:
        if self.over:
            return
        if len(self.data) + len(chunk) > self.cap:
            self.over = True
            self.exchange.warn(self.warning)
            if not self.keep:
                self.data.clear()
            return
        self.data += chunk

    def take(self) -> bytearray:
        """What was kept, and the buffer emptied."""
        data, self.data = self.data, bytearray()
        return data


class BufferedJson:
    """A response parser for non-streamed JSON bodies: collects bytes (capped) and hands the JSON to `on_json`."""

    MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, exchange: Exchange, on_json):
        self.exchange = exchange
        self.on_json = on_json
        self.body = CappedBody(exchange, self.MAX_BYTES, f"response larger than {self.MAX_BYTES} bytes: not parsed",
                               keep=False)

    def feed(self, chunk: bytes) -> None:
        self.body.add(chunk)

    def finish(self) -> None:
        if self.body.over or not self.body.data:
            return
        try:
            data = orjson.loads(self.body.data)
        except orjson.JSONDecodeError as e:
            self.exchange.warn(f"response: invalid JSON: {e}")
            return
        try:
            self.on_json(data)
        except UNEXPECTED_SHAPE as e:
            self.exchange.warn(f"response: unexpected shape: {type(e).__name__}: {e}")


class SseDecoder:
    """Incremental Server-Sent Events decoder (WHATWG event-stream rules): feed bytes, get (event, data) pairs.

    A line longer than MAX_LINE is dropped with a warning, so a hostile stream cannot grow the buffer forever."""

    MAX_LINE = 4 * 1024 * 1024

    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.buf = b""
        self.event = ""
        self.data: list[str] = []
        self.skipping = False

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self.buf += chunk
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > self.MAX_LINE:
                    self.exchange.warn("stream: line too long, dropped")
                    self.buf, self.skipping = b"", True
                return out
            line, self.buf = self.buf[:nl], self.buf[nl + 1:]
            if self.skipping:
                self.skipping = False
                continue
            self._line(line.rstrip(b"\r").decode("utf-8", "replace"), out)

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.buf:
            self._line(self.buf.decode("utf-8", "replace"), out)
            self.buf = b""
        self._line("", out)
        return out

    def _line(self, line: str, out: list[tuple[str, str]]) -> None:
        if not line:
            if self.data:
                out.append((self.event or "message", "\n".join(self.data)))
            self.event, self.data = "", []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value


#: What a format's callback raises on a frame of a shape it does not expect: that frame is lost, not the stream.
UNEXPECTED_SHAPE = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class DecodedStream:
    """What the stream parsers (SSE, NDJSON, Bedrock's event stream) share: the bytes go to an incremental `decoder`,
    each frame it completes to `dispatch` (the format's: decode the payload, hand it on with `hand_on`). A frame
    the callback could not read is counted in `bad`, never raised, and reported once at the end (`unit` names the
    frames), before `on_finish` runs. `flush` reads what the decoder still holds when the body ends."""

    unit = "events"

    def __init__(self, exchange: Exchange, decoder: Any, on_finish=None):
        self.exchange = exchange
        self.decoder = decoder
        self.on_finish = on_finish
        self.bad = 0

    def feed(self, chunk: bytes) -> None:
        for frame in self.decoder.feed(chunk):
            self.dispatch(frame)

    def finish(self) -> None:
        self.flush()
        if self.bad:
            self.exchange.warn(f"stream: {self.bad} {self.unit} not understood")
        if self.on_finish:
            self.on_finish()

    def flush(self) -> None:
        for frame in self.decoder.finish():
            self.dispatch(frame)

    def dispatch(self, frame: Any) -> None:
        raise NotImplementedError

    def hand_on(self, callback, *payload: Any) -> None:
        try:
            callback(*payload)
        except UNEXPECTED_SHAPE:
            self.bad += 1


class SseParser(DecodedStream):
    """A response parser for SSE bodies: decodes events and hands each JSON payload to `on_event(event, data)`.

    Non-JSON data lines (such as `[DONE]`) go to `on_event` as the raw string."""

    def __init__(self, exchange: Exchange, on_event, on_finish=None):
        super().__init__(exchange, SseDecoder(exchange), on_finish)
        self.on_event = on_event

    def dispatch(self, frame: tuple[str, str]) -> None:
        event, data = frame
        try:
            payload: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = data
        self.hand_on(self.on_event, event, payload)


class NdjsonDecoder:
    """Incremental newline-delimited JSON decoder (Ollama, Cohere v1 chat streams): feed bytes, get JSON values.

    Blank lines are skipped; a line that is not JSON is counted in `bad_lines`, not raised. A line longer than
    MAX_LINE is dropped with a warning, so a hostile stream cannot grow the buffer forever. The pending bytes are
    a bytearray searched only where new bytes arrived, so a long line fed in small chunks costs linear time."""

    MAX_LINE = 4 * 1024 * 1024

    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.buf = bytearray()
        self.skipping = False
        self.bad_lines = 0

    def feed(self, chunk: bytes) -> list[Any]:
        out: list[Any] = []
        start, search = 0, len(self.buf)  # the pending bytes hold no newline
        self.buf += chunk
        while (nl := self.buf.find(b"\n", search)) >= 0:
            if self.skipping:
                self.skipping = False
            else:
                self._line(self.buf[start:nl], out)
            start = search = nl + 1
        del self.buf[:start]
        if len(self.buf) > self.MAX_LINE:
            self.exchange.warn("stream: line too long, dropped")
            self.buf.clear()
            self.skipping = True
        return out

    def finish(self) -> list[Any]:
        out: list[Any] = []
        if self.buf and not self.skipping:
            self._line(self.buf, out)
        self.buf.clear()
        return out

    def _line(self, line: bytes | bytearray, out: list[Any]) -> None:
        if not line.strip():
            return
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            self.bad_lines += 1


class NdjsonParser(DecodedStream):
    """A response parser for NDJSON bodies: hands each JSON value to `on_object(obj)`; a callback that meets an
    unexpected shape costs that line, counted with the lines that are not JSON and reported once at the end."""

    unit = "lines"

    def __init__(self, exchange: Exchange, on_object, on_finish=None):
        super().__init__(exchange, NdjsonDecoder(exchange), on_finish)
        self.on_object = on_object

    def dispatch(self, frame: Any) -> None:
        self.hand_on(self.on_object, frame)

    def flush(self) -> None:
        super().flush()
        self.bad += self.decoder.bad_lines
