"""`rules/recognizers.yaml`: which Presidio recognizers run, with which thresholds, plus secrets and company terms.

The loaded rules are the types of dlp/spec.py. The file keeps Presidio's own recognizer-configuration vocabulary (`name`, `type: predefined|custom`,
`supported_entity`, `patterns` of `name`/`regex`/`score`, `context`, `deny_list`, `deny_list_score`, `enabled`), and
custom entries are built with Presidio's own `PatternRecognizer.from_dict`. What Presidio's loader lacks, and a
security team editing this file by hand needs, is added here:

- every error names `file:line` (unknown key, bad regex, threshold out of range, unknown predefined recognizer);
- `threshold`: one score threshold per recognizer, because no single global threshold fits (docs/stack.md);
- `candidates`: regexes a finding of this recognizer must overlap; they gate a noisy or costly recognizer
  (Presidio's phone recognizer fires at 0.4 on any digit run that parses as a number somewhere) and tell the
  prefilter where to run it; without them the prefilter is derived from the recognizer's own patterns;
- `require_context`: reported only with a context word nearby, for checksum-only identifiers that one random
  digit run in ten passes;
- `validator`/`min_entropy`/`case_sensitive` for secrets (see dlp/recognizers.py);
- `allow`: terms and patterns that are never reported; `context`, `limits` and the optional `ner` model;
- `normalize.key_prefixes`: key prefixes the scanner's normalised views (dlp.normalize) restore to their own case;
- `inflections`: deny-list terms also match plurals, possessives and other word separators (`Project-Falcon`).
"""

from __future__ import annotations

import difflib
import inspect
import re
import re._parser as sre_parse  # stdlib's regex parser: the one tool that knows a pattern's maximum width
from pathlib import Path
from typing import Any

import regex

from presidio_analyzer import EntityRecognizer, PatternRecognizer
from presidio_analyzer.recognizer_registry.recognizers_loader_utils import RecognizerListLoader

from core.rulesfile import Mapping, RulesError, Sequence, check_keys, load, number
from dlp.prefilter import check_candidate
from dlp.recognizers import VALIDATORS, SecretRecognizer
from dlp.spec import PRESIDIO_FLAGS, AllowPattern, ContextSpec, DlpRules, Limits, NerSpec, RecognizerSpec

RULES_FILE = "recognizers.yaml"
_ENTITY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def load_rules(path: str | Path) -> DlpRules:
    """Load rules from a folder (its recognizers.yaml) or a file; any mistake is a RulesError naming file:line."""
    path = Path(path)
    file = path / RULES_FILE if path.is_dir() else path
    doc = load(file)
    if doc is None:
        raise RulesError(file, None, "empty file")
    top = check_keys(file, doc, "recognizers file", {"recognizers"},
                     {"language", "limits", "context", "ner", "allow", "normalize"})
    if top.get("language", "en") != "en":
        raise RulesError(file, top.line_of("language"), "language: only 'en' is supported")
    limits = _limits(file, top.get("limits"))
    context = _context(file, top.get("context"))
    entries = top["recognizers"]
    if not isinstance(entries, Sequence) or not entries:
        raise RulesError(file, top.line_of("recognizers"), "recognizers must be a non-empty list")
    specs, names = [], set()
    for entry in entries:
        spec = _recognizer(file, entry, limits, context)
        if spec is None:
            continue
        if spec.name in names:
            raise RulesError(file, spec.line, f"recognizer {spec.name!r} is defined twice")
        names.add(spec.name)
        specs.append(spec)
    if not specs:
        raise RulesError(file, top.line_of("recognizers"), "every recognizer is disabled")
    terms, patterns = _allow(file, top.get("allow"))
    return DlpRules(file, specs, terms, patterns, context, limits, _ner(file, top.get("ner")),
                    _key_prefixes(file, top.get("normalize")))


# --- sections -----------------------------------------------------------------------------------------------------

def _limits(file: Path, m: Any) -> Limits:
    limits = Limits()
    if m is None:
        return limits
    check_keys(file, m, "limits", set(), {"chunk_chars", "chunk_overlap", "max_window"})
    for key in m:
        setattr(limits, key, number(file, m, key, 64, 64 * 1024 * 1024, "limits", integer=True))
    if limits.chunk_overlap * 2 > limits.chunk_chars:
        raise RulesError(file, m.line, "limits: chunk_overlap must be at most half of chunk_chars")
    return limits


