"""The DLP scanner: Presidio's recognizers, run only where the prefilter says they could match.

For each text (a part of an exchange):
1. the prefilter (dlp.prefilter) finds, in one hyperscan pass, the windows where each recognizer could match;
2. the recognizer runs on each window (its own regexes, flags and validators such as Luhn and the IBAN checksum,
   in dlp.recognizers.match_patterns; phonenumbers for phone numbers; spaCy for NER); a match that reaches a window
   edge that is not whitespace grows the window and runs again;
3. gated recognizers keep only matches overlapping one of their candidates; matches inside blobs are dropped;
4. context words raise scores (dlp.context), per-recognizer thresholds apply, spans are trimmed off markup tags,
   allow-listed terms and patterns are dropped;
5. overlaps are resolved: the highest score wins, then the longest span, then the earliest; output is sorted,
   so the same input always gives the same findings.
Texts longer than limits.chunk_chars are scanned in overlapping chunks; each chunk keeps the findings that start
in its own half of the overlaps, so a finding shorter than half the overlap is found whole exactly once.

Each chunk is also scanned in its views with obfuscations undone (dlp.normalize: invisible and look-alike
characters, entities, %XX, spaced-out and dotted values, base64 and hex); a finding in a view is moved back onto
the original characters it came from and competes with the others in overlap resolution. `could_find` answers
for the same views: the proxy lets a prompt skip the workers on its answer, so a value the scan would find in a
view only must be in it. `scan_parts` also scans across each boundary between consecutive texts, for a value
split over two parts.

This module imports neither Presidio nor spaCy at import time: `Finding` travels to the proxy process, which
should not pay for them.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dlp.context import TextContext
from dlp.injection import RECOGNIZER, THREATS, Detector, rules_near
from dlp.injection import scan as detect_threats
from dlp.normalize import Normalizer, View
from dlp.prefilter import ALL, Unit, Windows, inside, merge_windows, snap_left, snap_right

if TYPE_CHECKING:
    from dlp.spec import DlpRules, RecognizerSpec

Span = tuple[int, int]
Raw = tuple[int, str, int, int, float]  # recognizer index, entity, start, end, score: a match before _keep


@dataclass(frozen=True, slots=True)
class Finding:
    """Something sensitive in part `part` of an exchange, at [start, end) of that part's text."""

    entity: str
    start: int
    end: int
    score: float
    part: int = 0
    recognizer: str = ""
    #: Where the part's text came from (dlp.injection.SOURCES), set in the proxy, which knows the parts' roles.
    source: str = ""
    #: "experimental" for a finding of a rule still on trial (dlp.injection): the policy keeps it in monitor.
    stage: str = ""


@dataclass(frozen=True, slots=True)
class Chunk:
    """A region of a text to scan, and the region of starts it owns (see module docstring)."""

    lo: int
    hi: int
    own_lo: int
    own_hi: int


# A markup tag; a finding never swallows one (redacting `hunter2</password>` would break the document).
_TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>")
GROW_TRIES = 4
BOUNDARY_CHARS = 256  # characters on each side of a boundary between parts scanned together


#: The views (decoded runs, normalised windows) `could_find` reads in the proxy itself; past this many characters
#: it cannot say, and the text goes to the workers: a prompt of encoded runs costs the event loop no second pass.
GATE_VIEW_CHARS = 4096


