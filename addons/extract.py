"""Extract what is sent and received: request into an `Exchange`, response (streamed or not) into its completion.

Streamed responses are never buffered: in `responseheaders` the flow gets a stream callable that hands each chunk
to the provider's incremental parser and returns it unchanged, so the client sees every chunk as soon as the
upstream sends it while the completion is reassembled for the audit.
"""

from __future__ import annotations

import logging

import orjson
from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

import providers
from core.interaction import KEY, Interaction
from providers.base import ResponseParser

log = logging.getLogger(__name__)

PARSED_KEY = "gateway.parsed"  # providers.Parsed: the request's exchange and the provider that understood it
RESPONSE_KEY = "gateway.response"  # the ResponseParser reassembling this flow's response
STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/vnd.amazon.eventstream",
                "application/stream+json", "application/jsonl")


class Extract:
    def load(self, loader) -> None:
        loader.add_option("gateway_on_parse_error", str, "forward",
                          "What to do with a request to an AI service whose body cannot be parsed: "
                          "'forward' it (audited as unparsed) or 'block' it.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_on_parse_error" in updated and ctx.options.gateway_on_parse_error not in ("forward", "block"):
            raise OptionsError(f"gateway_on_parse_error must be 'forward' or 'block', "
                               f"not {ctx.options.gateway_on_parse_error!r}")

    def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None:
            return
        body = flow.request.raw_content or b""
        it.request_bytes = len(body)
        try:
            content = flow.request.get_content(strict=True) or b""
        except ValueError as e:
            content = b""
            it.exchange.warn(f"request body could not be decoded: {e}")
        req = providers.HttpRequest.from_url_parts(flow.request.method, it.host, flow.request.path,
                                                   dict(flow.request.headers), content)
        parsed = providers.parse_request(req, it.service.id, it.service.formats)
        it.exchange = parsed.exchange
        flow.metadata[PARSED_KEY] = parsed
        if parsed.error and ctx.options.gateway_on_parse_error == "block":
            it.decision, it.reason = "block", f"request not parseable: {parsed.error}"
            flow.response = http.Response.make(
                400, orjson.dumps({"error": {"type": "invalid_request_error", "code": "gateway_unparseable",
                                             "message": f"Blocked by the AI gateway: the request body could not "
                                                        f"be inspected ({parsed.error[:200]})."}}),
                {"content-type": "application/json"})

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is None:
            return
        parsed = flow.metadata.get(PARSED_KEY)
        if parsed is None:
            return
        content_type = flow.response.headers.get("content-type", "").split(";")[0].strip().lower()
        parser = providers.response_parser(parsed, content_type)
        if parser is not None:
            flow.metadata[RESPONSE_KEY] = parser
        if content_type in STREAM_TYPES or (it.exchange.stream and content_type != "application/json"):
            flow.response.stream = _Tap(it, parser)

    def response(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is None:
            return
        it.status = flow.response.status_code
        parser: ResponseParser | None = flow.metadata.pop(RESPONSE_KEY, None)
        if parser is None:
            return
        if not isinstance(flow.response.stream, _Tap):
            raw = flow.response.raw_content or b""
            it.response_bytes = len(raw)
            try:
                parser.feed(flow.response.get_content(strict=True) or b"")
            except ValueError as e:
                it.exchange.warn(f"response body could not be decoded: {e}")
        _finish(it, parser)

    def error(self, flow: http.HTTPFlow) -> None:
        """Clients close streams as soon as they read the end marker, so a complete stream may end here."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None:
            return
        if flow.response is not None:
            it.status = flow.response.status_code
        parser: ResponseParser | None = flow.metadata.pop(RESPONSE_KEY, None)
        if parser is not None:
            _finish(it, parser)
        message = flow.error.msg if flow.error else "unknown error"
        if it.exchange.finish_reason and flow.response is not None:
            it.exchange.warn(f"connection closed after the end of the response: {message}")
        else:
            it.error = message


def _finish(it: Interaction, parser: ResponseParser) -> None:
    try:
        parser.finish()
    except Exception as e:  # a parser bug costs the completion, never the audit event
        log.warning("response parser failed for %s: %s", it.host, e)
        it.exchange.warn(f"response parser failed: {type(e).__name__}: {e}")


class _Tap:
    """The stream callable: feeds the parser, counts bytes, returns the chunk untouched. Never raises."""

    def __init__(self, it: Interaction, parser: ResponseParser | None):
        self.it = it
        self.parser = parser

    def __call__(self, chunk: bytes) -> bytes:
        self.it.response_bytes += len(chunk)
        if self.parser is not None and chunk:
            try:
                self.parser.feed(chunk)
            except Exception as e:  # a parser bug must never break the client's stream
                log.warning("stream parser failed for %s: %s", self.it.host, e)
                self.it.exchange.warn(f"stream parser failed: {type(e).__name__}: {e}")
                self.parser = None
        return chunk
