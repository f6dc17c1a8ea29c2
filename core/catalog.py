"""The AI endpoint catalog: which hosts are AI services, and which of those we may decrypt.

Loaded from `rules/endpoints.yaml`. Host patterns:
  `api.openai.com`            exactly that host
  `*.githubcopilot.com`       any subdomain, one or more labels deep (not the apex itself)
  `*-aiplatform.googleapis.com`, `bedrock-runtime.*.amazonaws.com`
                              `*` inside a pattern matches within one label
Exact hosts win over patterns; among patterns the longest (most specific) wins, so a catalog can name a general
service and a more specific one under it.

A pattern must end in two literal labels (`*.com` or a bare `*` would decrypt half the web and is refused).

A service may list `paths` (path prefixes) when its host also serves non-AI traffic (substrate.office.com): the
host is still decrypted, but only requests under those prefixes count as AI exchanges. A `*` in a path prefix
stands for one path segment (`/client/v4/accounts/*/ai/`), for APIs that put an account id before the AI part.

`do_not_decrypt` lists hosts that are AI but must be tunnelled (certificate-pinned apps): the connection is
recorded as AI use, but never intercepted. Each entry must fall under some service's hosts, else it would do
nothing (a host outside the catalog is tunnelled anyway, and not recorded): the loader refuses it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from core import rulesfile
from core.rulesfile import RulesError

CATEGORIES = {
    "api": "model API or inference platform",
    "chat": "general assistant",
    "code": "coding assistant or agent",
    "write": "writing and productivity",
    "img": "image generation",
    "vid": "video generation",
    "aud": "voice, music, speech",
    "meet": "meeting notes",
    "srch": "AI search and research",
    "gw": "gateway or aggregator",
    "comp": "companion or character",
    "doc": "documents and presentations",
    "mcp": "MCP server",
}


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    vendor: str
    category: str
    sanctioned: bool = False
    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # empty: every path on the host is AI
    formats: tuple[str, ...] = ()  # wire-format hints for the parsers, e.g. ("openai",)

    def covers_path(self, path: str) -> bool:
        return not self.paths or any(_path_rx(p).match(path) for p in self.paths)


@functools.lru_cache(maxsize=None)
def _path_rx(prefix: str) -> re.Pattern[str]:
    return re.compile("[^/]*".join(re.escape(part) for part in prefix.split("*")))


@dataclass(frozen=True, slots=True)
class Match:
    """The catalog's answer for a host."""

    service: Service
    decrypt: bool  # False: a do-not-decrypt host, tunnelled but recorded
    reason: str = ""  # why it is not decrypted


@dataclass
class _PatternTable:
    exact: dict[str, object] = field(default_factory=dict)
    patterns: list[tuple[int, re.Pattern[str], object]] = field(default_factory=list)

    def add(self, pattern: str, value: object) -> None:
        pattern = pattern.lower().rstrip(".")
        if "*" not in pattern:
            self.exact[pattern] = value
            return
        if pattern.startswith("*."):
            rx = r"(?:[^.]+\.)+" + _label_glob(pattern[2:])
        else:
            rx = _label_glob(pattern)
        specificity = len(pattern.replace("*", ""))
        self.patterns.append((specificity, re.compile(rx + r"\Z"), value))
        self.patterns.sort(key=lambda t: -t[0])

    def lookup(self, host: str) -> object | None:
        host = host.lower().rstrip(".")
        if host in self.exact:
            return self.exact[host]
        for _, rx, value in self.patterns:
            if rx.match(host):
                return value
        return None


def _label_glob(pattern: str) -> str:
    return "".join("[^.]*" if c == "*" else re.escape(c) for c in pattern)


_HOST_RX = re.compile(r"^(\*\.)?[a-z0-9*]([a-z0-9*-]*[a-z0-9*])?(\.[a-z0-9*]([a-z0-9*-]*[a-z0-9*])?)*$")


def _host_problem(host: object) -> str:
    """Why a host pattern is unusable ("" if it is fine)."""
    if not isinstance(host, str) or not _HOST_RX.match(host.lower()):
        return "bad host pattern"
    labels = host.split(".")
    if "*" in host and (len(labels) < 3 or "*" in "".join(labels[-2:])):
        return "host pattern too broad (its last two labels must be literal)"
    return ""