class Scanner:
    """Finds what rules/recognizers.yaml describes. Build once per process (compiling takes about a second)."""

    def __init__(self, rules: DlpRules, exhaustive: bool = False):
        from presidio_analyzer import PatternRecognizer

        from dlp.context import ContextWords
        from dlp.prefilter import Prefilter
        from dlp.spec import normalize_term

        self.rules = rules
        self.specs: list[RecognizerSpec] = list(rules.recognizers)
        self._ner_index, self._nlp = None, None
        if rules.ner:  # loaded now: a model that does not load fails the start, not the first request
            from presidio_analyzer.nlp_engine import SpacyNlpEngine

            self._nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": rules.ner.model}])
            self._nlp.load()
            self.specs.append(_ner_spec(rules))
            self._ner_index = len(self.specs) - 1
        self._context_words = [ContextWords.of(s.context) for s in self.specs]
        self._literals = sorted({w for cw in self._context_words for w in cw.literals()})
        self._literal_specs = [frozenset(k for k, cw in enumerate(self._context_words) if w in cw.literals())
                               for w in self._literals]
        self._prefilter = Prefilter(self.specs, rules.context, rules.allow_patterns, self._literals, exhaustive)
        # recognizers that are not regexes (phonenumbers, spaCy) and the best score each can reach
        self._costly = [k for k, s in enumerate(self.specs) if not isinstance(s.recognizer, PatternRecognizer)]
        self._best = {k: self.specs[k].best_score(getattr(self.specs[k].recognizer, "SCORE", 1.0), rules.context)
                      for k in self._costly}
        self._allow_terms = frozenset(normalize_term(t) for t in rules.allow_terms)
        self._normalize = normalize_term
        self._normalizer = Normalizer(rules.key_prefixes)
        self._analyzers: dict[Unit, Callable[[str, list[Span] | None], list[tuple[str, int, int, float]]]] = {}
        # prompt injection (dlp.injection): its own hyperscan pass over the same text and normalised views
        self._threats: Detector | None = Detector(rules_near(str(rules.file)))

    def warm_up(self) -> None:
        """Scan a sample with the common entities once, so that what validators load on first use (the public
        suffix list behind e-mail validation: 20 ms; phonenumbers' metadata) is loaded before the first prompt."""
        self.scan("Mail jane.doe@example.com or call +1 415 555 0100; card 4111 1111 1111 1111, "
                  "IBAN GB82 WEST 1234 5698 7654 32.")

    def without_threats(self) -> Scanner:
        """The same scanner without prompt-injection detection: DLP alone, so bench/dlp.py can show what the
        detection adds in the same run."""
        alone = copy.copy(self)
        alone._threats = None
        return alone

    @classmethod
    def from_rules(cls, rules_dir: str | Path, exhaustive: bool = False) -> Scanner:
        from dlp.rules import load_rules

        return cls(load_rules(rules_dir), exhaustive=exhaustive)

    # --- public API ---------------------------------------------------------------------------------------------

    def scan(self, text: str) -> list[Finding]:
        return self.scan_text(text, 0)

    def scan_parts(self, texts: list[str]) -> list[Finding]:
        """Findings of every text, `part` set to its index, and of values split across consecutive texts (see
        `scan_boundaries`); sorted by part then position."""
        out: list[Finding] = []
        for part, text in enumerate(texts):
            out.extend(self.scan_text(text, part))
        return resolve_overlaps(out + self.scan_boundaries(texts, out))

    def scan_boundaries(self, texts: list[str], found: list[Finding]) -> list[Finding]:
        """Values split across consecutive texts: the findings of `boundaries(texts)`, as `split_findings` keeps
        them."""
        joins = boundaries(texts)
        return split_findings(joins, [self.scan_text(j.text) for j in joins], found)

    def scan_text(self, text: str, part: int = 0) -> list[Finding]:
        chunks = self.chunks(len(text))
        if len(chunks) == 1:
            return self.scan_chunk(text, chunks[0], part)  # resolved already
        findings: list[Finding] = []
        for chunk in chunks:
            findings.extend(self.scan_chunk(text, chunk, part))
        return resolve_overlaps(findings)

    def could_find(self, text: str) -> frozenset[str] | None:
        """The entity types `scan_text(text)` could report, from one prefilter pass: those of every recognizer
        that opens a window (recognizers the prefilter cannot narrow down, such as NER, always open one). Empty:
        the scan would find nothing.

        It is the prefilter alone, one hyperscan pass of about 16 us per KB, and it is exact: every finding's
        entity is in the answer (which may hold more). The proxy uses it to keep clean prompts, the common case,
        off the worker pool, and to send a prompt before its scan ends when no rule in force looks at what could
        be found in it. None (cannot say) for texts longer than one chunk, and in the exhaustive mode.

        The answer covers the text's normalised and decoded views (dlp.normalize) as the scan does: an obfuscated
        key must not be declared clean."""
        if self._prefilter.exhaustive or len(text) > self.rules.limits.chunk_chars:
            return None
        views = [v.text for v in self._normalizer.views(text)]
        if sum(map(len, views)) > GATE_VIEW_CHARS:
            return None  # much of it encoded or obfuscated: the workers scan it, not the proxy's event loop
        units: set[int] = set()
        threats: set[str] = set()
        for t in [text, *views]:
            if len(t) > self.rules.limits.chunk_chars:
                return None
            context = TextContext(t, self.rules.context, self._context_words, self._literal_specs)
            units.update(unit[0] for unit in self._prefilter.windows(t, 0, len(t), context).regions)
            if self._threats is not None:
                threats |= self._threats.could_find(t)
        return frozenset(e for k in units for e in self.specs[k].entities) | threats

    def could_find_parts(self, texts: list[str]) -> frozenset[str] | None:
        """`could_find` for texts scanned together by `scan_parts`, in one pass over every text and every boundary
        between consecutive texts (a value split between two parts is found there), joined by newlines: a
        newline ends a match as the end of a text does, and a context word that reaches across it only adds to
        the answer, so the answer still holds every entity a scan could report. A request whose whole-body walk
        adds many short texts costs one pass, not one per text. None: cannot say."""
        joined = "\n".join([*texts, *(j.text for j in boundaries(texts))])
        return self.could_find(joined) if joined.strip() else frozenset()

    def chunks(self, length: int) -> list[Chunk]:
        return chunk_plan(length, self.rules.limits.chunk_chars, self.rules.limits.chunk_overlap)

    def scan_chunk(self, text: str, chunk: Chunk, part: int = 0) -> list[Finding]:
        """Findings starting in the chunk's own region (the whole text when it is one chunk), in the text itself
        and in the views of the chunk (dlp.normalize), moved back onto the original characters."""
        views = self._normalizer.views(text[chunk.lo:chunk.hi])
        region, threats = self._scan_region(text, chunk, part), self._threats_in(text, chunk, part, views)
        if not views and not threats:
            return region  # resolved already: the common case costs no second resolution
        findings = region + threats
        if not views:
            return resolve_overlaps(findings)
        for view in views:
            findings.extend(self._in_original(view, chunk, part))
        return resolve_overlaps(findings)

    def _threats_in(self, text: str, chunk: Chunk, part: int, views: list[View]) -> list[Finding]:
        """Prompt-injection findings (dlp.injection) of the chunk and its views, those starting in its own region."""
        if self._threats is None:
            return []
        return [Finding(h.entity, h.start + chunk.lo, h.end + chunk.lo, h.score, part, RECOGNIZER + h.rule,
                        stage=h.stage if h.stage != "stable" else "")
                for h in detect_threats(self._threats, text[chunk.lo:chunk.hi], views)
                if chunk.own_lo <= h.start + chunk.lo < chunk.own_hi]

    def _in_original(self, view: View, chunk: Chunk, part: int) -> list[Finding]:
        """A view's findings on the original text, those starting in the chunk's own region."""
        whole = Chunk(0, len(view.text), 0, len(view.text))
        out = []
        for f in self._scan_region(view.text, whole, part):
            start, end = view.span(f.start, f.end)
            start, end = start + chunk.lo, end + chunk.lo
            if chunk.own_lo <= start < chunk.own_hi:
                out.append(dataclasses.replace(f, start=start, end=end))
        return out

    def _scan_region(self, text: str, chunk: Chunk, part: int) -> list[Finding]:
        """Findings of the text itself starting in the chunk's own region.

        Pattern recognizers run first. The costly ones (phonenumbers, NER) run last and skip every candidate lying
        inside a finding they could not outscore: overlap resolution would drop what they found there anyway
        (a phone candidate inside a checksum-valid IBAN or card number costs a millisecond for nothing).
        """
        lo, hi = chunk.lo, chunk.hi
        context = TextContext(text, self.rules.context, self._context_words, self._literal_specs)
        windows = self._prefilter.windows(text, lo, hi, context)
        exhaustive = self._prefilter.exhaustive
        raw: list[Raw] = []
        for unit, regions in windows.regions.items():
            if unit[0] not in self._costly or exhaustive:
                raw.extend(r for ws, we in regions for r in self._run(unit, text, ws, we, lo, hi))
        findings = resolve_overlaps(self._keep(text, raw, windows, context, chunk, part))
        if exhaustive:
            return findings
        costly: list[Raw] = []
        for k in self._costly:
            regions = windows.regions.get((k, ALL))
            if regions is None:
                continue
            spans = windows.candidates.get(k)
            if spans is not None:  # gated: only candidates outside findings this recognizer cannot outscore
                blocking = [(f.start, f.end) for f in findings if f.score > self._best[k]]  # sorted, disjoint
                spans = [s for s in spans if not _inside_any(s, blocking)]
                regions = merge_windows(text, spans, lo, hi)
            for ws, we in regions:
                focus = None if spans is None else _overlapping(spans, ws, we)
                costly.extend(self._run((k, ALL), text, ws, we, lo, hi, focus))
        if not costly:
            return findings
        return resolve_overlaps(findings + self._keep(text, costly, windows, context, chunk, part))

    def _keep(self, text: str, raw: list[Raw], windows: Windows, context: TextContext,
              chunk: Chunk, part: int) -> list[Finding]:
        """Raw matches to findings: gates, blobs, ownership, context, threshold, markup, allow-lists."""
        findings = []
        for k, entity, start, end, score in raw:
            spec = self.specs[k]
            if not chunk.own_lo <= start < chunk.own_hi:
                continue
            if spec.candidates and not _overlaps_any(start, end, windows.candidates.get(k, [])):
                continue
            if windows.blobs and _overlaps_any(start, end, windows.blobs):
                continue
            if score < spec.threshold and (not self._context_words[k] or context.boost(score) < spec.threshold):
                continue  # below the threshold even with context
            if (score < 1.0 or spec.require_context) and context.supports(start, end, k):
                score = context.boost(score)
            elif spec.require_context or score < spec.threshold:
                continue
            span = _outside_markup(text, start, end)
            if span is None or self._allowed(text, span, entity, windows, chunk):
                continue
            findings.append(Finding(entity, span[0], span[1], round(score, 4), part, spec.name))
        return findings

    # --- internals ----------------------------------------------------------------------------------------------

    def _run(self, unit: Unit, text: str, ws: int, we: int, lo: int, hi: int,
             focus: list[Span] | None = None) -> list[Raw]:
        """Run a unit on text[ws:we]; grow the window while a match reaches a cut (non-whitespace) edge.

        `focus`: the candidate spans in the window, for recognizers that can save work with them (phone numbers).
        """
        analyze = self._analyzer(unit)
        for _ in range(GROW_TRIES):
            relative = None if focus is None else [(max(s, ws) - ws, min(e, we) - ws) for s, e in focus
                                                   if s < we and ws < e]
            found = analyze(text[ws:we], relative)
            cut_left = ws > lo and any(start == 0 for _, start, _, _ in found)
            cut_right = we < hi and any(end == we - ws for _, _, end, _ in found)
            if not (cut_left or cut_right):
                break
            grow = max(we - ws, 256)
            if cut_left:
                ws = snap_left(text, max(lo, ws - grow), lo)
            if cut_right:
                we = snap_right(text, min(hi, we + grow), hi)
        return [(unit[0], entity, start + ws, end + ws, score) for entity, start, end, score in found]

    def _analyzer(self, unit: Unit) -> Callable[[str, list[Span] | None], list[tuple[str, int, int, float]]]:
        """What a unit runs on a window: (entity, start, end, score) relative to the window."""
        analyze = self._analyzers.get(unit)
        if analyze is not None:
            return analyze
        from presidio_analyzer.predefined_recognizers import PhoneRecognizer

        from dlp.recognizers import analyze_phone, match_patterns

        k, pattern = unit
        spec = self.specs[k]
        recognizer = spec.recognizer
        if k == self._ner_index:
            def analyze(window: str, _focus):
                found = recognizer.analyze(window, spec.entities, self._nlp.process_text(window, "en"))
                return [(r.entity_type, r.start, r.end, r.score) for r in found]
        elif isinstance(recognizer, PhoneRecognizer):
            def analyze(window: str, focus):
                return [(spec.entities[0], s, e, recognizer.SCORE) for s, e in analyze_phone(recognizer, window, focus)]
        else:
            if pattern != ALL:  # the same recognizer with only the pattern that fired: same results for it
                recognizer = copy.copy(recognizer)
                recognizer.patterns = [spec.patterns[pattern]]
            entity = spec.entities[0]

            def analyze(window: str, _focus):
                return [(entity, s, e, score) for s, e, score in match_patterns(recognizer, window)]
        self._analyzers[unit] = analyze
        return analyze

    def _allowed(self, text: str, span: Span, entity: str, windows: Windows, chunk: Chunk) -> bool:
        """Is the finding an allow-listed term, or inside a match of an allow pattern for its entity?

        The prefilter's pass saw where each allow pattern matches (a superset of its matches); where it saw none
        around the finding and the whole reach of the pattern was in the scanned region, the regex need not run.
        """
        start, end = span
        if self._allow_terms and self._normalize(text[start:end]) in self._allow_terms:
            return True
        seen = windows.allowed
        for j, allow in enumerate(self.rules.allow_patterns):
            if allow.entities and entity not in allow.entities:
                continue
            lo, hi = max(0, end - allow.width), min(len(text), start + allow.width)
            if seen is not None and chunk.lo <= lo and hi <= chunk.hi and not inside(span, seen.get(j, ())):
                continue
            if any(m.start() <= start and end <= m.end()
                   for m in allow.regex.finditer(text, lo, hi, overlapped=True)):  # every match, as hyperscan
                return True
        return False


