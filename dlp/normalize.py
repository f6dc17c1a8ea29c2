"""Views of a text with its obfuscations undone, each mapped back character by character onto the original.

A model reads `ghр_…` (a Cyrillic р), `4111.1111.1111.1111`, `jane&#64;example.com`, `g h p _ A B C …` or a
base64-encoded key as easily as the plain value, while the recognizers' regexes do not. So the scanner also scans
these views, and every finding in a view is moved back onto the exact characters of the original it came from:
redaction then rewrites what was really sent (the zero-width characters inside a key included).

Two kinds of view:
- normalised windows: the text after the steps below, cut to windows around what they changed (plus MARGIN of
  context on each side, for context words and word boundaries), so a long text with one obfuscated value costs a
  scan of a few hundred characters, not a second scan of the whole text. Every character of a window maps to the
  [start, end) of the original it stands for (a run of zero-width characters disappears inside the span of its
  neighbours; `&#64;` maps to its five characters).
- decoded spans: base64 or hex runs that decode to printable UTF-8, scanned as text of their own; a finding in
  one maps to the whole encoded run (the placeholder then replaces the run).

The steps, in order (each sees the output of the one before, so `&#xFF20;` becomes `＠` and then `@`):
HTML entities, percent-encoding, invisible characters (format characters, variation selectors, fillers),
Unicode NFKC (fullwidth and mathematical letters and digits), other Unicode spaces, TR39 confusables (only in
tokens that become all-ASCII, so Cyrillic or Greek prose stays as it is), spaced-out characters, separators
inside card-length digit runs, and known key prefixes in another case.

The common case must stay cheap: an ASCII text that no step's regex matches costs a few C-speed regex searches
and yields no view. Nothing here imports mitmproxy or Presidio.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import html
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

import regex

from dlp.prefilter import hyperscan, to_ascii

Span = tuple[int, int]
# One step's change: replace [start, end) of its input with `text`; `pieces` gives, per character of `text`, the
# input span it stands for (SAME: one to one, same length; None: every character stands for the whole span).
Edit = tuple[int, int, str, "list[Span] | str | None"]
SAME = "same"

MARGIN = 256  # characters of original kept around a change: context words and word boundaries stay in view
SNAP = 64  # a window edge moves to whitespace within this many characters
DECODE_MIN, DECODE_MAX = 16, 4096  # encoded run lengths worth decoding
CARD_DIGITS = range(13, 20)  # a digit run with separators is joined only when it is as long as a card number

_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}(?:%[0-9A-Fa-f]{2})*")  # a literal first: re then skips ahead fast
_INVISIBLE = regex.compile(r"[\p{Cf}\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u3164\ufe00-\ufe0f\uffa0"
                           r"\U000e0100-\U000e01ef]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x85]+")
_SPACE_MAP = {**dict.fromkeys([0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000], " "),
              0x2028: "\n", 0x2029: "\n", 0x85: "\n"}
_MARKED = "\x01"  # what a confusable character becomes in the marking pass
_FOLDABLE = re.compile(r"(?<!\S)[!-~]*\x01[!-~\x01]*(?!\S)")  # a token of ASCII and confusables only
_SPACED = re.compile(r"(?<!\S)(?:[!-~] ){7,}[!-~](?!\S)")  # eight or more single characters, one space apart
_DIGIT_RUN = re.compile(r"(?<![\w.\-/])[0-9]{1,6}(?:[ ._/\-][0-9]{1,6}){1,18}(?!\w)")
_DIGIT_SEP = re.compile(r"[ ._/\-]")
_ENCODED = re.compile(r"(?<![A-Za-z0-9+/=_\-])[A-Za-z0-9+/_\-]{%d,%d}={0,2}(?![A-Za-z0-9+/=_\-])"
                      % (DECODE_MIN, DECODE_MAX))
_ENCODED_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PRINTABLE = frozenset(chr(c) for c in range(0x21, 0x7F))
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_URLSAFE = str.maketrans("-_", "+/")
_ASCII_TEXT_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"  # the first character of each 4 that encode ASCII text
_WHITESPACE = re.compile(r"\s")
_QUOTES = frozenset("'\"`")  # curly quotes fold to these: common in prose, and no recognizer needs them


@dataclass(frozen=True, slots=True)
class View:
    """Text to scan instead of part of the original: `starts[i]`, `ends[i]` are the original span of its char i."""

    text: str
    starts: list[int]
    ends: list[int]

    def span(self, start: int, end: int) -> Span:
        """The original span of the view's [start, end): from where its first character came to where its last
        one ended, so characters removed in between (zero-width, separators) are covered too."""
        return self.starts[start], self.ends[end - 1]


@cache
def confusables() -> dict[int, str]:
    """str.translate table: every non-ASCII character that Unicode TR39 lists as confusable with one printable
    ASCII character, to that character (the data ships with the confusable-homoglyphs package)."""
    data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    table: dict[int, str] = {}

    def ascii_of(entries: list[dict]) -> str | None:
        return next((e["c"] for e in entries if len(e["c"]) == 1 and "!" <= e["c"] <= "~" and e["c"] not in _QUOTES),
                    None)

    for key, entries in data.items():
        if len(key) != 1:
            continue
        if key in _QUOTES:
            continue
        if "!" <= key <= "~":  # an ASCII character: everything listed for it folds to it
            for e in entries:
                if len(e["c"]) == 1 and not e["c"].isascii():
                    table.setdefault(ord(e["c"]), key)
        elif not key.isascii() and (target := ascii_of(entries)):
            if key.isupper() and target.islower():  # TR39's prototype for a capital I is l: keep it a capital
                target = next((e["c"] for e in data.get(target, ()) if e["c"].isascii() and e["c"].isupper()),
                              target)
            table[ord(key)] = target  # the character's own entry wins
    return table


class _Text:
    """The text being normalised, and for each of its characters the original span it stands for."""

    __slots__ = ("text", "starts", "ends", "changed")

    def __init__(self, text: str):
        self.text = text
        self.starts: list[int] | None = None  # None: identity (nothing changed yet)
        self.ends: list[int] | None = None
        self.changed: list[Span] = []  # original spans that some step rewrote

    def apply(self, edits: list[Edit]) -> None:
        """Apply sorted, disjoint edits, composing their maps with the map so far."""
        if not edits:
            return
        text = self.text
        starts = self.starts if self.starts is not None else range(len(text))
        ends = self.ends if self.ends is not None else range(1, len(text) + 1)
        out: list[str] = []
        new_starts: list[int] = []
        new_ends: list[int] = []
        pos = 0
        for a, b, rep, pieces in edits:
            out.append(text[pos:a])
            new_starts.extend(starts[pos:a])
            new_ends.extend(ends[pos:a])
            if pieces == SAME:
                new_starts.extend(starts[a:b])
                new_ends.extend(ends[a:b])
            elif pieces is None:
                new_starts.extend([starts[a]] * len(rep))
                new_ends.extend([ends[b - 1]] * len(rep))
            else:
                new_starts.extend(starts[s] for s, _ in pieces)
                new_ends.extend(ends[e - 1] for _, e in pieces)
            out.append(rep)
            self.changed.append((starts[a], ends[b - 1]))
            pos = b
        out.append(text[pos:])
        new_starts.extend(starts[pos:])
        new_ends.extend(ends[pos:])
        self.text, self.starts, self.ends = "".join(out), new_starts, new_ends


SPACED, DIGITS, PREFIX, ENCODED = range(4)  # what the gate looks for


class _Gate:
    """Where the steps that apply to ASCII text could apply, from one hyperscan pass (Python's regexes take
    about 2 ms per 100 KB each for these; hyperscan takes a few hundredths for all). Each kind gets the starts of
    its candidates: the character before one (or 0), where the step's own regex then runs."""

    def __init__(self, prefixes: list[str]):
        boundary = rb"(?:^|[^A-Za-z0-9_\-])"
        expressions = [(SPACED, rb"(?:^|\s)(?:[!-~] ){7}[!-~](?:\s|$)"),
                       (DIGITS, rb"(?:^|[^0-9A-Za-z_.\-/])(?:[0-9][ ._/\-]?){12}[0-9]"),
                       (ENCODED, rb"(?:^|[^A-Za-z0-9+/=_\-])[A-Za-z0-9+/_\-]{%d}" % DECODE_MIN)]
        for prefix in prefixes:  # the prefix with at least one letter in the other case
            for k, ch in enumerate(prefix):
                if ch.isalpha():
                    other = _caseless(prefix[:k]) + re.escape(ch.swapcase()).encode() + _caseless(prefix[k + 1:])
                    expressions.append((PREFIX, boundary + other + rb"[A-Za-z0-9_\-]"))
        self._kinds = [kind for kind, _ in expressions]
        self._db = hyperscan.Database()
        self._db.compile(expressions=[e for _, e in expressions], ids=list(range(len(expressions))),
                         elements=len(expressions), flags=[hyperscan.HS_FLAG_SOM_LEFTMOST] * len(expressions))

    def starts(self, text: str) -> list[list[int]]:
        found: list[set[int]] = [set(), set(), set(), set()]
        kinds = self._kinds
        self._db.scan(to_ascii(text), match_event_handler=lambda i, frm, _to, _f, _c: found[kinds[i]].add(frm))
        return [sorted(f) for f in found]


