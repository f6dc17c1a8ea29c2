"""Which tools of an MCP server the policy forbids: those a `tools/list` answer loses, and whose `tools/call` is
refused even when a client calls it unlisted (docs/policy.md, "MCP servers").

A tool is forbidden when, offered alone, the policy's decision is a `strip` naming it or a `block` by a rule with
a `tools` condition: the same rules that take a tool out of a model's `tools[]` take it out of an MCP listing.
Rules on `args` hold for calls only, so they judge each call (the decide stage), not the listing.

Pure: no mitmproxy.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.catalog import Service
from core.exchange import Exchange, ToolDefinition
from policy.engine import INSPECTED, Decision, Request, Subject, decide
from policy.language import Policy


def forbidden_tools(policy: Policy, subject: Subject, service: Service, tools: list[ToolDefinition],
                    headers: Mapping[str, str]) -> dict[str, Decision]:
    """The names of the tools the policy forbids this subject, each with the decision that forbids it. Only a tool
    some enforced strip or block rule's `tools` condition counts (by name, server, changed, shadowed) is judged in
    full, so a listing costs a glob match per tool and rule, not a decision, whatever a server lists."""
    by_id = {r.id: r for r in policy.rules}
    candidates = [r.when.tools for r in policy.rules
                  if r.when.tools is not None and r.mode == "enforce" and r.action in ("strip", "block")]
    out: dict[str, Decision] = {}
    for tool in tools:
        if not any(c.counts(tool) for c in candidates):
            continue
        probe = Exchange(service=service.id, operation="mcp.tools/list", tools=[tool])
        d = decide(policy, subject, Request(service, probe, (), INSPECTED, headers))
        rule = by_id.get(d.rule)
        if d.mode != "enforce" or rule is None or rule.when.tools is None:
            continue
        if (d.action == "strip" and tool.name in d.strip_tools) or d.action == "block":
            out[tool.name] = d
    return out