def chunk_plan(length: int, size: int, overlap: int) -> list[Chunk]:
    """How a text of this length is cut: one chunk up to `size`, else chunks overlapping by `overlap`."""
    if length <= size:
        return [Chunk(0, length, 0, length)]
    starts = list(range(0, length - overlap, size - overlap))
    # chunk i owns starts from the middle of its overlap with chunk i-1 to the middle of the next overlap
    bounds = [0] + [lo + overlap // 2 for lo in starts[1:]] + [length]
    return [Chunk(lo, length if i == len(starts) - 1 else lo + size, bounds[i], bounds[i + 1])
            for i, lo in enumerate(starts)]


def _ner_spec(rules: DlpRules) -> RecognizerSpec:
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    from dlp.spec import RecognizerSpec

    ner = rules.ner
    recognizer = SpacyRecognizer(supported_language="en", supported_entities=list(ner.entities))
    return RecognizerSpec(name="SpacyRecognizer", recognizer=recognizer, entities=list(ner.entities),
                          threshold=ner.threshold, candidates=[], require_context=False, width=0, line=ner.line)


def _overlaps_any(start: int, end: int, spans: list[Span]) -> bool:
    """Does [start, end) overlap one of these sorted, disjoint spans? Only the last one starting before end can."""
    i = bisect.bisect_left(spans, (end,))
    return i > 0 and spans[i - 1][1] > start


def _inside_any(span: Span, spans: list[Span]) -> bool:
    """Is span inside one of these sorted, disjoint spans? Only the last one starting at or before it can hold it."""
    i = bisect.bisect_right(spans, (span[0], float("inf")))
    return i > 0 and spans[i - 1][1] >= span[1]


def _overlapping(spans: list[Span], lo: int, hi: int) -> list[Span]:
    """The sorted, disjoint spans that overlap [lo, hi)."""
    i = max(0, bisect.bisect_right(spans, (lo, float("inf"))) - 1)
    return [s for s in spans[i:bisect.bisect_left(spans, (hi,))] if s[1] > lo]


def _outside_markup(text: str, start: int, end: int) -> Span | None:
    """The longest piece of [start, end) between markup tags (the span itself when it holds no tag)."""
    if "<" not in text[start:end]:
        return start, end
    pieces, pos = [], start
    for m in _TAG.finditer(text, start, end):
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, end))
    s, e = max(pieces, key=lambda p: (p[1] - p[0], -p[0]))
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return (s, e) if e > s else None


