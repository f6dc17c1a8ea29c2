"""The policy language: `rules/policy.yaml` parsed into rules the engine evaluates.

    version: 1
    defaults:
      action: allow          # a request no rule matched, to a service the policy knows
      shadow_ai: allow       # a request no rule matched, to a service nobody sanctioned or named (shadow AI)
      fail: open             # fail mode of rules that do not set one
    rules:
      - id: block-secrets
        who:  {users: [...], groups: [...], sources: [10.0.0.0/8]}
        when: {services: [...], categories: [...], sanctioned: true, shadow_ai: false, operations: ["chat.*"],
               models: ["gpt-4o*"], findings: {entities: [AWS_*], min_count: 1, min_score: 0.5, in: request},
               prompt_chars: {min: 0, max: 100k}, attachment_bytes: {max: 10MB}, attachment_types: [image/*],
               headers: {chatgpt-account-id: ["0f3c*"]},
               tools: {names: [shell, "re:exec_.*"], args: {command: "re:rm\\s+-rf", path: "/etc/*"}}}
        action: block        # allow | monitor | redact | strip | warn | block
        redact: {entities: [EMAIL_ADDRESS], reversible: true}    # action redact only
        mode: enforce        # or monitor: record what the rule would have done, do nothing
        fail: closed         # when the inspection a rule needs did not complete; or per reason:
                             # {errored: closed, unparsed: open, skipped: open}
        message: Secrets must never be sent to AI services.

Every condition given must hold; inside a list, any item will do. Patterns are case-insensitive shell globs
matched against the whole value, or regular expressions written `re:...` (searched anywhere in a tool call's
argument values, matched whole elsewhere). Rules are read top to bottom and the first
enforced rule that matches decides (docs/policy.md). Loading is strict: an unknown key, a bad glob, regex or
CIDR, a service id missing from the catalog or an unknown category is refused with `file:line: message`, since a
typo in a security rule must never silently match nothing.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import rulesfile
from core.catalog import CATEGORIES, Catalog
from core.exchange import RESPONSE_PART
from core.rulesfile import RulesError

ACTIONS = ("allow", "monitor", "redact", "strip", "warn", "block")
MODES = ("enforce", "monitor")
FAIL_MODES = ("open", "closed")
_ID_RX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENTITY_RX = re.compile(r"[A-Z0-9_*?]+")
_SIZE_RX = re.compile(r"(\d+)\s*([kmg]?)(i?b?)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Globs:
    """Case-insensitive shell-style patterns (`*`, `?`, `[abc]`), or `re:` regular expressions, compiled once.
    Both must match the whole value."""

    patterns: tuple[str, ...]
    rx: re.Pattern[str]

    @classmethod
    def of(cls, patterns: list[str], search: bool = False) -> Globs:
        """Raises re.error for a bad `re:` pattern. `search`: a `re:` pattern may match anywhere in the value (for
        free text such as a tool call's arguments: `re:rm\\s+-rf`); globs still match the whole value."""
        parts = []
        for p in patterns:
            if p.startswith("re:"):
                re.compile(p[3:])
                parts.append(f"(?s:.*?)(?:{p[3:]})" if search else f"(?:{p[3:]})\\Z")
            else:
                parts.append(f"(?:{fnmatch.translate(p)})")
        return cls(tuple(patterns), re.compile("|".join(parts), re.IGNORECASE))

    def match(self, value: str) -> bool:
        return bool(self.rx.match(value))


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive size range; None is unbounded."""

    min: int | None = None
    max: int | None = None

    def contains(self, value: int) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


def entity_of(finding: Any) -> str:
    """dlp.scanner.Finding says `entity`; the audit's FindingLike protocol says `entity_type`: accept both."""
    return getattr(finding, "entity", None) or getattr(finding, "entity_type", "")


FINDINGS_IN = ("request", "response")
#: Where a finding's text came from (the same names as dlp.injection.SOURCES; policy does not import dlp).
FINDING_SOURCES = ("user", "system", "assistant", "tool_call", "tool_result", "document", "mcp_result",
                   "tool_definition", "answer", "other")


def in_response(finding: Any) -> bool:
    """A finding in the completion (response-side scan), not in a request part."""
    return getattr(finding, "part", 0) == RESPONSE_PART


@dataclass(frozen=True, slots=True)
class FindingsMatch:
    """At least `min_count` findings whose entity matches `entities` (any, if None) with score >= `min_score`,
    in the request (`in: request`, the default) or in the model's answer (`in: response`), from one of `sources`
    (where the text came from: dlp.injection.SOURCES; any, if None), so a rule can block an injection riding in a
    tool result and only record a user's own. A finding of a rule still on trial (`stage: experimental`) counts
    only for rules in `mode: monitor` (`enforced` False): it is recorded, never enforced."""

    entities: Globs | None = None
    min_count: int = 1
    min_score: float = 0.0
    where: str = "request"
    sources: frozenset[str] | None = None

    def selects(self, finding: Any, enforced: bool = False) -> bool:
        return (finding.score >= self.min_score and in_response(finding) == (self.where == "response")
                and (self.entities is None or self.entities.match(entity_of(finding)))
                and (self.sources is None or getattr(finding, "source", "") in self.sources)
                and not (enforced and getattr(finding, "stage", "") == "experimental"))


@dataclass(frozen=True, slots=True)
class ToolsMatch:
    """A tool the request offers the model (`tools[]`) or a call of one it carries back (the conversation's
    history), by name (`names`, any if None) and by the MCP server it lives on (`servers`: one of these;
    `servers_not_in`: an MCP server, and none of these, for allow-lists; a tool of the client's own has no
    server; `changed`: an MCP tool whose server first listed another definition of it, or not; `shadowed`: an MCP
    tool whose name another server listed first, or not); with `args`, only calls count, and each (JSON path,
    patterns) must hold for one and the same call: a value at the path (dotted keys; a list matches when one of
    its items does) that a pattern matches. Arguments that did not parse one way (cut off, not JSON, a repeated
    key) are read as the text sent: each pattern against the whole of it, so a malformed call cannot slip past a
    rule."""

    names: Globs | None = None
    args: tuple[tuple[tuple[str, ...], Globs], ...] = ()
    servers: Globs | None = None
    servers_not_in: Globs | None = None
    changed: bool | None = None
    shadowed: bool | None = None

    def counts(self, tool: Any) -> bool:
        """Does this definition or call have the name, server (changed definition, shadowed name) the condition
        asks for?"""
        return ((self.names is None or self.names.match(tool.name))
                and (self.servers is None or bool(tool.server) and self.servers.match(tool.server))
                and (self.servers_not_in is None or bool(tool.server) and not self.servers_not_in.match(tool.server))
                and (self.changed is None or getattr(tool, "changed", False) == self.changed)
                and (self.shadowed is None or bool(getattr(tool, "shadows", "")) == self.shadowed))

    def holds(self, exchange: Any) -> bool:
        calls = [c for m in exchange.messages for c in m.tool_calls]
        if not self.args:
            return any(self.counts(t) for t in [*exchange.tools, *calls])
        for c in calls:
            if self.counts(c):
                if c.value is None:  # arguments that did not parse one way: each pattern reads the text as sent
                    held = all(globs.match(c.arguments) for _, globs in self.args)
                else:  # parsed once, by the provider parser
                    held = all(_any_value(c.value, path, globs) for path, globs in self.args)
                if held:
                    return True
        return False


def _any_value(value: Any, path: tuple[str, ...], globs: Globs) -> bool:
    """Does a value at `path` match? A list on the way, or at the end, matches when one of its items does."""
    if isinstance(value, list):
        return any(_any_value(v, path, globs) for v in value)
    if path:
        return isinstance(value, dict) and path[0] in value and _any_value(value[path[0]], path[1:], globs)
    if isinstance(value, dict) or value is None:
        return False
    return globs.match(value if isinstance(value, str) else json.dumps(value))


@dataclass(frozen=True, slots=True)
class Who:
    users: Globs | None = None
    groups: frozenset[str] | None = None
    sources: tuple[Network, ...] | None = None


@dataclass(frozen=True, slots=True)
class When:
    services: frozenset[str] | None = None
    categories: frozenset[str] | None = None
    sanctioned: bool | None = None
    shadow_ai: bool | None = None
    operations: Globs | None = None
    models: Globs | None = None
    findings: FindingsMatch | None = None
    prompt_chars: Range | None = None
    attachment_bytes: Range | None = None
    attachment_types: Globs | None = None
    headers: tuple[tuple[str, Globs], ...] | None = None  # (lower-case name, value patterns): all must hold
    tools: ToolsMatch | None = None


@dataclass(frozen=True, slots=True)
class FailModes:
    """What a rule that needs findings does when they are not the whole truth, per reason. The reasons differ in
    who is at fault: `errored` is the gateway's own DLP (a scan that timed out, waited too long for a worker, or
    lost its worker), so an attacker who can make it happen (a huge prompt) must not thereby get past the rule;
    `unparsed` is a body the gateway did not understand (often an app's unknown endpoint); `skipped` is DLP
    switched off, or nothing textual scanned. Written `fail: closed` (every reason) or `fail: {errored: closed}`
    (the reasons not named keep the defaults' modes)."""

    errored: str = "open"
    unparsed: str = "open"
    skipped: str = "open"

    def of(self, inspection: str) -> str:
        """The mode for this inspection; any state the policy does not know counts as errored."""
        return getattr(self, inspection) if inspection in FAIL_REASONS else self.errored

    def __str__(self) -> str:
        modes = {self.errored, self.unparsed, self.skipped}
        if len(modes) == 1:
            return modes.pop()
        return "{" + ", ".join(f"{r}: {getattr(self, r)}" for r in FAIL_REASONS) + "}"


FAIL_REASONS = ("errored", "unparsed", "skipped")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    line: int
    action: str
    who: Who = field(default_factory=Who)
    when: When = field(default_factory=When)
    mode: str = "enforce"
    fail: FailModes = field(default_factory=FailModes)
    redact_entities: Globs | None = None  # None: the entities the findings condition selects (or every finding)
    reversible: bool = False
    message: str = ""
    description: str = ""

    @property
    def on_response(self) -> bool:
        """Judged when the answer has ended, on the findings in the completion (`findings: {in: response}`)."""
        return self.when.findings is not None and self.when.findings.where == "response"

    @property
    def needs_inspection(self) -> bool:
        """A rule that looks at DLP findings cannot be judged when the inspection did not complete."""
        return self.when.findings is not None or self.action == "redact"


@dataclass(frozen=True, slots=True)
class Defaults:
    action: str = "allow"
    shadow_ai: str = "allow"
    fail: FailModes = field(default_factory=FailModes)
    message: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    defaults: Defaults = field(default_factory=Defaults)
    file: str = ""
    # Services some rule names by id: with the sanctioned ones, the services the policy knows (not shadow AI).
    named_services: frozenset[str] = field(init=False, default=frozenset())
    # Whether any rule is judged on the answer: without one, no completion is scanned (asked on every request).
    response_rules: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "named_services", frozenset().union(*(r.when.services or () for r in self.rules)))
        object.__setattr__(self, "response_rules", any(r.on_response for r in self.rules))