def _caseless(literal: str) -> bytes:
    return b"".join(f"[{c.lower()}{c.upper()}]".encode() if c.isalpha() else re.escape(c).encode() for c in literal)


def _at(s: str, starts: list[int] | None, rx: re.Pattern, first: str) -> Iterable[re.Match]:
    """Matches of rx at the gate's candidate starts (its start is the candidate or the character after it,
    whichever can begin a match), or everywhere when there is no gate."""
    if starts is None:
        yield from rx.finditer(s)
        return
    end = -1
    for pos in starts:
        if pos < end:
            continue
        m = rx.match(s, pos if pos < len(s) and s[pos] in first and (pos == 0 or s[pos - 1] not in first)
                     else pos + 1)
        if m:
            end = m.end()
            yield m


class Normalizer:
    """Builds the views of texts. One per scanner: it holds the compiled key-prefix regex and the fold table."""

    def __init__(self, key_prefixes: Iterable[str] = ()):
        prefixes = sorted(set(key_prefixes), key=len, reverse=True)
        self._canonical = {p.casefold(): p for p in prefixes}
        self._prefix = re.compile(r"(?<![A-Za-z0-9_\-])(?:%s)(?=[A-Za-z0-9_\-])" % "|".join(map(re.escape, prefixes)),
                                  re.IGNORECASE) if prefixes else None
        self._fold = confusables()
        self._mark = dict.fromkeys(self._fold, _MARKED)
        self._gate = _Gate(prefixes) if hyperscan is not None else None
        self._steps: list[Callable[[str], list[Edit]]] = [
            _entities, _percent, _invisible, _nfkc, _spaces, self._confusables]
        self._gated: list[tuple[int, Callable[[str, list[int] | None], list[Edit]]]] = [
            (SPACED, _spaced), (DIGITS, _digit_runs), (PREFIX, self._prefixes)]

    def views(self, text: str) -> list[View]:
        """The views worth scanning besides `text` itself; empty when no step changes anything."""
        state = _Text(text)
        for step in self._steps:
            state.apply(step(state.text))
        starts = self._starts(text)
        original = starts
        for kind, step in self._gated:
            if state.changed and starts is original:  # the gate saw another text than the steps do now
                starts = self._starts(state.text)
            edits = step(state.text, None if starts is None else starts[kind])
            state.apply(edits)
            if edits:
                starts = self._starts(state.text) if self._gate is not None else None
        out = _windows(text, state) if state.changed else []
        out.extend(_decoded(text, None if original is None else original[ENCODED]))
        return out

    def _starts(self, text: str) -> list[list[int]] | None:
        return self._gate.starts(text) if self._gate is not None else None

    def _confusables(self, s: str) -> list[Edit]:
        if s.isascii():
            return []
        marked = s.translate(self._mark)
        edits = []
        for m in _FOLDABLE.finditer(marked):
            a, b = m.span()
            folded = s[a:b].translate(self._fold)
            if folded != s[a:b]:
                edits.append((a, b, folded, SAME))
        return edits

    def _prefixes(self, s: str, starts: list[int] | None) -> list[Edit]:
        if self._prefix is None:
            return []
        edits = []
        for m in _at(s, starts, self._prefix, _KEY_CHARS):
            canonical = self._canonical[m.group().casefold()]
            if m.group() != canonical:
                edits.append((m.start(), m.end(), canonical, SAME))
        return edits


