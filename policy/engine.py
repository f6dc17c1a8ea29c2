"""The policy engine: who is asking, for what, with which findings -> one `Decision`.

Precedence, in the words of docs/policy.md:
1. Rules are read top to bottom. The first rule in `mode: enforce` whose conditions all hold decides.
2. A rule in `mode: monitor` that matches decides nothing: it is recorded ("would block") and reading goes on.
   If nothing enforced decides otherwise than allow, the decision is `monitor`, so the audit shows the match.
3. A rule that needs DLP findings (a `findings` condition, or `action: redact`) cannot be judged when the
   inspection did not complete (errored, timed out, skipped, body not understood). Its fail mode for that
   reason decides: `open` skips the rule (and says so), `closed` blocks the request (and says so).
4. No rule decided: `defaults.shadow_ai` for a service that is neither sanctioned in the catalog nor named by
   any rule's `services`, else `defaults.action`.
5. Rules on findings `in: response` are left out of the request's decision: they are read, in the same order,
   when the answer has ended and its completion was scanned (`decide_response`).

Pure: no mitmproxy, so the same code answers in the proxy, in `gateway rules test` and in unit tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.catalog import Service
from core.exchange import Exchange
from policy.language import Policy, Rule, entity_of, in_networks, in_response

INSPECTED = "inspected"


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking: resolved by the identify stage (proxy auth, SSO header, network map) or just an address."""

    user: str = ""
    groups: frozenset[str] = frozenset()
    client_addr: str = ""


@dataclass(slots=True)
class Request:
    """What is asked: the service, the normalized exchange and what inspection found in it."""

    service: Service
    exchange: Exchange
    findings: Sequence[Any] = ()  # objects with .entity (or .entity_type) and .score: dlp.scanner.Finding
    inspection: str = INSPECTED  # anything else means the findings are not the whole truth
    headers: Mapping[str, str] = field(default_factory=dict)  # request headers, looked up by lower-case names

    @property
    def prompt_chars(self) -> int:
        return sum(len(p.text) for p in self.exchange.request_parts())

    @property
    def attachments(self) -> list:
        return [a for m in self.exchange.messages for a in m.attachments]


@dataclass(slots=True)
class Decision:
    action: str  # allow | monitor | redact | strip | warn | block
    rule: str = ""  # id of the deciding rule; "defaults" or "shadow_ai" when no rule matched
    mode: str = "enforce"  # enforce | monitor (monitor: the deciding rule is a monitored one, nothing enforced)
    reason: str = ""  # one line for the audit: what decided, and every monitored or failed-open rule on the way
    message: str = ""  # what the user is told (block and warn)
    redact_entities: list[str] = field(default_factory=list)
    reversible: bool = False
    strip_tools: list[str] = field(default_factory=list)  # names of the offered tools a strip removes
    fail: str = ""  # "open" or "closed" when a fail mode was exercised, else ""
    shadow_ai: bool = False


def is_shadow_ai(policy: Policy, service: Service) -> bool:
    return not service.sanctioned and service.id not in policy.named_services


def decide(policy: Policy, subject: Subject, request: Request) -> Decision:
    shadow = is_shadow_ai(policy, request.service)
    outcome, what, notes, monitored = _walk(policy, [r for r in policy.rules if not r.on_response], subject,
                                            request, shadow)
    if outcome is None and shadow:
        outcome = Decision(policy.defaults.shadow_ai, "shadow_ai", shadow_ai=True,
                           message=policy.defaults.message)
        what = f"shadow AI: {request.service.id} is not sanctioned and no rule names it: {outcome.action}"
    elif outcome is None:
        outcome = Decision(policy.defaults.action, "defaults", message=policy.defaults.message)
        what = f"no rule matched: default {outcome.action}"
    return _finish(outcome, what, notes, monitored)


def decide_response(policy: Policy, subject: Subject, request: Request) -> Decision | None:
    """The rules on findings `in: response`, once the completion was scanned (`request.findings` then holds the
    response-side ones too, `request.inspection` is the response scan's). None when none of them matched."""
    shadow = is_shadow_ai(policy, request.service)
    outcome, what, notes, monitored = _walk(policy, [r for r in policy.rules if r.on_response], subject, request,
                                            shadow)
    if outcome is None and monitored is None and not notes:
        return None
    if outcome is None:
        outcome, what = Decision("allow", shadow_ai=shadow), "no response rule enforced"
    return _finish(outcome, what, notes, monitored)