_WHO_KEYS = {"users", "groups", "sources"}
_WHEN_KEYS = {"services", "categories", "sanctioned", "shadow_ai", "operations", "models", "findings",
              "prompt_chars", "attachment_bytes", "attachment_types", "headers", "tools"}
_RULE_KEYS = {"who", "when", "mode", "fail", "redact", "message", "description"}


def load(path: str | Path, catalog: Catalog) -> Policy:
    """Parse and check a policy file against the catalog. Raises RulesError naming file and line."""
    data = rulesfile.load(path)
    if data is None:
        raise RulesError(path, None, "policy file is empty (write at least 'version: 1')")
    top = rulesfile.check_keys(path, data, "policy file", {"version"}, {"defaults", "rules"})
    if top["version"] != 1:
        raise RulesError(path, top.line_of("version"), f"unsupported policy version {top['version']!r} (known: 1)")
    defaults = _defaults(path, top.get("defaults"), top.line_of("defaults"))
    raw_rules = top.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RulesError(path, top.line_of("rules"), "'rules' must be a list")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for raw in raw_rules:
        rule = _rule(path, raw, catalog, defaults)
        if rule.id in seen:
            raise RulesError(path, rule.line, f"rule id {rule.id!r} already used at line {seen[rule.id]}")
        seen[rule.id] = rule.line
        rules.append(rule)
    return Policy(tuple(rules), defaults, str(path))


