"""Which tool calls in a model's answer the policy forbids (docs/policy.md, "Tool calls in answers").

A call is judged alone, as if the request had offered that one tool and carried that one call: the same who,
service, operation, model and headers as the request, no other tools, no findings. So the rules that block a
request offering a tool or carrying such a call (names, servers, `args` conditions), and the rules that strip a
tool from what the model is offered, refuse its call in an answer too: a model may call what it was not offered,
and arguments only exist in calls. The first-match and monitor semantics are the engine's own.

When the request had findings, the call is judged a second time carrying them, so that a rule with both a `tools`
and a `findings` condition ("no send_email after an injected tool result") refuses the call of the tool it took
out of that turn's offer: the injected model calling it anyway is the case the rule is for. Either judgement can
refuse (an enforced refusal wins over a monitored one): a rule that matches on the findings alone, with no `tools`
condition (redact the PII), takes nothing away from the tool rules after it.

Pure: no mitmproxy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.catalog import Service
from core.exchange import Exchange, Message, ToolCall, ToolDefinition
from policy.engine import INSPECTED, Decision, Request, Subject, decide
from policy.language import Policy


def forbidding(policy: Policy, subject: Subject, service: Service, exchange: Exchange, model: str,
               headers: Mapping[str, str], call: ToolCall, findings: Sequence = ()) -> Decision | None:
    """The decision of the rule with a `tools` condition that refuses this call (its `mode` says whether it is
    enforced or only recorded), None when the policy lets it through. `findings`: the request's (see above)."""
    probe = Exchange(service=exchange.service, operation=exchange.operation, model=model, stream=exchange.stream,
                     tools=[ToolDefinition(call.name, server=call.server)],
                     messages=[Message("assistant", tool_calls=[call])])
    judged = [(), findings] if findings else [()]
    refusals = [d for found in judged
                if (d := _refusal(policy, subject, Request(service, probe, found, INSPECTED, headers), call))]
    return next((d for d in refusals if d.mode == "enforce"), refusals[0] if refusals else None)


def _refusal(policy: Policy, subject: Subject, request: Request, call: ToolCall) -> Decision | None:
    d = decide(policy, subject, request)
    rule = next((r for r in policy.rules if r.id == d.rule), None)
    if rule is None or rule.when.tools is None or rule.action not in ("block", "strip"):
        return None
    if d.mode == "enforce" and not (d.action == "block" or (d.action == "strip" and call.name in d.strip_tools)):
        return None
    return d
