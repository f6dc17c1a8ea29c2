"""Extract what is sent and received: request into an `Exchange`, response (streamed or not) into its completion.

Streamed responses are never buffered: in `responseheaders` the flow gets a stream callable that hands each chunk
to the provider's incremental parser and returns it unchanged, so the client sees every chunk as soon as the
upstream sends it while the completion is reassembled for the audit.

A request body over core.offload's threshold (and any compressed one, which may expand to the cap) is decoded and
parsed in a thread, so one large upload does not stall every other connection of the process.

Content encodings (gzip, deflate, br, zstd) are undone with providers.encoding's capped decoders, never with
mitmproxy's `get_content()`, which would expand a compression bomb whole into memory. A request body that decodes
past the cap is refused (413) and audited; a buffered response that does is replaced by a 502 that says why; a
streamed one is passed to the client untouched and its parsing stops at the cap. Streams are decoded
incrementally inside the tap for the parser only: the client receives the original bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

import providers
from addons.hooks import RequestDecodedHook
from policy import enforcement
from core.interaction import KEY, Interaction
from core.mediatypes import STREAM_TYPES
from core.offload import OFFLOAD_CHARS, off_loop
from providers.base import ResponseParser, folded_headers
from providers.encoding import MAX_DECODED_BYTES, CompressionBomb, Decoder, EncodingError, decode, encodings

log = logging.getLogger(__name__)

ASSET = "asset"  # the operation of a page's static file (script, style, image, font) on an AI app's host
ASSET_TYPES = ("image/", "font/", "video/", "audio/", "text/css", "text/javascript", "application/javascript",
               "application/x-javascript", "application/wasm", "application/font-woff", "application/manifest+json")
ASSET_SUFFIXES = (".js", ".mjs", ".css", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".ico", ".woff",
                  ".woff2", ".ttf", ".otf", ".wasm", ".map", ".mp4", ".webm", ".mp3")
MAX_ASSET_QUERY = 128  # a longer query string could carry data out: not a plain asset fetch
PDF_MAGIC, PDF_MAGIC_BASE64 = b"%PDF-", b"JVBERi"  # a PDF file's first bytes, as sent and as base64 in JSON
#: Bodies up to this size are parsed and walked on the loop (up to about 3 ms); larger ones in a thread. The
#: whole-body walk costs about 20 ms per MB of JSON strings, five times the provider parse alone.
PARSE_INLINE_BYTES = 128 * 1024
SMALL_WIRE_BYTES = 64 * 1024  # compressed request bodies up to this size are tried on the loop first


class Extract:
    def load(self, loader) -> None:
        loader.add_option("gateway_on_parse_error", str, "forward",
                          "What to do with a request to an AI service whose body cannot be parsed: "
                          "'forward' it (audited as unparsed) or 'block' it.")
        loader.add_option("gateway_max_decoded_bytes", int, MAX_DECODED_BYTES,
                          "Cap on the decoded size of a compressed request or response body (gzip, deflate, br, "
                          "zstd). A request past it is refused as a compression bomb; a response past it is not "
                          "inspected.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_on_parse_error" in updated and ctx.options.gateway_on_parse_error not in ("forward", "block"):
            raise OptionsError(f"gateway_on_parse_error must be 'forward' or 'block', "
                               f"not {ctx.options.gateway_on_parse_error!r}")
        if "gateway_max_decoded_bytes" in updated and ctx.options.gateway_max_decoded_bytes < 1024:
            raise OptionsError(f"gateway_max_decoded_bytes must be at least 1024, "
                               f"not {ctx.options.gateway_max_decoded_bytes}")

    async def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None:
            return
        body = flow.request.raw_content or b""
        it.request_bytes = len(body)
        coding = flow.request.headers.get("content-encoding")
        limit = ctx.options.gateway_max_decoded_bytes
        req = (flow.request.method, it.host, flow.request.path, folded_headers(flow.request.headers.fields))
        decoded = _decode_small(body, coding, limit)
        if decoded is None:  # it may expand to the cap: decode it off the loop whatever its size on the wire
            decoded = await off_loop(limit, _decode, body, coding, limit)
        content, problem, bomb = decoded
        if len(content) > len(body):
            await ctx.master.addons.trigger_event(RequestDecodedHook(flow, len(content)))
            if flow.response is not None:
                return  # refused: it no longer fits the gateway's budget for request bodies
        # A PDF's text is extracted in a child process (providers/uploads.py): wait for it in a thread, whatever the
        # body's size, so that the loop keeps serving everyone else meanwhile.
        # (A larger body goes to a thread anyway: it is not searched on the loop.)
        inline = len(content) <= PARSE_INLINE_BYTES and PDF_MAGIC not in content and PDF_MAGIC_BASE64 not in content
        parsed = await off_loop(len(content), _parse_request, req, content, problem, it.service,
                                above=PARSE_INLINE_BYTES if inline else 0)
        it.exchange, it.stages.parsed = parsed.exchange, parsed
        it.stages.body, parsed.body = parsed.body, None
        if bomb:
            it.decide("block", "request body is a compression bomb")
            flow.response = _error_response(413, "gateway_compression_bomb", f"Blocked by the AI gateway: the "
                                            f"request body decodes to more than {limit} bytes and was not "
                                            f"expanded (compression bomb?).")
            return
        if problem:
            # The client chose an encoding we cannot read (`Content-Encoding: none`); an upstream that ignores the
            # header would still read the JSON. What cannot be inspected does not leave, whatever the fail modes.
            it.decide("block", problem)
            flow.response = _error_response(415, "gateway_undecodable", f"Blocked by the AI gateway: the request "
                                            f"body could not be decoded for inspection ({problem[:200]}).")
            return
        if parsed.ambiguous:
            # Another parser could read this body differently from how the gateway would have inspected it: never
            # forwarded, whatever the fail modes. The client's SDK shows why.
            it.decide("block", f"request body refused: {parsed.ambiguous}")
            text = f"Blocked by the AI gateway: the request body was not sent, as its JSON cannot be read one way " \
                   f"({parsed.ambiguous}). Send standard JSON (UTF-8, no repeated keys). Reference: {it.event_id}"
            provider = parsed.provider.name if parsed.provider is not None else None
            reply = enforcement.api_error(enforcement.dialect(provider, it.service), text, it.event_id, status=400)
            flow.response = http.Response.make(reply.status, reply.body, reply.headers)
            return
        if parsed.error and ctx.options.gateway_on_parse_error == "block":
            it.decide("block", f"request not parseable: {parsed.error}")
            flow.response = _error_response(400, "gateway_unparseable", f"Blocked by the AI gateway: the request "
                                            f"body could not be inspected ({parsed.error[:200]}).")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is None:
            return
        parsed = it.stages.parsed
        if parsed is None:
            return
        content_type = flow.response.headers.get("content-type", "").split(";")[0].strip().lower()
        if _is_asset(it, flow.request, flow.response.status_code, content_type):
            it.exchange.operation = ASSET
            flow.response.stream = True  # nothing to read in it: pass it through unbuffered
            return
        parser = providers.response_parser(parsed, content_type)
        it.stages.response_parser = parser
        # A streamed request is streamed back whatever its content type (Gemini without alt=sse streams a JSON
        # array as application/json), except a JSON answer that must be restored whole for reversible redaction.
        if content_type in STREAM_TYPES or (it.exchange.stream and flow.response.status_code == 200 and not (
                content_type == "application/json" and it.reversible)):
            coding = flow.response.headers.get("content-encoding")
            decoder = Decoder(coding, ctx.options.gateway_max_decoded_bytes) if encodings(coding) else None
            flow.response.stream = it.stages.tap = _Tap(it, parser, decoder)

    def response(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is None:
            return
        it.status = flow.response.status_code
        parser, it.stages.response_parser = it.stages.response_parser, None
        if parser is None:
            return
        if isinstance(flow.response.stream, _Tap):
            flow.response.stream.end()
        else:
            raw = flow.response.raw_content or b""
            it.response_bytes = len(raw)
            try:
                parser.feed(decode(raw, flow.response.headers.get("content-encoding"),
                                   ctx.options.gateway_max_decoded_bytes))
            except CompressionBomb as e:
                it.exchange.warn(f"response refused: {e}")
                it.decide("block", "response body is a compression bomb")
                flow.response = _error_response(502, "gateway_compression_bomb", f"Blocked by the AI gateway: the "
                                                f"response decodes to more than "
                                                f"{ctx.options.gateway_max_decoded_bytes} bytes and was not "
                                                f"expanded (compression bomb?).")
                it.status = 502
            except EncodingError as e:
                it.exchange.warn(f"response body could not be decoded: {e}")
        _finish(it, parser)

    def error(self, flow: http.HTTPFlow) -> None:
        """Clients close streams as soon as they read the end marker, so a complete stream may end here."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None:
            return
        if flow.response is not None:
            it.status = flow.response.status_code
        parser, it.stages.response_parser = it.stages.response_parser, None
        if parser is not None:
            if flow.response is not None and isinstance(flow.response.stream, _Tap):
                flow.response.stream.parse()  # what arrived before the break (no end marker to check)
            _finish(it, parser)
        message = flow.error.msg if flow.error else "unknown error"
        if it.exchange.finish_reason and flow.response is not None:
            it.exchange.warn(f"connection closed after the end of the response: {message}")
        else:
            it.error = message


