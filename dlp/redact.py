"""Replace findings with placeholders, in plain text and inside a request's JSON, and put the values back.

- `Placeholders` gives each (entity, value) of one request a stable placeholder: the same e-mail address is
  `<EMAIL_ADDRESS_1>` everywhere in the request, another one `<EMAIL_ADDRESS_2>`; `values` maps each placeholder
  back to its value for reversible pseudonymization. A placeholder that the request already contains (a user
  pasting an earlier redacted prompt) is never reused for a different value.
- `redact_json` rewrites exactly the JSON strings the findings are in (each `TextPart` knows its JSON path; a part
  that is the text of a JSON value, such as a tool call's input object, gets its strings rewritten), so the
  request keeps its provider's shape and stays valid JSON. It refuses (ValueError) when a part cannot be rewritten
  in place; `unredactable` says which parts those are, so the caller can block instead.
- Markup stays well-formed: a finding never swallows a tag (dlp.scanner trims spans at tags), and in a text that
  holds markup the placeholder is written `&lt;EMAIL_ADDRESS_1&gt;`, which reads as `<EMAIL_ADDRESS_1>` but
  opens no element. `restore` and `StreamRestorer` accept both spellings.
- `StreamRestorer` restores an answer that arrives in chunks of text, holding back only a tail that may be the
  beginning of a placeholder, so a placeholder split across chunks is restored and nothing else is delayed.
  (dlp.answer applies the same idea to provider wire formats, event by event.)
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from core.exchange import TextPart
from dlp.scanner import Finding

# A placeholder, plain or entity-escaped; group 1 or 2 is its name (EMAIL_ADDRESS_1).
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*_\d+)>|&lt;([A-Z][A-Z0-9_]*_\d+)&gt;")
_MARKUP = re.compile(r"</[A-Za-z][\w:.-]*\s*>|<[A-Za-z][\w:.-]*(?:\s[^<>]*)?/>")  # a closing or empty tag


def has_markup(text: str) -> bool:
    """Does the text hold XML/HTML (a closing or self-closing tag)? Then placeholders are entity-escaped."""
    return _MARKUP.search(text) is not None


class Placeholders:
    """The placeholders of one request, and their values."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # "<EMAIL_ADDRESS_1>" -> the original value
        self._by_value: dict[tuple[str, str], str] = {}
        self._taken: set[str] = set()  # names present in the request before redaction

    def reserve(self, text: str) -> None:
        """Note the placeholders a text already holds, so that none of them is issued for a value."""
        for m in PLACEHOLDER.finditer(text):
            self._taken.add(m[1] or m[2])

    def placeholder(self, entity: str, value: str) -> str:
        """`<ENTITY_n>` for this value: the same one every time the value comes back."""
        token = self._by_value.get((entity, value))
        if token is None:
            n = 1 + sum(1 for e, _ in self._by_value if e == entity)
            while f"{entity}_{n}" in self._taken:
                n += 1
            token = f"<{entity}_{n}>"
            self._taken.add(token[1:-1])
            self._by_value[(entity, value)] = token
            self.values[token] = value
        return token

    def __len__(self) -> int:
        return len(self.values)

    def restore(self, text: str) -> str:
        """The text with every placeholder of this request replaced by its value (others left as they are)."""
        if "<" not in text and "&lt;" not in text:
            return text
        return PLACEHOLDER.sub(self._value_of, text)

    def _value_of(self, m: re.Match) -> str:
        value = self.values.get(f"<{m[1] or m[2]}>")
        if value is None:
            return m[0]
        return value if m[1] else html.escape(value, quote=False)  # escaped form: it sits in markup


def redact_text(text: str, findings: Iterable[Finding], placeholders: Placeholders) -> str:
    """The text with each finding's span replaced by its placeholder (overlapping findings: the first wins)."""
    placeholders.reserve(text)
    markup = has_markup(text)
    out, pos = [], 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.start < pos or not 0 <= f.start < f.end <= len(text):
            continue
        token = placeholders.placeholder(f.entity, text[f.start:f.end])
        out += [text[pos:f.start], html.escape(token, quote=False) if markup else token]
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def unredactable(body: Any, parts: Sequence[TextPart], findings: Iterable[Finding]) -> list[int]:
    """Indexes of the parts holding findings that redact_json cannot rewrite: no JSON path (text extracted from an
    upload), a path that does not lead to that very text in this body, or a redaction that would not stay JSON."""
    bad = set()
    by_part: dict[int, list[Finding]] = {}
    for f in findings:
        by_part.setdefault(f.part, []).append(f)
    documents = _Embedded(body)
    for part, fs in sorted(by_part.items()):
        try:
            if part >= len(parts) or parts[part].path is None:
                raise ValueError("no JSON path")
            container, key = documents.locate(parts[part].path)
            _rewritten(container[key], parts[part].text, fs, Placeholders())
        except (KeyError, IndexError, TypeError, ValueError):
            bad.add(part)
    return sorted(bad)


