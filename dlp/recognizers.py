"""Presidio recognizers for secrets, and the scanner's fast ways of running Presidio's recognizers on windows.

Secrets are what Presidio has no recognizer for (docs/stack.md), and a bare regex for them is noisy: documentation
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

from dlp.prefilter import MARGIN, SNAP

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
    spans = getattr(recognizer, "spans", None)
    if spans is not None:  # a recognizer of this module that gives (start, end, score) itself
        return spans(text)
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
              "binti", "bint", "ibn", "al", "el", "ter", "ten")
# A capitalised word: O'Connor, Al-Sayed, García, Élodie, Öztürk (\w is Unicode). The initials are Latin-1's and Latin
# Extended-A's capitals (that block interleaves small letters, which _NAME_WORD then rejects); hyperscan reads every
# non-ASCII letter as `_`, so for it the class is [A-Z_]: a superset, as the prefilter needs.
_CAPITAL = "A-ZÀ-ÖØ-ÞĀ-ž"
_WORD = r"[%s][\w'’\-]+" % _CAPITAL
_ARTICLE = r"(?:al|el|ad|as|ash|at|az|ibn|bin|abu|ben)-"  # al-Rashid, el-Sayed, abu-Bakr
_SURNAME = r"(?:[ \t]+(?:(?:%s)[ \t]+){0,2}(?:%s)?%s)" % ("|".join(_PARTICLES), _ARTICLE, _WORD)
_NAME_TAIL = r"(?:[ \t]+[A-Z]\.)?%s{1,2}" % _SURNAME  # an optional middle initial, then one or two surnames
_NAME_RUN = r"%s(?:[ \t]+[A-Z]\.)?%s{1,2}" % (_WORD, _SURNAME)  # two to four words of a name, as a group's content
# Every shape ends at a word's end (\b): the same matches, but hyperscan, which reports every place a match can
# end, then reports a name once instead of once per letter of its last word.
_TITLED = r"\b(?:%s)\.?[ \t]+%s(?:[ \t]+%s)?\b" % ("|".join(_TITLES), _WORD, _WORD)
# A capitalised word and a surname; the first word is then looked up in the gazetteer, which costs a set lookup,
# where thousands of names as alternatives cost the `regex` module 60 us a window and hyperscan seconds to compile.
# A comma may follow the first word, for `Last, First` (`"Nakamura, Yui"`). Every other sign that a pair is a name
# (a label before it, its e-mail address after it, a chat speaker's colon) is read around this one shape's matches,
# within the margin every window has: each further hyperscan expression costs the whole pass.
_FIRST_AND_SURNAME = r"\b(%s),?%s\b" % (_WORD, _NAME_TAIL)
# Lower-case names are only read after `spoke to`, `talked to` or `cc` (`spoke to john smith`, `cc raj patel`), and
# only when both words are in the gazetteer (a cue as common as `ask` would cost every prompt a look).
_LOWER_CUE = r"\b(?:spoke to|spoke with|talked to|cc)[ \t]+([a-z]{2,20}[ \t]+[a-z]{2,20})\b"
# The line after a sign-off (`Regards,\n...`) holds a name: its last word is one of these (or it is `thank you`).
_SIGN_OFFS = frozenset({"regards", "cheers", "thanks", "best", "sincerely", "faithfully", "warmly", "respectfully",
                        "wishes"})
_TIMESTAMP = regex.compile(r"\[[^\]\n]{1,20}\]")  # `[09:12] Chloe Martin: ...`
_SPEAKER_AFTER = regex.compile(r"[ \t]*(?:\([^)\n]{1,25}\)[ \t]*)?:")  # a speaker's colon, after a (role)
_FIELD_START = regex.compile(r"(?:^|[\"'\t|;>(\n])[ \t]*$")  # `"Nakamura, Yui"` starts a field...
_FIELD_END = regex.compile(r"[ \t]*(?:[\"'\t|;<)\n]|$)")  # ...and ends it

_ANY_FIRST = regex.compile(_FIRST_AND_SURNAME)
_TITLED_RE = regex.compile(_TITLED)
_TOKEN = regex.compile(r"[%s][\w'’\-]*" % _CAPITAL)  # a capitalised word (a trailing ' or - is not part of it)
# a name's word: O'Connor, Al-Sayed, Ji-woo; not AX55, Steuer-ID, nor a word of Latin Extended-A's small letters
_NAME_WORD = regex.compile(r"\p{Lu}(?:['’]\p{Lu})?[^\W\d_]*(?:['’\-]\p{Lu}?\p{Ll}[^\W\d_]*)*")
_CAPS_WORD = regex.compile(r"\p{Lu}(?:['’\-]?\p{Lu})+")  # a word in capitals: KRISHNAN, AL-MANSOURI
_GAZETTEER_WORD = regex.compile(r"[A-Z](?:['’][A-Z])?[^\W\d_]+(?:['’\-][A-Z]?[^\W\d_]+)?")
_NEXT_WORDS = regex.compile(r"(?:[ \t]+(?:Jr\.?|Sr\.?|[A-Z]\.|&))*[ \t]+([%s][\w'’\-]*)" % _CAPITAL)
# a given name of one or two Chinese syllables in pinyin, after a Chinese surname (Zhang Xiaoming, Li Na)
_PINYIN = regex.compile(r"(?:(?:zh|ch|sh|[bpmfdtnlgkhjqxrzcsyw])?(?:iang|iong|uang|ueng|ang|eng|ing|ong|ian|iao|uai|uan|"
                        r"ai|ei|ao|ou|an|en|in|un|ia|ie|iu|ua|uo|ui|ue|er|a|o|e|i|u|v)){1,2}")
_KOREAN_GIVEN = regex.compile(r"[A-Z][a-z]{1,4}-[a-z]{2,4}")  # Ji-woo, Hyun-woo, Min-jun


def fold(word: str) -> str:
    """The word in ASCII letters (Siobhán -> Siobhan, Øystein -> Oystein, Yılmaz -> Yilmaz): gazetteer lookups
    ignore diacritics, which names are written with or without."""
    if word.isascii():
        return word
    from anyascii import anyascii

    return anyascii(word)


def _faker_names(locales: tuple[str, ...], transliterate: tuple[str, ...] = ()) -> tuple[frozenset[str], frozenset[str]]:
    """First names and surnames of Faker's person providers (MIT-licensed data: the first and last names people
    in each locale commonly have), single capitalised words only, also without diacritics. `transliterate`:
    locales written in another script (Cyrillic, Greek, Armenian, Georgian), whose names are read in Latin letters
    as anyascii writes them (Оксана Шевченко -> Oksana Shevchenko). Romanised lists in capitals (zh_TW's CHEN) are
    title-cased; ja_JP's (kanji, kana, romaji) pairs give their romaji."""
    import importlib

    first, last = set(), set()
    for locale in (*locales, *transliterate):
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attr in dir(provider):
            if "name" not in attr or not ("first" in attr or "last" in attr or "middle" in attr) \
                    or attr.endswith("formats"):
                continue
            names = getattr(provider, attr)
            if not isinstance(names, (dict, tuple, list)):
                continue
            names = [n[-1] if isinstance(n, tuple) else n for n in names]
            for name in names:
                if not isinstance(name, str):
                    continue
                if locale in transliterate:
                    name = fold(name).replace("'", "").replace("`", "")
                    name = name[:1].upper() + name[1:]
                if name.isupper():
                    name = "-".join(part.capitalize() for part in name.split("-"))
                for form in {name, fold(name)}:
                    if _GAZETTEER_WORD.fullmatch(form):
                        (last if "last" in attr else first).add(form)  # middle names are given names
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
    words |= {w.strip(".,") for suffix in Company.company_suffixes for w in suffix.split()}
    places = {*Address.street_suffixes, *calendar.month_name[1:], *calendar.day_name}
    places |= {w for place in (*Address.countries, *Address.states) for w in place.split()}
    return frozenset(w.lower() for w in words), frozenset(w.lower() for w in places)


def _key(words: list[str]) -> tuple[str, ...]:
    return tuple(fold(w).lower().replace("’", "'") for w in words)


class PersonNameRecognizer(PatternRecognizer):
    """PERSON without a model: a known first name followed by a capitalised surname, or a title and a name.

    Names come from a gazetteer (Faker's person data for the listed locales, diacritics folded, other scripts
    transliterated) instead of an NER model, which the gateway never downloads and which is slow and noisy on
    code. Its patterns are shapes (a title or a capitalised word, then capitalised words; a label, an e-mail
    address or a chat speaker's colon around them), which the prefilter finds in its one hyperscan pass;
    `analyze` then looks words up and scores each match:
    - a known first name and a known surname: 0.85; a title (Mr, Dr...) before a capitalised word: 0.85;
    - a known first name and a capitalised word that is not a common word (`Maria Gonzalez`, but not `Jackson
      Street`): 0.65;
    - a first name that is also a common word or a place (May, Hope, Georgia): 0.65 with a known surname, 0.4 at the
      start of a sentence (`May Contain Nuts`), where a context word must lift it; dropped with an unknown word
      after it. A first name of one or two letters (Jo, Ed, Li) counts only with a known surname;
    - a surname written first (`surname_first`, Chinese, Korean and Vietnamese surnames) and a given name (known,
      Korean Ji-woo, or Chinese syllables: Zhang Xiaoming): 0.65;
    - a name in capitals (ANANYA KRISHNAN) needs both words known, or a context word (0.4);
    - `Last, First` in a delimited field, both known: 0.85; any two to four name words whose e-mail address follows
      (`Haruto Sato <h.sato@...>`), or after a person's label (`Tenant: ...`, `"name": "..."`, a sign-off) or as a
      chat speaker: 0.85 with a known word, else 0.65; lower-case names with a cue word, both known: 0.65.
    Trailing words that are common words are cut off (`Maria Gonzalez Support`). Not a person: `not_names`
    (firms, clubs, places, brands named after people), a name followed by `place_words` (`Max Planck Institute`,
    `Lincoln Park Zoo`), one starting with `place_prefixes` (`Santa Cruz`, `Rua Augusta`), ending in a plural of a
    noun (`Phoenix Suns`) or in a code in capitals (`Austin TX`, `Mac OS`), or joined to the word before by a hyphen
    (`Dodd-Frank Wall`).
    """

    FULL, FIRST, WEAK = 0.85, 0.65, 0.4

    def __init__(self, supported_language: str = "en", supported_entity: str = "PERSON",
                 context: list[str] | None = None, locales: list[str] | None = None,
                 secondary_locales: list[str] | None = None, transliterate: list[str] | None = None, common_words: list[str] | None = None,
                 not_names: list[str] | None = None, place_words: list[str] | None = None,
                 place_prefixes: list[str] | None = None, surname_first: list[str] | None = None,
                 chinese_surnames: list[str] | None = None, labels: list[str] | None = None):
        self.locales = tuple(locales or ("en_US", "en_GB"))
        self.first_names, self.surnames = _faker_names(self.locales, tuple(transliterate or ()))
        # first names of long lists with many rare entries (Faker's `en`: Kenji, Will, Ed, but also London, Forest,
        # Unique): they count only before a known surname
        extra, _ = _faker_names(tuple(secondary_locales or ()))
        self.secondary = extra - self.first_names
        self.first_names |= self.secondary
        common, self.places = _common_words()
        self.common = common | {w.lower() for w in common_words or ()}
        self.ambiguous = frozenset(n for n in self.first_names
                                   if n.lower() in self.common or n.lower() in self.places or len(n) <= 2)
        self.not_names = frozenset(_key(n.replace("&", " ").split()) for n in not_names or ())
        self._not_name_lengths = sorted({len(k) for k in self.not_names}, reverse=True)
        self._not_name_first = frozenset(k[0] for k in self.not_names)
        self._not_name_inner = frozenset(w for k in self.not_names for w in k[1:])
        self.place_words = frozenset(w.lower() for w in place_words or ()) | _STREETS
        self.place_prefixes = frozenset(place_prefixes or ())
        self.chinese = frozenset(chinese_surnames or ()) | self._romanised_chinese_surnames()
        self.surname_first = frozenset(surname_first or ()) | self.chinese
        # what _score reads as a first name and a surname without further ado (its fast path in _read)
        self._plain_first = frozenset(f for f in self.first_names if len(f) > 2 and not f.isupper()
                                      and f not in self.ambiguous and f not in self.secondary
                                      and f not in self.surname_first)
        self._not_surname_words = self.common | self.places | self.place_words | _STREETS
        self._plain_surnames = frozenset(w for w in self.surnames if w.isascii() and w.isalpha() and len(w) > 2
                                         and not w.isupper() and w.lower() not in _STREETS)
        self.labels = frozenset(" ".join(w.lower().split()) for w in labels or ("name",))
        patterns = [Pattern("title and name", _TITLED, self.FULL),
                    Pattern("first name and surname", _FIRST_AND_SURNAME, self.FIRST),
                    Pattern("lower case after a cue", _LOWER_CUE, self.FIRST)]
        super().__init__(supported_entity=supported_entity, supported_language=supported_language,
                         patterns=patterns, context=context,
                         global_regex_flags=regex.DOTALL | regex.MULTILINE)
        self._compiled = {p.name: regex.compile(p.regex, self.global_regex_flags) for p in patterns}

    @staticmethod
    def _romanised_chinese_surnames() -> frozenset[str]:
        from faker.providers.person.zh_CN import Provider as Mainland
        from faker.providers.person.zh_TW import Provider as Taiwan

        return frozenset(n.capitalize() for n in (*Mainland.last_romanized_names, *Taiwan.last_romanized_names))

    # --- lookups ----------------------------------------------------------------------------------------------------

    def _in(self, word: str, names: frozenset[str]) -> bool:
        """Is the word in the set, as written, without diacritics, or title-cased when it is in capitals?"""
        if word in names:
            return True
        if not word.isascii():
            word = fold(word)
            if word in names:
                return True
        return word.isupper() and len(word) > 2 and "-".join(p.capitalize() for p in word.split("-")) in names

    def is_first(self, word: str) -> bool:
        return self._in(word, self.first_names)

    def is_surname(self, word: str) -> bool:
        return self._in(word, self.surnames)

    def _is_common(self, word: str) -> bool:
        lower = word.lower() if word.isascii() else fold(word).lower()
        return lower in self.common or lower in self.places or lower in self.place_words

    # --- analyze ----------------------------------------------------------------------------------------------------

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        """What the patterns match, scored (see the class docstring)."""
        entity = self.supported_entities[0]
        return [RecognizerResult(entity, s, e, score) for s, e, score in self.spans(text)]

    def spans(self, text: str) -> list[tuple[int, int, float]]:
        """analyze's findings as (start, end, score), without result objects (dlp.recognizers.match_patterns)."""
        found = []
        for pattern in self.patterns:
            compiled, name = self._compiled[pattern.name], pattern.name
            if name == "title and name":
                found += [(m.start(), m.end(), self.FULL) for m in compiled.finditer(text)
                          if not self._not_a_person(text, m.start(), m.end(), titled=True)]
            elif name == "first name and surname":
                found += [self._read(text, m) for m in compiled.finditer(text, overlapped=True)]
            else:
                found += [r for m in compiled.finditer(text, overlapped=True) if (r := self._lower(m))]
        if len(found) == 1:
            return found if found[0][2] > 0 else []
        return _remove_duplicates(found)

    def plausible(self, pattern: int, text: str, start: int, end: int) -> bool:
        """Could a match lie in text[start:end]? Only if a word before its last is a known first name, a surname
        written first or before a comma, or a label, a speaker's colon or an e-mail address is next to it (the
        prefilter's check, see dlp.prefilter._PlausibleHits): nine in ten capitalised word pairs are not names, and
        these lookups spare each of them a window. A necessary condition of `_read`, so the prefilter loses nothing."""
        name = self.patterns[pattern].name
        if name == "lower case after a cue":
            first, last = text[start:end].split()[-2:]
            return self.is_first(first.capitalize()) and self.is_surname(last.capitalize())
        if name != "first name and surname":
            return True
        first_names, surname_first = self.first_names, self.surname_first
        span = text[start:end]
        words = span.split()
        for w in words[:-1]:
            if w in first_names or w in surname_first:
                return True
            if (not w.isascii() or w.isupper()) and self.is_first(w):
                return True
        if "," in span:
            for i, w in enumerate(words[:-1]):
                if w[-1] == "," and self.is_first(words[i + 1]) and self.is_surname(w[:-1]):
                    return True  # `Nakamura, Yui`
        if text.find("@", end, end + MARGIN + SNAP) >= 0 and self._spelt_in_address(text, end, words):
            return True
        # a label or a line start before it: only before its first word (inside a match a space or a comma
        # precedes each word, after a letter, a dot or the comma)
        i = start - 1
        while i >= 0 and text[i] in " \t\"'":
            i -= 1
        return i >= 0 and text[i] in ":=>\n\r]" and self._label_or_speaker(text, start, end) is not None

    # --- reading a match --------------------------------------------------------------------------------------------

    def _read(self, text: str, m: regex.Match) -> tuple[int, int, float]:
        """(start, end, score) of a match of the first-name shape; score 0 drops it."""
        first, tail = m.group(1), m.end(1)
        if text[tail] == " " and first in self._plain_first:
            # the common case, as _score reads it: a plain first name and one known surname (Ada Lovelace)
            last = text[tail + 1:m.end()]
            if last in self._plain_surnames:
                if not self._not_a_person(text, m.start(), m.end(), [first, last]):
                    return m.start(), m.end(), self.FULL
            elif last.isalpha() and last.isascii() and len(last) > 2 and not last.isupper() \
                    and (lower := last.lower()) not in self._not_surname_words and last not in self.surnames \
                    and not (lower[-1] == "s" and lower[:-1] in self.common) and not _sentence_start(text, m.start()) \
                    and not self._not_a_person(text, m.start(), m.end(), [first, last]):
                return m.start(), m.end(), self.FIRST  # a plain first name and a name-shaped word (Ada Perlman)
        if text[tail] == ",":
            return self._surname_comma(text, m)
        found = (m.start(), m.end(), 0.0)
        if self.is_first(first) or first in self.surname_first:
            found = self._score(text, m)
            if found[2] >= self.FIRST:
                return found
        return self._evidence(text, m) or found

    def _surname_comma(self, text: str, m: regex.Match) -> tuple[int, int, float]:
        """`Nakamura, Yui` in a field of its own: a known surname, a comma, a known first name, nothing more."""
        last = m.group(1)
        tokens = self._tokens(text, m.end(1), m.end())
        if len(tokens) == 1 and self.is_surname(last) and self.is_first(first := tokens[0][2]) \
                and first not in self.ambiguous and first not in self.secondary and not self._is_common(last) \
                and _FIELD_START.search(text, max(0, m.start() - 8), m.start()) and _FIELD_END.match(text, m.end()) \
                and not self._not_a_person(text, m.start(), m.end(), [last, first]):
            return m.start(), m.end(), self.FULL
        return m.start(), m.end(), 0.0

    def _evidence(self, text: str, m: regex.Match) -> tuple[int, int, float] | None:
        """Two to four name words, none a common word, with an e-mail address after them that spells them
        (0.85), or after a label or as a chat speaker (0.85 with a known word, else 0.65)."""
        i = m.start() - 1
        while i >= 0 and text[i] in " \t\"'":
            i -= 1
        email = text.find("@", m.end(), m.end() + MARGIN + SNAP) >= 0 and \
            text.find("@", m.end(), _reach_after(text, m.end())) >= 0
        if not email and (i < 0 or text[i] not in ":=>\n\r]"):
            return None
        tokens = self._tokens(text, m.start(), m.end())
        words = [w for _, _, w in tokens]
        if len(tokens) < 2 or tokens[0][0] != m.start() \
                or not all(_NAME_WORD.fullmatch(w) or _CAPS_WORD.fullmatch(w) for w in words) \
                or any(self._is_common(w) and not (self.is_first(w) or self.is_surname(w)) for w in words) \
                or self._not_a_person(text, tokens[0][0], tokens[-1][1], words):
            return None
        span = tokens[0][0], tokens[-1][1]
        if email and self._spelt_in_address(text, m.end(), words, exact=True):
            return *span, self.FULL
        found = self._label_or_speaker(text, m.start(), m.end())
        if found:
            known = (self.is_first(words[0]) and words[0] not in self.ambiguous) or \
                any(self.is_surname(w) and not self._is_common(w) for w in words[1:])
            if known:
                return *span, self.FULL
            if found == "label":  # a speaker needs a known word: headings end with a colon too (`Known Issues:`)
                return *span, self.FIRST
        return None

    def _spelt_in_address(self, text: str, end: int, words: list[str], exact: bool = False) -> bool:
        """Is there an e-mail address within the window's reach after `end` whose local part spells the name:
        two of its words (one may be an initial: h.sato), or the first name alone (oluwaseun@), or initial and
        surname run together (jsmith@)? Not exact (the prefilter's check): one word spelt in it is enough."""
        reach = _reach_after(text, end)
        at = text.find("@", end, reach)
        if at < 0:
            return False
        local = _local_part(text, end, at)
        if not local:
            return False
        joined = "".join(local)
        letters = [_letters(w) for w in words]
        if not exact:
            return any(w in local or (len(w) >= 2 and w in joined) for w in letters)
        full = [w for w in letters if len(w) >= 2 and w in local and w not in self.common]
        initials = [w for w in letters if w not in full and w[:1] in local]
        if len(full) >= 2 or (full and initials):
            return True
        if len(local) == 1 and joined not in self.common:
            return (letters[0] == joined and len(joined) >= 4) or joined in (
                letters[0][:1] + letters[-1], letters[0] + letters[-1], letters[-1] + letters[0][:1])
        return False

    def _label_or_speaker(self, text: str, start: int, end: int) -> str | None:
        """Does a person's label end right before `start` (`Tenant: `, `"name": "`, `<FullName>`, a sign-off's
        line), or does a chat speaker's line start there, with a colon after `end`? Read within the reach every
        window has (a line start must be a newline seen there)."""
        i = start - 1
        while i >= 0 and text[i] in " \t\"'":
            i -= 1
        if i < 0:
            return None
        c = text[i]
        if c not in ":=>\n\r]":
            return None
        lo = _reach_before(text, start)
        if i < lo:
            return None
        if c == ":" or c == "=":
            head = text[lo:i].rstrip(" \t")
            words = head.lower().split()[-3:]
            if not words:
                return None
            key = words[-1]
            if any(" ".join(words[-n:]) in self.labels for n in (1, 2, 3)) or (  # `Line manager: `
                    c == ":" and key.endswith('"') and key.strip('{[,"\'').endswith("name")):  # `"full_name": "`
                return "label"
            return None
        if c == ">":
            tag = text[lo:i]
            j = tag.rfind("<")
            return "label" if j >= 0 and " " not in tag[j:] and tag[j:].lower().endswith("name") else None
        if c == "]":  # a [timestamp] at the start of the line
            j = text.rfind("\n", lo, i)
            k = text.rfind("[", lo, i + 1)
            if j < 0 or k < 0 or text[j + 1:k].strip(" \t") or not _TIMESTAMP.fullmatch(text, k, i + 1):
                return None
        else:  # a line start: after a sign-off, or a speaker
            j = text.rfind("\n", lo, i)
            if j >= 0:
                line = text[j + 1:i].strip(" \t\r").lower().rstrip(",!.")
                if line.endswith("thank you") or (line and len(line) < 30 and line.split()[-1] in _SIGN_OFFS):
                    return "label"
        return "speaker" if _SPEAKER_AFTER.match(text, end, _reach_after(text, end)) else None

    def _tokens(self, text: str, start: int, end: int) -> list[tuple[int, int, str]]:
        """The capitalised words in text[start:end] (initials left out), trailing common words cut off."""
        if text[start] == " " and "A" <= text[start + 1] <= "Z" and text.find(" ", start + 1, end) < 0 \
                and text.find("\t", start, end) < 0:  # one capitalised word, the common case: what _TOKEN finds
            w = text[start + 1:end].rstrip("'’-")
            tokens = [(start + 1, start + 1 + len(w), w)] if len(w) > 1 else []
        else:
            tokens = [(t.start(), t.start() + len(w), w) for t in _TOKEN.finditer(text, start, end)
                      if len(w := t.group().rstrip("'’-")) > 1]
        while tokens and self._not_a_name(tokens[-1][2]):
            tokens.pop()  # `Maria Gonzalez Support`, `Jackson Street`
        return tokens

    def _score(self, text: str, m: regex.Match) -> tuple[int, int, float]:
        """(start, end, score) of a first-name match; score 0 drops it (see the class docstring). The cheap
        readings come first; what is not a person is asked only of a match that would count."""
        first, start, tail = m.group(1), m.start(), m.end(1)
        tokens = self._tokens(text, tail, m.end())
        if not tokens or not _NAME_WORD.fullmatch(last := tokens[-1][2]):
            return start, m.end(), 0.0  # `Archer AX55`, `German Steuer-ID`
        end = tokens[-1][1]
        surnames, common = self.surnames, self.common
        capitals = first.isupper() and all(w.isupper() for _, _, w in tokens)
        if not capitals and len(last) <= 3 and last.isupper():
            return start, end, 0.0  # `Austin TX`, `Mac OS`
        known = (last in surnames or self.is_surname(last)) and not (len(last) <= 2 and last.lower() in common)
        score = 0.0
        if first in self.surname_first:  # a surname written first: Chen Jing, Park Ji-woo, Pham Quoc Bao
            given = tokens[0][2]
            if (self.is_first(given) and not self._is_common(given)) or _KOREAN_GIVEN.fullmatch(given) or (
                    first in self.chinese and _PINYIN.fullmatch(fold(given).lower())):
                score = self.FIRST
        if score:
            pass
        elif not (first in self.first_names or self.is_first(first)):
            return start, end, 0.0
        elif capitals:  # ANANYA KRISHNAN: headings are in capitals too
            score = self.FIRST if known and first not in self.ambiguous and first not in self.secondary \
                and not self._is_common(last) else self.WEAK
        elif known:
            if (len(first) <= 2 or first in self.secondary) and first.lower() not in common:
                score = self.FIRST  # Jo Park, Li Wei, Kenji Watanabe
            elif first in self.ambiguous:
                if _after_capitalised_word(text, start):
                    return start, end, 0.0  # `Mark All As Read`: a title in capitals, not a name inside it
                score = self.WEAK if _sentence_start(text, start) else self.FIRST
            else:
                score = self.FULL
        elif first in self.ambiguous or first in self.secondary:
            return start, end, 0.0
        elif last[-1] == "s" and last[:-1].lower() in common:
            return start, end, 0.0  # `Johnson Controls`, `Hudson Yards`: a plural of a common noun
        else:  # at the start of a sentence any word is capitalised: `Grant Access`
            score = self.WEAK if _sentence_start(text, start) else self.FIRST
        if len(tokens) > 1 and any(self._is_common(w) and not (self.is_first(w) or self.is_surname(w))
                                   for _, _, w in tokens[:-1]):
            return start, end, 0.0  # `Mark All As`
        if self._not_a_person(text, start, m.end(), [first, *(w for _, _, w in tokens)]):
            return start, end, 0.0  # `Morgan Stanley`, `Max Planck Institute`
        return start, end, score

    def _lower(self, m: regex.Match) -> tuple[int, int, float] | None:
        first, last = m.group(1).split()
        if self.is_first(first.capitalize()) and self.is_surname(last.capitalize()) \
                and first not in self.common and last not in self.common and first.capitalize() not in self.ambiguous:
            return m.start(1), m.end(1), self.FIRST
        return None

    # --- not a person -----------------------------------------------------------------------------------------------

    def _not_a_name(self, word: str) -> bool:
        lower = word.lower() if word.isascii() else fold(word).lower()
        if lower in _STREETS:
            return True
        return (lower in self.common or lower in self.places or lower in self.place_words) and not self.is_surname(word)

    def _not_a_person(self, text: str, start: int, end: int, words: list[str] | None = None,
                      titled: bool = False) -> bool:
        """A firm, club, place or product named after a person (see the class docstring). What it reads around
        the match lies within MARGIN of it, which every window holds."""
        if start > 1 and text[start - 1] in "-‐'’" and text[start - 2].isalpha():
            return True  # `Dodd-Frank Wall`
        if words is None:
            words = _WORDS.findall(text, start, end)
        if not words:
            return False
        if words[0] in self.place_prefixes:
            return True  # `Santa Cruz`, `Rua Augusta`
        # the words of the name and up to two capitalised words after it (`James Webb Space Telescope`, `Martin
        # Luther King Jr. Boulevard`)
        after = []
        if end + 1 < len(text) and text[end] in " \t" and (text[end + 1].isupper() or text[end + 1] in " \t"):
            pos, limit = end, min(len(text), end + MARGIN)
            for _ in range(2):
                n = _NEXT_WORDS.match(text, pos, limit)
                if not n:
                    break
                after.append(n.group(1))
                pos = n.end()
        place_words = self.place_words
        for w in (*words[1:], *after):
            if (w.lower() if w.isascii() else fold(w).lower()) in place_words:
                return True  # `Max Planck Institute`, `Lincoln Park Zoo`, `Ho Chi Minh City`
        head = words[0].lower() if words[0].isascii() else fold(words[0]).lower()
        if head not in self._not_name_first and head not in self._not_name_inner:
            return False
        run = _key(words + after)
        starts = [run] if head in self._not_name_first else []
        if head in self._not_name_inner:  # a not-name starting at the word before (`Ho Chi Minh`)
            before = _CAPITALISED_BEFORE.search(text, max(0, start - MARGIN), start)
            if before:
                starts.append(_key([before.group(1)]) + run)
        return any(r[:n] in self.not_names for r in starts for n in self._not_name_lengths if n <= len(r))


_SPACE = regex.compile(r"[ \n\t]")


def _reach_after(text: str, end: int) -> int:
    """How far after `end` every window holding text[..end] reaches (dlp.prefilter.merge_windows: MARGIN, then on
    to the next whitespace within SNAP), so that what is read there is read alike in a window and in the whole text."""
    pos = min(len(text), end + MARGIN)
    ceiling = min(len(text), pos + SNAP)
    m = _SPACE.search(text, pos, ceiling)
    return m.end() if m else ceiling


def _reach_before(text: str, start: int) -> int:
    """Where every window holding text[start..] begins at the latest (see _reach_after)."""
    pos = max(0, start - MARGIN)
    floor = max(0, pos - SNAP)
    i = max(text.rfind(" ", floor, pos), text.rfind("\n", floor, pos), text.rfind("\t", floor, pos))
    return i if i >= 0 else floor


_CAPITALISED_BEFORE = regex.compile(r"([%s][\w'’\-]*)[ \t]+$" % _CAPITAL)
_WORDS = regex.compile(r"[\w'’]+")
_LOCAL_SEPARATOR = regex.compile(r"[._%+\-]")
_NOT_LETTERS = regex.compile(r"[^a-z]+")


def _letters(word: str) -> str:
    return _NOT_LETTERS.sub("", fold(word).lower())


def _local_part(text: str, start: int, at: int) -> list[str]:
    """The words of the local part of the e-mail address whose `@` is at `at` (not before `start`), digits left out:
    `h.sato`, `ananya.krishnan92` -> [ananya, krishnan]."""
    i = at
    while i > start and (text[i - 1].isalnum() or text[i - 1] in "._%+-"):
        i -= 1
    return [p for p in (_NOT_LETTERS.sub("", w) for w in _LOCAL_SEPARATOR.split(fold(text[i:at]).lower())) if p]


def _after_capitalised_word(text: str, pos: int) -> bool:
    """Is the word before pos capitalised (the match starts inside a run of capitalised words)?"""
    return _CAPITALISED_BEFORE.search(text, max(0, pos - 24), pos) is not None


def _remove_duplicates(found: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """EntityRecognizer.remove_duplicates on (start, end, score) of one entity: zero scores and results inside
    another of at least their score are dropped; ordered by score, then start, then length (its order)."""
    kept: list[tuple[int, int, float]] = []
    active: list[tuple[int, int, float]] = []
    for s, e, score in sorted(set(found), key=lambda r: (r[0], r[0] - r[1], -r[2])):
        if score == 0:
            continue
        active = [a for a in active if a[1] >= s]
        if not any(s >= a[0] and e <= a[1] and score <= a[2] for a in active):
            kept.append((s, e, score))
            active.append((s, e, score))
    return sorted(kept, key=lambda r: (-r[2], r[0], r[0] - r[1]))


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
