"""Identify who is asking: fill `Interaction.user` and `.groups` before anything is decided.

Sources, in order of trust (policy/identity.py): mitmproxy's own `proxyauth` addon (Basic against an htpasswd
file, or LDAP; it leaves the authenticated name in `flow.metadata["proxyauth"]`), a header set by an SSO proxy
in front of the gateway, then the CIDR map of `identity.yaml`. The SSO header is removed from every request
whatever its source: a forged one must not reach the AI provider, and one from an untrusted address is ignored
and logged, never believed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from core.interaction import KEY, Interaction
from core.rulesfile import RulesError
from policy.identity import IdentityConfig
from policy.ruleset import load_identity

log = logging.getLogger(__name__)


class Identify:
    def __init__(self) -> None:
        self.config = IdentityConfig()

    def configure(self, updated: set[str]) -> None:
        if "gateway_rules" in updated:
            try:
                self.config = load_identity(Path(ctx.options.gateway_rules))
            except RulesError as e:
                raise OptionsError(str(e)) from None

    def rules_reloaded(self, rules) -> None:
        """Called by the rules reloader with a fully validated rule set."""
        self.config = rules.identity

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT that opens a tunnel to an AI host (Recognise marked it): who opens it."""
        self.requestheaders(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        header = self.config.trusted_header
        header_user = header_groups = ""
        if header is not None:
            header_user = flow.request.headers.pop(header.header, "")
            if header.groups_header:
                header_groups = flow.request.headers.pop(header.groups_header, "")
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None:
            return
        auth = flow.metadata.get("proxyauth")
        proxy_user = auth[0] if isinstance(auth, tuple) and auth else ""
        if (header_user or header_groups) and not self.config.trusts_header_from(it.client_addr):
            log.warning("identity header %s from untrusted address %s ignored (and removed)", header.header,
                        it.client_addr)
            header_user = header_groups = ""
        who = self.config.resolve(it.client_addr, proxy_user, header_user, header_groups)
        it.user, it.groups = who.user, sorted(who.groups)