def _defaults(path: str | Path, raw: Any, line: int) -> Defaults:
    if raw is None:
        return Defaults()
    m = rulesfile.check_keys(path, raw, "defaults", set(), {"action", "shadow_ai", "fail", "message"})
    action = _choice(path, m, "action", ("allow", "monitor", "warn", "block"), "allow", "defaults")
    shadow = _choice(path, m, "shadow_ai", ("allow", "monitor", "warn", "block"), "allow", "defaults")
    fail = _fail(path, m, FailModes(), "defaults")
    return Defaults(action, shadow, fail, _text(path, m, "message", "defaults"))


def _rule(path: str | Path, raw: Any, catalog: Catalog, defaults: Defaults) -> Rule:
    if isinstance(raw, rulesfile.Mapping) and "id" not in raw:
        raise RulesError(path, raw.line, "rule: missing key 'id'")
    m = rulesfile.check_keys(path, raw, "rule", {"id", "action"}, _RULE_KEYS)
    rid = m["id"]
    if not isinstance(rid, str) or not _ID_RX.fullmatch(rid):
        raise RulesError(path, m.line_of("id"), f"rule id {rid!r} must be letters, digits, '_', '.', '-'")
    where = f"rule {rid!r}"
    action = _choice(path, m, "action", ACTIONS, None, where)
    who = _who(path, m["who"], where) if "who" in m else Who()
    when = _when(path, m["when"], catalog, where) if "when" in m else When()
    redact_entities, reversible = None, False
    if "redact" in m:
        if action != "redact":
            raise RulesError(path, m.line_of("redact"), f"{where}: 'redact' is only for 'action: redact'")
        r = rulesfile.check_keys(path, m["redact"], f"{where} redact", set(), {"entities", "reversible"})
        if "entities" in r:
            redact_entities = _entity_globs(path, r, "entities", where)
        reversible = r.get("reversible", False)
        if not isinstance(reversible, bool):
            raise RulesError(path, r.line_of("reversible"), f"{where}: 'reversible' must be true or false")
    if action == "strip" and (when.tools is None or when.tools.args):
        raise RulesError(path, m.line_of("action"), f"{where}: 'action: strip' removes the tools its condition "
                                                    f"names from what the model is offered: it needs 'when: tools' "
                                                    f"with names and no 'args' (arguments are in calls, not "
                                                    f"definitions)")
    if when.findings is not None and when.findings.where == "response" and action in ("redact", "warn"):
        raise RulesError(path, m.line_of("action"), f"{where}: a rule on findings 'in: response' can block, "
                                                    f"monitor or allow the answer, not {action} it")
    return Rule(
        id=rid, line=m.line, action=action, who=who, when=when,
        mode=_choice(path, m, "mode", MODES, "enforce", where),
        fail=_fail(path, m, defaults.fail, where),
        redact_entities=redact_entities, reversible=reversible,
        message=_text(path, m, "message", where), description=_text(path, m, "description", where),
    )