def _is_asset(it: Interaction, request: http.Request, status: int, content_type: str) -> bool:
    """A request no parser claimed that only fetched a static file for a consumer app's page: no body, a short or
    no query string, and a script, style, image or font back (or a 304 revalidating one). It carries no prompt;
    the audit labels it (operation ASSET) and by default does not store it (Audit: gateway_audit_assets)."""
    if it.method not in ("GET", "HEAD") or it.request_bytes or it.exchange.parsed or it.exchange.operation != "unknown":
        return False
    if sum(len(k) + len(v) + 2 for k, v in request.query.items(multi=True)) > MAX_ASSET_QUERY:
        return False
    if status == 304:  # revalidated: no content type to go by, so the name must say it is a static file
        return it.path.split("?")[0].lower().endswith(ASSET_SUFFIXES)
    return content_type.startswith(ASSET_TYPES)


def _decode_small(body: bytes, coding: str | None, limit: int) -> tuple[bytes, str, bool] | None:
    """`_decode` on the loop, for a body that is not compressed or is small on the wire and decodes to at most
    OFFLOAD_CHARS (a few ms at most), so that an ordinary compressed prompt never queues behind large ones. None:
    it expands further, decode it off the loop."""
    if not encodings(coding):
        return body, "", False
    if len(body) > SMALL_WIRE_BYTES:
        return None
    decoded = _decode(body, coding, min(limit, OFFLOAD_CHARS))
    return None if decoded[2] and limit > OFFLOAD_CHARS else decoded


