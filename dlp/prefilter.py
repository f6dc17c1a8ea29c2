"""Where could anything match? One hyperscan pass answers for every recognizer at once.

Presidio runs every recognizer's regexes over the whole text (43 ms for 2 KB, docs/stack.md), and almost all of a
prompt matches nothing. Hyperscan compiles every pattern of every recognizer into one automaton that scans at
hundreds of MB/s; the recognizers then run only on small windows around the places it reports.

- A recognizer's own patterns are compiled exactly, with start of match, when hyperscan supports them as written:
  the window is then the match itself plus a margin. Patterns with lookarounds or back-references are compiled in
  hyperscan's prefilter mode instead, which relaxes them so the automaton matches a superset of what the regex
  matches, never fewer places; it reports only where such a match ends, so the window spans the pattern's maximum
  width before that end.
- `candidates` of a gated recognizer are compiled exactly, with start of match; a finding must overlap one.
- Patterns whose best reachable score is below the recognizer's threshold are left out: they cannot be reported.
- Hyperscan reads bytes. The text is mapped one character to one byte (non-ASCII letters and marks to `_`, decimal
  digits to `0`, spaces to ` `, anything else to DEL), so offsets stay character offsets and \\w, \\d, \\s, \\b
  and ASCII classes such as [A-Z] keep their meaning for the superset; the recognizers themselves always run on the
  original text. (`_` rather than a letter, so that unspaced CJK prose is not mistaken for a base64 blob.)
- Context words, and lines that may head a table, are located in the same pass: a pattern that needs context to
  reach its threshold opens no window where no context word of its recognizer is within reach, and most matches
  need no tokenizing of their surroundings.
- Allow patterns (UUIDs, hex digests) are matched in the same pass; a hit lying inside one of them cannot become a
  finding of the entities that pattern allows, so it opens no window.
- Runs of 1 KB or more of base64/hex characters (images and files pasted as data URIs) are blobs: masked before
  the scan, because a pattern of random-looking characters would fire thousands of times inside one, while no
  recognizer can read anything in encoded bytes. The scanner drops findings that overlap a blob.

A window triggered by one exact or prefiltered pattern runs that pattern only (a unit); gated recognizers run whole.

`exhaustive=True` (or hyperscan missing) runs every recognizer on the whole region instead: Presidio's own
behaviour, kept as the reference the fast path is tested against, and as the portable fallback.

Compiling takes about a second per process; the compiled database is cached in $GATEWAY_DLP_CACHE (default
$XDG_CACHE_HOME/ai-egress-gateway, empty to disable), keyed by everything that went into it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import regex

try:
    import hyperscan
except ImportError:  # no wheel for this platform: every recognizer runs on the whole text (correct, slower)
    hyperscan = None

from dlp.context import HEADER_LINE

if TYPE_CHECKING:
    from dlp.context import TextContext
    from dlp.spec import AllowPattern, ContextSpec, RecognizerSpec

log = logging.getLogger(__name__)

BLOB_MIN = 1024  # characters of [A-Za-z0-9+/] in one run
MARGIN = 24  # characters around a window, for lookarounds and \b
SNAP = 64  # a window edge moves to the nearest whitespace within this many characters

CACHE_VERSION = 6  # bump when the meaning of a compiled plan changes
Span = tuple[int, int]
ALL = -1  # pattern index of a unit that runs the whole recognizer
ALLOWED = -2  # recognizer index of the allow patterns' expressions
CONTEXT = -3  # recognizer index of the context words' expressions
HEADER = -4  # recognizer index of the table-header expression
_EXACT, _SUPERSET, _GATE, _ALLOW, _CONTEXT, _HEADER = range(6)  # kinds of hyperscan expressions
Unit = tuple[int, int]  # what runs on a window: (recognizer index, index of one of its patterns, or ALL)


@runtime_checkable
class _PlausibleHits(Protocol):
    """A recognizer whose patterns are shapes far commoner than its matches (any capitalised word pair, for
    PERSON) can say cheaply, for a place the pass reports, whether a match is possible there at all (a word in
    the gazetteer), so that the other places open no window. `span` holds every match the hit stands for."""

    def plausible(self, pattern: int, text: str, start: int, end: int) -> bool: ...


@dataclass(slots=True)
class Windows:
    """What one prefilter pass found in a region: where to run each recognizer, candidate spans, blobs."""

    regions: dict[Unit, list[Span]]  # unit -> sorted, disjoint windows
    candidates: dict[int, list[Span]]  # spec index -> union of its candidate spans (gated recognizers only)
    blobs: list[Span]
    # allow pattern index -> union of where it matched, a superset of its matches (None: not looked, exhaustive)
    allowed: dict[int, list[Span]] | None = None


class _AsciiMap(dict):
    """str.translate table mapping every character to one ASCII character of the same regex class."""

    def __missing__(self, code: int) -> int:
        ch = chr(code)
        if code < 128:
            out = " " if 0x1C <= code <= 0x1F else ch  # str.isspace() says these separators are spaces; \s agrees
        elif ch.isdecimal():
            out = "0"
        elif ch.isalnum() or unicodedata.category(ch)[0] == "M":
            out = "_"
        elif ch.isspace():
            out = " "
        else:
            out = "\x7f"
        self[code] = ord(out)
        return ord(out)


_ASCII = _AsciiMap()
_CTRL = bytes(32 if 0x1C <= i <= 0x1F else i for i in range(256))


def to_ascii(text: str) -> bytes:
    """One byte per character (see module docstring)."""
    if text.isascii():
        return text.encode("ascii").translate(_CTRL)
    return text.translate(_ASCII).encode("ascii")


def _hs_source(source: str) -> bytes:
    """A pattern as hyperscan sees it: non-ASCII literals mapped like the text is."""
    if source.isascii():
        return source.encode("ascii")
    out = []
    for ch in source:
        if ord(ch) < 128:
            out.append(ch)
        else:
            mapped = chr(_ASCII[ord(ch)])
            out.append("\\x7f" if mapped == "\x7f" else mapped)
    return "".join(out).encode("ascii")


def _hs_flags(regex_flags: int) -> int:
    flags = 0
    if regex_flags & regex.IGNORECASE:
        flags |= hyperscan.HS_FLAG_CASELESS
    if regex_flags & regex.DOTALL:
        flags |= hyperscan.HS_FLAG_DOTALL
    if regex_flags & regex.MULTILINE:
        flags |= hyperscan.HS_FLAG_MULTILINE
    return flags


# Lookarounds and back-references are not supported exactly; bounded repeats of 100 or more make hyperscan's
# start-of-match tracking too large to compile.
_NOT_EXACT = regex.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=|\{\d*,?\d{3,}\}")


def _mode(source: str) -> int:
    """Exact with start of match when hyperscan supports the pattern as written, else the prefilter superset."""
    return hyperscan.HS_FLAG_PREFILTER if _NOT_EXACT.search(source) else hyperscan.HS_FLAG_SOM_LEFTMOST


def check_candidate(source: str, regex_flags: int) -> str | None:
    """Why hyperscan cannot compile this candidate regex exactly (None: it can, or hyperscan is not installed)."""
    if hyperscan is None:
        return None
    db = hyperscan.Database()
    try:
        db.compile(expressions=[_hs_source(source)], ids=[0], elements=1,
                   flags=[_hs_flags(regex_flags) | hyperscan.HS_FLAG_SOM_LEFTMOST])
    except hyperscan.error as e:
        return str(e)
    return None


_BLOB_RE = regex.compile(r"[A-Za-z0-9+/]{%d,}" % BLOB_MIN)
_BLOB_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class Prefilter:
    """Compiled once per process (and cached on disk, see _compile_cached); `windows` per text region."""

    def __init__(self, specs: list[RecognizerSpec], context: ContextSpec, allow: list[AllowPattern] = (),
                 literals: list[str] = (), exhaustive: bool = False):
        self.specs, self.allow, self.literals = specs, list(allow), list(literals)
        self.exhaustive = exhaustive or hyperscan is None
        if hyperscan is None and not exhaustive:
            log.warning("hyperscan is not installed: DLP runs every recognizer on the whole text (slow)")
        self._gates = {k: [regex.compile(c, s.regex_flags) for c in s.candidates]
                       for k, s in enumerate(specs) if s.candidates}
        if self.exhaustive:
            return
        plan = self._plan(context)
        self._db, self._expr, failed = _compile_cached(plan, specs)
        # recognizers the prefilter cannot narrow down (no regex to derive a prefilter from: NER) run everywhere
        self._always = sorted(set(failed) | {k for k, s in enumerate(specs) if not s.patterns and not s.candidates})
        # expression id -> (kind, literal or allow index | (unit, window width))
        self._kinds = []
        for (k, i), exact in self._expr:
            if k < 0:
                self._kinds.append(({ALLOWED: _ALLOW, CONTEXT: _CONTEXT, HEADER: _HEADER}[k], i))
            else:
                kind = _GATE if specs[k].candidates else _EXACT if exact else _SUPERSET
                self._kinds.append((kind, ((k, i), specs[k].width)))
        # units whose pattern scores below the threshold unless context raises it (no validator can lift it)
        self._needs_context = {(k, i) for k, s in enumerate(specs) if not s.candidates
                               for i, pattern in enumerate(s.patterns)
                               if s.require_context or (pattern.score < s.threshold and not s.has_validator)}
        # units whose hits the recognizer checks before a window opens (see _PlausibleHits)
        self._plausible = {(k, i): spec.recognizer.plausible for k, spec in enumerate(specs)
                           if isinstance(spec.recognizer, _PlausibleHits) for i in range(len(spec.patterns))}
        # allow patterns that cover every entity of a recognizer
        self._allow_for = {k: [j for j, a in enumerate(self.allow) if not a.entities or set(s.entities) <= a.entities]
                           for k, s in enumerate(specs)}
        self._blob_db = hyperscan.Database()
        self._blob_db.compile(
            expressions=[b"(?:^|[^A-Za-z0-9+/])[A-Za-z0-9+/]{%d}" % BLOB_MIN,
                         b"[A-Za-z0-9+/]{%d}(?:[^A-Za-z0-9+/]|$)" % BLOB_MIN],
            ids=[0, 1], elements=2, flags=[0, 0])

    def _plan(self, context: ContextSpec) -> list[tuple[bytes, int, Unit]]:
        """Every hyperscan expression: (source, flags, the unit it triggers). Gates and unreachable patterns
        (best possible score below the threshold) as described in the module docstring."""
        plan = []
        for k, spec in enumerate(self.specs):
            hs_flags = _hs_flags(spec.regex_flags)
            if spec.candidates:
                plan += [(_hs_source(c), hs_flags | hyperscan.HS_FLAG_SOM_LEFTMOST, (k, ALL)) for c in spec.candidates]
                continue
            plan += [(_hs_source(p.regex), hs_flags | _mode(p.regex), (k, i)) for i, p in enumerate(spec.patterns)
                     if spec.best_score(p.score, context) >= spec.threshold]
        plan += [(_hs_source(a.regex.pattern), _hs_flags(a.regex.flags) | hyperscan.HS_FLAG_SOM_LEFTMOST, (ALLOWED, j))
                 for j, a in enumerate(self.allow)]
        # Lines that may be the header row of a table (dlp.context.HEADER_LINE), for column-header context.
        plan.append((HEADER_LINE.pattern.encode(), hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_SOM_LEFTMOST,
                     (HEADER, 0)))
        # Context words where dlp.context's tokenizer can find them, or a superset: starting after a non-letter (any
        # case) or capitalised after a letter (camelCase, HTTPServer), and ending, after an optional plural s,
        # before anything but a lowercase letter (phoneNumber, SSN:, passports).
        end = b"s?(?-i:[^a-z]|$)"
        for j, word in enumerate(self.literals):
            literal = _hs_source(regex.escape(word))
            plan.append((b"(?i)(?:^|[^a-z])" + literal + end, hyperscan.HS_FLAG_SOM_LEFTMOST, (CONTEXT, j)))
            if word[:1].isalpha():
                plan.append((b"[A-Za-z]" + _hs_source(regex.escape(word[0].upper())) + b"(?i)" + literal[1:] + end,
                             hyperscan.HS_FLAG_SOM_LEFTMOST, (CONTEXT, j)))
        return plan

    def windows(self, text: str, lo: int, hi: int, context: TextContext) -> Windows:
        """Where to run what in text[lo:hi] (offsets are absolute); tells `context` where its words are."""
        if self.exhaustive:
            return self._exhaustive(text, lo, hi)
        buf = to_ascii(text[lo:hi])
        blobs = self._blobs(buf, lo)
        if blobs:
            masked = bytearray(buf)
            for s, e in blobs:
                masked[s - lo:e - lo] = b" " * (e - s)
            buf = bytes(masked)
        hits: list[tuple[int, int, int]] = []
        self._db.scan(buf, match_event_handler=lambda i, frm, to, _f, _c: hits.append((i, frm, to)))
        kinds = self._kinds
        allowed: dict[int, list[Span]] = {}
        near: list[tuple[int, int]] = []
        headers: list[Span] = []
        found: list[tuple[int, int, int]] = []
        for hit in hits:
            kind, j = kinds[hit[0]]
            if kind == _ALLOW:
                allowed.setdefault(j, []).append((lo + hit[1], lo + hit[2]))
            elif kind == _CONTEXT:
                near.append((lo + hit[1], j))  # the word, or the character before it
            elif kind == _HEADER:
                headers.append((lo + hit[1], lo + hit[2]))
            else:
                found.append(hit)
        allowed = {j: _union(s) for j, s in allowed.items()}
        near.sort()
        context.set_near(near)
        context.set_header_lines(sorted(headers))
        spans: dict[Unit, list[Span]] = {(k, ALL): [(lo, hi)] for k in self._always}
        candidates: dict[int, list[Span]] = {}
        plausible, needs_context, allow_for = self._plausible, self._needs_context, self._allow_for
        allowed_for: dict[int, list[list[Span]]] = {}  # recognizer -> the allowed spans of its allow patterns
        for i, frm, to in found:
            kind, (unit, width) = kinds[i]
            k = unit[0]
            if kind == _GATE:  # the match may reach `width` beyond the candidate on either side
                candidates.setdefault(k, []).append((lo + frm, lo + to))
                spans.setdefault(unit, []).append((lo + frm - width, lo + to + width))
                continue
            span = (lo + frm, lo + to) if kind == _EXACT else (lo + to - width, lo + to)
            check = plausible.get(unit)
            if check is not None and not check(unit[1], text, *span):
                continue
            # Every match this hit stands for lies inside `span`; inside an allow-listed match it cannot be reported.
            if allowed:
                lists = allowed_for.get(k)
                if lists is None:
                    lists = allowed_for[k] = [allowed[j] for j in allow_for[k] if j in allowed]
                if lists and _inside_one(span, lists):
                    continue
            # A pattern that needs context to reach its threshold, with no context word of its recognizer within
            # reach and no table row to take a column header from, cannot be reported either.
            if unit in needs_context and not context.near(k, *context.reach(*span)) and \
                    text.find("\n", span[0], span[1]) < 0 and not context.supports_by_header(span[0], k):
                continue
            spans.setdefault(unit, []).append(span)
        regions = {unit: merge_windows(text, s, lo, hi) for unit, s in spans.items()}
        return Windows(regions, {k: _union(c) for k, c in candidates.items()}, blobs, allowed)

    def _blobs(self, buf: bytes, lo: int) -> list[Span]:
        marks: list[tuple[int, int]] = []
        self._blob_db.scan(buf, match_event_handler=lambda i, _frm, to, _f, _c: marks.append((i, to)))
        if not marks:
            return []
        starts = sorted({to - BLOB_MIN for i, to in marks if i == 0})
        ends = sorted({to if buf[to - 1] in _BLOB_BYTES else to - 1 for i, to in marks if i == 1})
        return [(lo + s, lo + e) for s, e in zip(starts, ends)]

    def _exhaustive(self, text: str, lo: int, hi: int) -> Windows:
        # overlapped: a match at every start, as hyperscan reports every match, not only non-overlapping ones
        candidates = {k: [(lo + m.start(), lo + m.end()) for g in gates
                          for m in g.finditer(text[lo:hi], overlapped=True)]
                      for k, gates in self._gates.items()}
        blobs = [(lo + m.start(), lo + m.end()) for m in _BLOB_RE.finditer(text[lo:hi])]
        regions = {(k, ALL): [(lo, hi)] for k in range(len(self.specs))}
        return Windows(regions, {k: _union(c) for k, c in candidates.items() if c}, blobs)


def _compile_cached(plan: list[tuple[bytes, int, Unit]], specs: list[RecognizerSpec]):
    """The database for this plan, from the disk cache when an identical plan was compiled before.

    Compiling takes about a second and every worker process of the pool needs the database; the cache makes the
    second start instant. The cached file holds hyperscan's serialized database and the final plan as JSON (no
    pickle: nothing in a cache folder gets to run code). A corrupt or foreign file is ignored and rewritten.
    """
    key = hashlib.sha256(repr((CACHE_VERSION, hyperscan.__version__, plan)).encode()).hexdigest()[:32]
    path = _cache_dir() / f"prefilter-{key}.hsdb" if _cache_dir() else None
    if path and path.exists():
        try:
            header, _, blob = path.read_bytes().partition(b"\n")
            meta = json.loads(header)
            db = hyperscan.loadb(blob, hyperscan.HS_MODE_BLOCK)
            db.scratch = hyperscan.Scratch(db)  # a deserialized database comes without scratch space
            expr = [((k, i), exact) for k, i, exact in meta["expr"]]
            return db, expr, list(meta["always"])
        except (OSError, ValueError, KeyError, hyperscan.error):
            log.info("ignoring unreadable prefilter cache %s", path)
    db, expr, always = _compile(plan, specs)
    if path:
        meta = {"expr": [[k, i, exact] for (k, i), exact in expr], "always": always}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
                tmp.write(json.dumps(meta).encode() + b"\n" + hyperscan.dumpb(db))
            os.replace(tmp.name, path)
            _prune(path.parent)
        except OSError as e:
            log.info("cannot cache the prefilter in %s: %s", path.parent, e)
    return db, expr, always


CACHE_KEEP = 8  # compiled databases kept (each rules version makes one, about 1 MB)


def _prune(folder: Path) -> None:
    """Delete all but the most recently written databases, so edited rules do not fill the disk."""
    files = sorted(folder.glob("prefilter-*.hsdb"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in files[CACHE_KEEP:]:
        old.unlink(missing_ok=True)


def _compile(plan: list[tuple[bytes, int, Unit]], specs: list[RecognizerSpec]):
    """Compile the plan. If hyperscan rejects an expression, an exact one is retried in prefilter mode, and one
    that cannot even be prefiltered makes its recognizer run on whole texts (still correct, slower)."""
    sources, flags = [p[0] for p in plan], [p[1] for p in plan]
    expr = [(unit, bool(f & hyperscan.HS_FLAG_SOM_LEFTMOST)) for _, f, unit in plan]
    db = hyperscan.Database()
    try:
        db.compile(expressions=sources, ids=list(range(len(sources))), elements=len(sources), flags=flags)
        return db, expr, []
    except hyperscan.error:
        pass
    keep, always = [], []
    for i, (source, f, (k, pi)) in enumerate(plan):
        relax = pi != ALL and k >= 0  # a recognizer's own pattern may fall back to the prefilter superset
        tries = [f] + ([f & ~hyperscan.HS_FLAG_SOM_LEFTMOST | hyperscan.HS_FLAG_PREFILTER] if relax else [])
        for attempt in tries:
            try:
                hyperscan.Database().compile(expressions=[source], ids=[0], elements=1, flags=[attempt])
            except hyperscan.error as e:
                error = e
                continue
            flags[i], expr[i] = attempt, ((k, pi), bool(attempt & hyperscan.HS_FLAG_SOM_LEFTMOST))
            keep.append(i)
            break
        else:
            if k == ALLOWED:  # still applied to findings; it just cannot save work
                log.info("allow pattern %r: hyperscan cannot compile it (%s); no work is saved", source[:80], error)
                continue
            log.warning("recognizer %s: hyperscan cannot prefilter %r (%s); it runs on whole texts",
                        specs[k].name, source[:80], error)
            always.append(k)
    keep = [i for i in keep if expr[i][0][0] not in always]
    db.compile(expressions=[sources[i] for i in keep], ids=list(range(len(keep))), elements=len(keep),
               flags=[flags[i] for i in keep])
    return db, [expr[i] for i in keep], sorted(set(always))


def _cache_dir() -> Path | None:
    configured = os.environ.get("GATEWAY_DLP_CACHE")
    if configured is not None:
        return Path(configured) if configured else None  # empty: no cache
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ai-egress-gateway"


def inside(span: Span, spans: list[Span] | tuple) -> bool:
    """Is span inside one of these sorted, disjoint spans?"""
    i = bisect.bisect_right(spans, (span[0], float("inf")))
    return i > 0 and spans[i - 1][1] >= span[1]


def _inside_one(span: Span, lists: list[list[Span]]) -> bool:
    for spans in lists:
        if inside(span, spans):
            return True
    return False


def _union(spans: list[Span]) -> list[Span]:
    """Sorted, disjoint spans covering the same characters."""
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


def merge_windows(text: str, spans: list[Span], lo: int, hi: int) -> list[Span]:
    """Widen spans by MARGIN, merge what overlaps, snap the edges to whitespace, clamp to [lo, hi)."""
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        s, e = max(lo, s - MARGIN), min(hi, e + MARGIN)
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out: list[Span] = []
    for s, e in merged:
        s, e = snap_left(text, s, lo), snap_right(text, e, hi)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def snap_left(text: str, pos: int, lo: int) -> int:
    """Move a window start back onto whitespace, so a regex sees a token from its beginning.

    The whitespace character itself is inside the window: a match that reaches the window's edge then really was
    cut (or starts with whitespace), which is what the scanner's window growth checks.
    """
    floor = max(lo, pos - SNAP)
    i = max(text.rfind(" ", floor, pos), text.rfind("\n", floor, pos), text.rfind("\t", floor, pos))
    return i if i >= 0 else floor


_SPACE = regex.compile(r"[ \n\t]")


def snap_right(text: str, pos: int, hi: int) -> int:
    """Move a window end forward past the next whitespace (see snap_left)."""
    ceiling = min(hi, pos + SNAP)
    m = _SPACE.search(text, pos, ceiling)
    return m.end() if m else ceiling