def redact_json(body: Any, parts: Sequence[TextPart], findings: Iterable[Finding], placeholders: Placeholders) -> Any:
    """The parsed JSON body with the findings of each part replaced at the part's path.

    A part's path leads to a JSON string holding the part's text, or to a JSON value whose text the part is
    (an Anthropic tool_use `input` object): the value is then rewritten as the redacted text parsed back, which
    works as long as every finding lies inside a string of it. A path may run on into a string that holds JSON
    text (a value inside OpenAI tool-call `arguments`): that string is rewritten as the redacted JSON. Raises ValueError naming the parts that cannot be
    rewritten this way (see `unredactable`): a redaction that cannot be applied must block the request, never let
    the value through.
    """
    by_part: dict[int, list[Finding]] = {}
    for f in findings:
        by_part.setdefault(f.part, []).append(f)
    bad = unredactable(body, parts, [f for fs in by_part.values() for f in fs])
    if bad:
        raise ValueError(f"part(s) {', '.join(map(str, bad))} cannot be rewritten in place (no JSON path, the "
                         "path does not hold the scanned text, or the result would not be JSON)")
    for part in parts:  # placeholders already in any part of the request are not issued again
        placeholders.reserve(part.text)
    documents = _Embedded(body)
    for part, fs in sorted(by_part.items()):
        container, key = documents.locate(parts[part].path)
        container[key] = _rewritten(container[key], parts[part].text, fs, placeholders)
    documents.write_back()
    return body


class _Embedded:
    """Paths that run on into a JSON string holding JSON text (OpenAI tool-call `arguments`): the string is parsed
    once, its values are rewritten like any other, and `write_back` serializes it into the string again."""

    def __init__(self, body: Any):
        self.body = body
        self.documents: dict[tuple, Any] = {}  # path of such a string -> its parsed JSON

    def locate(self, path: Sequence[str | int]) -> tuple[Any, str | int]:
        node = self.body
        for i, step in enumerate(path[:-1]):
            node = node[step]
            if isinstance(node, str):  # the rest of the path is inside the JSON this string holds
                outer = tuple(path[:i + 1])
                if outer not in self.documents:
                    self.documents[outer] = json.loads(node)
                return _locate(self.documents[outer], path[i + 1:])
        return _locate(self.body, path)

    def write_back(self) -> None:
        for outer, document in self.documents.items():
            container, key = _locate(self.body, outer)
            container[key] = json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _rewritten(value: Any, text: str, findings: list[Finding], placeholders: Placeholders) -> Any:
    """The JSON value at a part's path, with the part's findings redacted (ValueError if it cannot be done)."""
    if isinstance(value, str):
        if value != text:
            raise ValueError("the path does not hold the scanned text")
        return redact_text(text, findings, placeholders)
    if json.loads(text) != value:
        raise ValueError("the path does not hold the value the scanned text describes")
    rewritten = json.loads(redact_text(text, findings, placeholders))  # ValueError if a finding straddled syntax
    if _shape(rewritten) != _shape(value):  # only the text inside strings may change
        raise ValueError("redaction changed the structure of the value")
    return rewritten


def _shape(value: Any) -> Any:
    """A JSON value with its strings blanked: what a redaction may not change (keys, numbers, nesting)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return "" if isinstance(value, str) else value


def _locate(body: Any, path: Sequence[str | int]) -> tuple[Any, str | int]:
    """The container and key of the value at path (a tuple of object keys and array indexes)."""
    if not path:
        raise ValueError("empty JSON path")
    node = body
    for step in path[:-1]:
        node = node[step]
    key = path[-1]
    if isinstance(node, list) and not isinstance(key, int) or isinstance(node, dict) and not isinstance(key, str):
        raise TypeError(f"JSON path step {key!r} does not fit a {type(node).__name__}")
    if isinstance(node, dict) and key not in node or isinstance(node, list) and not -len(node) <= key < len(node):
        raise KeyError(f"JSON path {list(path)} leads nowhere")
    return node, key


class StreamRestorer:
    """Restores placeholders in an answer fed chunk by chunk; `feed` returns what can be shown now, `flush` the
    rest at the end. Only a tail that may be the start of a placeholder of this request is ever held back."""

    def __init__(self, placeholders: Placeholders):
        self.placeholders = placeholders
        self._forms = [f for token in placeholders.values for f in (token, html.escape(token, quote=False))]
        self._longest = max((len(f) for f in self._forms), default=0)
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        cut = self._partial_start(text)
        self._held = text[cut:]
        return self.placeholders.restore(text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self.placeholders.restore(text)

    def _partial_start(self, text: str) -> int:
        """Where a possible beginning of a placeholder starts at the end of text (len(text): none)."""
        floor = max(0, len(text) - self._longest + 1)
        starts = [i for i in (text.rfind("<", floor), text.rfind("&", floor)) if i >= 0]
        for i in sorted(starts):
            tail = text[i:]
            if any(form.startswith(tail) and form != tail for form in self._forms):
                return i
        return len(text)


def mask(value: str) -> str:
    """Enough of a value to recognise it on a terminal or in a report, never the value: `jo********om (22)`."""
    n = len(value)
    if n <= 4:
        return "*" * n
    if n <= 8:
        return f"{value[0]}{'*' * (n - 2)}{value[-1]}"
    return f"{value[:2]}{'*' * 8}{value[-2:]} ({n})"