def _context(file: Path, m: Any) -> ContextSpec:
    spec = ContextSpec()
    if m is None:
        return spec
    check_keys(file, m, "context", set(), {"words_before", "words_after", "boost", "min_score"})
    for key in ("words_before", "words_after"):
        if key in m:
            setattr(spec, key, number(file, m, key, 0, 50, "context", integer=True))
    for key in ("boost", "min_score"):
        if key in m:
            setattr(spec, key, float(number(file, m, key, 0, 1, "context")))
    return spec


def _strings(file: Path, m: Mapping, key: str, what: str) -> list[str]:
    value = m[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RulesError(file, m.line_of(key), f"{what}: {key} must be a list of non-empty strings")
    return list(value)


def _allow(file: Path, m: Any) -> tuple[list[str], list[AllowPattern]]:
    if m is None:
        return [], []
    check_keys(file, m, "allow", set(), {"terms", "patterns"})
    terms = _strings(file, m, "terms", "allow") if "terms" in m else []
    patterns = []
    for item in m.get("patterns") or []:
        check_keys(file, item, "allow pattern", {"name", "regex"}, {"entities"})
        compiled = _compile(file, item, "regex", PRESIDIO_FLAGS, f"allow pattern {item['name']!r}")
        entities = frozenset(_strings(file, item, "entities", "allow pattern") if "entities" in item else [])
        width = _pattern_width(item["regex"], PRESIDIO_FLAGS)
        if width >= sre_parse.MAXREPEAT:
            raise RulesError(file, item.line_of("regex"), f"allow pattern {item['name']!r}: the regex must have a "
                             "maximum length (use {m,n} rather than + or *)")
        patterns.append(AllowPattern(str(item["name"]), compiled, entities, item.line, width))
    return terms, patterns


def _key_prefixes(file: Path, m: Any) -> list[str]:
    if m is None:
        return []
    check_keys(file, m, "normalize", set(), {"key_prefixes"})
    return _strings(file, m, "key_prefixes", "normalize") if "key_prefixes" in m else []


def _ner(file: Path, m: Any) -> NerSpec | None:
    """Optional NER; the model must already be installed: the gateway never downloads one (docs/stack.md)."""
    if m is None:
        return None
    check_keys(file, m, "ner", set(), {"model", "entities", "threshold"})
    model = m.get("model") or ""
    if not model:
        return None
    if not isinstance(model, str):
        raise RulesError(file, m.line_of("model"), "ner: model must be a spaCy package name or a folder")
    entities = _strings(file, m, "entities", "ner") if "entities" in m else ["PERSON", "LOCATION"]
    threshold = float(number(file, m, "threshold", 0, 1, "ner")) if "threshold" in m else 0.85
    if "/" in model or model.startswith("."):
        model = str((file.parent / model).resolve())
    import spacy.util  # only when NER is asked for: spaCy costs a second to import

    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise RulesError(file, m.line_of("model"),
                         f"ner: spaCy model {m['model']!r} is not installed (install its package, or remove "
                         "ner.model to run without NER); the gateway never downloads models")
    return NerSpec(model, entities, threshold, m.line)


# --- recognizers --------------------------------------------------------------------------------------------------

_COMMON = {"name", "type", "enabled", "threshold", "context", "candidates", "require_context"}
_PREDEFINED = _COMMON | {"options"}
_CUSTOM = _COMMON | {"supported_entity", "patterns", "deny_list", "deny_list_score", "validator", "min_entropy",
                     "case_sensitive", "description", "inflections"}


def _recognizer(file: Path, m: Any, limits: Limits, context_spec: ContextSpec) -> RecognizerSpec | None:
    if not isinstance(m, Mapping):
        raise RulesError(file, getattr(m, "line", None), "each recognizer must be a mapping")
    kind = m.get("type", "predefined")
    if kind not in ("predefined", "custom"):
        raise RulesError(file, m.line_of("type"), f"type must be 'predefined' or 'custom', not {kind!r}")
    check_keys(file, m, f"{kind} recognizer", {"name", "threshold"}, _PREDEFINED if kind == "predefined" else _CUSTOM)
    name = m["name"]
    if not isinstance(name, str) or not name:
        raise RulesError(file, m.line_of("name"), "name must be a non-empty string")
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RulesError(file, m.line_of("enabled"), f"{name}: enabled must be true or false")
    threshold = float(number(file, m, "threshold", 0, 1, name))
    context = _strings(file, m, "context", name) if "context" in m else None
    recognizer = (_predefined if kind == "predefined" else _custom)(file, m, name, context)
    if not enabled:
        return None
    recognizer.score_thresholds = {e: threshold for e in recognizer.supported_entities}
    candidates = _strings(file, m, "candidates", name) if "candidates" in m else []
    flags = recognizer.global_regex_flags if isinstance(recognizer, PatternRecognizer) else PRESIDIO_FLAGS
    for i, candidate in enumerate(candidates):
        try:
            regex.compile(candidate, flags)
        except regex.error as e:
            raise RulesError(file, _item_line(m, "candidates", i), f"{name}: bad candidate regex: {e}") from None
        problem = check_candidate(candidate, flags)
        if problem:
            raise RulesError(file, _item_line(m, "candidates", i),
                             f"{name}: candidate regex must be exact for hyperscan (no lookarounds or "
                             f"back-references): {problem}")
    require_context = m.get("require_context", False)
    if not isinstance(require_context, bool):
        raise RulesError(file, m.line_of("require_context"), f"{name}: require_context must be true or false")
    if require_context and not recognizer.context:
        raise RulesError(file, m.line_of("require_context"), f"{name}: require_context needs context words")
    spec = RecognizerSpec(name, recognizer, list(recognizer.supported_entities), threshold, candidates,
                          require_context, limits.max_window, m.line, list(recognizer.context or []))
    spec.width = _max_width(spec, limits)
    if spec.patterns:
        best = max(spec.best_score(p.score, context_spec) for p in spec.patterns)
        if best < threshold:
            raise RulesError(file, m.line_of("threshold"), f"{name}: threshold {threshold} can never be reached: "
                             f"the best score its patterns can get, with context, is {best:.2f}")
    return spec


def _item_line(m: Mapping, key: str, index: int) -> int:
    """Line of item `index` of a block list (one item a line); a flow list `[a, b]` sits on its key's line."""
    value, key_line = m.get(key), m.line_of(key)
    if not isinstance(value, Sequence) or value.line == key_line:
        return key_line
    return value.line + index


def _predefined(file: Path, m: Mapping, name: str, context: list[str] | None) -> EntityRecognizer:
    try:
        cls = RecognizerListLoader.get_existing_recognizer_cls(name)
    except Exception:
        known = [c.__name__ for c in RecognizerListLoader.get_all_existing_recognizers()]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise RulesError(file, m.line_of("name"), f"no predefined Presidio recognizer named {name!r}{hint}") from None
    options = dict(m.get("options") or {})
    params = inspect.signature(cls.__init__).parameters
    for key in options:
        if key not in params or key in ("self", "supported_language", "context"):
            raise RulesError(file, m["options"].line_of(key), f"{name}: unknown option {key!r}")
    if context is not None:
        options["context"] = context
    try:
        return cls(supported_language="en", **options)
    except (TypeError, ValueError) as e:
        raise RulesError(file, m.line, f"{name}: {e}") from None


def _custom(file: Path, m: Mapping, name: str, context: list[str] | None) -> EntityRecognizer:
    entity = m.get("supported_entity")
    if not isinstance(entity, str) or not _ENTITY.match(entity):
        raise RulesError(file, m.line_of("supported_entity") if "supported_entity" in m else m.line,
                         f"{name}: supported_entity must be an UPPER_CASE entity name")
    if "patterns" not in m and "deny_list" not in m:
        raise RulesError(file, m.line, f"{name}: a custom recognizer needs patterns or a deny_list")
    patterns = []
    for item in m.get("patterns") or []:
        check_keys(file, item, f"{name} pattern", {"name", "regex", "score"}, set())
        _compile(file, item, "regex", PRESIDIO_FLAGS, f"{name} pattern {item['name']!r}")
        number(file, item, "score", 0, 1, f"{name} pattern {item['name']!r}")
        patterns.append({"name": str(item["name"]), "regex": item["regex"], "score": float(item["score"])})
    validator = m.get("validator")
    if validator is not None and validator not in VALIDATORS:
        raise RulesError(file, m.line_of("validator"),
                         f"{name}: unknown validator {validator!r} (known: {', '.join(sorted(VALIDATORS))})")
    case_sensitive = m.get("case_sensitive", False)
    if not isinstance(case_sensitive, bool):
        raise RulesError(file, m.line_of("case_sensitive"), f"{name}: case_sensitive must be true or false")
    conf: dict[str, Any] = {
        "name": name, "supported_entity": entity, "supported_language": "en", "patterns": patterns or None,
        "context": context, "validator": validator,
        "global_regex_flags": PRESIDIO_FLAGS & ~regex.IGNORECASE if case_sensitive else PRESIDIO_FLAGS,
    }
    inflections = m.get("inflections", True)
    if not isinstance(inflections, bool):
        raise RulesError(file, m.line_of("inflections"), f"{name}: inflections must be true or false")
    if "deny_list" in m and inflections:
        score = float(number(file, m, "deny_list_score", 0, 1, name)) if "deny_list_score" in m else 1.0
        patterns.append({"name": "deny_list", "regex": terms_regex(_strings(file, m, "deny_list", name)),
                         "score": score})
        conf["patterns"] = patterns
    elif "deny_list" in m:
        conf["deny_list"] = _strings(file, m, "deny_list", name)
    if "deny_list_score" in m:
        conf["deny_list_score"] = float(number(file, m, "deny_list_score", 0, 1, name))
    if "min_entropy" in m:
        conf["min_entropy"] = float(number(file, m, "min_entropy", 0, 8, name))
    try:
        return SecretRecognizer.from_dict(conf)
    except ValueError as e:
        raise RulesError(file, m.line, f"{name}: {e}") from None


_WORD_SEPARATORS = re.compile(r"[\s\-_]+")


def terms_regex(terms: list[str]) -> str:
    """Presidio's deny-list regex (whole words, in list order) with each term's inflections: its words separated
    by spaces, a dash, an underscore or nothing (`Project-Falcon`, `ProjectFalcon`), and a plural or possessive
    ending (`Falcons`, `Falcon's`, `Falcons'`, curly apostrophes too), which a reader takes for the same name."""
    alternatives = ["[\\s\\-_]{0,3}".join(map(re.escape, _WORD_SEPARATORS.split(t.strip()))) for t in terms]
    return r"(?:^|(?<=\W))(?:" + "|".join(alternatives) + r")(?:['’]s|s['’]?|es)?(?:(?=\W)|$)"


def _compile(file: Path, m: Mapping, key: str, flags: int, what: str) -> regex.Pattern:
    value = m[key]
    if not isinstance(value, str) or not value:
        raise RulesError(file, m.line_of(key), f"{what}: {key} must be a non-empty string")
    try:
        return regex.compile(value, flags)
    except regex.error as e:
        raise RulesError(file, m.line_of(key), f"{what}: bad regex: {e}") from None


def _max_width(spec: RecognizerSpec, limits: Limits) -> int:
    """Longest text a pattern of this recognizer can match, in characters (lookarounds do not count).

    The prefilter reports where a match may end (or a candidate span); the recognizer then runs on a window that
    reaches this far, plus a margin for short lookarounds. A pattern with no maximum gets limits.max_window: a longer
    match is then cut by the window and found whole when the scanner grows the window.
    """
    widths = [_pattern_width(source, spec.regex_flags) for source in [p.regex for p in spec.patterns] or spec.candidates]
    capped = [limits.max_window if w >= sre_parse.MAXREPEAT else min(w, limits.chunk_overlap // 2) for w in widths]
    return max(capped, default=64)


def _pattern_width(source: str, flags: int) -> int:
    try:
        return sre_parse.parse(source, flags & (re.I | re.M | re.S)).getwidth()[1]
    except Exception:  # regex-module syntax, or inline flags mid-pattern
        return sre_parse.MAXREPEAT
