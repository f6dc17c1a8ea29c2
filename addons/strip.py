"""Enforce a `strip` decision: the tools a rule forbids are taken out of what the model is offered.

The model cannot call what it was never offered, so an agent keeps working with its other tools instead of
failing outright. The definitions go from the canonical parse DLP inspected (`Interaction.stages.body`), at the
paths the provider parsers recorded (`ToolDefinition.path`: OpenAI `tools[]`, Anthropic `tools[]`, Gemini's
`functionDeclarations`, Bedrock's `toolConfig.tools`, Cohere's `tools[]`), and that parse is what is sent. A list
left empty goes with its `tool_choice`, which providers refuse without tools. A request whose `tool_choice`
names a stripped tool insists on calling it: it is refused, with the rule's message, rather than changed into
something else. Anything that cannot be stripped in place (no JSON body, no path) is refused too: a strip that
cannot be applied must not let the tool through.
"""

from __future__ import annotations

import logging

import orjson
from mitmproxy import http

from addons.decide import refuse
from core.interaction import KEY, Interaction
from core.offload import off_loop

log = logging.getLogger(__name__)


class Strip:
    async def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None or it.decision != "strip" or it.stages.decision is None:
            return
        try:
            await self._strip(flow, it, set(it.stages.decision.strip_tools))
        except Exception as e:  # a strip that failed must not let the forbidden tool out
            log.exception("strip failed")
            refuse(flow, it, f"stripping tools failed ({type(e).__name__}): blocked rather than sent with them")

    async def _strip(self, flow: http.HTTPFlow, it: Interaction, names: set[str]) -> None:
        body = it.stages.body
        gone = [t for t in it.exchange.tools if t.name in names]
        if body is None or any(t.path is None for t in gone):
            return refuse(flow, it, "the forbidden tools cannot be taken out of this body: blocked rather than "
                                    "sent with them", _message(it))
        if _chosen(body) & names:
            return refuse(flow, it, f"tool_choice insists on {', '.join(sorted(_chosen(body) & names))}: blocked",
                          _message(it))
        # deepest and last first, so the other paths stay valid
        for t in sorted(gone, key=lambda t: t.path, reverse=True):
            *parent_path, index = t.path
            parent = _at(body, parent_path)
            del parent[index]
            if not parent and parent_path == ["tools"] and isinstance(body, dict):
                del body["tools"]
                body.pop("tool_choice", None)
        # serialized in a thread when large (core/offload.py), then re-encoded with the request's content-encoding
        flow.request.content = await off_loop(len(flow.request.raw_content or b""), orjson.dumps, body)
        it.note(f"stripped tools {', '.join(sorted({t.name for t in gone}))} from the request")


def _at(value, path: list):
    for step in path:
        value = value[step]
    return value


def _chosen(body) -> set[str]:
    """The tool names a `tool_choice` forces (OpenAI `{function: {name}}` or `{type: function, name}`, Anthropic
    `{type: tool, name}`)."""
    choice = body.get("tool_choice") if isinstance(body, dict) else None
    if not isinstance(choice, dict):
        return set()
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
    return {name} if isinstance(name, str) else set()


def _message(it: Interaction) -> str:
    d = it.stages.decision
    return (d.message if d is not None and d.message else
            "A tool this request offers the model is not allowed, and it could not be removed, so it was not sent.")
