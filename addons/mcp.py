"""Govern MCP: a server's tool listings lose the tools the policy forbids, a call of one is refused in the shape
MCP clients show, and every refusal of an MCP request is answered as JSON-RPC (providers/mcp.py reads the traffic).

- **Listings**: every `tools/list` answer, JSON or SSE, on the POST's answer or on a session's GET stream, loses
  the tools the policy forbids (policy/mcp.py); the audit records a `strip` with the rule. An SSE event is held only
  while it arrives (up to providers.mcp.MAX_EVENT, a larger one is dropped), the stream is never buffered.
- **Calls**: a `tools/call` the decide stage let through is refused still when its tool is one a listing would
  lose (a client may call a tool it was never shown), or when the call alone, with its arguments, is one the
  policy refuses (the batch it came in may have matched another rule first). Refusals of MCP requests (this
  stage's, the decide stage's, extract's for a body it will not forward) are answered per request id
  (policy.enforcement.mcp_refusals): a tool error result with `isError` for a call, a JSON-RPC error otherwise.
- **The older HTTP+SSE transport** answers on the GET stream, not on the POST, and that stream may be another
  gateway process's connection (`--workers`): a refused POST is sent on as a `ping` (harmless, every server
  answers it) under an id that carries the refusal (providers.mcp.refused_ping), and wherever the server's answer
  to it passes, the refusal takes its place. A POST is taken for the older transport when it is not Streamable
  HTTP's (which must accept `text/event-stream`, and names its session in `Mcp-Session-Id`); a Streamable HTTP
  POST is answered at once.
- **Answers**: one decide withheld (a rule on findings in the response) becomes the refusal of each request, a
  listing the gateway cannot parse is not passed on (a stricter parser than the client's must not let a tool
  through unfiltered), and a tool whose definition differs from the one its server first listed (a "rug pull"),
  or whose name another server listed first (shadowing), is noted in the audit (providers.mcp.FirstSeen);
  `tools: {changed: true}` and `tools: {shadowed: true}` rules act on them. What was first seen is shared by the
  gateway's processes and kept across restarts in the file `gateway_mcp_first_seen` names (storage/first_seen.py;
  `gateway run` names one in its data folder); when it cannot be used, the audit says the memory was this
  process's only.

Runs after redact (whose `then` on a stream it chains rather than replaces), so the refusal it sends is the last
word on the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from addons.decide import provider_of
from core.exchange import ToolCall, ToolDefinition
from core.interaction import KEY, Interaction
from core.offload import off_loop
from policy import enforcement
from policy.engine import Decision, subject_of
from policy.language import Policy
from policy.mcp import forbidden_tools
from policy.ruleset import RuleSet
from policy.toolcalls import forbidding
from providers import mcp
from providers.encoding import EncodingError, decode
from storage.first_seen import SharedFirstSeen

log = logging.getLogger(__name__)

MAX_REASONS = 32  # distinct listing notes one long-lived stream adds to its audit event


class McpGuard:
    def __init__(self) -> None:
        self.policy = Policy()
        self.first_seen = SharedFirstSeen()  # this process's own until configured with a file

    def load(self, loader) -> None:
        loader.add_option("gateway_mcp_first_seen", str, "",
                          "SQLite file in which the gateway's processes share, across restarts, the first definition "
                          "of each MCP tool and the server that first listed each tool name (rug pulls, shadowed "
                          "names). Empty: each process remembers on its own, from its start.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_mcp_first_seen" not in updated:
            return
        path = Path(ctx.options.gateway_mcp_first_seen).expanduser() if ctx.options.gateway_mcp_first_seen else None
        if path is not None and not path.is_absolute():
            raise OptionsError(f"gateway_mcp_first_seen must be an absolute path (every process opens the same "
                               f"file), not {ctx.options.gateway_mcp_first_seen!r}")
        if path == self.first_seen.path:
            return
        self.first_seen.close()
        self.first_seen = SharedFirstSeen()
        if path is not None:
            self.first_seen.open(path)

    def done(self) -> None:
        self.first_seen.close()

    def rules_loaded(self, rules: RuleSet) -> None:
        self.policy = rules.policy

    async def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or provider_of(it) != mcp.NAME:
            return
        # an answer the gateway may have to change must be readable event by event: not compressed
        flow.request.headers.pop("accept-encoding", None)
        try:
            await self.first_seen.refresh()  # what the gateway's other processes listed meanwhile
            await self._request(flow, it)
            if any(m.tool_calls for m in it.exchange.messages):  # judged by what this process knows of the tools
                self._memory_note(it)
        except Exception as e:  # the refusal must not be lost, nor a forbidden call let out
            log.exception("MCP refusal failed")
            it.decide("block", f"MCP request not judged ({type(e).__name__}): blocked")
            self._answer(flow, enforcement.mcp_reply(enforcement.mcp_refusals(
                [], "The AI gateway could not apply its policy to this MCP request.", it.event_id), False, it.event_id))

    async def _request(self, flow: http.HTTPFlow, it: Interaction) -> None:
        d = it.stages.decision
        message = d.message if d is not None and d.action == "block" else ""
        if flow.response is None and it.decision != "block":  # an API client's warn goes on: its calls are judged
            refused = self._refused_call(flow, it, [c for m in it.exchange.messages for c in m.tool_calls])
            if refused is None:
                return
            name, d, why = refused
            it.decide("block", f"rule {d.rule}: tool {name} of MCP server {mcp.server_of(it.host)} is not allowed "
                               f"({why})", d.rule)
            message = d.message
        if it.decision != "block":
            return
        # refused by this stage (no response yet), by decide (403) or by extract (400: a body it will not forward)
        invalid = flow.response is not None and flow.response.status_code == 400
        code = enforcement.MCP_INVALID if invalid else enforcement.MCP_REFUSED
        value = await _body(flow)  # parsed again only to answer each refused request by its id
        text = enforcement.user_message("block", it.rule_id or "gateway", message or "; ".join(it.reasons),
                                        it.event_id)
        requests = mcp.requests_of(value)
        answers = enforcement.mcp_refusals(requests, text, it.event_id, code)
        if value is not None and all(m is not None and "id" not in m for _, m, _ in mcp.messages(value)):
            return self._answer(flow, enforcement.mcp_reply([], False, it.event_id))  # notifications: 202
        if not requests or _streamable(flow):
            return self._answer(flow, enforcement.mcp_reply(answers, isinstance(value, list), it.event_id))
        pings = [mcp.refused_ping(answer) for answer in answers]
        flow.request.content = orjson.dumps(pings if isinstance(value, list) else pings[0])
        flow.response = None
        it.note("refused on the older transport's stream: the server was sent a ping carrying the refusal")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is None or provider_of(it) != mcp.NAME or not flow.response.stream:
            return
        if _media_type(flow.response) != "text/event-stream":
            return
        if flow.response.headers.get("content-encoding", "identity").lower() != "identity":
            # the gateway asked for none; what it cannot read event by event, it does not pass unfiltered
            it.decide("block", "MCP stream compressed although the gateway asked for none: not passed on")
            events: Callable[[bytes], bytes] = _nothing
        else:
            events = _SseFilter(self._rewrite(flow, it), it)
        tap = it.stages.tap
        if tap is not None and flow.response.stream is tap:  # Extract keeps counting and reading the stream
            then = tap.then
            tap.then = events if then is None else _chain(events, then)
        else:  # nothing to send yet must be no chunk at all, as the tap does
            flow.response.stream = lambda chunk: events(chunk) or []

    async def response(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is None or provider_of(it) != mcp.NAME:
            return
        _name_servers(it)
        if flow.response.stream:
            return
        if it.decision == "block" and flow.response.status_code == 403 and \
                flow.response.headers.get("x-ai-gateway-reference") == it.event_id:
            # decide withheld the answer (a rule on findings in the response) in an API's error shape, which an
            # MCP client takes for a broken server: it gets the refusal as the answer to each of its requests
            rule = next((r for r in self.policy.rules if r.id == it.rule_id), None)
            text = enforcement.user_message("block", it.rule_id, rule.message if rule else "", it.event_id)
            value = await _body(flow)
            reply = enforcement.mcp_refusals(mcp.requests_of(value), text, it.event_id)
            self._answer(flow, enforcement.mcp_reply(reply, isinstance(value, list), it.event_id))
            it.status = flow.response.status_code
            return
        if _media_type(flow.response) != "application/json":
            return
        try:
            body = decode(flow.response.raw_content or b"", flow.response.headers.get("content-encoding"),
                          ctx.options.gateway_max_decoded_bytes)
        except EncodingError:
            return  # extract has refused it already (a bomb) or noted it
        if not mcp.might_change(body):
            return
        try:
            value = await off_loop(len(body), orjson.loads, body)
        except orjson.JSONDecodeError:
            if mcp.may_list(body):  # what the gateway cannot read may list a tool it must hide: not passed on
                it.decide("block", "MCP answer that may list tools is not JSON the gateway can read: not passed on")
                self._answer(flow, enforcement.mcp_reply(enforcement.mcp_refusals(
                    [], "The AI gateway could not read the MCP server's answer.", it.event_id,
                    enforcement.MCP_INVALID), False, it.event_id))
                it.status = flow.response.status_code
            return
        changed = self._rewrite(flow, it).value(value)
        if changed is not None:
            flow.response.content = await off_loop(len(body), orjson.dumps, changed)

    def error(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is not None and provider_of(it) == mcp.NAME:
            _name_servers(it)

    def _rewrite(self, flow: http.HTTPFlow, it: Interaction) -> mcp.Rewrite:
        return mcp.Rewrite(lambda tools: self._listing(flow, it, tools))

    def _refused_call(self, flow: http.HTTPFlow, it: Interaction, calls: list[ToolCall]
                      ) -> tuple[str, Decision, str] | None:
        """The first call the policy refuses, its decision and why. The request as a whole may match another rule
        first (a batch's other call, a rule on what else it carries), so each call is judged alone too: by its
        tool as a listing would be (name, server, changed since first seen, shadowing a name), then with its
        arguments, as a model's calls are (policy/toolcalls.py). A call a monitored rule refuses is noted and goes
        on."""
        tools = [ToolDefinition(c.name, server=c.server or mcp.server_of(it.host)) for c in calls]
        for tool in tools:
            self.first_seen.mark(tool)
        forbidden = self._forbidden(flow, it, tools)
        if forbidden:
            name, d = next(iter(forbidden.items()))
            return name, d, "hidden from its tools/list"
        server = mcp.server_of(it.host)
        for call in calls:
            call.server = call.server or server
            d = forbidding(self.policy, subject_of(it), it.service, it.exchange, it.exchange.model,
                           flow.request.headers, call)
            if d is None:
                continue
            if d.mode == "enforce":
                return call.name, d, "not with these arguments"
            self._note(it, f"rule {d.rule} (monitor): tool {call.name} of MCP server {server} would be refused")
        return None

    def _forbidden(self, flow: http.HTTPFlow, it: Interaction, tools: list[ToolDefinition]):
        server = mcp.server_of(it.host)
        for t in tools:
            t.server = t.server or server
        return forbidden_tools(self.policy, subject_of(it), it.service, tools, flow.request.headers) if tools else {}

    def _listing(self, flow: http.HTTPFlow, it: Interaction, tools: list[ToolDefinition]) -> set[str]:
        """The tools a listing loses; the audit records which, and by which rules, any tool whose definition is not
        the one first seen and any whose name another server listed first (after the strip decision, which
        replaces the reasons)."""
        if len(tools) > mcp.MAX_TOOLS:  # judging them all would hold the event loop: none passes
            self._note(it, f"tools/list: {len(tools)} tools listed, more than the gateway judges "
                           f"({mcp.MAX_TOOLS}): all removed")
            return {t.name for t in tools}
        server = mcp.server_of(it.host)
        for t in tools:
            t.server = t.server or server
        self.first_seen.observe(tools, time.time())  # marks them, for `tools: {changed: true, shadowed: true}`
        self._memory_note(it)
        forbidden = self._forbidden(flow, it, tools)
        if forbidden:
            rules = sorted({d.rule for d in forbidden.values()})
            self._note(it, f"tools/list: removed {', '.join(sorted(forbidden))} (rule {', '.join(rules)})",
                       rules[0])
        for tool in tools:
            seen = self.first_seen.get(tool.server, tool.name)
            if tool.changed and seen is not None:
                self._finding(it, f"tools/list: definition of {tool.name} on {tool.server} changed since first "
                                  f"seen (digest {seen.first}, now {tool.digest})")
            if tool.shadows:
                self._finding(it, f"tools/list: {tool.name} on {tool.server} shadows {tool.name} of "
                                  f"{tool.shadows}, which listed it first")
        return set(forbidden)

    def _memory_note(self, it: Interaction) -> None:
        """The truth about what a listing or a call was judged against, when it is not the gateway's shared memory
        (its file could not be opened, read or written)."""
        if self.first_seen.problem:
            self._note(it, f"MCP first-seen memory of this process only: {self.first_seen.problem}")

    def _finding(self, it: Interaction, finding: str) -> None:
        """A rug pull or a shadowed name: in the event's warnings and reasons, once each."""
        if finding not in it.exchange.warnings and len(it.exchange.warnings) < MAX_REASONS:
            it.exchange.warn(finding)
        self._note(it, finding)

    @staticmethod
    def _note(it: Interaction, reason: str, strip_rule: str = "") -> None:
        """A listing's outcome in the audit: the first removal decides `strip`; the rest are noted once each (a
        long-lived stream lists again and again), up to MAX_REASONS."""
        if strip_rule and it.decision in ("allow", "monitor"):
            it.decide("strip", reason, strip_rule)
        elif reason not in it.reasons and len(it.reasons) < MAX_REASONS:
            it.note(reason)

    @staticmethod
    def _answer(flow: http.HTTPFlow, reply: enforcement.Reply) -> None:
        flow.response = http.Response.make(reply.status, reply.body, reply.headers)


class _SseFilter:
    """The stream callable on an MCP SSE answer: whole events pass on as they complete, changed by the Rewrite;
    only the event still arriving is held."""

    def __init__(self, rewrite: mcp.Rewrite, it: Interaction):
        self.rewrite = rewrite
        self.it = it
        self.events = mcp.SseEvents()

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # the end of the stream: an event without its blank line is read like any other
            return self._pass([self.events.rest()])
        dropped = self.events.dropped
        out = self._pass(self.events.feed(chunk))
        if self.events.dropped > dropped:
            self.it.exchange.warn(f"MCP stream: an event over {mcp.MAX_EVENT} bytes was dropped, not passed on "
                                  f"unread")
        return out

    def _pass(self, events: list[bytes]) -> bytes:
        out = []
        for raw in events:
            if not raw:
                continue
            event = mcp.rewrite_event(raw, self.rewrite)
            if not event:
                self.it.exchange.warn("MCP stream: an event that may list tools is not JSON the gateway can read: "
                                      "dropped, not passed on unread")
            out.append(event)
        return b"".join(out)


def _name_servers(it: Interaction) -> None:
    """The definitions the answer listed (read by extract, streamed or not) name their server, for the audit."""
    server = mcp.server_of(it.host)
    for t in it.exchange.tools:
        t.server = t.server or server


def _media_type(response: http.Response) -> str:
    """The answer's media type as servers may spell it (`Application/JSON; charset=utf-8`): a case the check
    did not expect must not let a listing through unfiltered."""
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _streamable(flow: http.HTTPFlow) -> bool:
    """A Streamable HTTP POST, answered on its own response (else: the older transport's, answered on its
    stream)."""
    return "text/event-stream" in flow.request.headers.get("accept", "") or "mcp-session-id" in flow.request.headers


def _nothing(chunk: bytes) -> bytes:
    """What a stream the gateway will not pass on sends: nothing, which the stream callable sends as no chunk at
    all (an empty one would end a chunked HTTP/1.1 body)."""
    return b""


def _chain(first: Callable[[bytes], bytes], then: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    return lambda chunk: then(first(chunk))


async def _body(flow: http.HTTPFlow):
    """The JSON-RPC body as it will be sent (after redaction), or None when it is not JSON."""
    raw = flow.request.raw_content or b""
    try:
        content = decode(raw, flow.request.headers.get("content-encoding"), ctx.options.gateway_max_decoded_bytes)
        return await off_loop(len(content), orjson.loads, content)
    except (EncodingError, orjson.JSONDecodeError):
        return None