def _who(path: str | Path, raw: Any, where: str) -> Who:
    m = rulesfile.check_keys(path, raw, f"{where} who", set(), _WHO_KEYS)
    sources = None
    if "sources" in m:
        sources = tuple(parse_network(path, m.line_of("sources"), s, where)
                        for s in _strings(path, m, "sources", where))
    return Who(
        users=_globs(path, m, "users", where) if "users" in m else None,
        groups=frozenset(_strings(path, m, "groups", where)) if "groups" in m else None,
        sources=sources,
    )


def _when(path: str | Path, raw: Any, catalog: Catalog, where: str) -> When:
    m = rulesfile.check_keys(path, raw, f"{where} when", set(), _WHEN_KEYS)
    services = categories = None
    if "services" in m:
        services = frozenset(_strings(path, m, "services", where))
        for sid in sorted(services):
            if sid not in catalog.services:
                raise RulesError(path, m.line_of("services"),
                                 f"{where}: unknown service {sid!r} (not an id in the endpoint catalog)")
    if "categories" in m:
        categories = frozenset(_strings(path, m, "categories", where))
        for cat in sorted(categories):
            if cat not in CATEGORIES:
                raise RulesError(path, m.line_of("categories"),
                                 f"{where}: unknown category {cat!r} (known: {', '.join(CATEGORIES)})")
    return When(
        services=services, categories=categories,
        sanctioned=_bool(path, m, "sanctioned", where), shadow_ai=_bool(path, m, "shadow_ai", where),
        operations=_globs(path, m, "operations", where) if "operations" in m else None,
        models=_globs(path, m, "models", where) if "models" in m else None,
        findings=_findings(path, m, where) if "findings" in m else None,
        prompt_chars=_range(path, m, "prompt_chars", where) if "prompt_chars" in m else None,
        attachment_bytes=_range(path, m, "attachment_bytes", where) if "attachment_bytes" in m else None,
        attachment_types=_globs(path, m, "attachment_types", where) if "attachment_types" in m else None,
        headers=_headers(path, m, where) if "headers" in m else None,
        tools=_tools(path, m, where) if "tools" in m else None,
    )


