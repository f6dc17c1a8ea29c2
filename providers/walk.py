"""The whole-body walk: every string an AI request carries is DLP text, whatever field, endpoint or method.

Provider parsers give a request its structure (roles, system prompt, tool calls) and read the fields they know.
A secret does not care which field it travels in: `user`, `metadata` keys, a tool's description, a JSON-schema
default, an endpoint no parser knows. So beside the parser, the walk reads the whole body once more and adds as
`TextPart`s (source "walk") every string value, every key, and every long number that no parser part already holds,
each with its JSON path so redaction can rewrite it in place (keys and numbers have no rewritable path: a finding
there blocks). Bodies that are not JSON are read by their type: form fields, multipart fields and files, text.
WebSocket messages are walked the same way, one at a time (`walk_value`, from providers/websocket_base.py).

One canonical parse (`canonical_json`): a body whose JSON meaning another parser could read differently is never
forwarded. Duplicate keys (the gateway would read one value, the upstream may read the other), a byte order mark,
invalid UTF-8 or lone surrogates, NaN or numbers out of range, nesting deeper than MAX_DEPTH: each is an
`AmbiguousBody`, which the extract stage refuses with a 400 naming why. Only bodies that are really opaque (binary)
stay unread; the audit says so (`Coverage`), and the policy's `unparsed` fail mode decides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from core.exchange import Exchange, JsonPath, TextPart
from core.mediatypes import JSON_LINES_TYPES
from providers.base import BodyError
from providers.uploads import base64_attachment, file_attachment, parse_form

#: Deeper JSON than any provider's request needs; a deeper body is refused rather than read by a second parser.
MAX_DEPTH = 128
#: Strings of at least this many base64 characters (optionally a data: URI) are encoded files, not prose.
ENCODED_MIN = 1024
#: Integers from this magnitude on are scanned (a card or account number sent as a number); smaller ones cannot be
#: anything a recognizer looks for, and every request has many (max_tokens, temperature, indexes).
LONG_NUMBER = 100_000
FORM_TYPE = "application/x-www-form-urlencoded"
# Every JSON string token, and whether a colon follows it (a key). Outside strings JSON has no quotes, so scanning
# left to right meets each string whole. Possessive, so a long string costs one pass (31 MB of escape-heavy JSON:
# 0.2 s, against 5 s backtracking).
_STRING_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"(\s*:)?', re.S)
_ENCODED = re.compile(r"(?:data:[\w.+/-]+(?:;[\w=.-]+)*;base64,)?[A-Za-z0-9+/=_-]+")


class AmbiguousBody(ValueError):
    """A body that claims to be JSON but whose meaning is not one the gateway can decide."""


@dataclass(slots=True)
class Coverage:
    """What the gateway read of a request body and how: `how` -> path patterns (array indexes shown as `*`) with
    the number of texts under each. The audit stores it, so "inspected" is never claimed for unread text."""

    paths: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, how: str, path: JsonPath | str | None) -> None:
        key = (how, path if isinstance(path, str) else pattern(path))
        self.paths[key] = self.paths.get(key, 0) + 1

    def lines(self, limit: int = 100) -> list[str]:
        """`how path ×n`, sorted, at most `limit` lines (then one that says how many more)."""
        out = [f"{how} {path}" + (f" x{n}" if n > 1 else "") for (how, path), n in sorted(self.paths.items())]
        return out if len(out) <= limit else [*out[:limit], f"... {len(out) - limit} more"]


def pattern(path: JsonPath | None) -> str:
    if path is None:
        return "(no path)"
    return "/" + "/".join("*" if isinstance(step, int) else str(step).replace("/", "~1") for step in path)


def canonical_json(body: bytes) -> Any:
    """The body's one JSON meaning, or AmbiguousBody saying why there is none the gateway can vouch for."""
    try:
        value = orjson.loads(body)  # strict: BOM, invalid UTF-8, lone surrogates, NaN and overflow are errors
    except orjson.JSONDecodeError as e:
        raise AmbiguousBody(f"not valid JSON: {e}") from None
    keys = _count_keys(value)  # also bounds the depth
    written = sum(map(bool, _STRING_TOKEN.findall(body)))  # the group: a colon after the string, else b""
    if written != keys:
        raise AmbiguousBody(f"an object repeats a key ({written - keys} repeated): the gateway would read one "
                            f"value and the AI service may read another")
    return value


