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
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
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
    # the way passwords do (`Tr0ub4dor` is an identifier by syntax but not by habit), or looks generated: three
    # digits or more (`pk_vn6lc...58`), or the case changing as often as in random text (`jfXudzTQXGqi`; camelCase
    # changes once a word).
    if not _CODE_PATH.match(value) or _looks_generated(value):
        return False
    return _LETTERS_ONLY.match(value) is not None or not value.isalnum()


def _looks_generated(value: str) -> bool:
    if not value.replace("_", "").isalnum():
        return False
    changes = sum(a.islower() != b.islower() for a, b in zip(value, value[1:]) if a.isalpha() and b.isalpha())
    return sum(c.isdigit() for c in value) >= 3 or (changes >= 4 and changes >= 0.25 * len(value))


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


# --- people's names -----------------------------------------------------------------------------------------------

_TITLES = ("Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Sir", "Dame")
_PARTICLES = ("van", "von", "der", "den", "de", "del", "della", "di", "da", "dos", "das", "du", "la", "le", "bin",
              "ibn", "al", "el", "ter", "ten")
_WORD = r"[A-Z][\w'’\-]+"  # a capitalised word: O'Connor, Al-Sayed, García (\w is Unicode)
_SURNAME = r"(?:[ \t]+(?:(?:%s)[ \t]+){0,2}%s)" % ("|".join(_PARTICLES), _WORD)
_NAME_TAIL = r"(?:[ \t]+[A-Z]\.)?%s{1,2}" % _SURNAME  # an optional middle initial, then one or two surnames
# Both shapes end at a word's end (\b): the same matches, but hyperscan, which reports every place a match can
# end, then reports a name once instead of once per letter of its last word.
_TITLED = r"\b(?:%s)\.?[ \t]+%s(?:[ \t]+%s)?\b" % ("|".join(_TITLES), _WORD, _WORD)
# A capitalised word and a surname; the first word is then looked up in the gazetteer, which costs a set lookup,
# where thousands of names as alternatives cost the `regex` module 60 us a window and hyperscan seconds to compile.
_FIRST_AND_SURNAME = r"\b(%s)%s\b" % (_WORD, _NAME_TAIL)
_ANY_FIRST = regex.compile(_FIRST_AND_SURNAME)
_FIRST_WORD = regex.compile(r"\b%s(?=[ \t])" % _WORD)  # what group 1 of _ANY_FIRST can be
_TITLED_RE = regex.compile(_TITLED)
_TOKEN = regex.compile(r"[A-Z][\w'’\-]*")  # a capitalised word (a trailing ' or - is not part of it)
_NAME_WORD = regex.compile(r"[A-Z][^\W\d_]*(?:['’\-][A-Z]?\p{Ll}[^\W\d_]*)*")  # O'Connor, Al-Sayed; not AX55, Steuer-ID