def _tools(path: str | Path, m: rulesfile.Mapping, where: str) -> ToolsMatch:
    """`tools: [names]`, or `tools: {names: [...], args: {json.path: pattern or [patterns]}}`."""
    if isinstance(m["tools"], list):
        return ToolsMatch(names=_globs(path, m, "tools", where))
    t = rulesfile.check_keys(path, m["tools"], f"{where} tools", set(), {"names", "args", "servers",
                                                                          "servers_not_in", "changed", "shadowed"})
    if not t:
        raise RulesError(path, m.line_of("tools"), f"{where}: 'tools' needs 'names' or 'args' (or 'servers', "
                                                   f"'servers_not_in', 'changed', 'shadowed')")
    for flag in ("changed", "shadowed"):
        if flag in t and not isinstance(t[flag], bool):
            raise RulesError(path, t.line_of(flag), f"{where}: '{flag}' must be true or false")
    args = []
    if "args" in t:
        raw = t["args"]
        if not isinstance(raw, rulesfile.Mapping) or not raw:
            raise RulesError(path, t.line_of("args"), f"{where}: 'args' must map argument paths (a.b) to patterns")
        for key in raw:
            steps = tuple(str(key).split("."))
            if not all(steps):
                raise RulesError(path, raw.line_of(str(key)), f"{where}: {key!r} is not an argument path (a.b.c)")
            args.append((steps, _globs(path, raw, key, where, search=True)))
    servers = {key: _globs(path, t, key, where) if key in t else None for key in ("servers", "servers_not_in")}
    return ToolsMatch(names=_globs(path, t, "names", where) if "names" in t else None, args=tuple(args), **servers,
                      changed=t.get("changed"), shadowed=t.get("shadowed"))


def _headers(path: str | Path, m: rulesfile.Mapping, where: str) -> tuple[tuple[str, Globs], ...]:
    """Request header name -> value patterns, e.g. the ChatGPT workspace (`chatgpt-account-id`) of a company."""
    raw = m["headers"]
    if not isinstance(raw, rulesfile.Mapping) or not raw:
        raise RulesError(path, m.line_of("headers"), f"{where}: 'headers' must map header names to value patterns")
    out = []
    for name in raw:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            raise RulesError(path, raw.line_of(str(name)), f"{where}: {name!r} is not an HTTP header name")
        out.append((name.lower(), _globs(path, raw, name, where)))
    return tuple(out)


def _findings(path: str | Path, m: rulesfile.Mapping, where: str) -> FindingsMatch:
    raw = m["findings"]
    if isinstance(raw, list):  # shorthand: a list of entity types
        return FindingsMatch(entities=_entity_globs(path, m, "findings", where))
    f = rulesfile.check_keys(path, raw, f"{where} findings", set(),
                             {"entities", "min_count", "min_score", "in", "sources"})
    min_count = f.get("min_count", 1)
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise RulesError(path, f.line_of("min_count"), f"{where}: 'min_count' must be a whole number >= 1")
    min_score = f.get("min_score", 0.0)
    if not isinstance(min_score, (int, float)) or isinstance(min_score, bool) or not 0 <= min_score <= 1:
        raise RulesError(path, f.line_of("min_score"), f"{where}: 'min_score' must be a number from 0 to 1")
    entities = _entity_globs(path, f, "entities", where) if "entities" in f else None
    sources = None
    if "sources" in f:
        sources = frozenset(_strings(path, f, "sources", where))
        unknown = sorted(sources - set(FINDING_SOURCES))
        if unknown:
            raise RulesError(path, f.line_of("sources"), f"{where}: unknown source {unknown[0]!r} (one of "
                                                         f"{', '.join(FINDING_SOURCES)})")
    return FindingsMatch(entities, min_count, float(min_score),
                         _choice(path, f, "in", FINDINGS_IN, "request", where), sources)


