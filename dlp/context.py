"""Context words raise a weak match's score: "passport 287131127" is a passport number, "build 287131127" is not.

Presidio does this in LemmaContextAwareEnhancer, from the tokens and lemmas of an NLP pipeline; with the
NoOpNlpEngine that the gateway uses (no model, no network) there are no tokens, so plain Presidio never applies
context at all. This module applies the same rule with the same arithmetic (score + boost, at least min_score, at
most 1.0) from a tokenizer made for what prompts contain:

- identifiers are split into words (`aws_secret_access_key`, `creditCardNumber`, `X-Api-Key`), so context works in
  code, JSON and logs, not only in prose;
- a light lemma (plural `s` dropped) stands in for spaCy's, and common English stop words do not count toward the
  number of words looked at, as with spaCy;
- context entries of several words ("social security", "tax file number") match as phrases (Presidio compares
  single lemmas, so such entries never match there);
- in delimited rows (CSV, TSV, Markdown tables) the column's header cell counts as context: in
  `name,ssn\\nAda,123-45-6789` the word `ssn` is two lines above the number.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dlp.spec import ContextSpec

_WORD = re.compile(r"[^\W\d_]+|\d+")  # runs of letters (any script), runs of digits
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")  # creditCardNumber, HTTPServer
_STOP = frozenset(
    "a an the of to at in on for and or is are was be been my your our their his her its me i we you it this that "
    "these those with as by from here there please what which who".split()
)
CHARS_PER_WORD = 24  # how far to read for N words: generous, identifiers are long
_DELIMITERS = ",;\t|"
HEADER_LINE = re.compile(r"^[^\d\n]*[,;\t|][^\d\n]*$", re.M)  # a line with a delimiter and no digit
_HEADER_LOOKBACK = 20  # header-like lines examined above a row
_LETTER = re.compile(r"[^\W\d_]")  # a header has words (a Markdown |---|---| separator has none)


@functools.lru_cache(maxsize=1 << 16)  # the same few thousand words recur in every prompt; bounded for hostile text
def lemma(word: str) -> str:
    w = word.lower()
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def tokens(text: str, start: int = 0, end: int | None = None) -> list[str]:
    """Words of text[start:end], identifiers split (`aws_secret_access_key`, `creditCardNumber`), not lemmatized.
    Runs of digits are not words. In ASCII the splitting pattern alone gives the words (a run in one case, or
    capitalised, is one piece of it), so the common case is one findall."""
    end = len(text) if end is None else end
    piece = text[start:end]
    if piece.isascii():
        return _CAMEL.findall(piece)
    out = []
    for run in _WORD.findall(piece):
        if run.isascii() and not run.islower() and not run.isupper() and not run.istitle():
            out.extend(_CAMEL.findall(run))
        else:
            out.append(run)
    return out


def words(text: str) -> list[str]:
    return [lemma(w) for w in tokens(text)]


@dataclass(slots=True)
class ContextWords:
    """A recognizer's context entries, split into single words and phrases (tuples of words)."""

    single: frozenset[str]
    phrases: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, entries: list[str]) -> ContextWords:
        single, phrases = set(), []
        for entry in entries:
            ws = tuple(words(entry))
            if len(ws) == 1:
                single.add(ws[0])
            elif ws:
                phrases.append(ws)
        return cls(frozenset(single), tuple(phrases))

    def __bool__(self) -> bool:
        return bool(self.single or self.phrases)

    def literals(self) -> set[str]:
        """What to look for in the text: each word, and the longest word of each phrase."""
        return set(self.single) | {max(p, key=len) for p in self.phrases}

    def found_in(self, tokens: list[str]) -> bool:
        if any(t in self.single for t in tokens):
            return True
        for phrase in self.phrases:
            n = len(phrase)
            if any(tuple(tokens[i:i + n]) == phrase for i in range(len(tokens) - n + 1)):
                return True
        return False


