"""The DLP rules as the scanner, the prefilter and the context scorer use them, once `dlp.rules` has loaded and
checked rules/recognizers.yaml. A module of its own so that the modules using the rules need not import their
loader (which itself uses the prefilter to check candidate patterns)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer

from dlp.recognizers import VALIDATORS, SecretRecognizer

# Presidio's default for pattern recognizers: case-insensitive, `.` matches newlines, `^`/`$` per line.
PRESIDIO_FLAGS = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE


@dataclass(slots=True)
class RecognizerSpec:
    """One configured recognizer: the Presidio object plus what the scanner needs to run it on windows."""

    name: str
    recognizer: EntityRecognizer
    entities: list[str]
    threshold: float
    candidates: list[str]  # gate regexes (empty: no gate, prefilter derived from the patterns)
    require_context: bool  # reported only when a context word supports it
    width: int  # longest match in characters, lookarounds not counted (see _max_width)
    line: int
    context: list[str] = field(default_factory=list)

    @property
    def patterns(self) -> list[Pattern]:
        return self.recognizer.patterns if isinstance(self.recognizer, PatternRecognizer) else []

    @property
    def regex_flags(self) -> int:
        r = self.recognizer
        return r.global_regex_flags if isinstance(r, PatternRecognizer) else PRESIDIO_FLAGS

    @property
    def has_validator(self) -> bool:
        """True when a match can be lifted to 1.0 by a checksum or other validation, whatever its pattern score."""
        r = self.recognizer
        if isinstance(r, SecretRecognizer):
            return r.validator is not None and VALIDATORS[r.validator][0] is not None
        return isinstance(r, PatternRecognizer) and type(r).validate_result is not PatternRecognizer.validate_result

    def best_score(self, pattern_score: float, context: ContextSpec) -> float:
        """The highest score a match of a pattern can reach after validation and context enhancement."""
        if self.has_validator:
            return 1.0
        if self.context:
            return min(1.0, max(pattern_score + context.boost, context.min_score))
        return pattern_score


@dataclass(slots=True)
class AllowPattern:
    """Findings lying inside a match of `regex` are not reported (for `entities`, or all when empty)."""

    name: str
    regex: regex.Pattern
    entities: frozenset[str]
    line: int
    width: int  # longest match; a match containing a finding starts at most this far before the finding's end


@dataclass(slots=True)
class ContextSpec:
    """Presidio's context enhancement (LemmaContextAwareEnhancer) parameters, applied by dlp.context."""

    words_before: int = 6
    words_after: int = 2
    boost: float = 0.35
    min_score: float = 0.4


@dataclass(slots=True)
class Limits:
    chunk_chars: int = 262_144  # texts longer than this are scanned in overlapping chunks
    chunk_overlap: int = 16_384  # at least twice the longest finding (PEM private keys), else it could be cut
    max_window: int = 512  # window for patterns with no maximum length (grown when a match reaches its edge)


@dataclass(slots=True)
class NerSpec:
    model: str
    entities: list[str]
    threshold: float
    line: int


@dataclass(slots=True)
class DlpRules:
    file: Path
    recognizers: list[RecognizerSpec]
    allow_terms: list[str]
    allow_patterns: list[AllowPattern]
    context: ContextSpec
    limits: Limits
    ner: NerSpec | None
    key_prefixes: list[str] = field(default_factory=list)  # canonical case of known key prefixes (dlp.normalize)

    @property
    def entities(self) -> list[str]:
        return sorted({e for spec in self.recognizers for e in spec.entities})


def normalize_term(value: str) -> str:
    """Allow-list comparison ignores case, spaces, dashes, dots and underscores: `4242-4242-...` is `4242 4242 ...`."""
    return re.sub(r"[\s\-_.]", "", value).casefold()