def _windows(original: str, state: _Text) -> list[View]:
    """The normalised text around what changed: merged windows of MARGIN around each change, snapped to whitespace."""
    merged: list[list[int]] = []
    for s, e in sorted(state.changed):
        s, e = _snap_left(original, max(0, s - MARGIN)), _snap_right(original, min(len(original), e + MARGIN))
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    starts, ends, text = state.starts, state.ends, state.text
    views = []
    for s, e in merged:
        i, j = bisect.bisect_left(starts, s), bisect.bisect_left(starts, e)
        if i < j:
            views.append(View(text[i:j], starts[i:j], ends[i:j]))
    return views


def _snap_left(text: str, pos: int) -> int:
    """Back to the whitespace before pos (within SNAP characters), so a window does not start inside a token."""
    floor = max(0, pos - SNAP)
    i = max(text.rfind(" ", floor, pos), text.rfind("\n", floor, pos))
    return i if i >= 0 else floor


def _snap_right(text: str, pos: int) -> int:
    m = _WHITESPACE.search(text, pos, pos + SNAP)
    return m.end() if m else min(len(text), pos + SNAP)


# --- steps: each finds what it rewrites in its input, with a C-speed search first --------------------------------

def _entities(s: str) -> list[Edit]:
    if "&" not in s:
        return []
    edits = []
    for m in _ENTITY.finditer(s):
        decoded = html.unescape(m.group())
        if decoded != m.group():
            edits.append((m.start(), m.end(), decoded, None))
    return edits