class TextContext:
    """Context around positions of one text, built per scanned text.

    The prefilter tells where it saw context words (`near`: position, literal index; `literal_specs`: which
    recognizers each literal serves). A match with none of its recognizer's literals within reach has no context
    in the words around it, which spares tokenizing them for most matches; before `near` is set everything is
    tokenized. Column headers are found once per row.
    """

    def __init__(self, text: str, spec: ContextSpec, context_words: list[ContextWords],
                 literal_specs: list[frozenset[int]]):
        self.text, self.spec = text, spec
        self._words, self._literal_specs = context_words, literal_specs
        self._near: list[tuple[int, int]] | None = None
        self._near_pos: list[int] = []
        self._header_lines: dict[str, tuple[list[int], list[int], list[str]]] | None = None
        self._header_cells: dict[tuple[str, int], list[list[str]]] = {}
        self._header_spans: list[tuple[int, int]] | None = None
        self._row_headers: dict[int, tuple[str, list[list[str]]] | None] = {}

    def set_near(self, near: list[tuple[int, int]]) -> None:
        self._near, self._near_pos = near, [pos for pos, _ in near]

    def set_header_lines(self, spans: list[tuple[int, int]]) -> None:
        """Where HEADER_LINE matches, as the prefilter found it (else it is searched when first needed)."""
        self._header_spans = spans

    def boost(self, score: float) -> float:
        return min(1.0, max(score + self.spec.boost, self.spec.min_score))

    def reach(self, start: int, end: int) -> tuple[int, int]:
        """The characters read for context words around [start, end) (one more before: the prefilter may place a
        word at the character before it)."""
        return start - CHARS_PER_WORD * self.spec.words_before - 1, end + CHARS_PER_WORD * self.spec.words_after

    def supports(self, start: int, end: int, k: int) -> bool:
        """Is one of recognizer k's context words among the words around [start, end)? In a table row under a
        header, the words around are the column's header and the cell itself: the neighbouring cells and rows
        describe other values."""
        context = self._words[k]
        if not context:
            return False
        header = self.column_header(start)
        if header is not None:
            return context.found_in(header) or context.found_in(self._cell_words(start, end))
        if self.near(k, *self.reach(start, end)):
            n_before, n_after = self.spec.words_before, self.spec.words_after
            if n_before and context.found_in(self._words_before(start, n_before)):
                return True
            if n_after and context.found_in(self._words_after(end, n_after)):
                return True
        return False

    def supports_by_header(self, pos: int, k: int) -> bool:
        header = self.column_header(pos)
        return header is not None and bool(self._words[k]) and self._words[k].found_in(header)

    def _cell_words(self, start: int, end: int) -> list[str]:
        delim = self._row_headers[self.text.rfind("\n", 0, start) + 1][0]
        lo = max(self.text.rfind(delim, 0, start), self.text.rfind("\n", 0, start)) + 1
        hi = min(i for i in (self.text.find(delim, end), self.text.find("\n", end), len(self.text)) if i >= 0)
        return [lemma(w) for w in tokens(self.text, lo, start) + tokens(self.text, end, hi)]

    def near(self, k: int, lo: int, hi: int) -> bool:
        """Could a context word of recognizer k lie in [lo, hi)? (Always, before the prefilter has looked.)"""
        if self._near is None:
            return True
        i, j = bisect.bisect_left(self._near_pos, lo), bisect.bisect_left(self._near_pos, hi)
        return any(k in self._literal_specs[lit] for _, lit in self._near[i:j])

    def _words_before(self, start: int, n: int) -> list[str]:
        out: list[str] = []
        for w in reversed(tokens(self.text, max(0, start - CHARS_PER_WORD * n), start)):
            w = lemma(w)
            if w not in _STOP:
                out.append(w)
                if len(out) == n:
                    break
        out.reverse()
        return out

    def _words_after(self, end: int, n: int) -> list[str]:
        out: list[str] = []
        for w in tokens(self.text, end, end + CHARS_PER_WORD * n):
            w = lemma(w)
            if w not in _STOP:
                out.append(w)
                if len(out) == n:
                    break
        return out

    def column_header(self, pos: int) -> list[str] | None:
        """Words of the header cell above pos, when pos is in a delimited row under a header row (else None)."""
        text = self.text
        line_start = text.rfind("\n", 0, pos) + 1
        if line_start not in self._row_headers:
            self._row_headers[line_start] = self._header_of(line_start)
        header = self._row_headers[line_start]
        if header is None:
            return None
        delim, cells = header
        column = text.count(delim, line_start, pos)
        return cells[column] if column < len(cells) else []

    def _header_of(self, line_start: int) -> tuple[str, list[list[str]]] | None:
        """The nearest header line above: same delimiter count, no digits, every cell short, some words."""
        text = self.text
        line_end = text.find("\n", line_start)
        line = text[line_start:line_end if line_end >= 0 else len(text)]
        delim = next((d for d in _DELIMITERS if d in line), None)
        if delim is None:
            return None
        starts, counts, lines = self._header_index()[delim]
        count = line.count(delim)
        i = bisect.bisect_left(starts, line_start)
        for j in range(i - 1, max(-1, i - 1 - _HEADER_LOOKBACK), -1):
            if counts[j] == count:
                key = (delim, starts[j])
                if key not in self._header_cells:
                    self._header_cells[key] = [[w for w in words(c) if w not in _STOP] for c in lines[j].split(delim)]
                return delim, self._header_cells[key]
        return None

    def _header_index(self) -> dict[str, tuple[list[int], list[int], list[str]]]:
        """Per delimiter, the lines that can be a header row: (starts, delimiter counts, lines)."""
        if self._header_lines is None:
            index: dict[str, tuple[list[int], list[int], list[str]]] = {d: ([], [], []) for d in _DELIMITERS}
            spans = self._header_spans
            if spans is None:
                spans = [m.span() for m in HEADER_LINE.finditer(self.text)]
            for start, end in spans:
                line = self.text[start:end]
                for d in _DELIMITERS:
                    n = line.count(d)
                    if n and len(line) <= 41 * (n + 1) and all(len(p) <= 40 for p in line.split(d)) \
                            and _LETTER.search(line):
                        starts, counts, lines = index[d]
                        starts.append(start)
                        counts.append(n)
                        lines.append(line)
            self._header_lines = index
        return self._header_lines
