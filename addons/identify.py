"""Identify who is asking: fill `Interaction.user` and `.groups` before anything is decided.

Sources, in order of trust (policy/identity.py): mitmproxy's own `proxyauth` addon (Basic against an htpasswd
file, or LDAP; it leaves the authenticated name in `flow.metadata["proxyauth"]`), a header set by an SSO proxy
in front of the gateway, then the CIDR map of `identity.yaml`. The SSO header is removed from every request
whatever its source: a forged one must not reach the AI provider, and one from an untrusted address is ignored
and logged, never believed.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, http

from core.interaction import KEY, Interaction
from policy.identity import Identity, IdentityConfig
from policy.ruleset import RuleSet

log = logging.getLogger(__name__)


class Identify:
    def __init__(self) -> None:
        self.config = IdentityConfig()
        # Who opened each proxy client connection with a CONNECT, by connection id: a tunnel is decided at its TLS
        # handshake, after the CONNECT (and its credentials) have gone. Entries live as long as the connection.
        self.connections: dict[str, Identity] = {}

    def rules_loaded(self, rules: RuleSet) -> None:
        self.config = rules.identity

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Who opens a CONNECT: remembered for the connection, and given to the CONNECT's own Interaction when
        Recognise made one (a tunnel to an AI host)."""
        who = self._resolve(flow, flow.client_conn.peername[0])
        self.connections[flow.client_conn.id] = who
        it: Interaction | None = flow.metadata.get(KEY)
        if it is not None:
            it.user, it.groups = who.user, sorted(who.groups)

    def client_disconnected(self, client: connection.Client) -> None:
        self.connections.pop(client.id, None)

    def ai_tunnel(self, data, it: Interaction, host: str, match) -> None:
        """Who opens a connection that will be tunnelled (addons.hooks.AiTunnelHook), before any request on it: its
        CONNECT's identity, else its address."""
        client = data.context.client
        who = self.connections.get(client.id)
        if who is None:
            who = self.config.resolve(client.peername[0] if client.peername else "")
        it.user, it.groups = who.user, sorted(who.groups)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None:
            self._take_headers(flow)  # not AI, but a forged identity header still never leaves
            return
        who = self._resolve(flow, it.client_addr)
        it.user, it.groups = who.user, sorted(who.groups)

    def _take_headers(self, flow: http.HTTPFlow) -> tuple[str, str]:
        """The SSO header's user and groups, removed from the request whatever its source."""
        header = self.config.trusted_header
        if header is None:
            return "", ""
        user = flow.request.headers.pop(header.header, "")
        return user, flow.request.headers.pop(header.groups_header, "") if header.groups_header else ""

    def _resolve(self, flow: http.HTTPFlow, client_addr: str) -> Identity:
        """Proxy authentication, the trusted SSO header, the CIDR map."""
        header = self.config.trusted_header
        header_user, header_groups = self._take_headers(flow)
        auth = flow.metadata.get("proxyauth")
        proxy_user = auth[0] if isinstance(auth, tuple) and auth else ""
        if (header_user or header_groups) and not self.config.trusts_header_from(client_addr):
            log.warning("identity header %s from untrusted address %s ignored (and removed)", header.header,
                        client_addr)
            header_user = header_groups = ""
        return self.config.resolve(client_addr, proxy_user, header_user, header_groups)