CONTEXT_SEP = ": "


def scan_texts(parts) -> list[str]:
    """What DLP scans of each `core.exchange.TextPart`: its context (a JSON key) and CONTEXT_SEP before its text,
    as the key would stand before the value in the document."""
    return [f"{p.context}{CONTEXT_SEP}{p.text}" if p.context else p.text for p in parts]


def in_parts(findings: list[Finding], parts) -> list[Finding]:
    """Findings of `scan_texts(parts)` moved back onto the parts' own texts; a finding that begins in the
    context (the key) is dropped: it is not in the text, which is all a redaction can rewrite."""
    out = []
    for f in findings:
        shift = len(parts[f.part].context) + len(CONTEXT_SEP) if 0 <= f.part < len(parts) and \
            parts[f.part].context else 0
        if f.start >= shift:
            out.append(dataclasses.replace(f, start=f.start - shift, end=f.end - shift))
    return out


@dataclass(frozen=True, slots=True)
class Boundary:
    """The join between text `part` and the next: the last BOUNDARY_CHARS of one and the first of the other, no
    separator; `cut` is where the second begins in `text`, `offset` where `text` begins in the first."""

    part: int
    text: str
    cut: int
    offset: int


def boundaries(texts: list[str]) -> list[Boundary]:
    """The joins worth scanning for values split across consecutive texts (a key in two messages, a card number
    cut between two content parts)."""
    out = []
    for part, (left, right) in enumerate(zip(texts, texts[1:])):
        if left and right:
            tail = left[-BOUNDARY_CHARS:]
            out.append(Boundary(part, tail + right[:BOUNDARY_CHARS], len(tail), len(left) - len(tail)))
    return out


