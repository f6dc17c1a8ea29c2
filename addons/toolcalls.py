"""Enforce the tool rules on the model's answer: a call the policy forbids never reaches the agent that would run it.

Rules on tools act on requests first (decide blocks, strip removes definitions), but a model may still call a tool:
one it was not offered, or one whose arguments a rule forbids (`args` conditions hold for calls only). Each call in
the answer is judged as soon as it is complete (policy/toolcalls.py) and a refused one is replaced by a refusal in
the provider's own shapes (providers/toolcalls.py), the finish reason kept consistent, so the SDK parses it and the
agent goes on.

Streamed answers are not held back: the stream callable is chained after Extract's tap (and after redact's
restorer, so the calls judged are those the client would run), and only a tool call's own events wait for the call
to be complete. To read the stream event by event the gateway asks for an uncompressed answer; an upstream that
compresses all the same is decoded here (capped) and sent on uncompressed. Only requests that offer tools are
guarded (or run an agent whose tools the provider holds: a Mistral agent), and only while a rule has a `tools`
condition: everyone else's answer passes as before.

A JSON answer the guard cannot judge (it does not decode, orjson does not read it though a client's parser might,
the guard fails) is not forwarded: the client gets an error in its provider's shape, as a stream is cut; so does a
stream in a framing the guard does not read (Gemini's JSON array without alt=sse).

Each refusal is audited: decision `block` (a monitored rule: `monitor`), the rule, and a note naming the tool.
"""

from __future__ import annotations

import logging

import orjson
from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from addons.decide import provider_of
from core.exchange import ToolCall
from core.interaction import KEY, Interaction
from core.offload import off_loop
from policy import enforcement
from policy.engine import subject_of
from policy.language import Policy
from policy.ruleset import RuleSet
from policy.toolcalls import forbidding
from providers import toolcalls
from providers.encoding import Decoder, EncodingError, decode, encodings

log = logging.getLogger(__name__)