def _faker_names(locales: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """First names and surnames of Faker's person providers (MIT-licensed data: the first and last names people
    in each locale commonly have), single capitalised words only."""
    import importlib

    first, last = set(), set()
    word = regex.compile(r"[A-Z][^\W\d_]+(?:['’\-][A-Z]?[^\W\d_]+)?")
    for locale in locales:
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attr in dir(provider):
            if "name" not in attr or not ("first" in attr or "last" in attr) or attr.endswith(("formats", "pairs")):
                continue
            names = getattr(provider, attr)
            if isinstance(names, (dict, tuple, list)):
                (first if "first" in attr else last).update(n for n in names if isinstance(n, str)
                                                             and word.fullmatch(n))
    return frozenset(first), frozenset(last)


# Words that end a place's name although gazetteers list them as surnames too (`Jackson Street`).
_STREETS = frozenset({"street", "road", "avenue", "lane", "way", "drive", "boulevard", "square", "station", "plaza"})


def _common_words() -> tuple[frozenset[str], frozenset[str]]:
    """Lower-case words that are no one's name on their own: Faker's English word lists (`may`, `hope`, `summer`,
    `advanced`; some of them surnames too: `price`), and places and dates (street kinds, countries and US states,
    months and days), which a name does not end with unless it is also a surname (`Brooks`, `Park`)."""
    import calendar

    from faker.providers.address.en_US import Provider as Address
    from faker.providers.company.en_US import Provider as Company
    from faker.providers.lorem.en_US import Provider as Lorem

    words = {*Lorem.word_list, *(w for group in (*Company.bsWords, *Company.catch_phrase_words) for w in group)}
    places = {*Address.street_suffixes, *calendar.month_name[1:], *calendar.day_name}
    places |= {w for place in (*Address.countries, *Address.states) for w in place.split()}
    return frozenset(w.lower() for w in words), frozenset(w.lower() for w in places)


class PersonNameRecognizer(PatternRecognizer):
    """PERSON without a model: a known first name followed by a capitalised surname, or a title and a name.

    Names come from a gazetteer (Faker's person data for the listed locales) instead of an NER model, which the
    gateway never downloads and which is slow and noisy on code. Its two patterns are shapes (a title or a capitalised
    word, then capitalised words), which the prefilter finds in its one hyperscan pass; `analyze` then looks the
    first word up and scores each match:
    - a known first name and a known surname: 0.85; a title (Mr, Dr...) before a capitalised word: 0.85;
    - a known first name and a capitalised word that is not a common word (`Maria Gonzalez`, but not `Jackson
      Street`): 0.65;
    - a first name that is also a common word or a place (May, Hope, Georgia), or only two letters long: 0.65 with a
      known surname, 0.4 at the start of a sentence (`May Contain Nuts`), where a context word must lift it; dropped
      with an unknown word after it.
    Trailing words that are common words are cut off (`Maria Gonzalez Support`).
    """

    FULL, FIRST, WEAK = 0.85, 0.65, 0.4

    def __init__(self, supported_language: str = "en", supported_entity: str = "PERSON",
                 context: list[str] | None = None, locales: list[str] | None = None,
                 common_words: list[str] | None = None):
        self.locales = tuple(locales or ("en_US", "en_GB"))
        self.first_names, self.surnames = _faker_names(self.locales)
        common, self.places = _common_words()
        self.common = common | {w.lower() for w in common_words or ()}
        self.ambiguous = frozenset(n for n in self.first_names
                                   if n.lower() in self.common or n.lower() in self.places or len(n) <= 2)
        patterns = [Pattern("title and name", _TITLED, self.FULL),
                    Pattern("first name and surname", _FIRST_AND_SURNAME, self.FIRST)]
        super().__init__(supported_entity=supported_entity, supported_language=supported_language,
                         patterns=patterns, context=context,
                         global_regex_flags=regex.DOTALL | regex.MULTILINE)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        """What the patterns match, scored (a first name must be in the gazetteer)."""
        entity, found = self.supported_entities[0], []
        names = {p.name for p in self.patterns}
        if "title and name" in names:
            found += [(m.start(), m.end(), self.FULL) for m in _TITLED_RE.finditer(text)]
        if "first name and surname" in names:
            found += [self._score(text, m) for m in _ANY_FIRST.finditer(text, overlapped=True)
                      if m.group(1) in self.first_names]
        return EntityRecognizer.remove_duplicates([RecognizerResult(entity, s, e, score) for s, e, score in found
                                                   if score > 0])

    def plausible(self, pattern: int, text: str, start: int, end: int) -> bool:
        """Could a first-name match lie in text[start:end]? Only if a word before its last is a known first name
        (the prefilter's check, see dlp.prefilter._PlausibleHits): nine in ten capitalised word pairs are not names,
        and this set lookup spares each of them a window."""
        if self.patterns[pattern].name != "first name and surname":
            return True
        # every word a match could start with: after a space, or inside one after a hyphen (`Dodd-Frank Wall`)
        return any(m.group() in self.first_names for m in _FIRST_WORD.finditer(text, start, end, overlapped=True))

    def _score(self, text: str, m: regex.Match) -> tuple[int, int, float]:
        """(start, end, score) of a first-name match; score 0 drops it (see the class docstring)."""
        first = m.group(1)
        tokens = [(t.start(), t.start() + len(w), w) for t in _TOKEN.finditer(text, m.end(1), m.end())
                  if len(w := t.group().rstrip("'’-")) > 1]
        while tokens and self._not_a_name(tokens[-1][2]):
            tokens.pop()  # `Maria Gonzalez Support`, `Jackson Street`
        if not tokens or not _NAME_WORD.fullmatch(tokens[-1][2]):
            return m.start(), m.end(), 0.0  # `Archer AX55`, `German Steuer-ID`
        known = tokens[-1][2] in self.surnames
        if known:
            score = self.WEAK if first in self.ambiguous and _sentence_start(text, m.start()) else \
                self.FIRST if first in self.ambiguous else self.FULL
        elif first in self.ambiguous:
            return m.start(), m.end(), 0.0
        else:  # at the start of a sentence any word is capitalised: `Grant Access`
            score = self.WEAK if _sentence_start(text, m.start()) else self.FIRST
        return m.start(), tokens[-1][1], score

    def _not_a_name(self, word: str) -> bool:
        lower = word.lower()
        if lower in _STREETS:
            return True
        return (lower in self.common or lower in self.places) and word not in self.surnames


def _sentence_start(text: str, pos: int) -> bool:
    """Does a sentence (or a line) start at pos? Where every word is capitalised, a capital says nothing."""
    i = pos - 1
    while i >= 0 and text[i] in " \t":  # looked back in place: slicing the text before would copy it per match
        i -= 1
    return i < 0 or text[i] in "\n.!?\"'“(*-•#>"


# --- other countries' passports -------------------------------------------------------------------------------------

_PASSPORT_NUMBER = r"[A-Z]{1,3}[0-9]{6,8}|[0-9]{2}[A-Z]{2}[0-9]{5}"  # France 18AV52341, Spain PAB482913, Canada GA302915
_COUNTRY_KEY = r"(?:[Cc]ountry|COUNTRY|[Nn]ationality|NATIONALITY|[Cc]itizenship)[\w\-]{0,6}[\"']?[ \t]?[:=][ \t]?[\"']?"
_COUNTRY = r"(?P<code>[A-Z]{2,3}|[A-Z][a-z]{2,20})\b"


class PassportNumberRecognizer(PatternRecognizer):
    """PASSPORT_NUMBER: passport numbers of the countries without a recognizer of their own, next to "passport".

    Presidio's US, UK, Indian and German passport recognizers report any number of their format (`E48291735` is
    a US next-generation number by its shape, and also what China issues). When the text says which country
    issued the passport (`Chinese passport number E48291735`, `nationality=NGA passport=A09382716`,
    `"number": "TK4829173", "country": "JPN"`) and it is not one of those countries, the number is this entity,
    scored above them (STATED) so that overlap resolution keeps it; a bare number next to "passport" scores NEAR and
    needs the context word. Countries are Faker's ISO 3166 codes and English names plus the `nationalities`
    option (demonyms); `national` lists the codes, names and demonyms that the format-specific recognizers own.
    The country evidence is part of the matched shape (so the prefilter's window holds it), the finding is the
    number alone.
    """

    NEAR, STATED = 0.05, 0.5

    def __init__(self, supported_language: str = "en", supported_entity: str = "PASSPORT_NUMBER",
                 context: list[str] | None = None, national: list[str] | None = None,
                 nationalities: list[str] | None = None):
        from faker.providers.address import Provider as Countries
        from faker.providers.address.en_US import Provider as Address

        self.national = frozenset(national or ())
        self.countries = frozenset({*Countries.alpha_2_country_codes, *Countries.alpha_3_country_codes,
                                    *(n for n in Address.countries if " " not in n), *(nationalities or ())})
        number = r"\b(?P<number>%s)\b" % _PASSPORT_NUMBER
        patterns = [
            Pattern("number", number, self.NEAR),
            # `Chinese passport number E48291735`
            Pattern("nationality before", r"\b(?P<adj>[A-Z][a-z]{2,20})[ \t]+[Pp]assport\b[^\n\d]{0,24}?%s" % number,
                    self.STATED),
            # `nationality=NGA passport=A09382716`
            Pattern("country before", r"%s%s[^\n\d]{0,30}?[Pp]assport\b[^\n\d]{0,24}?%s" % (_COUNTRY_KEY, _COUNTRY, number),
                    self.STATED),
            # `"number": "TK4829173", "country": "JPN"`, `passport E48291735 (China)`
            Pattern("country after",
                    r"%s(?:[\"']?[ \t]{0,3}[,;]?\s{0,16}[\"']?[\w\-]{0,16}%s%s|[ \t]{0,2}\((?P<adj>[A-Z][a-z]{2,20})\))"
                    % (number, _COUNTRY_KEY, _COUNTRY), self.STATED),
        ]
        super().__init__(supported_entity=supported_entity, supported_language=supported_language,
                         patterns=patterns, context=context, global_regex_flags=regex.DOTALL | regex.MULTILINE)
        self._compiled = {p.name: regex.compile(p.regex, self.global_regex_flags) for p in patterns}

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        entity, found = self.supported_entities[0], {}
        for pattern in self.patterns:
            # overlapped: every start, so a window finds what the whole text does
            for m in self._compiled[pattern.name].finditer(text, overlapped=True):
                if pattern.name != "number":
                    groups = m.groupdict()
                    country = groups.get("code") or groups.get("adj")
                    if country in self.national or country not in self.countries:
                        continue
                span = m.span("number")
                found[span] = max(found.get(span, 0.0), pattern.score)
        return [RecognizerResult(entity, s, e, score) for (s, e), score in sorted(found.items())]
