"""Enforce a `warn` decision: a page with a "continue" button for browsers, a header for API clients.

Decide takes the decision (`Interaction.stages.decision`); this stage carries it out:
- browsers and consumer apps get a page (policy/enforcement.py) with a "continue" button and an optional
  justification. Continuing is remembered per user, service and rule for `gateway_warn_ttl` seconds, and the
  justification is audited with the continue request and with each request it lets through. When the proxy does
  not know the user, the continue is bound to the browser that clicked it by a cookie (enforcement.ACK_COOKIE,
  taken off by Recognise, never forwarded upstream), not to its address, which users behind a NAT share;
- API clients, which cannot click, are let through with an `x-ai-gateway-warning` response header.

What is remembered is bounded (pages shown, acknowledgements, browsers): a flood of warn pages or continues must
not grow memory without bound.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from addons.decide import provider_of, refuse
from core.interaction import KEY, Interaction
from policy import enforcement
from policy.engine import Decision

log = logging.getLogger(__name__)

PENDING_TTL = 600.0  # seconds a warn page's continue token stays valid
MAX_PENDING = 10_000  # unanswered warn pages remembered at most (the oldest are forgotten first)
MAX_ACKS = 100_000  # acknowledgements remembered at most (the oldest are forgotten first)
MAX_JUSTIFICATION = 1000
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{24}")  # secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A warn page shown: its continue token is bound to who saw it, for which service and rule."""

    who: str
    service: str
    rule: str
    expires: float


@dataclass(frozen=True, slots=True)
class _Ack:
    justification: str
    expires: float


class Warn:
    def __init__(self) -> None:
        self.pending: dict[str, _Pending] = {}
        self.acks: dict[tuple[str, str, str], _Ack] = {}
        self.browsers: dict[str, float] = {}  # ack cookie values the gateway issued -> when they expire

    def load(self, loader) -> None:
        loader.add_option("gateway_warn_ttl", int, 3600,
                          "Seconds a user's 'continue' past a policy warning lasts (per user, service and rule).")

    def configure(self, updated: set[str]) -> None:
        if "gateway_warn_ttl" in updated and ctx.options.gateway_warn_ttl < 0:
            raise OptionsError("gateway_warn_ttl must be >= 0")

    def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None:
            return
        continuing = flow.request.path.split("?")[0] == enforcement.CONTINUE_PATH
        d = it.stages.decision
        if not continuing and (it.decision != "warn" or d is None):
            return
        try:
            if continuing:
                self._continue(flow, it)
            else:
                self._warn(flow, it, d, provider_of(it))
        except Exception as e:  # a warning that cannot be shown must not let the request out unwarned
            log.exception("warning failed")
            refuse(flow, it, f"the warning could not be shown ({type(e).__name__}): blocked",
                   "The AI gateway could not show its warning for this request, so it was not sent.")

    def _warn(self, flow: http.HTTPFlow, it: Interaction, d: Decision, provider: str | None) -> None:
        now = time.monotonic()
        ack = self.acks.get((_acker(it), it.service.id, d.rule))
        if ack is not None and ack.expires > now:
            it.justification = ack.justification
            it.note("the user continued past the warning")
            return
        if enforcement.wants_html(flow.request.headers.get("accept", ""), it.service, provider):
            self._prune(now)
            token = secrets.token_urlsafe(18)
            self.pending[token] = _Pending(it.user or it.client_addr, it.service.id, d.rule, now + PENDING_TTL)
            reply = enforcement.warn_page(it.service, d.rule, d.message, it.event_id, token,
                                          flow.request.path if flow.request.method == "GET" else "/")
            flow.response = http.Response.make(reply.status, reply.body, reply.headers)
            it.note("warning page shown")
            return
        it.stages.warning = enforcement.user_message("warn", d.rule, d.message, it.event_id)
        it.note("API client let through with a warning header")

    def _continue(self, flow: http.HTTPFlow, it: Interaction) -> None:
        """The warn page's form: remember the acknowledgement and send the browser back where it was going."""
        try:
            form = urllib.parse.parse_qs(flow.request.get_text(strict=False) or "", max_num_fields=10)
        except ValueError:  # more fields than the form has: not our page's submission
            form = {}
        token = (form.get("token") or [""])[0]
        target = (form.get("target") or ["/"])[0]
        justification = " ".join((form.get("justification") or [""])[0].split())[:MAX_JUSTIFICATION]
        it.exchange.operation = "policy.continue"
        pending = self.pending.pop(token, None)
        now = time.monotonic()
        who = it.user or it.client_addr
        if pending is None or pending.expires <= now or pending.who != who or pending.service != it.service.id:
            it.decide("block", "warning continue refused: unknown, expired or someone else's token")
            reply = enforcement.plain_refusal("This confirmation link has expired: reload the page.")
            flow.response = http.Response.make(reply.status, reply.body, reply.headers)
            return
        headers = {"location": target, "cache-control": "no-store"}
        acker = _acker(it)
        if not it.user:  # known only by address: the acknowledgement belongs to this browser
            browser = _browser(it)
            if browser is None or self.browsers.get(browser, 0) <= now:  # only ids the gateway issued are kept
                browser = secrets.token_urlsafe(18)
            acker = f"browser:{browser}"
            self.browsers[browser] = now + ctx.options.gateway_warn_ttl
            self._prune(now)
            headers["set-cookie"] = (f"{enforcement.ACK_COOKIE}={browser}; Path=/; Max-Age="
                                     f"{ctx.options.gateway_warn_ttl}; Secure; HttpOnly; SameSite=Lax")
        self.acks[(acker, pending.service, pending.rule)] = _Ack(justification,
                                                                            now + ctx.options.gateway_warn_ttl)
        it.justification = justification
        it.decide("warn", f"rule {pending.rule}: the user chose to continue past the warning", pending.rule)
        if not target.startswith("/") or target.startswith("//"):  # never redirect off the warned host
            headers["location"] = "/"
        flow.response = http.Response.make(303, b"", headers)

    def _prune(self, now: float) -> None:
        for token in [t for t, p in self.pending.items() if p.expires <= now]:
            del self.pending[token]
        while len(self.pending) >= MAX_PENDING:  # a flood of warn pages must not grow memory without bound
            del self.pending[next(iter(self.pending))]
        for key in [k for k, a in self.acks.items() if a.expires <= now]:
            del self.acks[key]
        for browser in [b for b, expires in self.browsers.items() if expires <= now]:
            del self.browsers[browser]
        for remembered in (self.acks, self.browsers):  # continues in a loop must not grow memory without bound
            while len(remembered) >= MAX_ACKS:
                del remembered[next(iter(remembered))]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        warning = it.stages.warning if it is not None else None
        if warning and flow.response is not None:  # header values must be ASCII
            flow.response.headers[enforcement.WARNING_HEADER] = warning.encode("ascii", "replace").decode()


def _acker(it: Interaction) -> str:
    """Who an acknowledgement of a warning belongs to: the user, or else the browser holding the cookie (a
    request without one has acknowledged nothing)."""
    if it.user:
        return f"user:{it.user}"
    browser = _browser(it)
    return f"browser:{browser}" if browser else ""


def _browser(it: Interaction) -> str | None:
    """The request's ack cookie value (Recognise took it off the request), if it has the shape of one we issue."""
    value = it.stages.browser
    return value if value is not None and _BROWSER_ID.fullmatch(value) else None
