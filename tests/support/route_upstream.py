"""Test-only mitmproxy addon: send connections for chosen hosts to fake upstreams on 127.0.0.1.

`--set test_upstream=api.openai.com=8443,api.anthropic.com=8443` redirects the server connection while SNI and the
Host header keep the real name (docs/stack.md), so the gateway recognises and decrypts the real AI host exactly as
in production, and the fake upstream's certificate (signed by the test CA) is verified upstream.
"""

from mitmproxy import ctx
from mitmproxy.proxy import server_hooks


class RouteUpstream:
    def __init__(self):
        self.routes: dict[str, int] = {}

    def load(self, loader):
        loader.add_option("test_upstream", str, "", "host=port,... routed to 127.0.0.1:port")

    def configure(self, updated):
        if "test_upstream" in updated:
            self.routes = {}
            for item in filter(None, ctx.options.test_upstream.split(",")):
                host, _, port = item.rpartition("=")
                self.routes[host.strip().lower()] = int(port)

    def server_connect(self, data: server_hooks.ServerConnectionHookData):
        host = data.server.address[0] if data.server.address else None
        if host and host.lower() in self.routes:
            data.server.address = ("127.0.0.1", self.routes[host.lower()])


addons = [RouteUpstream()]