def split_findings(joins: list[Boundary], scanned: list[list[Finding]], found: list[Finding]) -> list[Finding]:
    """The findings of each join's text (`scanned`, parallel to `joins`) that cross its cut, as one finding per
    side (the piece in each text), so a redaction rewrites both pieces. One whose piece on either side overlaps a
    finding of the same entity in `found` (the findings of the texts themselves) is that value running into the
    text next to it, and is dropped: `bob@example.com` at the end of one message is not `bob@example.comThanks`."""
    by_part: dict[int, list[Finding]] = {}
    for f in found:
        by_part.setdefault(f.part, []).append(f)
    out: list[Finding] = []
    for join, findings in zip(joins, scanned):
        for f in findings:
            if not f.start < join.cut < f.end:
                continue
            pieces = (Finding(f.entity, join.offset + f.start, join.offset + join.cut, f.score, join.part,
                              f.recognizer),
                      Finding(f.entity, 0, f.end - join.cut, f.score, join.part + 1, f.recognizer))
            if any(g.entity == f.entity and g.start < p.end and p.start < g.end
                   for p in pieces for g in by_part.get(p.part, ())):
                continue
            out.extend(pieces)
    return out


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep a set of non-overlapping findings per part: highest score, then longest, then earliest wins. Threats
    (dlp.injection: a phrase, not a value) are resolved apart from values: a sentence that injects and the e-mail
    address in it are both reported, so the address can still be redacted.

    The characters already taken are marked in a bytearray per part, so each finding costs its own length in C
    (find, slice assignment), not a search and an insertion into a list of every span kept: hostile text with a
    finding every few characters (200,000 in a few MB) is resolved in under a second instead of seconds (and
    dlp.pool, which merges the workers' findings on the event loop, resolves large sets in a thread)."""
    ranked = sorted(set(findings), key=lambda f: (-f.score, -(f.end - f.start), f.part, f.start, f.entity))
    ends: dict[tuple[int, bool], int] = {}
    for f in ranked:
        key = (f.part, f.entity in THREATS)
        ends[key] = max(ends.get(key, 0), f.end)
    taken = {key: bytearray(end) for key, end in ends.items()}
    kept = []
    for f in ranked:
        marks = taken[(f.part, f.entity in THREATS)]
        if marks.find(1, f.start, f.end) >= 0:
            continue
        marks[f.start:f.end] = b"\1" * (f.end - f.start)
        kept.append(f)
    return sorted(kept, key=lambda f: (f.part, f.start, f.end, f.entity))
