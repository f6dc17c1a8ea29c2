"""Recognise AI traffic: decrypt only hosts in the AI endpoint catalog, tunnel everything else untouched.

The decision is taken at the TLS ClientHello, before any certificate is forged: a non-AI connection is passed
through byte for byte and the client sees the real server certificate. Catalog hosts on the do-not-decrypt list
(certificate-pinned apps) are tunnelled too, but logged as AI use. A decrypted request to a catalog host gets an
`Interaction` in its metadata: that is what marks a flow as AI traffic for the addons after this one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mitmproxy import ctx, http, tls
from mitmproxy.exceptions import OptionsError

from core.catalog import Catalog
from core.interaction import KEY, Interaction
from core.rulesfile import RulesError

log = logging.getLogger(__name__)

SHIPPED_RULES = Path(__file__).resolve().parent.parent / "rules"


class Recognise:
    def __init__(self) -> None:
        self.catalog: Catalog | None = None

    def load(self, loader) -> None:
        loader.add_option("gateway_rules", str, str(SHIPPED_RULES),
                          "Folder of the gateway's rules files (endpoints.yaml, policy, recognizers).")

    def configure(self, updated: set[str]) -> None:
        if "gateway_rules" in updated:
            try:
                self.catalog = Catalog.load(Path(ctx.options.gateway_rules) / "endpoints.yaml")
            except RulesError as e:
                raise OptionsError(str(e)) from None

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        assert self.catalog is not None
        server = data.context.server.address
        host = data.client_hello.sni or (server[0] if server else None)
        match = self.catalog.match(host)
        if match is None:
            data.ignore_connection = True
        elif not match.decrypt:
            data.ignore_connection = True
            log.info("AI connection tunnelled without inspection: %s (%s) from %s: %s", host, match.service.id,
                     data.context.client.peername[0], match.reason)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        assert self.catalog is not None
        # The name the TLS connection was intercepted for; the request's own host for plain HTTP.
        host = flow.client_conn.sni or flow.request.host
        match = self.catalog.match(host)
        if match is None or not match.service.covers_path(flow.request.path):
            return
        flow.metadata[KEY] = Interaction(
            service=match.service, client_addr=flow.client_conn.peername[0], host=host,
            method=flow.request.method, path=flow.request.path,
        )