def _decode(body: bytes, coding: str | None, limit: int) -> tuple[bytes, str, bool]:
    """The body decoded, capped: (content, what went wrong decoding it, was it a bomb)."""
    try:
        return decode(body, coding, limit), "", False
    except EncodingError as e:
        bomb = isinstance(e, CompressionBomb)
        return b"", f"request body {'refused' if bomb else 'could not be decoded'}: {e}", bomb


def _parse_request(req: tuple[str, str, str, dict[str, str]], content: bytes, problem: str,
                   service) -> providers.Parsed:
    """The decoded request parsed (`problem`: why it could not be decoded). Pure, so that a large body can be
    parsed in a thread (core.offload)."""
    parsed = providers.parse_request(providers.HttpRequest.from_url_parts(*req, content), service.id, service.formats)
    if problem:
        parsed.exchange.parsed = False
        parsed.exchange.warnings.insert(0, problem)
        parsed.error = problem
    return parsed


def _error_response(status: int, code: str, message: str) -> http.Response:
    reply = enforcement.gateway_error(status, code, message)
    return http.Response.make(reply.status, reply.body, reply.headers)


def _finish(it: Interaction, parser: ResponseParser) -> None:
    try:
        parser.finish()
    except Exception as e:  # a parser bug costs the completion, never the audit event
        log.warning("response parser failed for %s: %s", it.host, e)
        it.exchange.warn(f"response parser failed: {type(e).__name__}: {e}")


class _Tap:
    """The stream callable: counts bytes and returns the chunk untouched, so mitmproxy sends it on at once; the
    chunk is decoded (if the stream is compressed) and parsed right after, on the loop's next turn, together with
    whatever else arrived meanwhile. Never raises.

    A decoding failure or a stream that decodes past the cap stops the parsing there (what was reassembled so far
    is kept and the audit says why); the client keeps receiving the stream as the upstream sends it."""

    def __init__(self, it: Interaction, parser: ResponseParser | None, decoder: Decoder | None = None):
        self.it = it
        self.parser = parser
        self.decoder = decoder
        self.unparsed: list[bytes] = []  # chunks sent on and not parsed yet
        self.then: Callable[[bytes], bytes] | None = None  # a later stage's change to what the client receives

    def end(self) -> None:
        """The upstream finished the stream: the parser gets what it has not seen yet, and a compressed stream
        must have reached its end marker."""
        self.parse()
        if self.decoder is not None and self.parser is not None:
            try:
                self.decoder.finish()
            except EncodingError as e:
                self.it.exchange.warn(f"streamed response: {e}")

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        self.it.response_bytes += len(chunk)
        if self.parser is not None and chunk:
            if not self.unparsed:
                asyncio.get_running_loop().call_soon(self.parse)
            self.unparsed.append(chunk)
        if self.then is None:
            return chunk
        # Nothing to send yet must be no chunk at all: mitmproxy sends an empty one, which on a chunked HTTP/1.1
        # connection is the end of the body (the client would stop reading there).
        return self.then(chunk) or ([] if chunk else b"")

    def parse(self) -> None:
        chunks, self.unparsed = self.unparsed, []
        for chunk in chunks:
            if self.parser is None:
                return
            try:
                data = self.decoder.feed(chunk) if self.decoder is not None else chunk
                if data:
                    self.parser.feed(data)
            except EncodingError as e:
                self.it.exchange.warn(f"streamed response not inspected past this point: {e}")
                self.parser = None
            except Exception as e:  # a parser bug must never break the client's stream
                log.warning("stream parser failed for %s: %s", self.it.host, e)
                self.it.exchange.warn(f"stream parser failed: {type(e).__name__}: {e}")
                self.parser = None
