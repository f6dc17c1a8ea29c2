"""Presidio recognizers for secrets, and the scanner's fast ways of running Presidio's recognizers on windows.

Secrets are what Presidio has no recognizer for (stack-facts), and a bare regex for them is noisy: documentation
placeholders (`ghp_xxxxxxxx...`), template references (`${DB_PASSWORD}`, `{{ secrets.TOKEN }}`) and code
(`password = get_password()`) all match. A `SecretRecognizer` is an ordinary Presidio `PatternRecognizer` (so plain
Presidio runs it unchanged, and the corpus comparison is fair) whose `validate_result`/`invalidate_result` apply
one of the named validators below.

`match_patterns` and `analyze_phone` run a pattern recognizer and Presidio's phone recognizer on a window with
the same results as their `analyze`, minus per-call bookkeeping and redundant phonenumbers runs.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import phonenumbers
import regex
from presidio_analyzer import PatternRecognizer
from presidio_analyzer.pattern_recognizer import REGEX_TIMEOUT_SECONDS
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

log = logging.getLogger(__name__)


def shannon_entropy(value: str) -> float:
    """Bits per character: random base62 keys score about 5, hex about 4, English words and `xxxx` much less."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


# References and placeholders that sit where a secret would: `${X}`, `{{ x }}`, `%(x)s`, `<your-token>`, `os.environ["X"]`,
# `get_password()`, `config.db.password`, `process.env.TOKEN`, `********`, `changeme`.
_REFERENCE = re.compile(r"""^(?:[$%{<\[(@&*]|\\|(?:env|process|os|config|settings|secrets|vault)\b)""", re.I)
_CODE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|->|::)[A-Za-z_][A-Za-z0-9_]*)*(?:\(|\[|$)")
_PLACEHOLDER = re.compile(
    r"x{4}|\*{3}|\.{3}|changeme|change_me|placeholder|redacted|example|your[_-]|dummy|sample|<|>|todo", re.I
)
_LETTERS_ONLY = re.compile(r"^[A-Za-z_]+$")


def _is_code_or_placeholder(value: str) -> bool:
    if _REFERENCE.match(value) or _PLACEHOLDER.search(value):
        return True
    # An identifier, a dotted path or a call is code (`self.token`, `getpass()`), unless it carries digits or symbols
    # the way passwords do (`Tr0ub4dor` is an identifier by syntax but not by habit).
    return bool(_CODE_PATH.match(value)) and (_LETTERS_ONLY.match(value) is not None or not value.isalnum())


_PASSWORD = re.compile(r"(?:password|pwd)\s*=\s*([^;&]*)|://[^:@/\s]*:([^@\s]*)@", re.I)
_TRIVIAL_PASSWORDS = frozenset({"password", "pass", "passwd", "pwd", "secret", "changeme"})


def _is_placeholder_credential(value: str) -> bool:
    """The password (alone, or inside a connection string or URL) is missing, a ${REFERENCE}, a placeholder or
    `password`."""
    m = _PASSWORD.search(value)
    password = (m.group(1) or m.group(2) or "") if m else value
    return (not password or bool(_REFERENCE.match(password) or _PLACEHOLDER.search(password))
            or password.lower() in _TRIVIAL_PASSWORDS or len(set(password)) == 1)


def _b64url_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def _valid_jwt(value: str) -> bool | None:
    """A JWT is three base64url segments whose first two decode to JSON objects and whose header names an `alg`."""
    parts = value.split(".")
    if len(parts) != 3:
        return False
    try:
        header, payload = _b64url_json(parts[0]), _b64url_json(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header and isinstance(payload, dict)


# validator name -> (validate, invalidate); validate True lifts the score to 1.0, False drops the match (Presidio's
# contract); invalidate True drops it.
Validator = tuple[Callable[[str], bool | None] | None, Callable[[str, float], bool] | None]
VALIDATORS: dict[str, Validator] = {
    # A key with a recognisable prefix: reject low-entropy placeholders such as `ghp_xxxxxxxxxxxxxxxx`.
    "entropy": (None, lambda v, min_entropy: shannon_entropy(v) < min_entropy),
    # A value found next to a word like password/token/secret: reject code, references and placeholders too.
    "secret_value": (None, lambda v, min_entropy: _is_code_or_placeholder(v) or shannon_entropy(v) < min_entropy),
    "jwt": (_valid_jwt, None),
    # A connection string or URL: reject it when its password is a placeholder (`postgres://u:${PASS}@db`).
    "credentials": (None, lambda v, _min_entropy: _is_placeholder_credential(v)),
}


class SecretRecognizer(PatternRecognizer):
    """A PatternRecognizer with a named validator (see VALIDATORS) and the minimum entropy it uses."""

    def __init__(self, *args: Any, validator: str | None = None, min_entropy: float = 3.0, **kwargs: Any):
        if validator is not None and validator not in VALIDATORS:
            raise ValueError(f"unknown validator {validator!r} (known: {', '.join(sorted(VALIDATORS))})")
        self.validator, self.min_entropy = validator, min_entropy
        super().__init__(*args, **kwargs)

    def validate_result(self, pattern_text: str) -> bool | None:
        check = VALIDATORS[self.validator][0] if self.validator else None
        return check(pattern_text) if check else None

    def invalidate_result(self, pattern_text: str) -> bool | None:
        check = VALIDATORS[self.validator][1] if self.validator else None
        return check(pattern_text, self.min_entropy) if check else None


def match_patterns(recognizer: PatternRecognizer, text: str) -> list[tuple[int, int, float]]:
    """(start, end, score) of what `recognizer.analyze(text)` finds, without its per-call bookkeeping.

    PatternRecognizer.analyze times every pattern, logs, and builds an explanation and a result object per match:
    about 20 us a call, which on small windows costs more than the regexes. This is its loop with the same
    patterns, flags, timeout and validate_result/invalidate_result contract (True lifts the score to 1.0, False
    or an invalidation drops the match). A recognizer that overrides analyze (IBAN) is called as it is.
    tests/test_dlp_scanner.py checks that both agree on the corpus for every configured recognizer.
    """
    if type(recognizer).analyze is not PatternRecognizer.analyze:
        entity = recognizer.supported_entities[0]
        return [(r.start, r.end, r.score) for r in recognizer.analyze(text, [entity], None)]
    flags, out = recognizer.global_regex_flags, []
    for pattern in recognizer.patterns:
        if pattern.compiled_regex is None or pattern.compiled_with_flags != flags:
            pattern.compiled_with_flags, pattern.compiled_regex = flags, regex.compile(pattern.regex, flags)
        try:
            for m in pattern.compiled_regex.finditer(text, timeout=REGEX_TIMEOUT_SECONDS):
                start, end = m.span()
                if start == end:
                    continue
                matched, score = text[start:end], pattern.score
                valid = recognizer.validate_result(matched)
                if valid is not None:
                    score = 1.0 if valid else 0.0
                if recognizer.invalidate_result(matched):
                    score = 0.0
                if score > 0:
                    out.append((start, end, score))
        except TimeoutError:
            log.warning("pattern %r of %s timed out after %s s and was skipped", pattern.name, recognizer.name,
                        REGEX_TIMEOUT_SECONDS)
    return out


_INTERNATIONAL = re.compile(r"\+[\d\s().\-/]*\d")  # a number written with its country code


def analyze_phone(recognizer: PhoneRecognizer, text: str,
                  focus: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Spans of the phone numbers in text, found as Presidio's PhoneRecognizer finds them, but faster.

    Presidio runs python-phonenumbers' matcher once per region (8 by default) and keeps every number found; each run
    costs 50-100 us per digit group. Here the regions are tried in the same order, and the search stops once every
    digit of the text lies inside a number already found or inside a number written with its country code (+44 ...):
    the remaining regions could only find the same numbers again, or read the digits after a country code as a
    local number of their own region, which is not what the writer meant. So a number of the first region, or any
    international number, costs one run instead of eight. With `focus` (the spans that matter, e.g. the candidates
    of a gated recognizer), only the digits inside them need explaining.
    """
    spans: set[tuple[int, int]] = set()
    explained = bytearray(len(text))  # 1 where a digit needs no further region
    for m in _INTERNATIONAL.finditer(text):
        explained[m.start():m.end()] = b"\1" * (m.end() - m.start())
    where = focus if focus is not None else [(0, len(text))]
    open_digits = [i for s, e in where for i in range(s, e) if text[i].isdigit() and not explained[i]]
    for region in recognizer.supported_regions:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=recognizer.leniency):
            spans.add((match.start, match.end))
            explained[match.start:match.end] = b"\1" * (match.end - match.start)
        if all(explained[i] for i in open_digits):
            break
    return sorted(spans)
