"""The policy on AI connections the gateway does not decrypt (do-not-decrypt hosts: certificate-pinned apps).

Nothing inside such a tunnel will be seen, so the policy acts where the connection opens:
- at the CONNECT, for a proxy client that names the host there (Recognise gave the CONNECT an Interaction with
  operation TUNNEL, Identify said who);
- at the TLS handshake (the `ai_tunnel` event Recognise fires, addons/hooks.py), for a client that CONNECTs to an
  address and names the host only in its TLS name, and for every client in transparent mode, which sends no
  CONNECT.

Rules on who and which service apply as to any request; rules on what is sent (models, operations, findings)
cannot hold, and a rule that needs findings applies its fail mode for `skipped`. A block at the CONNECT refuses
it (403 with the message). A block at the handshake decrypts the connection instead of tunnelling it: a
certificate-pinned client then fails its handshake, which is the block, and any other gets the block message on
each request over that connection, whatever the rules say of the request itself. A warn cannot show a page and
a redaction cannot rewrite a tunnel: both let it through, and the audit says so.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, http

from addons.recognise import TUNNEL
from core.interaction import KEY, Interaction
from policy import enforcement
from policy.engine import Decision, Request, Subject, decide
from policy.language import Policy
from policy.ruleset import RuleSet

log = logging.getLogger(__name__)


class Tunnel:
    def __init__(self) -> None:
        self.policy = Policy()
        # Client connections to a tunnelled AI host the policy blocked at the TLS handshake (then decrypted): every
        # request on them is refused with this message.
        self.blocked_connections: dict[str, str] = {}

    def rules_loaded(self, rules: RuleSet) -> None:
        self.policy = rules.policy

    def http_connect(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None or it.exchange.operation != TUNNEL:
            return
        d = self._decide(it, flow.request.headers)
        it.decide(d.action, d.reason, d.rule)
        if d.action == "block":
            text = enforcement.user_message("block", d.rule, d.message, it.event_id)
            reply = enforcement.plain_refusal(text, it.event_id)
            flow.response = http.Response.make(reply.status, reply.body, reply.headers)
            it.status = 403
            log.info("blocked tunnel to %s (%s) for %s: %s", it.host, it.service.id, it.user or it.client_addr,
                     d.reason)
        elif d.action in ("warn", "redact", "strip"):
            it.note("a tunnel cannot show a page or be rewritten: let through")

    def ai_tunnel(self, data, it: Interaction, host: str, match) -> None:
        """The handshake of a connection about to be tunnelled (addons.hooks.AiTunnelHook); Identify has said who."""
        d = self._decide(it, {})
        if d.action != "block":
            return
        data.ignore_connection = False
        self.blocked_connections[data.context.client.id] = enforcement.user_message("block", d.rule, d.message,
                                                                                    it.event_id)
        it.decide("block", d.reason, d.rule)
        it.note("decrypted instead of tunnelled, so that the block holds")
        log.info("blocked tunnel to %s (%s) for %s: %s", host, match.service.id, it.user or it.client_addr, d.reason)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        message = self.blocked_connections.get(flow.client_conn.id)
        if message is None or flow.response is not None:
            return
        reply = enforcement.plain_refusal(message)
        flow.response = http.Response.make(reply.status, reply.body, reply.headers)
        it: Interaction | None = flow.metadata.get(KEY)
        if it is not None:
            it.status = 403
            it.decide("block", "the connection was blocked at its TLS handshake (a rule on the tunnelled service)")

    def client_disconnected(self, client: connection.Client) -> None:
        self.blocked_connections.pop(client.id, None)

    def _decide(self, it: Interaction, headers) -> Decision:
        try:
            return decide(self.policy, Subject(it.user, frozenset(it.groups), it.client_addr),
                          Request(it.service, it.exchange, (), "skipped", headers))
        except Exception as e:  # fail closed, as for requests
            log.exception("policy decision failed")
            return Decision("block", reason=f"policy decision failed ({type(e).__name__}): blocked")
