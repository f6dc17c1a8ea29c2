"""Prompt-injection detection: rule families as data (rules/injection.yaml), one hyperscan pass, confirmed by `regex`.

A model obeys an instruction wherever it reads one, and the one that hurts an agent rarely comes from its user: it
rides in a tool result, a fetched page, a retrieved document, an MCP result or a tool's description, and the answer
then carries data out, often as a markdown image whose URL holds it. So the detector runs on every text DLP scans,
in the same worker processes, after the same normalisation (dlp.normalize: invisible characters, look-alikes,
entities, base64 and hex decoded), and reports three entity types:

- PROMPT_INJECTION: an instruction override, a forged system turn or chat-template token, a jailbreak persona, a
  system-prompt extraction, an exfiltration request or a tool-poisoning phrase;
- HIDDEN_INSTRUCTIONS: the same, hidden from the human reader: Unicode tag characters, zero-width binary, an RLO
  override, zero-width or soft hyphens between letters, white-on-white or zero-size CSS, HTML and markdown comments,
  alt text, hidden Word runs;
- EXFILTRATION_LINK: a markdown or HTML image or link whose URL carries data (long encoded or personal values in
  its query, path or host), the shape a model's answer takes when an injection makes it leak.

Why rules and not a classifier: a model file must be downloaded and run (tens of ms per prompt), its false positives
on shell snippets and arithmetic cannot be explained or fixed by an administrator, and its F1 falls on long texts.
The rules compile into ONE hyperscan database of their own (the DLP prefilter is tuned for other shapes), scanned
over the UTF-8 bytes once per text; a pattern that hyperscan cannot run as written is compiled in its prefilter
mode, and every hit is confirmed with `regex` around where it ended, so a clean text costs one pass.

Scores are the rule's, then in context: lowered when the text discusses or quotes injections (a question about
prompt injection, a test fixture, a write-up) or the phrase is negated; raised when several different rules agree,
or when the phrase is hidden. Where the text came from (user, system, tool_result, document, mcp_result,
tool_definition) is known only to the proxy, which scans parts of a request: `by_source` applies each rule's weight
for that source there (a system prompt's "do not tell the user" is the operator's wish, a tool description's is
poisoning) and stamps the source on every finding, so a policy can block indirect injection and only record direct.
Rules marked `stage: experimental` are reported with that stage; the policy keeps them out of enforced rules.
Public rule sets join as data through `include:` (rules/injection-atr.yaml: Agent Threat Rules, converted by
scripts/import_atr.py), into the same database.

An optional classifier (dlp.classifier: an ONNX model the administrator provides, the `classifier:` section) adds
what no rule phrases; `combine` says how its score and the rules' make one.

Nothing here imports mitmproxy or Presidio.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import hashlib
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from core.rulesfile import SHIPPED_RULES, RulesError, check_keys, load
from dlp.prefilter import hyperscan

if TYPE_CHECKING:
    from dlp.classifier import Classifier, ClassifierSpec, Window

RULES_FILE = "injection.yaml"
PROMPT_INJECTION, HIDDEN_INSTRUCTIONS = "PROMPT_INJECTION", "HIDDEN_INSTRUCTIONS"
EXFILTRATION_LINK = "EXFILTRATION_LINK"
THREATS = frozenset({PROMPT_INJECTION, HIDDEN_INSTRUCTIONS, EXFILTRATION_LINK})
#: Where a text can come from; `dlp.injection.part_sources` names them for an exchange's request parts.
SOURCES = ("user", "system", "assistant", "tool_call", "tool_result", "document", "mcp_result", "tool_definition",
           "answer", "other")
FAMILIES = ("instruction_override", "role_impersonation", "hidden_instruction", "encoded_payload", "exfiltration",
            "tool_poisoning")
STAGES = ("stable", "experimental")
RECOGNIZER = "injection:"  # Finding.recognizer of the detector's findings: this prefix and the rule id
CLASSIFIER = "classifier"  # the rule id of the classifier's own findings (recognizer `injection:classifier`)
CONFIRMED = "+classifier"  # added to the rule id of a rule's hit whose score the classifier raised

_TAGS = re.compile(r"[\U000e0000-\U000e007f]{8,}")
_ZW_BINARY = re.compile(r"[\u200b\u200c\u200d\u2060]{16,}")
_INTERLEAVED = re.compile(r"(?:[^\u200b-\u200d\u2060\u00ad][\u200b-\u200d\u2060\u00ad]+){8,}")
_RLO = re.compile(r"\u202e([^\u202c\n]{8,})")
_FENCE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)
_URL_IN = re.compile(
    r"!\[[^\]\n]*\]\(\s*<?(?P<img>(?:https?:)?//[^\s)>]+)"  # markdown image
    r"|(?<!!)\[[^\]\n]*\]\(\s*<?(?P<link>(?:https?:)?//[^\s)>]+)"  # markdown link
    r"|^[ \t]*\[[^\]\n]+\]:[ \t]*<?(?P<ref>(?:https?:)?//\S+?)>?(?:\s|$)"  # reference-style definition
    r"|<img\b[^>]*?\bsrc\s*=\s*[\"']?(?P<html_img>(?:https?:)?//[^\"'\s>]+)"
    r"|<a\b[^>]*?\bhref\s*=\s*[\"']?(?P<html_link>(?:https?:)?//[^\"'\s>]+)",
    re.IGNORECASE | re.MULTILINE)
_B64ISH = re.compile(r"[A-Za-z0-9+/_=-]{20,}")
_HEXISH = re.compile(r"(?:[0-9a-fA-F]{2}){8,}")
_SECRETISH = re.compile(r"AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{16,}|xox[abp]-"
                        r"|BEGIN\s+\w*\s*PRIVATE")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_DIGITS = re.compile(r"\d[\d -]{8,}\d")


@dataclass(frozen=True, slots=True)
class Rule:
    """One phrase family member: `regex` confirms what the hyperscan pass saw."""

    id: str
    family: str
    entity: str
    score: float
    stage: str
    regex: regex.Pattern
    weights: dict[str, float]  # source -> factor on the score (0: not reported from there)
    line: int = 0


@dataclass(frozen=True, slots=True)
class Hit:
    """A detection in one text, before the proxy knows its source."""

    entity: str
    start: int
    end: int
    score: float
    rule: str
    stage: str = "stable"


@dataclass
class InjectionRules:
    path: Path
    rules: list[Rule]
    weights: dict[str, float]  # source -> default factor, for rules that do not say
    meta: regex.Pattern | None  # the text discusses or quotes injections
    meta_factor: float = 0.6
    quoted_factor: float = 0.5  # in quotes or code, in a text that discusses injections
    negation: regex.Pattern | None = None
    negated_factor: float = 0.4
    corroboration: float = 0.1  # added per other rule that agrees in the same text (at most 2)
    hidden_boost: float = 0.2
    hidden: regex.Pattern | None = None  # markup that hides what follows from the reader
    link_score: dict[str, float] = field(default_factory=lambda: {"image": 0.9, "link": 0.7})
    classifier: ClassifierSpec | None = None  # the optional model (dlp.classifier), checked at load
    by_id: dict[str, Rule] = field(default_factory=dict)

    def __post_init__(self):
        self.by_id = {r.id: r for r in self.rules}

    def weight(self, rule_id: str, source: str) -> float:
        """A rule's factor for a source (a hit the classifier raised keeps its rule's); the classifier's own
        findings take the default factor of their source."""
        rule = self.by_id.get(rule_id.removesuffix(CONFIRMED))
        if rule is not None and source in rule.weights:
            return rule.weights[source]
        return self.weights.get(source, 1.0)


_FLAGS = {"ignorecase": regex.IGNORECASE, "multiline": regex.MULTILINE, "dotall": regex.DOTALL}


#: `{gapN}`: up to N characters of one sentence, across the line breaks of hard-wrapped text (a newline before a
#: lower-case letter); `{lineN}`: the same, periods allowed (addresses and URLs hold them).
_MACRO = re.compile(r"\{(gap|line)(\d+)\}")
_MACROS = {"gap": r"(?:[^.\n]|\n(?=\p{Ll}))", "line": r"(?:[^\n]|\n(?=[\p{Ll}!\[<(]))"}


def _compile(file: Path, m, key: str, flags: int = regex.IGNORECASE) -> regex.Pattern | None:
    source = m.get(key)
    if source is None:
        return None
    if isinstance(source, list):
        source = "|".join(f"(?:{s})" for s in source)
    source = _MACRO.sub(lambda g: f"{_MACROS[g.group(1)]}{{0,{g.group(2)}}}?", source)
    try:
        return regex.compile(source, flags | regex.V0)
    except regex.error as e:
        raise RulesError(file, m.line_of(key), f"{key}: bad regular expression: {e}") from None


def _factor(file: Path, m, key: str, default: float) -> float:
    value = m.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise RulesError(file, m.line_of(key), f"{key} must be a number from 0 to 1")
    return float(value)


def _weights(file: Path, m, key: str) -> dict[str, float]:
    raw = m.get(key) or {}
    out = {}
    for source in raw:
        if source not in SOURCES:
            raise RulesError(file, raw.line_of(source), f"unknown source {source!r} (one of {', '.join(SOURCES)})")
        out[source] = _factor(file, raw, source, 1.0)
    return out


def _rules(file: Path, entries, ids: dict[str, Path]) -> list[Rule]:
    """The `rules:` list of one file; `ids` holds the ids seen so far (in this file and those loaded before it), so
    that an included file cannot redefine a rule of injection.yaml, nor the other way round."""
    if not isinstance(entries, list):
        raise RulesError(file, getattr(entries, "line", None), "rules must be a list")
    rules = []
    for entry in entries:
        r = check_keys(file, entry, "rule", {"id", "family", "pattern"}, {"entity", "score", "stage", "weights",
                                                                          "flags", "note"})
        rid = r["id"]
        if rid in ids:
            where = "" if ids[rid] == file else f" (first in {ids[rid]})"
            raise RulesError(file, r.line_of("id"), f"rule {rid!r} is defined twice{where}")
        if rid == CLASSIFIER:
            raise RulesError(file, r.line_of("id"), f"the rule id {CLASSIFIER!r} names the classifier's findings")
        ids[rid] = file
        if r["family"] not in FAMILIES:
            raise RulesError(file, r.line_of("family"), f"unknown family {r['family']!r}")
        entity = r.get("entity", PROMPT_INJECTION)
        if entity not in THREATS:
            raise RulesError(file, r.line_of("entity"), f"unknown entity {entity!r}")
        stage = r.get("stage", "stable")
        if stage not in STAGES:
            raise RulesError(file, r.line_of("stage"), f"stage must be one of {', '.join(STAGES)}")
        flags = regex.IGNORECASE
        if "flags" in r:
            flags = 0
            for name in r["flags"]:
                if name not in _FLAGS and name != "case_sensitive":
                    raise RulesError(file, r.line_of("flags"), f"unknown flag {name!r}")
                flags |= _FLAGS.get(name, 0)
        rules.append(Rule(rid, r["family"], entity, _factor(file, r, "score", 0.8), stage,
                          _compile(file, r, "pattern", flags), _weights(file, r, "weights"), r.line_of("id")))
    return rules


def load_rules(path: str | Path, check_model: bool = True) -> InjectionRules:
    """rules/injection.yaml (a folder's, or the file itself), with the rules of the files its `include:` names
    (beside it or shipped in rules/: rule sets kept as data elsewhere, such as scripts/import_atr.py's, compiled
    into the same one pass); any mistake is a RulesError naming file:line. `check_model`: open the classifier's
    model to check it (the rules stage does, when it loads or reloads the rules; the scanner's own copies need not
    open it again: a worker opens it when it warms up)."""
    path = Path(path)
    file = path / RULES_FILE if path.is_dir() else path
    doc = load(file)
    top = check_keys(file, doc, "injection rules", {"version", "rules"},
                     {"sources", "context", "links", "classifier", "include"})
    context = check_keys(file, top.get("context") or {}, "context", set(),
                         {"meta", "meta_factor", "quoted_factor", "negation", "negated_factor", "corroboration",
                          "hidden", "hidden_boost"}) if top.get("context") else {}
    ids: dict[str, Path] = {}
    rules = _rules(file, top["rules"], ids)
    include = top.get("include") or []
    if not isinstance(include, list):
        raise RulesError(file, top.line_of("include"), "include must be a list of file names")
    for k, name in enumerate(include):
        # beside the file, else shipped with the gateway: the DLP workers read a snapshot of injection.yaml alone
        other = next((f for f in (file.parent / str(name), SHIPPED_RULES / str(name)) if f.is_file()), None)
        if other is None:
            raise RulesError(file, include.line_of(k), f"include: no such file {name!r} beside it or in "
                                                       f"{SHIPPED_RULES}")
        rules += _rules(other, check_keys(other, load(other), "included injection rules", {"version", "rules"},
                                          set())["rules"], ids)
    return InjectionRules(
        file, rules, _weights(file, top, "sources"),
        meta=_compile(file, context, "meta") if context else None,
        meta_factor=_factor(file, context, "meta_factor", 0.6) if context else 0.6,
        quoted_factor=_factor(file, context, "quoted_factor", 0.5) if context else 0.5,
        negation=_compile(file, context, "negation") if context else None,
        negated_factor=_factor(file, context, "negated_factor", 0.4) if context else 0.4,
        corroboration=_factor(file, context, "corroboration", 0.1) if context else 0.1,
        hidden=_compile(file, context, "hidden") if context else None,
        hidden_boost=_factor(file, context, "hidden_boost", 0.2) if context else 0.2,
        link_score={k: _factor(file, top["links"], k, v) for k, v in {"image": 0.9, "link": 0.7}.items()}
        if top.get("links") else {"image": 0.9, "link": 0.7},
        classifier=_classifier(file, top["classifier"], check_model) if top.get("classifier") is not None else None)


def _classifier(file: Path, section, check_model: bool) -> ClassifierSpec:
    """The classifier section, its model opened once to check it (fail fast: a reload with a model that does not
    load is refused, rather than every worker failing to start)."""
    from dlp.classifier import Classifier, parse

    spec = parse(file, section)
    if check_model:
        Classifier.load(spec)
    return spec


@cache
def rules_near(recognizers_file: str) -> InjectionRules:
    """The injection rules that go with a recognizers file: the injection.yaml beside it, else the shipped one."""
    own = Path(recognizers_file).parent / RULES_FILE
    # the rules stage checked the model when it loaded these rules: not opened again here (on the event loop, in
    # the proxy's case)
    return load_rules(own if own.exists() else SHIPPED_RULES / RULES_FILE, check_model=False)


_BOUNDED = re.compile(r"\{(\d*),\d+\}\??")
_UNICODE_CLASS = re.compile(r"(?<!\\)\\([bw])")


_GAP_HS = re.compile(re.escape(_MACROS["gap"]) + r"\{0,\d+\}\??")
_LINE_HS = re.compile(re.escape(_MACROS["line"]) + r"\{0,\d+\}\??")  # at most one line break, in hyperscan


def _hs_source(pattern: regex.Pattern) -> bytes:
    """What hyperscan compiles for a rule: a superset of it, cheap to compile and to scan with. The gap macros
    become plain classes (a `{line}` gap crosses one line break at most) and bounded gaps unbounded (a bounded
    repeat costs seconds to compile and scans slower, the lookahead of a gap slower still; the confirming regex
    still bounds them). In a pattern with non-ASCII letters, hyperscan without Unicode classes (which cost seconds
    more) would not see a Cyrillic or CJK letter as a word character: `\\b` is dropped and `\\w` widened to `\\S`."""
    source = _GAP_HS.sub("[^.]*", _LINE_HS.sub(r".*(?:\\n.*)?", pattern.pattern))
    source = _BOUNDED.sub(lambda m: "*" if m.group(1) in ("", "0") else "+", source)
    if not source.isascii():
        source = _UNICODE_CLASS.sub(lambda m: "" if m.group(1) == "b" else "\\S", source)
    return source.encode()


def _hs_flags(pattern: regex.Pattern) -> int:
    flags = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_ALLOWEMPTY
    if pattern.flags & regex.IGNORECASE:
        flags |= hyperscan.HS_FLAG_CASELESS
    if pattern.flags & regex.DOTALL:
        flags |= hyperscan.HS_FLAG_DOTALL
    if pattern.flags & regex.MULTILINE:
        flags |= hyperscan.HS_FLAG_MULTILINE
    if not pattern.pattern.isascii():
        flags |= hyperscan.HS_FLAG_UTF8  # caseless still folds Cyrillic, Greek and the rest
    return flags


WIDTH = 400  # characters before a hit's end in which its confirming regex is run


class Detector:
    """Compiled once per process (a few tens of ms); `detect` per text."""

    def __init__(self, rules: InjectionRules):
        self.rules = rules
        self._classifier: Classifier | None = None  # loaded on first use (see `classifier`)
        self._db = None
        if hyperscan is not None and rules.rules:
            # and one more expression: where a run long enough to be an encoded payload is (_encoded_runs)
            self._db = _compiled([*(_hs_source(r.regex) for r in rules.rules), _RUN_SOURCE],
                                 [*(_hs_flags(r.regex) for r in rules.rules), 0])

    @property
    def classifier(self) -> Classifier | None:
        """The configured model, loaded on first use: the proxy's prefilter gate builds a Detector for
        `could_find` alone and so never loads it; a worker loads it with its warm-up scan."""
        if self._classifier is None and self.rules.classifier is not None:
            from dlp.classifier import Classifier

            self._classifier = Classifier.load(self.rules.classifier)
        return self._classifier

    # --- the pass ---------------------------------------------------------------------------------------------

    def _candidates(self, text: str) -> dict[int, list[int]]:
        """Rule index -> character offsets where the hyperscan pass saw a match of it end (a superset); under the
        key len(rules), where each run long enough to be an encoded payload has its RUN_MIN-th character (see
        `_run_starts`)."""
        if self._db is None:
            return {k: [len(text)] for k in range(len(self.rules.rules) + 1)}
        data = text.encode("utf-8", "surrogatepass")
        ends: dict[int, list[int]] = {}

        def on_match(rule: int, _from: int, to: int, _flags: int, _ctx) -> None:
            ends.setdefault(rule, []).append(to)

        self._db.scan(data, match_event_handler=on_match)
        if not ends or len(data) == len(text):
            return ends
        return {k: _char_offsets(data, v) for k, v in ends.items()}  # byte offsets to character offsets

    def _run_starts(self, text: str, seen: dict[int, list[int]]) -> list[int]:
        """Where the runs worth decoding start, in order: from the pass (which reports each run once, at its
        RUN_MIN-th character), so that no regex has to look at every character of a long text for them."""
        if self._db is None:
            return [m.start() for m in _RUN.finditer(text)]
        return [end - RUN_MIN for end in seen.get(len(self.rules.rules), ())]

    def could_find(self, text: str) -> frozenset[str]:
        """The entity types `detect(text)` could report: one hyperscan pass, the checks for hidden and link shapes,
        and a pass over what each decoder would decode (without detect's bounds, so a text that joins several
        parts answers for each of them). A phrase needs a hyperscan hit to be found, so this never leaves out a
        type detect reports; a text with only a link names EXFILTRATION_LINK alone, which a policy that blocks
        injection from tool results need not wait for. With a classifier, any text with something to score may
        be a PROMPT_INJECTION: it flags texts no rule would, so none of them may skip the workers."""
        if self.rules.classifier is not None and text.strip():
            return self._could_find(text) | {PROMPT_INJECTION}
        return self._could_find(text)

    def _could_find(self, text: str) -> frozenset[str]:
        prepared = _JSON_ESCAPE.sub(_unescaped, text) if "\\" in text else text
        seen = self._candidates(prepared)
        starts = self._run_starts(prepared, seen)  # as detect finds them
        seen.pop(len(self.rules.rules), None)
        runs = bool(starts) or "\\u" in text
        out = {self.rules.rules[k].entity for k in seen}
        if out:
            out.add(HIDDEN_INSTRUCTIONS)  # a phrase inside hiding markup, or shown by removing invisible characters
        if not text.isascii() and (_TAGS.search(text) or _ZW_BINARY.search(text) or _INTERLEAVED.search(text)
                                   or "\u202e" in text):
            out.add(HIDDEN_INSTRUCTIONS)
        if "//" in text and _URL_IN.search(text):
            out.add(EXFILTRATION_LINK)
        if PROMPT_INJECTION not in out and runs:
            for m, decode in _encoded_runs(text, starts):
                decoded = decode(m.group())
                if decoded and set(self._candidates(decoded)) - {len(self.rules.rules)}:
                    out.add(PROMPT_INJECTION)
                    break
        return frozenset(out)

    def _matches(self, text: str, seen: dict[int, list[int]] | None = None) -> list[tuple[Rule, int, int]]:
        out = []
        for k, ends in (self._candidates(text) if seen is None else seen).items():
            if k == len(self.rules.rules):
                continue  # the encoded-run expression
            rule = self.rules.rules[k]
            seen = set()
            for end in sorted(set(ends)):
                lo = max(0, end - WIDTH)
                for m in rule.regex.finditer(text, lo, min(len(text), end + 64)):
                    if m.end() > m.start() and (m.start(), m.end()) not in seen:
                        seen.add((m.start(), m.end()))
                        out.append((rule, m.start(), m.end()))
        return out

    # --- detection ----------------------------------------------------------------------------------------------

    def detect(self, text: str) -> list[Hit]:
        """Every hit in the text: phrases (scored in context), hidden payloads, exfiltration links. JSON escapes
        (`\\n`, `\\"`) read as the spaces and quotes they stand for, same length: a tool description or MCP result
        quoted as JSON text must not hide `\\nIgnore` from a word boundary."""
        prepared = _JSON_ESCAPE.sub(_unescaped, text) if "\\" in text else text
        seen = self._candidates(prepared)  # the one pass, for the phrases and the encoded runs
        # quotes escaped inside a JSON string pair up among themselves, not with the JSON's own
        escaped = [m.span() for m in _ESCAPED.finditer(text)] if prepared is not text else []
        hits = self._phrases(prepared, escaped=escaped, seen=seen)
        hits += self._hidden(text)
        hits += self._encoded(text, self._run_starts(prepared, seen))
        hits += exfiltration_links(text, self.rules.link_score)
        return hits

    def _phrases(self, text: str, hidden: bool = False, escaped: list[tuple[int, int]] = (),
                 seen: dict[int, list[int]] | None = None) -> list[Hit]:
        matches = self._matches(text, seen)
        if not matches:
            return []
        r = self.rules
        distinct = len({rule.family for rule, _, _ in matches})  # the same phrase often fires two rules of one
        corroborated = r.corroboration * min(2, distinct - 1)
        meta = r.meta is not None and r.meta.search(text) is not None
        quoted = [*_quoted_spans(text), *escaped] if meta else []
        hidden_spans = [] if hidden or r.hidden is None else _hidden_spans(text, r.hidden)
        out = []
        for rule, start, end in matches:
            score = rule.score + corroborated
            entity = rule.entity
            if hidden or _inside(start, hidden_spans):
                score, entity = score + r.hidden_boost, HIDDEN_INSTRUCTIONS
            elif meta:
                score *= r.quoted_factor if _inside(start, quoted) else r.meta_factor
            if r.negation is not None and r.negation.search(text, max(0, start - 32), start):
                score *= r.negated_factor
            out.append(Hit(entity, start, end, round(min(0.99, score), 4), rule.id, rule.stage))
        return out

    def _hidden(self, text: str) -> list[Hit]:
        """Payloads a human does not see: decoded and scanned; a phrase found there is a hidden instruction."""
        out = []
        if text.isascii():  # every hiding place below needs a character outside ASCII (the common case: none)
            return out
        for m in _TAGS.finditer(text):
            decoded = "".join(chr(ord(c) - 0xE0000) for c in m.group() if 0xE0020 <= ord(c) <= 0xE007E)
            if m.start() > 0 and text[m.start() - 1] == "\U0001f3f4" or sum(c.isalpha() for c in decoded) < 6:
                continue  # a subdivision flag emoji (England, Scotland, Wales) is built of tag characters
            out.append(self._hidden_hit(decoded, m.start(), m.end(), "hidden.tag-characters", 0.9))
        for m in _ZW_BINARY.finditer(text):
            decoded = _zero_width_binary(m.group())
            if decoded:
                out.append(self._hidden_hit(decoded, m.start(), m.end(), "hidden.zero-width-binary", 0.9))
        for m in _INTERLEAVED.finditer(text):
            plain = re.sub(r"[\u200b-\u200d\u2060\u00ad]", "", m.group())
            out.extend(Hit(HIDDEN_INSTRUCTIONS, m.start(), m.end(), h.score, h.rule, h.stage)
                       for h in _first(self._phrases(plain, hidden=True)))
        for m in _RLO.finditer(text):
            out.extend(Hit(HIDDEN_INSTRUCTIONS, m.start(), m.end(), h.score, h.rule, h.stage)
                       for h in _first(self._phrases(m.group(1)[::-1], hidden=True)))
        return out

    def _encoded(self, text: str, starts: list[int]) -> list[Hit]:
        """Encodings dlp.normalize does not undo, or undoes once: `\\u` escapes, base32, base64 inside base64 (the
        scanner's decoded view comes here too). Each decoded text is scanned for phrases; a hit covers
        the encoded run. Every run, whole: a budget of runs or characters would let junk runs before a payload, or
        junk inside one, hide it. The runs do not overlap (each starts after a character that cannot be in one), so
        all of them hold no more characters than the text, and decoding them costs what reading it does."""
        out: list[Hit] = []
        if "\\u" not in text and not starts:
            return out  # no run that may be encoded (the pass says so at C speed, a regex would not)
        for m, decode in _encoded_runs(text, starts):
            decoded = decode(m.group())
            if decoded:
                out.extend(Hit(PROMPT_INJECTION, m.start(), m.end(), h.score, h.rule, h.stage)
                           for h in _first(self._phrases(decoded)))
        return out

    def _hidden_hit(self, decoded: str, start: int, end: int, rule: str, score: float) -> Hit:
        """Hidden text is suspect in itself (nobody hides what a reader should see); a phrase in it is more so."""
        found = [h for h in self._phrases(decoded, hidden=True) if h.stage == "stable"]  # reported as stable
        best = max([score, *(h.score for h in found)])
        return Hit(HIDDEN_INSTRUCTIONS, start, end, round(min(0.99, best), 4), found[0].rule if found else rule)


def _first(hits: list[Hit]) -> list[Hit]:
    """The hit that names a decoded or hidden payload: the first of a stable rule, else the first. A trial rule
    (an imported ATR rule) must not name it in a stable one's place: it may be weighed 0 for the text's source."""
    return sorted(hits, key=lambda h: h.stage != "stable")[:1]


_ESCAPED = re.compile(r'\\"(?:[^"\\]|\\[^"])*?\\"')
_JSON_ESCAPE = re.compile(r'\\[nrt"\\/]')


def _unescaped(m: re.Match) -> str:
    return ' "' if m.group() == '\\"' else "  "


def _compiled(sources: list[bytes], flags: list[int]):
    """The database, from the DLP prefilter's disk cache folder when these rules were compiled before: every worker
    process needs it, and compiling takes a second or more."""
    from dlp.prefilter import _cache_dir

    key = hashlib.sha256(repr((hyperscan.__version__, sources, flags)).encode()).hexdigest()[:32]
    folder = _cache_dir()
    path = folder / f"injection-{key}.hsdb" if folder else None
    if path and path.exists():
        try:
            db = hyperscan.loadb(path.read_bytes(), hyperscan.HS_MODE_BLOCK)
            db.scratch = hyperscan.Scratch(db)  # a deserialized database comes without scratch space
            return db
        except (OSError, hyperscan.error):
            pass  # unreadable: compiled again and rewritten
    db = hyperscan.Database()
    db.compile(expressions=sources, ids=list(range(len(sources))), elements=len(sources), flags=flags)
    if path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
                tmp.write(hyperscan.dumpb(db))
            os.replace(tmp.name, path)
            for old in sorted(path.parent.glob("injection-*.hsdb"), key=lambda f: f.stat().st_mtime)[:-4]:
                old.unlink(missing_ok=True)  # each edit of the rules makes one; the latest few are kept
        except OSError:
            pass  # no cache: the next process compiles again
    return db


def _printable(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return decoded if len(decoded) >= 12 and sum(c.isprintable() or c in "\n\t" for c in decoded) >= 0.95 * len(
        decoded) else None


def _unicode_escapes(run: str) -> str | None:
    return "".join(chr(int(h, 16)) for h in re.findall(r"\\u([0-9a-fA-F]{4})", run))


def _base32(run: str) -> str | None:
    try:
        return _printable(base64.b32decode(run + "=" * (-len(run) % 8)))
    except (binascii.Error, ValueError):
        return None


def _base64(run: str) -> str | None:
    try:
        return _printable(base64.b64decode(run.replace("-", "+").replace("_", "/") + "=" * (-len(run) % 4)))
    except (binascii.Error, ValueError):
        return None


_ESCAPES = re.compile(r"(?:\\u[0-9a-fA-F]{4}){8,}")
RUN_MIN = 24  # characters of a run worth decoding
_RUN = re.compile(r"[A-Za-z0-9+/_-]{%d,}={0,6}" % RUN_MIN)
#: The start of every such run, in the detector's hyperscan pass: it matches once per run (its first RUN_MIN
#: characters after anything else), so a 100 KB base64 blob costs one report, and the runs are then read with
#: `_RUN.match` where they start instead of `_RUN.finditer` over the whole text.
_RUN_SOURCE = rb"(?:^|[^A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{%d}" % RUN_MIN
_BASE32 = re.compile(r"[A-Z2-7]{32,}=*")


def _char_offsets(data: bytes, ends: list[int]) -> list[int]:
    """Byte offsets of UTF-8 `data` as character offsets (what `len(data[:e].decode("utf-8", "ignore"))` says for
    each), in one pass however many there are: a text with thousands of hits is not decoded once per hit."""
    decoder = codecs.getincrementaldecoder("utf-8")("ignore")
    at, chars, out = 0, 0, {}
    for end in sorted(set(ends)):
        chars += len(decoder.decode(data[at:end]))
        at, out[end] = end, chars
    return [out[e] for e in ends]


def _encoded_runs(text: str, starts: list[int]):
    """(match, decoder) for each run worth decoding: `\\u` escapes, base32 (upper case and 2-7), base64 (hex runs
    are left to dlp.normalize, ids and hashes mostly). `starts`: where the runs start (Detector._run_starts)."""
    if "\\u" in text:
        yield from ((m, _unicode_escapes) for m in _ESCAPES.finditer(text))
    for start in starts:
        m = _RUN.match(text, start)
        if m is None:
            continue
        run = m.group()
        if _BASE32.fullmatch(run):
            yield m, _base32
        elif not _HEX_WORD.fullmatch(run.rstrip("=")):
            yield m, _base64
_HEX_WORD = re.compile(r"[0-9a-f]+", re.IGNORECASE)


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(s <= pos < e for s, e in spans)


_QUOTES = re.compile(r"\"[^\"]{2,400}\"|“[^”]{4,400}”|„[^“”]{4,400}[“”]|«[^»]{4,400}»"
                     r"|「[^」]{2,400}」"
                     r"|‘[^’]{4,400}’|'[^'\n]{8,400}'")


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _QUOTES.finditer(text)] + [m.span() for m in _FENCE.finditer(text)]


def _hidden_spans(text: str, hidden: regex.Pattern) -> list[tuple[int, int]]:
    """Where markup hides text: from a hiding construct to the end of its element (or 600 characters)."""
    spans = []
    for m in hidden.finditer(text):
        close = text.find("-->", m.end()) if m.group().startswith("<!--") else -1
        spans.append((m.start(), close + 3 if close >= 0 else min(len(text), m.end() + 600)))
    return spans


def _zero_width_binary(run: str) -> str | None:
    """Zero-width characters as bits (U+200B 0, U+200C 1; U+200D or U+2060 between bytes), if they spell text."""
    if len(set(run)) < 2:
        return None
    groups = re.split(r"[\u200d\u2060]", run) if ("\u200d" in run or "\u2060" in run) else \
        [run[i:i + 8] for i in range(0, len(run), 8)]
    try:
        chars = [chr(int(g.replace("\u200b", "0").replace("\u200c", "1"), 2)) for g in groups if g]
    except ValueError:
        return None
    decoded = "".join(chars)
    return decoded if len(decoded) >= 4 and sum(c.isprintable() for c in decoded) >= 0.9 * len(decoded) else None


# --- exfiltration links -------------------------------------------------------------------------------------------

def exfiltration_links(text: str, scores: dict[str, float]) -> list[Hit]:
    """Images and links whose URL carries data: a markdown image renders (and is fetched) without a click, so its
    URL is the classic way out; a link needs the click and scores lower. Links in code are examples, not leaks."""
    if "//" not in text:
        return []
    code = [m.span() for m in _FENCE.finditer(text)]
    out = []
    for m in _URL_IN.finditer(text):
        kind = m.lastgroup
        if _inside(m.start(), code):
            continue
        url = m.group(kind)
        why = data_in_url(url)
        if why:
            score = scores["image" if kind in ("img", "html_img", "ref") else "link"]
            out.append(Hit(EXFILTRATION_LINK, m.start(kind), m.end(kind), score, f"link.{why}"))
    return out


def data_in_url(url: str) -> str | None:
    """Why this URL carries data (query, path or host), or None. Data: a secret or personal value, an encoded
    run that decodes to text, or prose; not: sizes, formats, placeholders, a search's few words, UTM tags."""
    parts = urllib.parse.urlsplit(url if "://" in url else "https:" + url)
    host = parts.hostname or ""
    if host in ("localhost", "127.0.0.1") or not host:
        return None
    raw = [v for k, _, v in (p.partition("=") for p in parts.query.split("&")) if not k.lower().startswith("utm_")]
    if any(len(v) >= 90 for v in raw):
        return "long-query"  # percent-encoded text (CJK, Cyrillic) is short once decoded
    values = [v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
              if not k.lower().startswith("utm_")]
    for v in values:
        if _SECRETISH.search(v) or _EMAIL.search(v) or _DIGITS.search(v):
            return "personal-or-secret-query"
        if v.startswith(("{", "[")) and len(v) > 20:
            return "structured-query"
        if len(v) >= 60 or (len(v) >= 24 and v.count(" ") >= 4):
            return "long-query"
        if _decodes_to_text(v):
            return "encoded-query"
    for segment in parts.path.split("/"):
        stem = segment.rsplit(".", 1)[0]
        if len(stem) >= 24 and _decodes_to_text(stem):
            return "encoded-path"
    labels = host.split(".")[:-2]
    if any(len(label) >= 16 and _decodes_to_text(label) for label in labels):
        return "encoded-host"
    return None


def _decodes_to_text(value: str) -> bool:
    """Does a run of base64 or hex decode to mostly printable text of some length?"""
    for candidate in (m.group() for m in _HEXISH.finditer(value)):
        if len(candidate) >= 16:
            try:
                decoded = bytes.fromhex(candidate).decode("utf-8")
            except ValueError:
                continue
            if decoded.isprintable():
                return True
    for candidate in (m.group() for m in _B64ISH.finditer(value)):
        if len(candidate) < 20:
            continue
        try:
            raw = base64.b64decode(candidate.replace("-", "+").replace("_", "/") + "=" * (-len(candidate) % 4))
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        if len(decoded) >= 12 and sum(c.isprintable() or c in "\n\t" for c in decoded) >= 0.95 * len(decoded) \
                and sum(c.isalpha() for c in decoded) >= 0.5 * len(decoded):
            return True
    return False


# --- by source ------------------------------------------------------------------------------------------------------

def by_source(findings: list, sources: list[str], rules: InjectionRules) -> list:
    """Findings of request parts with `source` set from their part (`sources[part]`), and the detector's findings
    scored for where their text came from (a rule's weight for that source; 0 drops the finding)."""
    import dataclasses

    out = []
    for f in findings:
        source = sources[f.part] if 0 <= f.part < len(sources) else "other"
        if f.recognizer.startswith(RECOGNIZER):
            weight = rules.weight(f.recognizer[len(RECOGNIZER):], source)
            if weight <= 0:
                continue
            out.append(dataclasses.replace(f, source=source, score=round(min(0.99, f.score * weight), 4)))
        else:
            out.append(dataclasses.replace(f, source=source))
    return out


def scan(detector: Detector, text: str, views) -> list[Hit]:
    """Hits in the text and in its normalised views (dlp.normalize.View), moved back onto the original; a phrase
    that only shows once invisible characters are removed is a hidden instruction. With a classifier, its windows
    of the text itself (a model reads the text as it is) are combined with them (`combine`)."""
    hits = detector.detect(text)
    for view in views:
        for h in detector.detect(view.text):
            start, end = view.span(h.start, h.end)
            entity = h.entity
            if entity == PROMPT_INJECTION and _INVISIBLE.search(text, start, end):
                entity = HIDDEN_INSTRUCTIONS
            hits.append(Hit(entity, start, end, h.score, h.rule, h.stage))
    hits = _trials_aside(hits)
    classifier = detector.classifier
    return hits if classifier is None else combine(hits, classifier.windows(text), classifier.spec)


def _trials_aside(hits: list[Hit]) -> list[Hit]:
    """The hits, less those of experimental rules that overlap a stable rule's. dlp.scanner resolves overlaps
    before the proxy knows a text's source: a trial rule scored higher on the same words would win there, then be
    weighed for a source it does not read (an imported ATR rule for the user's turn, in a document: weight 0), and
    the stable finding a policy enforces would be lost with it. Where no stable rule fires, a trial rule's hit
    stays: what it adds there is what monitor mode is for."""
    if all(h.stage == "stable" for h in hits):
        return hits
    spans: list[list[int]] = []  # the stable hits' spans, merged, in order
    for start, end in sorted((h.start, h.end) for h in hits if h.stage == "stable"):
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    starts = [s for s, _ in spans]

    def covered(h: Hit) -> bool:
        k = bisect.bisect_left(starts, h.end) - 1  # the last stable span starting before the hit ends
        return k >= 0 and spans[k][1] > h.start

    return [h for h in hits if h.stage == "stable" or not covered(h)]


def combine(hits: list[Hit], windows: list[Window], spec: ClassifierSpec) -> list[Hit]:
    """The rules' hits with the classifier's verdicts: per window scored at or above the threshold, the text's
    PROMPT_INJECTION score is the higher of the rules' and the classifier's.

    - Rule hits of PROMPT_INJECTION in the window scored below the classifier are raised to its score (and an
      experimental rule's hit takes a stable classifier's stage), and their rule id gets CONFIRMED: the rule still
      says where and why (a span and an id an administrator can read), the model how sure, and the audit shows
      both had a say.
    - A window with no such hit becomes a finding of its own (`injection:classifier`) over its text, less what
      other threat hits there cover (a hidden instruction, an exfiltration link: a window-wide finding would win
      the overlap resolution of dlp.scanner and drop them, and the policy could no longer see them).
    Windows below the threshold change nothing: a model's low score does not overrule a rule."""
    out = list(hits)
    for w in windows:
        if w.score < spec.threshold:
            continue
        score = round(min(0.99, w.score), 4)
        inside = [i for i, h in enumerate(out) if h.start < w.end and w.start < h.end]
        # the rules' own (a classifier finding of an overlapping window is left as it is, and outside the gap)
        ours = [i for i in inside if out[i].entity == PROMPT_INJECTION and out[i].rule != CLASSIFIER]
        for i in ours:
            h = out[i]
            # the more enforced stage of the two: an experimental rule's hit must not hide a stable model's verdict
            stage = h.stage if spec.stage == "experimental" else spec.stage
            if h.score < score or stage != h.stage:
                out[i] = Hit(h.entity, h.start, h.end, max(score, h.score), h.rule.removesuffix(CONFIRMED) + CONFIRMED,
                             stage)
        if not ours:
            gap = _largest_gap(w.start, w.end, sorted((out[i].start, out[i].end) for i in inside))
            if gap is not None:
                out.append(Hit(PROMPT_INJECTION, *gap, score, CLASSIFIER, spec.stage))
    return out


def _largest_gap(start: int, end: int, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The longest stretch of [start, end) outside these sorted spans, or None when they cover it."""
    best, pos = None, start
    for s, e in [*spans, (end, end)]:
        if min(s, end) > pos and (best is None or min(s, end) - pos > best[1] - best[0]):
            best = (pos, min(s, end))
        pos = max(pos, e)
    return best


_INVISIBLE = regex.compile(r"\p{Cf}")


# --- answers: exfiltration links removed ------------------------------------------------------------------------------

#: What replaces the URL of an exfiltration link in an answer: a fragment, which no client fetches.
LINK_REMOVED = "#link-removed-by-ai-gateway"
#: An answer's tail that is a link still being written (`![x](https://evil.exa`): held until it is whole.
_OPEN_LINK = re.compile(r"(?:!?\[[^\]\n]*(?:\](?:\([^)\s]*|:[ \t]*\S*)?)?|!"
                        r"|<(?:i(?:m(?:g(?:\s[^>]*)?)?)?|a(?:\s[^>]*)?)?)\Z", re.IGNORECASE)
LINK_HOLD = 2048  # the longest link held back; a longer one goes out as it is (the audit still finds it)


class LinkStripper:
    """Removes exfiltration links (the URL of an image or link that carries data) from a model's answer, with the
    interface of dlp.answer.Restorer, so StreamedAnswer applies it to a stream event by event, holding back a link
    that is still being written, and `json_body` to a whole answer. The URL becomes LINK_REMOVED, so the markup
    stays valid and the client fetches nothing. Tool-call arguments are left alone (they are not rendered)."""

    def __init__(self) -> None:
        self.removed = 0

    def split(self, text: str) -> tuple[str, str]:
        start = max(0, len(text) - LINK_HOLD)
        opening = max(text.rfind("[", start), text.rfind("<", start), text.rfind("!", start))
        if opening >= 0 and text[max(0, opening - 1)] == "!":
            opening -= 1
        if opening >= 0 and _OPEN_LINK.match(text, opening):
            return text[:opening], text[opening:]
        return text, ""

    def text(self, text: str, json_text: bool = False) -> str:
        hits = exfiltration_links(text, {"image": 1.0, "link": 1.0})
        if not hits:
            return text
        out, pos = [], 0
        for h in sorted(hits, key=lambda h: h.start):
            out += [text[pos:h.start], LINK_REMOVED]
            pos = h.end
        self.removed += len(hits)
        return "".join(out) + text[pos:]

    def at(self, value: str, key: str | int, path: tuple) -> str:
        from dlp.answer import TOOL_INPUT_KEYS

        if any(k in TOOL_INPUT_KEYS for k in path if isinstance(k, str)):
            return value
        return self.text(value)

    def json_body(self, body: bytes) -> bytes:
        """A whole JSON answer with its exfiltration links removed; the same bytes when it has none."""
        import orjson

        from dlp.answer import _strings

        if b"//" not in body:
            return body
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        changed = False
        for container, key, path, value in list(_strings(data)):
            stripped = self.at(value, key, path)
            if stripped != value:
                container[key], changed = stripped, True
        return orjson.dumps(data) if changed else body
