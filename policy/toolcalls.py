"""Which tool calls in a model's answer the policy forbids (docs/policy.md, "Tool calls in answers").

A call is judged alone, as if the request had offered that one tool and carried that one call: the same who,
service, operation, model and headers as the request, no other tools, no findings. So the rules that block a
request offering a tool or carrying such a call (names, servers, `args` conditions), and the rules that strip a
tool from what the model is offered, refuse its call in an answer too: a model may call what it was not offered,
and arguments only exist in calls. The first-match and monitor semantics are the engine's own.

Pure: no mitmproxy.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.catalog import Service
from core.exchange import Exchange, Message, ToolCall, ToolDefinition
from policy.engine import INSPECTED, Decision, Request, Subject, decide
from policy.language import Policy


def forbidding(policy: Policy, subject: Subject, service: Service, exchange: Exchange, model: str,
               headers: Mapping[str, str], call: ToolCall) -> Decision | None:
    """The decision of the rule with a `tools` condition that refuses this call (its `mode` says whether it is
    enforced or only recorded), None when the policy lets it through."""
    probe = Exchange(service=exchange.service, operation=exchange.operation, model=model, stream=exchange.stream,
                     tools=[ToolDefinition(call.name, server=call.server)],
                     messages=[Message("assistant", tool_calls=[call])])
    d = decide(policy, subject, Request(service, probe, (), INSPECTED, headers))
    rule = next((r for r in policy.rules if r.id == d.rule), None)
    if rule is None or rule.when.tools is None or rule.action not in ("block", "strip"):
        return None
    if d.mode == "enforce" and not (d.action == "block" or (d.action == "strip" and call.name in d.strip_tools)):
        return None
    return d