def _count_keys(value: Any) -> int:
    count = 0
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise AmbiguousBody(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            count += len(node)
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return count


def looks_like_json(content_type: str, body: bytes) -> bool:
    """Does the body begin like JSON (an object or an array, possibly after a byte order mark), unless its type says
    it is lines of JSON (read as text)? Such a body must parse canonically. A body that does not begin like JSON is
    read as text whatever its type says (a file's bytes sent as `application/json`): a JSON parser upstream would
    reject it, so no second reading of it can differ."""
    if content_type in JSON_LINES_TYPES:
        return False
    head = body[:64].lstrip(b" \t\r\n")
    return head[:1] in (b"{", b"[") or head.startswith(b"\xef\xbb\xbf")


def walk_json(value: Any, exchange: Exchange, coverage: Coverage) -> None:
    """Add every string, key and long number of `value` that the parser's parts do not hold to `exchange.extra`."""
    own: set[JsonPath] = set()
    for part in exchange.request_parts():
        coverage.add(part.source, part.path)  # the parser's texts, and the files it extracted (no path)
        if part.path is not None:
            own.add(part.path)
            own.update(part.path[:i] for i in range(1, len(part.path)))  # JSON text in a string (tool arguments)
    add_keys(walk_value(value, exchange, coverage, lambda at, node: at in own), exchange, coverage)


def walk_value(value: Any, exchange: Exchange, coverage: Coverage, skip: Callable[[JsonPath, Any], bool]) \
        -> dict[str, None]:
    """Add every non-empty string and long number of `value` that `skip` does not claim to `exchange.extra`, and
    return its keys (distinct, in order). `skip` is how the caller says what is read already: a body's parser
    parts by path (walk_json); for a WebSocket message, whose parsers keep no paths, the texts its turn holds
    (providers/websocket_base.py). The keys are returned, not added, for the same reason."""
    keys: dict[str, None] = {}
    stack: list[tuple[Any, JsonPath, str]] = [(value, (), "")]
    while stack:
        node, at, key = stack.pop()
        if isinstance(node, str):
            if node and not skip(at, node):
                _add_string(node, at, key, exchange, coverage)
        elif isinstance(node, dict):
            keys.update(dict.fromkeys(map(str, node)))
            stack.extend(reversed([(v, (*at, str(k)), str(k)) for k, v in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(v, (*at, i), key) for i, v in enumerate(node)]))
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and abs(node) >= LONG_NUMBER:
            if not skip(at, node):
                exchange.extra.append(TextPart(json.dumps(node), None, key, "walk"))
                coverage.add("walk number", at)
    return keys


def add_keys(keys: Iterable[str], exchange: Exchange, coverage: Coverage) -> None:
    """Keys are sent too (a token used as a metadata key): one text of them all, with no path to rewrite."""
    keys = list(keys)
    if keys:
        exchange.extra.append(TextPart("\n".join(keys), None, "", "walk"))
        coverage.add("walk keys", f"({len(keys)} distinct)")


def _add_string(text: str, at: JsonPath, key: str, exchange: Exchange, coverage: Coverage) -> None:
    """A string value: prose as a part at its path; an encoded file (long base64 or data: URI) as the text it
    decodes to, if it is text (or a PDF), else recorded as not inspected."""
    if len(text) >= ENCODED_MIN and _ENCODED.fullmatch(text):
        head, sep, data = text.partition(";base64,")
        mime = head[5:].split(";")[0] if sep and head.startswith("data:") else ""
        attachment = base64_attachment(data if sep else text, "", mime, warn=exchange.warn)
        if not attachment.text:
            coverage.add("not inspected (binary)", at)
            return
        if not any(attachment.text == a.text for m in exchange.messages for a in m.attachments):  # not the parser's
            exchange.extra.append(TextPart(attachment.text, None, "", "upload"))
        coverage.add("upload" if attachment.inspected else "upload (partly)", at)
        return
    exchange.extra.append(TextPart(text, at, key, "walk"))
    coverage.add("walk", at)


def walk_text(body: bytes, header: str, exchange: Exchange, coverage: Coverage) -> bool:
    """A body that is not JSON, read by its type (`header`: the Content-Type header, parameters included). False
    when it is opaque (binary): nothing could be read."""
    content_type = header.split(";")[0].strip().lower()
    if content_type == FORM_TYPE:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        texts = [t for k, v in pairs for t in (k, v) if t]
        exchange.extra.extend(TextPart(t, None, "", "walk") for t in texts)
        coverage.add("walk form", f"({len(pairs)} fields)")
        return True
    if content_type.startswith("multipart/"):
        return _walk_multipart(body, header, exchange, coverage)
    attachment = file_attachment("", content_type or "application/octet-stream", len(body), body,
                                 warn=exchange.warn)
    if attachment.text is None:
        coverage.add("not inspected (binary)", f"body {content_type or 'without a type'}")
        return False
    exchange.extra.append(TextPart(attachment.text, None, "", "walk"))
    coverage.add("walk text", f"body {content_type or 'without a type'}")
    return attachment.inspected


def _walk_multipart(body: bytes, content_type: str, exchange: Exchange, coverage: Coverage) -> bool:
    """Every field (its name too) and every file (its name and the text it holds) of a multipart body."""
    try:
        form = parse_form(body, content_type)
    except BodyError as e:
        coverage.add("not inspected (malformed multipart)", str(e)[:80])
        return False
    whole = True
    names = [n for part in form.parts for n in (part.name, part.filename) if n]
    if names:  # field and file names are sent too: a value written there is found, and blocks
        exchange.extra.append(TextPart("\n".join(dict.fromkeys(names)), None, "", "walk"))
    for part in form.parts:
        if part.filename is None:
            exchange.extra.append(TextPart(part.value, None, part.name, "walk"))
            coverage.add("walk field", part.name)
            continue
        attachment = part.attachment(warn=exchange.warn)
        if attachment.text:
            exchange.extra.append(TextPart(attachment.text, None, "", "upload"))
        whole = whole and attachment.inspected
        coverage.add("upload" if attachment.inspected else "not inspected (file)", part.filename or part.name)
    return whole