_NOT_CHECKED = {
    "unparsed": "the gateway cannot read this request's format",
    "skipped": "data inspection is switched off on the gateway",
}


def fail_closed_message(inspection: str) -> str:
    """What a user is told when a rule blocks because the request could not be checked: not their data's fault
    when the gateway's own scan failed, so they are told to try again."""
    why = _NOT_CHECKED.get(inspection, "the gateway's data check did not complete in time")
    return (f"The AI gateway could not check this request for data that must not leave the company ({why}), and "
            f"policy requires that check. Try again in a moment; if it keeps failing, contact the security team "
            f"with the reference.")


def subject_of(it: Any) -> Subject:
    """Who asks, from a core.interaction.Interaction (not imported: core names this module's types)."""
    return Subject(it.user, frozenset(it.groups), it.client_addr)


def answer_request(it: Any, inspection: str, headers: Mapping[str, str]) -> Request:
    """The request as the response-side rules see it: conditions are on what was asked, so the model is the one
    the client named (`it.stages.asked_model`), not the dated version the provider answers with (`gpt-4o` ->
    `gpt-4o-2024-08-06`)."""
    exchange = it.exchange
    asked = it.stages.asked_model
    if asked and asked != exchange.model:
        exchange = dataclasses.replace(exchange, model=asked)
    return Request(it.service, exchange, it.findings, inspection, headers)


def wants_response_scan(policy: Policy, subject: Subject, request: Request) -> bool:
    """Does a rule on findings `in: response` apply to this exchange, findings aside? Then its completion is
    scanned; otherwise the scan would be wasted work."""
    shadow = is_shadow_ai(policy, request.service)
    return any(_conditions_hold(r, subject, request, shadow, skip_findings=True)
               for r in policy.rules if r.on_response)


def findings_matter(policy: Policy, subject: Subject, request: Request, entities: Collection[str]) -> bool:
    """Could findings of these entity types change the request's enforced decision? No when no rule in
    `mode: enforce` that looks at findings, and whose other conditions hold, selects any of them before an
    enforced rule decides without findings. The proxy then decides without waiting for the DLP scan (the prompt
    goes out at once) and scans for the audit only: `entities` come from the prefilter, which names every entity
    type the scan could report, so the scan cannot change what was enforced. Monitored rules change nothing
    enforced: they are judged on the findings when the audit event is written."""
    shadow = is_shadow_ai(policy, request.service)
    for rule in policy.rules:
        if rule.on_response or rule.mode != "enforce":
            continue
        if not _conditions_hold(rule, subject, request, shadow, skip_findings=True):
            continue
        if not rule.needs_inspection:
            return False  # this rule decides, whatever is found
        selectors = [rule.when.findings.entities] if rule.when.findings is not None else []
        if rule.action == "redact":
            selectors.append(rule.redact_entities)
        if all(any(s is None or s.match(e) for e in entities) for s in selectors):
            return True
    return False


def _walk(policy: Policy, rules: list[Rule], subject: Subject, request: Request, shadow: bool
          ) -> tuple[Decision | None, str, list[str], Decision | None]:
    """The first enforced rule that matches (its outcome and summary), the notes on monitored and failed-open
    rules met on the way, and the first monitored outcome."""
    inspected = request.inspection == INSPECTED
    notes: list[str] = []
    monitored: Decision | None = None
    for rule in rules:
        if not _conditions_hold(rule, subject, request, shadow, skip_findings=not inspected):
            continue
        if rule.needs_inspection and not inspected:
            if rule.fail.of(request.inspection) == "open":
                notes.append(f"rule {rule.id} not applied: inspection {request.inspection} (fail open)")
                continue
            # Not the rule's own message: that one speaks of what was found, and nothing was.
            outcome = Decision("block", rule.id, rule.mode, fail="closed", shadow_ai=shadow,
                               message=fail_closed_message(request.inspection))
            what = f"block: inspection {request.inspection}, fail closed"
        else:
            outcome = _apply(rule, request, shadow, policy)
            what = _summary(outcome)
        if rule.mode == "monitor":
            notes.append(f"rule {rule.id} would {what} (mode: monitor)")
            monitored = monitored or outcome
            continue
        return outcome, f"rule {rule.id}: {what}", notes, monitored
    return None, "", notes, monitored