def _entity_globs(path: str | Path, m: rulesfile.Mapping, key: str, where: str) -> Globs:
    items = _strings(path, m, key, where)
    for e in items:
        if not _ENTITY_RX.fullmatch(e):
            raise RulesError(path, m.line_of(key),
                             f"{where}: entity type {e!r} must be upper-case letters, digits, '_' (globs: * ?)")
    return Globs.of(items)


def _globs(path: str | Path, m: rulesfile.Mapping, key: str, where: str, search: bool = False) -> Globs:
    items = _strings(path, m, key, where)
    for g in items:
        if g.startswith("re:"):
            try:
                re.compile(g[3:])
            except re.error as e:
                raise RulesError(path, m.line_of(key), f"{where}: bad regular expression {g!r} in {key!r}: {e}") \
                    from None
        elif g.count("[") != g.count("]"):
            raise RulesError(path, m.line_of(key), f"{where}: bad glob {g!r} in {key!r} (unbalanced brackets)")
    return Globs.of(items, search)


def _range(path: str | Path, m: rulesfile.Mapping, key: str, where: str) -> Range:
    r = rulesfile.check_keys(path, m[key], f"{where} {key}", set(), {"min", "max"})
    bounds = {k: parse_size(path, r.line_of(k), r[k], f"{where} {key}.{k}") for k in ("min", "max") if k in r}
    if not bounds:
        raise RulesError(path, m.line_of(key), f"{where}: {key!r} needs 'min' or 'max'")
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise RulesError(path, m.line_of(key), f"{where}: {key!r} min is larger than max")
    return Range(bounds.get("min"), bounds.get("max"))


def parse_size(path: str | Path, line: int, value: Any, where: str) -> int:
    """100, "100k", "10MB", "2 GB": decimal units, since these are limits people write, not memory pages."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE_RX.fullmatch(value.strip())):
        return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise RulesError(path, line, f"{where}: {value!r} is not a size (a number, or like 100k, 10MB)")


def parse_network(path: str | Path, line: int, value: str, where: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise RulesError(path, line, f"{where}: bad CIDR {value!r}: {e}") from None


def in_networks(addr: str, networks: tuple[Network, ...]) -> bool:
    """Whether a client address (as the socket reports it) is in any of the networks."""
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:  # dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d
        ip = ip.ipv4_mapped
    return any(ip in n for n in networks)


def _strings(path: str | Path, m: rulesfile.Mapping, key: str, where: str) -> list[str]:
    value = m[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RulesError(path, m.line_of(key), f"{where}: {key!r} must be a non-empty list of strings")
    return list(value)


def _fail(path: str | Path, m: rulesfile.Mapping, default: FailModes, where: str) -> FailModes:
    """`fail: open | closed`, or a mapping from FAIL_REASONS to modes (reasons not named keep `default`'s)."""
    value = m.get("fail")
    if value is None:
        return default
    if not isinstance(value, rulesfile.Mapping):
        mode = _choice(path, m, "fail", FAIL_MODES, None, where)
        return FailModes(mode, mode, mode)
    modes = rulesfile.check_keys(path, value, f"{where} fail", set(), set(FAIL_REASONS))
    return FailModes(*(_choice(path, modes, r, FAIL_MODES, getattr(default, r), f"{where} fail")
                       for r in FAIL_REASONS))


def _choice(path: str | Path, m: rulesfile.Mapping, key: str, allowed: tuple[str, ...], default: str | None,
            where: str) -> str:
    value = m.get(key, default)
    if value not in allowed:
        raise RulesError(path, m.line_of(key), f"{where}: {key!r} must be one of {', '.join(allowed)}, "
                                               f"not {value!r}")
    return value


def _bool(path: str | Path, m: rulesfile.Mapping, key: str, where: str) -> bool | None:
    value = m.get(key)
    if value is not None and not isinstance(value, bool):
        raise RulesError(path, m.line_of(key), f"{where}: {key!r} must be true or false")
    return value


def _text(path: str | Path, m: rulesfile.Mapping, key: str, where: str) -> str:
    value = m.get(key, "")
    if not isinstance(value, str):
        raise RulesError(path, m.line_of(key), f"{where}: {key!r} must be text")
    return value.strip()
