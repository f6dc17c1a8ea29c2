"""Extract's stream tap on a real event loop: a chunk goes on before it is parsed, and nothing is lost."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.flow import Error
from mitmproxy.test import tflow

import providers
from addons.extract import Extract, _Tap
from core.catalog import Catalog
from core.interaction import KEY, Interaction
from core.rulesfile import SHIPPED_RULES
from policy.ruleset import ENDPOINTS


def frame(content: str) -> bytes:
    return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
                                   "choices": [{"index": 0, "delta": {"content": content}}]}).encode() + b"\n\n"


def tapped() -> tuple[_Tap, Interaction]:
    body = json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    parsed = providers.parse_request(providers.HttpRequest.from_url_parts(
        "POST", "api.openai.com", "/v1/chat/completions", {"content-type": "application/json"}, body), "openai")
    it = Interaction(service=Catalog.load(SHIPPED_RULES / ENDPOINTS).match("api.openai.com").service,
                     client_addr="127.0.0.1", host="api.openai.com", method="POST", path="/v1/chat/completions",
                     exchange=parsed.exchange)
    parser = providers.response_parser(parsed, "text/event-stream")
    return _Tap(it, parser), it


def test_a_chunk_is_handed_back_before_it_is_parsed_and_parsed_on_the_next_turn():
    async def go():
        tap, it = tapped()
        fed: list[bytes] = []
        feed = tap.parser.feed
        tap.parser.feed = lambda data: (fed.append(data), feed(data))  # the real parser, watched
        first, second = frame("Hel"), frame("lo")
        assert tap(first) is first and tap(second) is second  # mitmproxy sends what the tap returns, at once
        assert it.response_bytes == len(first) + len(second)
        assert fed == []  # not parsed yet: parsing waits for the loop's next turn
        await asyncio.sleep(0)
        assert fed == [first, second]  # both, in order, in one turn
        last = frame("!")
        assert tap(last) is last and fed == [first, second]
        tap.end()  # the stream's end parses what is left without waiting for the loop
        assert fed == [first, second, last]
        await asyncio.sleep(0)  # the turn scheduled for "!" finds nothing left to parse
        assert fed == [first, second, last]
        tap.parser.finish()
        assert it.exchange.completion == "Hello!"
    asyncio.run(go())


def test_a_stream_that_breaks_off_keeps_what_arrived_before_the_loop_turned():
    """Extract's error hook parses what the tap still holds: a broken stream's audit has every chunk that came."""
    async def go():
        tap, it = tapped()
        flow = tflow.tflow(resp=True)
        flow.metadata[KEY], it.stages.response_parser = it, tap.parser
        flow.response.stream = tap
        flow.error = Error("connection reset")
        for piece in ("Hel", "lo"):
            tap(frame(piece))
        Extract().error(flow)  # before the loop's next turn
        assert it.exchange.completion == "Hello" and it.error == "connection reset"
    asyncio.run(go())


def test_a_parser_failure_stops_parsing_and_says_so_but_never_the_stream():
    async def go():
        tap, it = tapped()
        tap.parser.feed = None  # a parser bug: calling it raises TypeError
        chunk = frame("x")
        assert tap(chunk) is chunk
        await asyncio.sleep(0)
        assert tap.parser is None and any("stream parser failed" in w for w in it.exchange.warnings)
        assert tap(chunk) is chunk  # the client's stream goes on
    asyncio.run(go())


def test_a_later_stage_with_nothing_to_pass_on_yet_sends_no_chunk_at_all():
    """mitmproxy sends every chunk the callable returns, an empty one too, and on a chunked HTTP/1.1 connection
    an empty chunk is the end of the body: a stage holding bytes back (redact's restorer inside a placeholder,
    the tool-call guard inside a call) must make the tap return no chunk instead."""
    async def go():
        tap, _ = tapped()
        held: list[bytes] = []
        tap.then = lambda chunk: (held.append(chunk), b"")[1] if chunk else b"".join(held)
        assert tap(frame("Hel")) == []
        assert tap(b"") == frame("Hel")  # the stream's end: what was held goes out
        tap.then = lambda chunk: b""
        assert tap(b"") == b""  # and at the end nothing is nothing
    asyncio.run(go())