def _percent(s: str) -> list[Edit]:
    if "%" not in s:
        return []
    edits = []
    for m in _PERCENT.finditer(s):
        raw = bytes.fromhex(m.group().replace("%", ""))
        a = m.start()
        if raw.isascii():  # one character per %XX
            edits.append((a, m.end(), raw.decode("ascii"), [(a + 3 * k, a + 3 * k + 3) for k in range(len(raw))]))
            continue
        try:
            edits.append((a, m.end(), raw.decode("utf-8"), None))
        except UnicodeDecodeError:
            continue  # not UTF-8: not text a model would read as such
    return edits


def _invisible(s: str) -> list[Edit]:
    if s.isascii():
        return []
    return [(m.start(), m.end(), "", []) for m in _INVISIBLE.finditer(s)]


def _nfkc(s: str) -> list[Edit]:
    """Only the non-ASCII runs that are not NFKC-normal are looked at character by character (with a combining
    mark, its base character before the run belongs to the cluster)."""
    if s.isascii() or unicodedata.is_normalized("NFKC", s):
        return []
    edits = []
    for m in _NON_ASCII.finditer(s):
        a, b = m.span()
        lo = a - 1 if a > 0 else a
        if unicodedata.is_normalized("NFKC", s[lo:b]):
            continue
        i = a
        while i < b:
            start = i - 1 if i == a and i > 0 and unicodedata.combining(s[i]) else i
            j = i + 1
            while j < len(s) and unicodedata.combining(s[j]):
                j += 1
            cluster = s[start:j]
            normal = unicodedata.normalize("NFKC", cluster)
            if normal != cluster and not (edits and edits[-1][1] > start):
                edits.append((start, j, normal, None if len(normal) != len(cluster) else SAME))
            i = j
    return edits