def _finish(outcome: Decision, what: str, notes: list[str], monitored: Decision | None) -> Decision:
    """An allow that a monitored rule would have changed is recorded as `monitor`, credited to that rule, so
    the audit finds every "would have" by decision and rule id."""
    if monitored is not None and outcome.action == "allow":
        outcome.action, outcome.mode, outcome.rule = "monitor", "monitor", monitored.rule
    outcome.reason = "; ".join([what, *notes])
    return outcome


def _apply(rule: Rule, request: Request, shadow: bool, policy: Policy) -> Decision:
    d = Decision(rule.action, rule.id, rule.mode, shadow_ai=shadow,
                 message=rule.message or rule.description or policy.defaults.message)
    if rule.action == "redact":
        d.redact_entities = _redact_entities(rule, request)
        d.reversible = rule.reversible
    elif rule.action == "strip":
        d.strip_tools = _strip_tools(rule, request)
    return d


def _strip_tools(rule: Rule, request: Request) -> list[str]:
    """The names of the offered tools the rule's tools condition names (by name and server)."""
    return sorted({t.name for t in request.exchange.tools if rule.when.tools.counts(t)})


def _redact_entities(rule: Rule, request: Request) -> list[str]:
    """The entity types found that the rule redacts: its `redact.entities`, else what its findings condition
    selects, else every finding."""
    selector = rule.redact_entities or (rule.when.findings.entities if rule.when.findings else None)
    min_score = rule.when.findings.min_score if rule.when.findings else 0.0
    return sorted({entity_of(f) for f in request.findings if not in_response(f)
                   and f.score >= min_score and (selector is None or selector.match(entity_of(f)))})


def _summary(d: Decision) -> str:
    if d.action == "redact":
        return f"redact {', '.join(d.redact_entities)}{' (reversible)' if d.reversible else ''}"
    if d.action == "strip":
        return f"strip tools {', '.join(d.strip_tools)}"
    return d.action


def _conditions_hold(rule: Rule, subject: Subject, request: Request, shadow: bool, skip_findings: bool) -> bool:
    """Every condition of the rule; findings are left out when they cannot be trusted (the fail mode decides)."""
    who, when, svc, x = rule.who, rule.when, request.service, request.exchange
    if who.users is not None and not (subject.user and who.users.match(subject.user)):
        return False
    if who.groups is not None and not (who.groups & subject.groups):
        return False
    if who.sources is not None and not in_networks(subject.client_addr, who.sources):
        return False
    if when.services is not None and svc.id not in when.services:
        return False
    if when.categories is not None and svc.category not in when.categories:
        return False
    if when.sanctioned is not None and svc.sanctioned != when.sanctioned:
        return False
    if when.shadow_ai is not None and shadow != when.shadow_ai:
        return False
    if when.operations is not None and not when.operations.match(x.operation):
        return False
    if when.models is not None and not (x.model and when.models.match(x.model)):
        return False
    if when.prompt_chars is not None and not when.prompt_chars.contains(request.prompt_chars):
        return False
    if when.attachment_bytes is not None and not when.attachment_bytes.contains(
            sum(a.size for a in request.attachments)):
        return False
    if when.attachment_types is not None and not any(
            when.attachment_types.match(a.mime_type) or when.attachment_types.match(a.kind)
            for a in request.attachments):
        return False
    if when.headers is not None and not all(name in request.headers and values.match(request.headers[name])
                                            for name, values in when.headers):
        return False
    if when.tools is not None and not when.tools.holds(x):
        return False
    if when.findings is not None and not skip_findings:
        enforced = rule.mode == "enforce"
        selected = sum(1 for f in request.findings if when.findings.selects(f, enforced))
        if selected < when.findings.min_count:
            return False
    if rule.action == "redact" and not skip_findings and not _redact_entities(rule, request):
        return False  # a redact rule with nothing to redact does not match: later rules still apply
    if rule.action == "strip" and not _strip_tools(rule, request):
        return False  # the tool is only called in the history, not offered: nothing to strip, later rules apply
    return True

