"""Recognise AI traffic: decrypt only hosts in the AI endpoint catalog, tunnel everything else untouched.

The decision is taken at the TLS ClientHello, before any certificate is forged: a non-AI connection is passed
through byte for byte and the client sees the real server certificate. Catalog hosts on the do-not-decrypt list
(certificate-pinned apps) are tunnelled too, but logged as AI use. A decrypted request to a catalog host gets an
`Interaction` in its metadata: that is what marks a flow as AI traffic for the addons after this one. So does a
CONNECT to a do-not-decrypt host (operation TUNNEL): identity and policy act on it there, since nothing inside
the tunnel will be seen.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http, tls

from addons.hooks import AiTunnelHook

from core.catalog import Catalog, Match
from core.interaction import KEY, Interaction
from policy.enforcement import ACK_COOKIE
from policy.ruleset import RuleSet

log = logging.getLogger(__name__)

#: The operation of the CONNECT that opens a tunnel to a do-not-decrypt AI host (the Interaction Recognise gives it).
TUNNEL = "tunnel"

def tunnel_interaction(match: Match, client_addr: str, host: str, path: str) -> Interaction:
    """The interaction of opening a tunnel to a do-not-decrypt AI host: nothing inside it will be seen."""
    it = Interaction(service=match.service, client_addr=client_addr, host=host, method="CONNECT", path=path,
                     inspection="skipped")
    it.exchange.operation = TUNNEL
    return it


class Recognise:
    def __init__(self) -> None:
        self.catalog: Catalog | None = None
        # The host each proxy client asked to CONNECT to, by client connection id. A client chooses its TLS name
        # (SNI) freely: `CONNECT api.openai.com` with SNI `cdn.example.org` must not slip past as non-AI, so both
        # names are checked. Entries live as long as the client connection.
        self.connect_hosts: dict[str, str] = {}

    def rules_loaded(self, rules: RuleSet) -> None:
        self.catalog = rules.catalog

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self.connect_hosts[flow.client_conn.id] = flow.request.host
        if flow.response is not None:  # refused already (proxy authentication)
            return
        match = self.catalog.match(flow.request.host)
        if match is not None and not match.decrypt:
            # Its requests will never be seen: the CONNECT is the policy's only chance to act on this AI use.
            flow.metadata[KEY] = tunnel_interaction(match, flow.client_conn.peername[0], flow.request.host,
                                                    f"{flow.request.host}:{flow.request.port}")

    def client_disconnected(self, client) -> None:
        self.connect_hosts.pop(client.id, None)

    def _match(self, *names: str | None) -> tuple[str | None, Match | None]:
        """The first of the names that the catalog knows, and its match; (first name, None) if none does."""
        assert self.catalog is not None
        for name in names:
            if name and (match := self.catalog.match(name)):
                return name, match
        return next((n for n in names if n), None), None

    def connection_match(self, data: tls.ClientHelloData) -> tuple[str | None, Match | None]:
        """The AI service a TLS connection goes to, by its TLS name, its CONNECT host or its server address."""
        server = data.context.server.address
        return self._match(data.client_hello.sni, self.connect_hosts.get(data.context.client.id),
                           server[0] if server else None)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        host, match = self.connection_match(data)
        if match is None:
            data.ignore_connection = True
        elif not match.decrypt:
            data.ignore_connection = True
            client = data.context.client
            log.info("AI connection tunnelled without inspection: %s (%s) from %s: %s", host, match.service.id,
                     client.peername[0], match.reason)
            it = tunnel_interaction(match, client.peername[0] if client.peername else "", host or "", host or "")
            ctx.master.addons.trigger(AiTunnelHook(data, it, host or "", match))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # The TLS name, the CONNECT target, or for plain HTTP the request's own host: whichever is an AI service.
        host, match = self._match(flow.client_conn.sni, self.connect_hosts.get(flow.client_conn.id),
                                  flow.request.host)
        if match is None:
            return
        # (parsing the cookies of every request costs more than looking for the name first)
        ack = flow.request.cookies.get(ACK_COOKIE) if ACK_COOKIE in flow.request.headers.get("cookie", "") else None
        if ack is not None:  # the gateway's own cookie (warn pages) never leaves, on any path of the host
            del flow.request.cookies[ACK_COOKIE]
        if not match.service.covers_path(flow.request.path):
            return
        it = flow.metadata[KEY] = Interaction(
            service=match.service, client_addr=flow.client_conn.peername[0], host=host,
            method=flow.request.method, path=flow.request.path,
        )
        it.stages.browser = ack
        # An AI request is inspected before it leaves: never stream its body upstream unseen (stream_large_bodies
        # would otherwise send it before the request hook runs; body_size_limit bounds what is buffered).
        flow.request.stream = False
