"""Admission: a bound on the AI request bodies the gateway holds at once, so that many large uploads together
cannot exhaust its memory.

mitmproxy buffers each decrypted AI request body (at most `body_size_limit`, 64m), and the gateway holds it again
as decoded text, parsed JSON and the exchange until the answer has come: about four times its size in all
(`bench/bigbody.py`: 1 GB for four 60 MB prompts). `body_size_limit` bounds one request, not how many arrive at
once, so twenty clients uploading at the limit would take the proxy, and every user behind it, down.

Each AI request's body size is reserved from `gateway_request_budget` when its headers arrive (Content-Length),
or, for a body of unknown length, once mitmproxy has read it (before it is decoded and parsed); a compressed
body is held again at its decoded size once Extract has decoded it. All is given back when its flow ends.
Requests under SMALL_BYTES (every ordinary prompt) are always admitted, so chat keeps working while uploads wait
their turn; they count against the budget all the same.

A request that does not fit is answered 503 with `Retry-After`, in an error its SDK shows, and audited. mitmproxy
still reads the body of a request answered at its headers (the client sends it before it reads the answer), so a
refused body is held too, and counted, until its flow ends. Past twice the budget a request is not answered but
cut off at its headers (its connection closed, audited as refused): that is what bounds memory when clients keep
sending large bodies anyway.

Reserving at the headers means a client that announces a large body and sends it slowly holds its share of the
budget meanwhile (until mitmproxy's `tcp_timeout`); ordinary prompts are not affected.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError
from mitmproxy.utils import human

from core.interaction import KEY, Interaction
from policy import enforcement

log = logging.getLogger(__name__)

DEFAULT_BUDGET = "512m"
SMALL_BYTES = 1 << 20  # always admitted: a prompt this size costs a few MB at most
RETRY_AFTER = "5"  # seconds the client is told to wait before trying again


class Admission:
    def __init__(self) -> None:
        self.budget = human.parse_size(DEFAULT_BUDGET)
        self.held: dict[str, tuple[int, str]] = {}  # flow id -> (bytes reserved for its body, client connection id)
        self.total = 0

    def load(self, loader) -> None:
        loader.add_option("gateway_request_budget", str, DEFAULT_BUDGET,
                          f"Most bytes of AI request bodies the gateway holds at once (k, m, g suffixes); a request "
                          f"that would exceed it is refused with 503 and Retry-After, and audited. Requests under "
                          f"{SMALL_BYTES // (1 << 20)} MiB are always admitted. 0: no bound.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_request_budget" in updated:
            try:
                budget = human.parse_size(ctx.options.gateway_request_budget)
            except ValueError:
                budget = None
            if budget is None:
                raise OptionsError(f"gateway_request_budget must be a size such as 512m or 0, "
                                   f"not {ctx.options.gateway_request_budget!r}")
            self.budget = budget

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None:
            return
        try:
            size = int(flow.request.headers.get("content-length", ""))
        except ValueError:
            return  # unknown length (chunked, HTTP/2 without the header): judged once read, in `request`
        self._admit(flow, it, max(size, 0), at_headers=True)

    def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None or flow.id in self.held:
            return
        self._admit(flow, it, len(flow.request.raw_content or b""))

    def request_decoded(self, flow: http.HTTPFlow, size: int) -> None:
        """Extract decoded a compressed body (addons.hooks.RequestDecodedHook): held at what it costs now."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is not None and flow.response is None:
            self.decoded(flow, it, size)

    def decoded(self, flow: http.HTTPFlow, it: Interaction, size: int) -> bool:
        """The request's body decoded to `size` bytes (Extract, for a compressed one): hold that instead of what
        was sent, so that compressed uploads count at what they cost. False, with the flow answered, when it no
        longer fits (decoding larger bodies is bounded apart: two at a time, core/offload.py)."""
        held, _ = self.held.get(flow.id, (0, ""))
        if size <= held:
            return True
        return self._admit(flow, it, size, held)

    def _admit(self, flow: http.HTTPFlow, it: Interaction, size: int, held: int = 0, at_headers: bool = False
               ) -> bool:
        """Hold `size` bytes for the flow (instead of `held`) if they fit; else refuse it and hold them anyway,
        since mitmproxy still reads the body of a request refused at its headers."""
        after = self.total - held + size
        fits = not self.budget or size < SMALL_BYTES or after <= self.budget
        self.held[flow.id] = (size, flow.client_conn.id)
        self.total = after
        if fits:
            return True
        why = (f"the gateway already holds {(self.total - size) >> 20} MiB of AI requests and this one is "
               f"{size >> 20} MiB (gateway_request_budget: {self.budget >> 20} MiB)")
        log.warning("refused %s %s from %s: %s", it.service.id, it.path, it.user or it.client_addr, why)
        it.request_bytes = size
        it.decide("block", f"refused: {why}; retry later")
        if at_headers and after > 2 * self.budget:  # its body is still to come: do not let it be read
            it.note("cut off at its headers (the gateway holds more than twice its budget)")
            flow.kill()
            return False
        reply = enforcement.gateway_error(
            503, "gateway_busy", "The AI gateway is handling too many large requests right now; retry in a few "
            f"seconds. Reference: {it.event_id}", kind="overloaded_error",
            headers={"retry-after": RETRY_AFTER, "x-ai-gateway-reference": it.event_id})
        flow.response = http.Response.make(reply.status, reply.body, reply.headers)
        return False

    def response(self, flow: http.HTTPFlow) -> None:
        self._release(flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self._release(flow.id)

    def client_disconnected(self, client) -> None:
        """The last word on a connection's flows: a reservation no hook gave back must not shrink the budget."""
        for flow_id in [f for f, (_, c) in self.held.items() if c == client.id]:
            self._release(flow_id)

    def _release(self, flow_id: str) -> None:
        size, _ = self.held.pop(flow_id, (0, ""))
        self.total -= size
