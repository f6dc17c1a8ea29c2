"""Enforce a `redact` decision: rewrite the request body with placeholders, and restore them in the answer.

The request keeps its exact shape: only the JSON strings that held a finding are rewritten (each `TextPart`
knows its JSON path), with placeholders that are stable per value (`<EMAIL_ADDRESS_1>` for the same address
everywhere in the request), so the upstream receives valid JSON in the provider's own format. A finding the body
cannot be rewritten for (a part without a JSON path, such as text extracted from a multipart upload, or a body
that is not JSON) blocks the request instead: a redaction that cannot be applied must never leak the value.

Reversible pseudonymization (`Interaction.reversible`): the placeholders in the model's answer are replaced by
the original values before the client sees them, for buffered answers (in `response`) and streamed ones (Extract's
stream tap gets a restorer as its `then`, so Extract's parser, and so the audit, sees the redacted completion,
while the client gets restored bytes, chunk by chunk, a placeholder split across chunks included).

Restoring reads the answer's own format (dlp/answer.py): a JSON body is parsed, restored and re-serialized; a
stream is read event by event (SSE, NDJSON) because a model writes a placeholder token by token, so it arrives
split across several events, not just across network chunks. Values go back into parsed JSON, so a secret with a
quote or a backslash cannot break the client's JSON. Answers the restorer cannot read (binary AWS event streams,
Gemini's JSON-array stream) reach the client with the placeholders in them, and the audit says so: safe (the value
never leaked), less useful. To restore a streamed answer the gateway asks the upstream for an uncompressed
response (`accept-encoding: identity`).
"""

from __future__ import annotations

import logging

import orjson
from mitmproxy import ctx, http

from addons.decide import refuse
from core.interaction import KEY, Interaction
from dlp.answer import Restorer, StreamedAnswer, framing_of
from dlp.redact import Placeholders, redact_json, unredactable
from providers.encoding import EncodingError, decode

log = logging.getLogger(__name__)


class Redact:
    def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None:
            return
        body, it.stages.body = it.stages.body, None  # taken: not held while the request is upstream
        if flow.response is not None or it.decision != "redact":
            return
        try:
            self._redact(flow, it, body)
        except Exception as e:  # a redaction that failed must not let the raw request out
            log.exception("redaction failed")
            refuse(flow, it, f"redaction failed ({type(e).__name__}): blocked rather than sent unredacted")

    def _redact(self, flow: http.HTTPFlow, it: Interaction, body) -> None:
        """Rewrite `body`, the canonical parse of the request that DLP inspected (Extract's; None: not JSON)."""
        wanted = set(it.redact_entities)
        findings = [f for f in it.findings if not wanted or f.entity in wanted]
        if not findings:
            return
        if flow.request.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256"):
            return refuse(flow, it, "the request is signed with AWS SigV4 over its body, so a redacted body would be "
                                     "rejected upstream: blocked rather than sent unredacted (clients using a Bedrock "
                                     "API key can be redacted)")
        if body is None:
            return refuse(flow, it, "request body cannot be rewritten (it is not JSON): blocked rather than sent "
                                    "unredacted")
        parts = it.exchange.request_parts()
        stuck = unredactable(body, parts, findings)
        if stuck:
            kinds = sorted({f.entity for f in findings if f.part in stuck})
            return refuse(flow, it, f"{', '.join(kinds)} found in {len(stuck)} part(s) that cannot be "
                                     f"rewritten in place: blocked rather than sent unredacted")
        placeholders = Placeholders()
        body = redact_json(body, parts, findings, placeholders)
        sent = orjson.dumps(body)
        if leaked := _still_present(sent, parts, findings):
            return refuse(flow, it, f"{', '.join(leaked)} also present in fields DLP does not read (e.g. 'user', "
                                     f"'metadata', tool descriptions): blocked rather than sent unredacted")
        flow.request.content = sent  # re-encoded with the request's content-encoding
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.entity] = counts.get(f.entity, 0) + 1
        done = ", ".join(f"{n} {e}" for e, n in sorted(counts.items()))
        it.note(f"redacted {done}")
        if it.reversible:
            it.stages.placeholders = placeholders
            flow.request.headers["accept-encoding"] = "identity"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Runs after Extract's: wraps its stream tap so the tap sees upstream bytes and the client restored ones."""
        it: Interaction | None = flow.metadata.get(KEY)
        placeholders = it.stages.placeholders if it is not None else None
        if placeholders is None or flow.response is None or not flow.response.stream:
            return
        content_type, framing = framing_of(flow.response.headers.get("content-type", ""),
                                           flow.response.headers.get("content-encoding", "identity"))
        if not framing:
            compressed = framing_of(content_type)[1]  # readable, were it not compressed
            it.exchange.warn(f"placeholders not restored in the answer: {content_type or 'untyped'} stream"
                             f"{' (compressed)' if compressed else ''} is not readable event by event")
            return
        answer = it.stages.restoring = StreamedAnswer(_restorer(placeholders), framing)
        restore = _RestoringStream(answer)
        if it.stages.tap is not None and flow.response.stream is it.stages.tap:
            it.stages.tap.then = restore  # Extract's parser keeps reading the upstream's (redacted) bytes
        else:
            flow.response.stream = restore

    def response(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        placeholders = it.stages.placeholders if it is not None else None
        if placeholders is None or flow.response is None:
            return
        if flow.response.stream:
            answer = it.stages.restoring
            if answer is not None and answer.error:
                it.exchange.warn(f"placeholders not restored past this point: {answer.error}")
            return
        try:  # capped like every body the gateway decodes: a hostile upstream's bomb is not expanded
            content = decode(flow.response.raw_content or b"", flow.response.headers.get("content-encoding"),
                             ctx.options.gateway_max_decoded_bytes)
        except EncodingError as e:
            it.exchange.warn(f"placeholders not restored in the answer: {e}")
            return
        if content:
            flow.response.content = _restorer(placeholders).json_body(content)



def _restorer(placeholders) -> Restorer:
    return Restorer(placeholders.values)


class _RestoringStream:
    """Stream callable: the client gets the answer with the original values, restored event by event."""

    def __init__(self, answer: StreamedAnswer):
        self.answer = answer

    def __call__(self, chunk: bytes) -> bytes:
        return self.answer.feed(chunk) if chunk else self.answer.finish()  # b"": the upstream's end of stream


def _still_present(sent: bytes, parts: list, findings: list) -> list[str]:
    """The entity types whose values survive redaction somewhere else in the body, as JSON would spell them."""
    leaked = set()
    for f in findings:
        if 0 <= f.part < len(parts):
            value = parts[f.part].text[f.start:f.end]
            if value and orjson.dumps(value)[1:-1] in sent:
                leaked.add(f.entity)
    return sorted(leaked)