class AnswerTools:
    def __init__(self) -> None:
        self.policy = Policy()
        self.active = False  # some rule has a `tools` condition

    def load(self, loader) -> None:
        loader.add_option("gateway_tool_call_max_bytes", int, toolcalls.MAX_CALL_BYTES,
                          "Cap on the events of streamed tool calls held at once, each until it is complete: "
                          "past it, the calls held are refused.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_tool_call_max_bytes" in updated and ctx.options.gateway_tool_call_max_bytes < 1024:
            raise OptionsError(f"gateway_tool_call_max_bytes must be at least 1024, "
                               f"not {ctx.options.gateway_tool_call_max_bytes}")

    def rules_loaded(self, rules: RuleSet) -> None:
        self.policy = rules.policy
        self.active = any(r.when.tools is not None for r in rules.policy.rules)

    def _format(self, it: Interaction | None) -> str | None:
        """The answer format to guard, None when the answer cannot call a tool: the request offers none and runs
        none of the provider's own (a Mistral agent's, which it cannot see)."""
        if it is None or not self.active:
            return None
        provider, operation = provider_of(it), it.exchange.operation
        model = it.stages.asked_model or it.exchange.model
        if not it.exchange.tools and not toolcalls.runs_unseen_tools(provider, operation, model):
            return None
        return toolcalls.format_of(provider, operation, model)

    def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if flow.response is not None or it is None:
            return
        fmt = self._format(it)
        if fmt is None and self.active and it.exchange.tools:  # a model offered tools, in answers not read here
            it.exchange.warn(f"tool calls in the answer not checked: the gateway does not read the answers of "
                             f"{provider_of(it)} {it.exchange.operation} ({it.stages.asked_model or it.exchange.model})")
        if fmt is not None and it.exchange.stream:
            auth = flow.request.headers.get("authorization", "")
            if not (auth.startswith("AWS4-HMAC-SHA256") and "accept-encoding" in auth.lower()):
                flow.request.headers["accept-encoding"] = "identity"  # (a header SigV4 signed is left as it is)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Runs after Extract's and Redact's: chains the guard to the client's end of the tap."""
        it: Interaction | None = flow.metadata.get(KEY)
        fmt = self._format(it)
        tap = it.stages.tap if it is not None else None
        if fmt is None or flow.response is None or tap is None or flow.response.stream is not tap:
            return
        content_type = flow.response.headers.get("content-type", "").split(";")[0].strip().lower()
        judge = _Judge(self.policy, it, flow.request.headers)
        guard = toolcalls.stream_guard(fmt, content_type, judge, ctx.options.gateway_tool_call_max_bytes)
        if guard is None:  # Gemini's JSON array without alt=sse, say: its calls could not be judged as they come
            _unjudged(flow, it, judge, f"its stream ({content_type or 'untyped'}) is in a framing the guard does not "
                                       "read")
            flow.response.stream = tap  # the upstream's stream still comes: read for the audit, not passed on
            tap.then = _Instead(flow.response.content)
            return
        coding = flow.response.headers.get("content-encoding")
        decoder = None
        if encodings(coding):  # asked for identity and compressed all the same: sent on decoded
            decoder = Decoder(coding, ctx.options.gateway_max_decoded_bytes)
            del flow.response.headers["content-encoding"]
        if "content-length" in flow.response.headers:  # a refusal changes the length
            del flow.response.headers["content-length"]
            if not flow.response.is_http2 and not flow.response.is_http3:
                flow.response.headers["transfer-encoding"] = "chunked"
        tap.then = _Guarded(it, guard, judge, decoder, tap.then)

    async def response(self, flow: http.HTTPFlow) -> None:
        """A JSON answer (after redact restored it): its forbidden calls rewritten before the client sees it."""
        it: Interaction | None = flow.metadata.get(KEY)
        fmt = self._format(it)
        # read here whatever Extract's parser made of it: a body too large for that parser is checked all the same
        if fmt is None or flow.response is None or flow.response.stream or flow.response.status_code != 200:
            return
        judge = _Judge(self.policy, it, flow.request.headers)
        try:
            content = decode(flow.response.raw_content or b"", flow.response.headers.get("content-encoding"),
                             ctx.options.gateway_max_decoded_bytes)
            data = orjson.loads(content)
            changed = await off_loop(len(content), toolcalls.rewrite_body, fmt, data, judge)
            rewritten = await off_loop(len(content), orjson.dumps, data) if changed else None
        except EncodingError as e:
            return _unjudged(flow, it, judge, f"the answer could not be decoded ({e})")
        except orjson.JSONDecodeError as e:  # a client's parser may read it all the same (a BOM, NaN, a surrogate)
            return _unjudged(flow, it, judge, f"the answer is not JSON the gateway reads ({e})")
        except Exception as e:  # a guard bug must not pass an unjudged call on
            log.exception("tool-call guard failed for %s", it.host)
            return _unjudged(flow, it, judge, f"the tool-call guard failed ({type(e).__name__})")
        if rewritten is not None:
            flow.response.content = rewritten
        judge.record()


def _unjudged(flow: http.HTTPFlow, it: Interaction, judge: _Judge, why: str) -> None:
    """Fail closed: an answer whose calls could not be judged is not passed on; the client gets an error in its
    provider's shape, the audit the reason."""
    it.decide("block", f"answer refused, tool calls could not be checked: {why}")
    judge.record()
    text = enforcement.user_message("block", it.rule_id or "gateway", "The model's answer could not be checked "
                                    "for the tool calls the policy forbids, so it was not passed on.", it.event_id)
    reply = enforcement.api_error(enforcement.dialect(provider_of(it), it.service), text, it.event_id)
    flow.response = http.Response.make(reply.status, reply.body, reply.headers)


class _Instead:
    """The tap's `then` for a stream replaced by an error: the error's body, once, for all the upstream sends."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __call__(self, chunk: bytes) -> bytes:
        body, self.body = self.body, b""
        return body


class _Judge:
    """The policy on one call, for providers/toolcalls.py: the refusal text, or None. What it refused is kept in
    `found` until `record` writes it on the Interaction (so it can run in a thread for a large answer)."""

    def __init__(self, policy: Policy, it: Interaction, headers) -> None:
        self.policy, self.it, self.headers = policy, it, headers
        self.subject = subject_of(it)
        self.model = it.stages.asked_model or it.exchange.model  # rules name the model the client asked for
        self.found: list[tuple[str, object]] = []

    def __call__(self, call: ToolCall) -> str | None:
        d = forbidding(self.policy, self.subject, self.it.service, self.it.exchange, self.model, self.headers, call,
                       self.it.findings)
        if d is None:
            return None
        self.found.append((call.name, d))
        if d.mode != "enforce":
            return None
        return enforcement.tool_refusal(call.name, d.rule, d.message, self.it.event_id)

    def record(self, unjudged: list[tuple[str, str]] = ()) -> None:
        it = self.it
        found, self.found = self.found, []
        for name, d in found:
            if d.mode == "enforce":
                it.decide("block", rule_id=d.rule)
                it.note(f"answer: tool call {name} refused (rule {d.rule})")
            else:
                if it.decision == "allow":
                    it.decide("monitor", rule_id=d.rule)
                it.note(f"answer: tool call {name} would be refused (rule {d.rule}, mode: monitor)")
        for name, why in unjudged:
            it.decide("block")
            it.note(f"answer: tool call {name or '(unnamed)'} refused: it {why}")


class _Guarded:
    """The tap's `then`: what the client receives, through the guard (after the stage chained before, if any).
    Never raises: a guard that fails stops the stream there, as a call it could not judge must not go on."""

    def __init__(self, it: Interaction, guard: toolcalls.StreamGuard, judge: _Judge, decoder: Decoder | None,
                 before) -> None:
        self.it, self.guard, self.judge, self.decoder, self.before = it, guard, judge, decoder, before
        self.failed = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.failed:
            return b""
        try:
            data = self.before(chunk) if self.before is not None else chunk
            if self.decoder is not None:
                data = self.decoder.feed(data) + (self.decoder.finish() if not chunk else b"")
            out = self.guard.feed(data) if data else b""
            if not chunk:  # the upstream's end of the stream
                out += self.guard.finish()
        except EncodingError as e:
            return self._stop(f"the stream could not be decoded ({e})")
        except Exception as e:  # a guard bug must not pass an unjudged call on
            log.exception("tool-call guard failed for %s", self.it.host)
            return self._stop(f"the tool-call guard failed ({type(e).__name__})")
        refused, self.guard.refused = self.guard.refused, []
        self.judge.record(refused)
        if self.guard.broken:
            self._stop(self.guard.broken)
        return out

    def _stop(self, why: str) -> bytes:
        self.failed = True
        self.it.decide("block")
        self.it.note(f"answer: stream cut, tool calls could not be checked past this point: {why}")
        return b""