class Catalog:
    def __init__(self, services: list[Service], do_not_decrypt: dict[str, str] | None = None):
        self.services = {s.id: s for s in services}
        self._hosts = _PatternTable()
        for s in services:
            for h in s.hosts:
                self._hosts.add(h, s)
        self._tunnel = _PatternTable()
        for h, reason in (do_not_decrypt or {}).items():
            self._tunnel.add(h, reason)

    def match(self, host: str | None) -> Match | None:
        """The service a host belongs to, and whether to decrypt it; None for non-AI hosts."""
        if not host:
            return None
        service = self._hosts.lookup(host)
        if service is None:
            return None
        reason = self._tunnel.lookup(host)
        return Match(service, decrypt=reason is None, reason=reason or "")  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        data = rulesfile.load(path)
        top = rulesfile.check_keys(path, data, "endpoints file", {"services"}, {"version", "do_not_decrypt"})
        if not isinstance(top["services"], list):
            raise RulesError(path, top.line_of("services"), "'services' must be a list")
        services: list[Service] = []
        seen_ids: dict[str, int] = {}
        host_owner: dict[str, str] = {}
        for entry in top["services"]:
            m = rulesfile.check_keys(path, entry, "service", {"id", "name", "category", "hosts"},
                                     {"vendor", "sanctioned", "paths", "formats", "notes"})
            sid = m["id"]
            if not isinstance(sid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", sid):
                raise RulesError(path, m.line_of("id"), f"service id {sid!r} must be lower-case letters, digits, ._-")
            if sid in seen_ids:
                raise RulesError(path, m.line_of("id"), f"service id {sid!r} already defined at line {seen_ids[sid]}")
            seen_ids[sid] = m.line_of("id")
            if not isinstance(m["category"], str) or m["category"] not in CATEGORIES:
                raise RulesError(path, m.line_of("category"),
                                 f"service {sid!r}: unknown category {m['category']!r} "
                                 f"(known: {', '.join(CATEGORIES)})")
            hosts = _string_list(path, m, "hosts", sid)
            if not hosts:
                raise RulesError(path, m.line_of("hosts"), f"service {sid!r}: 'hosts' is empty")
            for h in hosts:
                if problem := _host_problem(h):
                    raise RulesError(path, _item_line(m, "hosts", h), f"service {sid!r}: {problem} {h!r}")
                if h.lower() in host_owner:
                    raise RulesError(path, _item_line(m, "hosts", h),
                                     f"service {sid!r}: host {h!r} already belongs to {host_owner[h.lower()]!r}")
                host_owner[h.lower()] = sid
            paths = _string_list(path, m, "paths", sid) if "paths" in m else []
            for p in paths:
                if not p.startswith("/"):
                    raise RulesError(path, m.line_of("paths"), f"service {sid!r}: path {p!r} must start with /")
            sanctioned = m.get("sanctioned", False)
            if not isinstance(sanctioned, bool):
                raise RulesError(path, m.line_of("sanctioned"), f"service {sid!r}: 'sanctioned' must be true/false")
            services.append(Service(
                id=sid, name=str(m["name"]), vendor=str(m.get("vendor", "")), category=m["category"],
                sanctioned=sanctioned, hosts=tuple(hosts), paths=tuple(paths),
                formats=tuple(_string_list(path, m, "formats", sid)) if "formats" in m else (),
            ))
        entries = top.get("do_not_decrypt") or []
        if not isinstance(entries, list):
            raise RulesError(path, top.line_of("do_not_decrypt"), "'do_not_decrypt' must be a list")
        tunnel: dict[str, str] = {}
        tunnel_lines: dict[str, int] = {}
        for entry in entries:
            m = rulesfile.check_keys(path, entry, "do_not_decrypt entry", {"host"}, {"reason"})
            host = m["host"]
            if problem := _host_problem(host):
                raise RulesError(path, m.line_of("host"), f"do_not_decrypt: {problem} {host!r}")
            host = host.lower()
            if host in tunnel:
                raise RulesError(path, m.line_of("host"),
                                 f"do_not_decrypt: host {host!r} already listed at line {tunnel_lines[host]}")
            tunnel[host], tunnel_lines[host] = str(m.get("reason", "do-not-decrypt list")), m.line_of("host")
        catalog = cls(services, tunnel)
        for host, line in tunnel_lines.items():
            if catalog.match(host.replace("*", "x")) is None:
                raise RulesError(path, line,
                                 f"do_not_decrypt: host {host!r} belongs to no service (add it to a service's hosts)")
        return catalog


def _item_line(m: rulesfile.Mapping, key: str, item: str) -> int:
    """The line of one item of a list value, so a bad host in a long block list is pointed at exactly."""
    value = m[key]
    if isinstance(value, rulesfile.Sequence) and item in value:
        return value.line_of(value.index(item))
    return m.line_of(key)


def _string_list(path: str | Path, m: rulesfile.Mapping, key: str, sid: str) -> list[str]:
    value = m[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(path, m.line_of(key), f"service {sid!r}: {key!r} must be a list of strings")
    return list(value)
