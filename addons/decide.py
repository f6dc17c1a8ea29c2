"""Decide and enforce: run the policy on each AI request after inspection, before anything goes upstream.

The decision is taken in the `request` hook, after the inspect stage has filled the findings and before the
server connection is used, so a streamed request is blocked before a single byte is sent or received. The
outcome goes on the Interaction (decision, reason, rule id, redaction plan) for the redact and audit stages.

What the client sees (policy/enforcement.py):
- block: an error in the provider's own shape and status, or an HTML page for browsers and consumer apps; both
  quote the audit event id as a reference.
- warn: browsers get a page with a "continue" button and an optional justification; continuing is remembered
  per user, service and rule for `gateway_warn_ttl` seconds and the justification is audited with the continue
  request and with each request it lets through. When the proxy does not know the user, the continue is bound to
  the browser that clicked it by a cookie (enforcement.ACK_COOKIE; never forwarded upstream), not to its address,
  which users behind a NAT share. API clients, which cannot click, are let through with an
  `x-ai-gateway-warning` response header.

Rules on findings `in: response` are judged again when the answer has ended and the inspect stage scanned its
completion (`response`, or `error` when the client hung up first). A non-streamed answer such a rule blocks is
replaced by the provider's error shape before the client sees it; a streamed one has already been delivered, so
the audit records what the rule would have done (decision `monitor`, "would block (answer already streamed)").
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from addons.recognise import TUNNEL
from core.interaction import KEY, Interaction
from policy import enforcement
from policy.engine import (Decision, Request, Subject, decide, decide_response, findings_matter,
                           wants_response_scan)
from policy.language import Policy
from policy.ruleset import RuleSet

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


class Decide:
    def __init__(self) -> None:
        self.policy = Policy()
        self.pending: dict[str, _Pending] = {}
        self.acks: dict[tuple[str, str, str], _Ack] = {}
        self.browsers: dict[str, float] = {}  # ack cookie values the gateway issued -> when they expire

    def load(self, loader) -> None:
        loader.add_option("gateway_warn_ttl", int, 3600,
                          "Seconds a user's 'continue' past a policy warning lasts (per user, service and rule).")

    def configure(self, updated: set[str]) -> None:
        if "gateway_warn_ttl" in updated and ctx.options.gateway_warn_ttl < 0:
            raise OptionsError("gateway_warn_ttl must be >= 0")

    def rules_loaded(self, rules: RuleSet) -> None:
        self.policy = rules.policy

    def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None:  # not AI, or already answered (unparseable body blocked)
            return
        try:
            self._decide(flow, it)
        except Exception as e:  # mitmproxy would log it and forward the request undecided: fail closed instead
            log.exception("policy decision failed")
            refuse(flow, it, f"policy decision failed ({type(e).__name__}): blocked", "The AI gateway could not "
                   "apply its policy to this request, so it was not sent.")

    def _decide(self, flow: http.HTTPFlow, it: Interaction) -> None:
        if flow.request.path.split("?")[0] == enforcement.CONTINUE_PATH:
            self._continue(flow, it)
            return
        provider = _provider(it)
        # A request sent before its scan ends is decided by the policy that found its findings cannot matter
        # (findings_matter), even should the rules be reloaded in between.
        policy = (it.stages.sent_under or self.policy) if it.inspection == "deferred" else self.policy
        d = self.evaluate(it, flow.request.headers, policy)
        it.stages.asked_model = it.exchange.model
        it.decision, it.reason, it.rule_id = d.action, d.reason, d.rule
        if it.inspection == "deferred":
            it.stages.sent_under, it.stages.deferred_decision = policy, d
            it.reason += "; decided before the DLP scan ended (no rule in force acts on what it could find)"
        if d.action == "redact":
            it.redact_entities, it.reversible = d.redact_entities, d.reversible
        elif d.action == "block":
            self._block(flow, it, d, provider)
        elif d.action == "warn":
            self._warn(flow, it, d, provider)

    def evaluate(self, it: Interaction, headers, policy: Policy | None = None) -> Decision:
        """The policy's decision on an interaction, enforcing nothing. Public for stages that can only record it
        (WebSocket turns, whose messages are relayed as they come)."""
        return decide(policy or self.policy, _subject(it),
                      Request(it.service, it.exchange, it.findings, self._inspection(it), _rule_headers(headers)))

    def findings_matter(self, flow: http.HTTPFlow, it: Interaction, entities: frozenset[str]) -> bool:
        """Whether findings of these entity types could change what the policy enforces on this request
        (policy.engine.findings_matter): if not, the inspect stage lets the request go before its scan ends."""
        request = Request(it.service, it.exchange, (), headers=flow.request.headers)
        if findings_matter(self.policy, _subject(it), request, entities):
            return True
        it.stages.sent_under = self.policy  # the request is decided by this policy (`_decide`)
        return False

    def wants_response_scan(self, flow: http.HTTPFlow) -> bool:
        """Whether a rule on findings `in: response` applies to this flow's interaction (findings aside)."""
        if not self.policy.response_rules:
            return False
        it: Interaction = flow.metadata[KEY]
        return wants_response_scan(self.policy, _subject(it),
                                   self._answer_request(flow, it, it.inspection))

    @staticmethod
    def _answer_request(flow: http.HTTPFlow, it: Interaction, inspection: str) -> Request:
        """The request as the response-side rules see it: conditions are on what was asked, so the model is the
        one the client named, not the dated version the provider answers with (`gpt-4o` -> `gpt-4o-2024-08-06`)."""
        exchange = it.exchange
        asked = it.stages.asked_model
        if asked and asked != exchange.model:
            exchange = dataclasses.replace(exchange, model=asked)
        return Request(it.service, exchange, it.findings, inspection, flow.request.headers)

    def response(self, flow: http.HTTPFlow) -> None:
        self._judge_findings(flow)
        self._judge_answer(flow, enforce=True)

    def error(self, flow: http.HTTPFlow) -> None:
        self._judge_findings(flow)
        self._judge_answer(flow, enforce=False)

    def _judge_findings(self, flow: http.HTTPFlow) -> None:
        """A request sent before its DLP scan ended, judged again on the findings (same policy) for the audit:
        the monitored rules they match are recorded ("would redact"). What was enforced cannot change, since the
        prefilter named every entity type the scan could find and no enforced rule looked at them; should it
        differ all the same, that is a gateway bug, and the audit and log say so."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or it.stages.deferred_decision is None or it.audited:
            return
        sent, it.stages.deferred_decision = it.stages.deferred_decision, None
        if it.inspection != "inspected":  # the reason is in the warnings; fail modes cannot act any more
            it.reason += f"; the DLP scan after sending {it.inspection}"
            return
        d = self.evaluate(it, flow.request.headers, it.stages.sent_under)
        if _enforced(d) == _enforced(sent):  # monitored rules may differ: their "would" is what the audit gains
            after = it.reason[len(sent.reason):] if it.reason.startswith(sent.reason) else ""
            it.decision, it.rule_id, it.reason = d.action, d.rule, d.reason + after
            return
        log.error("BUG: %s %s was decided before its DLP scan ended, and the findings make the policy say %s (%s)",
                  it.service.id, it.event_id, d.action, d.reason)
        it.reason += (f"; BUG: on the findings of the scan that ran after the decision, the policy says {d.action} "
                      f"({d.reason}), but the decision had been enforced")

    def _judge_answer(self, flow: http.HTTPFlow, enforce: bool) -> None:
        """The response-side rules, once the completion was scanned. Only a non-streamed answer can still be
        replaced; whatever cannot be enforced is recorded as what the rule would have done."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or not it.response_inspection or it.audited or it.stages.answer_judged:
            return
        it.stages.answer_judged = True
        d = decide_response(self.policy, _subject(it),
                            self._answer_request(flow, it, it.response_inspection))
        if d is None:
            return
        reason = d.reason
        if d.action == "block" and d.mode == "enforce":
            if enforce and flow.response is not None and not flow.response.stream:
                self._block(flow, it, d, _provider(it))
                it.decision, it.rule_id, it.status = "block", d.rule, flow.response.status_code
            else:
                reason = f"would block (answer already {'streamed' if enforce else 'sent'}): {reason}"
                d.action = "monitor"
        if d.action == "monitor" and it.decision == "allow":
            it.decision, it.rule_id = "monitor", d.rule
        it.reason = f"{it.reason}; answer: {reason}" if it.reason else f"answer: {reason}"

    @staticmethod
    def _inspection(it: Interaction) -> str:
        """Findings are the whole truth only when the body was understood and scanned. A request with no text at
        all (an empty body, a model listing) has nothing to find, so it counts as inspected."""
        if it.exchange.operation == TUNNEL:
            return "skipped"  # nothing inside a tunnel is seen: not "nothing to find"
        if not it.exchange.read and it.request_bytes > 0:
            return "unparsed"  # opaque: whatever was scanned, the body's text was not read, findings may miss things
        if it.inspection == "skipped" and not it.exchange.request_parts():
            return "inspected"
        if it.inspection == "deferred":  # no rule in force acts on anything the scan could find: judged on none
            return "inspected"
        return it.inspection

    def _block(self, flow: http.HTTPFlow, it: Interaction, d: Decision, provider: str | None) -> None:
        text = enforcement.user_message("block", d.rule, d.message, it.event_id)
        if enforcement.wants_html(flow.request.headers.get("accept", ""), it.service, provider):
            reply = enforcement.block_page(it.service, d.rule, d.message, it.event_id)
        else:
            reply = enforcement.api_error(enforcement.dialect(provider, it.service), text, it.event_id)
        flow.response = http.Response.make(reply.status, reply.body, reply.headers)
        log.info("blocked %s %s for %s: %s", it.service.id, it.exchange.operation, it.user or it.client_addr,
                 d.reason)

    def _warn(self, flow: http.HTTPFlow, it: Interaction, d: Decision, provider: str | None) -> None:
        now = time.monotonic()
        ack = self.acks.get((_acker(it), it.service.id, d.rule))
        if ack is not None and ack.expires > now:
            it.justification = ack.justification
            it.reason += "; the user continued past the warning"
            return
        if enforcement.wants_html(flow.request.headers.get("accept", ""), it.service, provider):
            self._prune(now)
            token = secrets.token_urlsafe(18)
            self.pending[token] = _Pending(it.user or it.client_addr, it.service.id, d.rule, now + PENDING_TTL)
            reply = enforcement.warn_page(it.service, d.rule, d.message, it.event_id, token,
                                          flow.request.path if flow.request.method == "GET" else "/")
            flow.response = http.Response.make(reply.status, reply.body, reply.headers)
            it.reason += "; warning page shown"
            return
        it.stages.warning = enforcement.user_message("warn", d.rule, d.message, it.event_id)
        it.reason += "; API client let through with a warning header"

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
            it.decision, it.reason = "block", "warning continue refused: unknown, expired or someone else's token"
            flow.response = http.Response.make(403, b"This confirmation link has expired: reload the page.",
                                               {"content-type": "text/plain; charset=utf-8"})
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
        it.decision, it.rule_id, it.justification = "warn", pending.rule, justification
        it.reason = f"rule {pending.rule}: the user chose to continue past the warning"
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


