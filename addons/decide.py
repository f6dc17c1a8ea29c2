"""Decide and enforce: run the policy on each AI request after inspection, before anything goes upstream.

The decision is taken in the `request` hook, after the inspect stage has filled the findings and before the
server connection is used, so a streamed request is blocked before a single byte is sent or received. The
outcome goes on the Interaction (decision, reason, rule id, redaction plan) for the redact and audit stages.

What the client sees (policy/enforcement.py) on a block: an error in the provider's own shape and status, or an
HTML page for browsers and consumer apps; both quote the audit event id as a reference. A warn is carried out by
the warn stage (addons/warn.py), a redaction by the redact stage, both from `Interaction.stages.decision`.

Rules on findings `in: response` are judged again when the answer has ended and the inspect stage scanned its
completion (`response`, or `error` when the client hung up first). A non-streamed answer such a rule blocks is
replaced by the provider's error shape before the client sees it; a streamed one has already been delivered, so
the audit records what the rule would have done (decision `monitor`, "would block (answer already streamed)").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mitmproxy import http

from addons.recognise import TUNNEL
from core.interaction import KEY, Interaction
from policy import enforcement
from policy.engine import Decision, Request, answer_request, decide, decide_response, subject_of
from policy.language import Policy
from policy.ruleset import RuleSet

log = logging.getLogger(__name__)


class Decide:
    def __init__(self) -> None:
        self.policy = Policy()

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
            return  # the warn page's own form: the warn stage's
        provider = provider_of(it)
        # A request sent before its scan ends is decided by the policy that found its findings cannot matter
        # (findings_matter), even should the rules be reloaded in between.
        policy = (it.stages.sent_under or self.policy) if it.inspection == "deferred" else self.policy
        d = self.evaluate(it, flow.request.headers, policy)
        it.stages.asked_model = it.exchange.model
        it.decide(d.action, d.reason, d.rule)
        it.stages.decision = d
        if it.inspection == "deferred":
            it.stages.sent_under, it.stages.deferred_decision = policy, d
            it.note("decided before the DLP scan ended (no rule in force acts on what it could find)")
        if d.action == "redact":
            it.redact_entities, it.reversible = d.redact_entities, d.reversible
        elif d.action == "block":
            self._block(flow, it, d, provider)

    def ai_turn(self, it: Interaction, headers: dict[str, str]) -> None:
        """A WebSocket turn (addons.hooks.AiTurnHook), already relayed, scanned by now: the policy's outcome is
        recorded, and anything stronger than monitor is what the rule *would* have done."""
        try:
            d = self.evaluate(it, headers)
        except Exception as e:  # a bug here must cost the judgement, never the audit event
            log.exception("WebSocket turn %s not judged", it.event_id)
            it.inspection = "errored"
            it.exchange.warn(f"turn not judged: {type(e).__name__}: {str(e)[:200]}")
            return
        if d.action in ("allow", "monitor"):
            it.decide(d.action, d.reason, d.rule)
        else:
            it.decide("monitor", f"would {d.action} (not enforced on a WebSocket): {d.reason}", d.rule)

    def evaluate(self, it: Interaction, headers, policy: Policy | None = None) -> Decision:
        """The policy's decision on an interaction, enforcing nothing."""
        return decide(policy or self.policy, subject_of(it),
                      Request(it.service, it.exchange, it.findings, self._inspection(it), _rule_headers(headers)))

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
            it.note(f"the DLP scan after sending {it.inspection}")
            return
        d = self.evaluate(it, flow.request.headers, it.stages.sent_under)
        if _enforced(d) == _enforced(sent):  # monitored rules may differ: their "would" is what the audit gains
            after = it.reasons[1:]  # the first is the decision's own (`_decide`), the others what came of it
            it.decide(d.action, d.reason, d.rule)
            it.reasons += after
            return
        log.error("BUG: %s %s was decided before its DLP scan ended, and the findings make the policy say %s (%s)",
                  it.service.id, it.event_id, d.action, d.reason)
        it.note(f"BUG: on the findings of the scan that ran after the decision, the policy says {d.action} "
                f"({d.reason}), but the decision had been enforced")

    def _judge_answer(self, flow: http.HTTPFlow, enforce: bool) -> None:
        """The response-side rules, once the completion was scanned. Only a non-streamed answer can still be
        replaced; whatever cannot be enforced is recorded as what the rule would have done."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or not it.response_inspection or it.audited or it.stages.answer_judged:
            return
        it.stages.answer_judged = True
        d = decide_response(self.policy, subject_of(it),
                            answer_request(it, it.response_inspection, flow.request.headers))
        if d is None:
            return
        reason = d.reason
        if d.action == "block" and d.mode == "enforce":
            if enforce and flow.response is not None and not flow.response.stream:
                self._block(flow, it, d, provider_of(it))
                it.decide("block", rule_id=d.rule)
                it.status = flow.response.status_code
            else:
                reason = f"would block (answer already {'streamed' if enforce else 'sent'}): {reason}"
                d.action = "monitor"
        if d.action == "monitor" and it.decision == "allow":
            it.decide("monitor", rule_id=d.rule)
        it.note(f"answer: {reason}")

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

def _enforced(d: Decision) -> tuple:
    """What a decision does to the request: a monitored rule's "would" does nothing, so monitor is allow."""
    if d.action in ("allow", "monitor"):
        return ("allow",)
    return d.action, d.rule, tuple(d.redact_entities), d.reversible


def _rule_headers(headers) -> Mapping[str, str]:
    """Headers as the rules look them up (lower-case names): mitmproxy's are case-insensitive already, and read
    as they are (a copy costs more than the policy decision); a plain dict is copied with its names lowered."""
    return headers if isinstance(headers, http.Headers) else {k.lower(): v for k, v in headers.items()}


def provider_of(it: Interaction) -> str | None:
    """The name of the provider parser that understood the request (its error shapes are the client's)."""
    parsed = it.stages.parsed
    return parsed.provider.name if parsed is not None and parsed.provider is not None else None


def refuse(flow: http.HTTPFlow, it: Interaction, why: str,
           message: str = "Sensitive data was found that could not be redacted from this request, so it was not "
                          "sent.") -> None:
    """Fail closed: the client gets a block answer in its provider's error shape, the audit the reason."""
    it.decide("block")
    it.note(why)
    text = enforcement.user_message("block", it.rule_id or "gateway", message, it.event_id)
    reply = enforcement.api_error(enforcement.dialect(provider_of(it), it.service), text, it.event_id)
    flow.response = http.Response.make(reply.status, reply.body, reply.headers)