def _spaces(s: str) -> list[Edit]:
    if s.isascii():
        return []
    return [(m.start(), m.end(), m.group().translate(_SPACE_MAP), SAME) for m in _SPACES.finditer(s)]


def _spaced(s: str, starts: list[int] | None) -> list[Edit]:
    edits = []
    for m in _at(s, starts, _SPACED, _PRINTABLE):
        a = m.start()
        chars = m.group()[::2]
        edits.append((a, m.end(), chars, [(a + 2 * k, a + 2 * k + 1) for k in range(len(chars))]))
    return edits


def _digit_runs(s: str, starts: list[int] | None) -> list[Edit]:
    """Separators inside a digit run of card length, unless the card recognizer already reads the run (groups of
    three or more digits between single spaces or dashes). Only card-shaped groupings are joined (equal groups, a
    shorter last one, or Amex's 4-6-5), so tables of small numbers are not read as one long number."""
    edits = []
    for m in _at(s, starts, _DIGIT_RUN, "0123456789"):
        run = m.group()
        groups = _DIGIT_SEP.split(run)
        lengths = [len(g) for g in groups]
        if sum(lengths) not in CARD_DIGITS:
            continue
        seps = set(_DIGIT_SEP.findall(run))
        if seps <= {" ", "-"} and min(lengths) >= 3:
            continue
        if not (len(set(lengths[:-1])) == 1 and lengths[-1] <= lengths[0]) and lengths != [4, 6, 5]:
            continue
        a, pieces, pos = m.start(), [], m.start()
        for g in groups:
            pieces.extend((pos + k, pos + k + 1) for k in range(len(g)))
            pos += len(g) + 1
        edits.append((a, m.end(), "".join(groups), pieces))
    return edits


# --- decoded spans -----------------------------------------------------------------------------------------------

def _decoded(text: str, starts: list[int] | None) -> list[View]:
    """Base64 (standard or URL-safe) and hex runs that decode to printable UTF-8, all in one view, a newline
    between two. Every run: a budget of runs or views would let harmless encoded text before a value hide it. The
    runs do not overlap, so the view is never longer than the text, and one view costs one scan however many
    runs there are."""
    pieces: list[str] = []
    origin_starts: list[int] = []
    origin_ends: list[int] = []
    for m in _at(text, starts, _ENCODED, _ENCODED_CHARS):
        decoded = _decode(m.group())
        if decoded:
            if pieces:  # the newline belongs to the run before it
                pieces.append("\n")
                origin_starts.append(origin_starts[-1])
                origin_ends.append(origin_ends[-1])
            pieces.append(decoded)
            origin_starts.extend([m.start()] * len(decoded))
            origin_ends.extend([m.end()] * len(decoded))
    return [View("".join(pieces), origin_starts, origin_ends)] if pieces else []


def _decode(run: str) -> str | None:
    raw = None
    if len(run) % 2 == 0 and _HEX.fullmatch(run):
        raw = bytes.fromhex(run)
    else:
        body = run.rstrip("=")
        if len(body) % 4 == 1 or body[::4].strip(_ASCII_TEXT_B64):  # not the base64 of ASCII text
            return None
        try:
            raw = base64.b64decode(body.translate(_URLSAFE) + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(decoded) < 8 or _UNPRINTABLE.search(decoded) or not decoded.strip():
        return None
    return decoded
