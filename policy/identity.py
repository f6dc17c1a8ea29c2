"""Who is asking: `rules/identity.yaml` and the resolution of a user and groups for one request.

    version: 1
    groups:                          # group -> members (user names; globs like "*@research.example.com")
      research: [alice, bob]
    networks:                        # clients that do not authenticate, by source address (longest prefix wins)
      - cidr: 10.20.0.0/16
        groups: [lab]
      - cidr: 10.30.1.7/32
        user: build-server
        groups: [ci]
    trusted_header:                  # set by an SSO proxy in front of the gateway
      header: X-Authenticated-User
      groups_header: X-Authenticated-Groups   # optional, comma-separated
      from: [10.0.0.5/32]            # honoured ONLY from these addresses; stripped from every request

Order of trust for the user name: proxy authentication, then the trusted header (from a trusted address only),
then the network map. A client none of these names is known by its address alone (user ""). Groups are the
union of the YAML membership of that user, the network entry's groups and the trusted groups header. Anyone
can send a header, so a header from any other address is ignored, and the identify stage says so in the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core import rulesfile
from core.rulesfile import RulesError
from policy.language import Globs, Network, in_networks, parse_network


@dataclass(frozen=True, slots=True)
class NetworkEntry:
    network: Network
    user: str = ""
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TrustedHeader:
    header: str
    groups_header: str = ""
    sources: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class Identity:
    """The resolved subject, and how it was established (for the log and `gateway rules test`)."""

    user: str
    groups: frozenset[str]
    source: str  # proxyauth | header | network | address


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    groups: dict[str, Globs] = field(default_factory=dict)
    networks: tuple[NetworkEntry, ...] = ()  # most specific first
    trusted_header: TrustedHeader | None = None

    def trusts_header_from(self, client_addr: str) -> bool:
        return self.trusted_header is not None and in_networks(client_addr, self.trusted_header.sources)

    def network_of(self, client_addr: str) -> NetworkEntry | None:
        for entry in self.networks:
            if in_networks(client_addr, (entry.network,)):
                return entry
        return None

    def groups_of(self, user: str) -> frozenset[str]:
        return frozenset(g for g, members in self.groups.items() if user and members.match(user))

    def resolve(self, client_addr: str, proxy_user: str = "", header_user: str = "",
                header_groups: str = "") -> Identity:
        """`header_user`/`header_groups` are the raw header values; they count only from a trusted address."""
        trusted = self.trusts_header_from(client_addr)
        net = self.network_of(client_addr)
        groups: set[str] = set(net.groups) if net else set()
        if trusted and header_groups:
            groups.update(g.strip() for g in header_groups.split(",") if g.strip())
        if proxy_user:
            user, source = proxy_user, "proxyauth"
        elif trusted and header_user.strip():
            user, source = header_user.strip(), "header"
        elif net is not None and net.user:
            user, source = net.user, "network"
        else:
            user, source = "", "network" if net else "address"
        return Identity(user, frozenset(groups | self.groups_of(user)), source)


def load(path: str | Path) -> IdentityConfig:
    data = rulesfile.load(path)
    if data is None:
        return IdentityConfig()
    top = rulesfile.check_keys(path, data, "identity file", {"version"}, {"groups", "networks", "trusted_header"})
    if top["version"] != 1:
        raise RulesError(path, top.line_of("version"), f"unsupported identity version {top['version']!r} (known: 1)")
    groups: dict[str, Globs] = {}
    raw_groups = top.get("groups") or rulesfile.Mapping()
    if not isinstance(raw_groups, dict):
        raise RulesError(path, top.line_of("groups"), "'groups' must map group names to lists of users")
    for name, members in raw_groups.items():
        line = raw_groups.line_of(str(name)) if isinstance(raw_groups, rulesfile.Mapping) else top.line
        if not isinstance(name, str) or not name:
            raise RulesError(path, line, f"group name {name!r} must be text")
        if not isinstance(members, list) or not all(isinstance(u, str) and u for u in members):
            raise RulesError(path, line, f"group {name!r}: members must be a list of user names")
        groups[name] = Globs.of(members) if members else Globs.of(["re:(?!)"])
    networks: list[NetworkEntry] = []
    raw_networks = top.get("networks") or []
    if not isinstance(raw_networks, list):
        raise RulesError(path, top.line_of("networks"), "'networks' must be a list")
    for raw in raw_networks:
        m = rulesfile.check_keys(path, raw, "network", {"cidr"}, {"user", "groups"})
        if not isinstance(m["cidr"], str):
            raise RulesError(path, m.line_of("cidr"), "network: 'cidr' must be text like 10.0.0.0/8")
        user = m.get("user", "")
        if not isinstance(user, str):
            raise RulesError(path, m.line_of("user"), "network: 'user' must be text")
        net_groups = m.get("groups", [])
        if not isinstance(net_groups, list) or not all(isinstance(g, str) and g for g in net_groups):
            raise RulesError(path, m.line_of("groups"), "network: 'groups' must be a list of group names")
        networks.append(NetworkEntry(parse_network(path, m.line_of("cidr"), m["cidr"], "network"), user,
                                     frozenset(net_groups)))
    networks.sort(key=lambda e: -e.network.prefixlen)
    header = None
    if top.get("trusted_header") is not None:
        h = rulesfile.check_keys(path, top["trusted_header"], "trusted_header", {"header", "from"},
                                 {"groups_header"})
        for key in ("header", "groups_header"):
            if key in h and (not isinstance(h[key], str) or not h[key].strip() or ":" in h[key]):
                raise RulesError(path, h.line_of(key), f"trusted_header: {key!r} must be an HTTP header name")
        sources = h["from"] if isinstance(h["from"], list) else [h["from"]]
        if not sources or not all(isinstance(s, str) for s in sources):
            raise RulesError(path, h.line_of("from"), "trusted_header: 'from' must list the SSO proxy's CIDRs")
        header = TrustedHeader(h["header"].strip(), str(h.get("groups_header", "")).strip(),
                               tuple(parse_network(path, h.line_of("from"), s, "trusted_header") for s in sources))
    return IdentityConfig(groups, tuple(networks), header)