def _enforced(d: Decision) -> tuple:
    """What a decision does to the request: a monitored rule's "would" does nothing, so monitor is allow."""
    if d.action in ("allow", "monitor"):
        return ("allow",)
    return d.action, d.rule, tuple(d.redact_entities), d.reversible


def _rule_headers(headers) -> Mapping[str, str]:
    """Headers as the rules look them up (lower-case names): mitmproxy's are case-insensitive already, and read
    as they are (a copy costs more than the policy decision); a plain dict is copied with its names lowered."""
    return headers if isinstance(headers, http.Headers) else {k.lower(): v for k, v in headers.items()}


def _subject(it: Interaction) -> Subject:
    return Subject(it.user, frozenset(it.groups), it.client_addr)


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


def _provider(it: Interaction) -> str | None:
    """The name of the provider parser that understood the request (its error shapes are the client's)."""
    parsed = it.stages.parsed
    return parsed.provider.name if parsed is not None and parsed.provider is not None else None


def refuse(flow: http.HTTPFlow, it: Interaction, why: str,
           message: str = "Sensitive data was found that could not be redacted from this request, so it was not "
                          "sent.") -> None:
    """Fail closed: the client gets a block answer in its provider's error shape, the audit the reason."""
    it.decision = "block"
    it.reason = f"{it.reason}; {why}" if it.reason else why
    text = enforcement.user_message("block", it.rule_id or "gateway", message, it.event_id)
    reply = enforcement.api_error(enforcement.dialect(_provider(it), it.service), text, it.event_id)
    flow.response = http.Response.make(reply.status, reply.body, reply.headers)
