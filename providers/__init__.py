"""Provider registry: from an HTTP request to a normalized `Exchange`, and from its response to the completion.

Order matters: providers are asked in turn, those named in the catalog's `formats` hints first, so a
format-specific parser claims a request before a generic one. A catalog host whose request nobody recognises is
still an AI exchange: it is audited as `unknown` with the parse warning, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from core.exchange import Exchange
from providers import anthropic, bedrock, bedrock_agent, cohere, gemini, mcp, mistral, ollama, openai, vertex
from providers import (chatgpt_web, claude_web, deepseek_web, gemini_web, grok_web, mistral_web, perplexity_web,
                       poe_web)
from providers.base import BodyError, HttpRequest, Provider, ResponseParser
from providers.walk import AmbiguousBody, Coverage, canonical_json, looks_like_json, walk_json, walk_text

PROVIDERS: list[Provider] = [gemini.PROVIDER, vertex.PROVIDER, bedrock.PROVIDER, bedrock_agent.PROVIDER,
                             cohere.PROVIDER, ollama.PROVIDER, mistral.PROVIDER, anthropic.PROVIDER, openai.PROVIDER]
#: Consumer web apps go first, before the API parsers hinted for the same hosts (ChatGPT's `/backend-api/files`
#: is not an OpenAI files call); each claims requests only where the catalog names its format (providers/webapp.py).
PROVIDERS[:0] = [chatgpt_web.PROVIDER, claude_web.PROVIDER, gemini_web.PROVIDER, perplexity_web.PROVIDER,
                 deepseek_web.PROVIDER, mistral_web.PROVIDER, grok_web.PROVIDER, poe_web.PROVIDER]
#: MCP first of the unhinted: a JSON-RPC body calling an MCP method is MCP on whichever host it goes to, once the
#: parsers the catalog names for the host have declined it (providers/mcp.py).
PROVIDERS.insert(0, mcp.PROVIDER)


@dataclass(slots=True)
class Parsed:
    exchange: Exchange
    provider: Provider | None
    error: str = ""  # why the request body could not be read ("" if it was)
    #: Why the body's meaning is ambiguous (providers.walk.AmbiguousBody): such a body is refused, never forwarded.
    ambiguous: str = ""
    body: Any = None  # the canonical parse of a JSON body: exactly what was inspected, for a stage that rewrites it


@cache
def _ordered(hints: tuple[str, ...]) -> tuple[Provider, ...]:
    """The parsers to try, the catalog's hints for the service first; the same few tuples of hints on every
    request, so sorted once each."""
    return tuple(sorted(PROVIDERS, key=lambda p: p.name not in hints))


def parse_request(req: HttpRequest, service: str, hints: tuple[str, ...] = ()) -> Parsed:
    """The provider parser's structure, then the whole-body walk for everything it did not read. Never raises:
    a body that could not be read yields an exchange with parsed=False and the reason in `error`; one whose JSON
    meaning is ambiguous has the reason in `ambiguous`."""
    parsed = _parse(req, service, hints)
    _walk(req, parsed)
    return parsed


def _walk(req: HttpRequest, parsed: Parsed) -> None:
    """Add what the parser did not read (providers/walk.py). A body the walk reads whole is `read`: its every
    string is inspected, whether or not a parser knows the endpoint (the parser's complaint stays a warning)."""
    x = parsed.exchange
    if not req.body:
        return
    coverage = Coverage()
    if looks_like_json(req.content_type, req.body):
        try:
            value = canonical_json(req.body)
        except AmbiguousBody as e:
            parsed.ambiguous = str(e)
            x.parsed = x.read = False
            x.warn(f"request body refused: {e}")
            return
        walk_json(value, x, coverage)
        parsed.body = value
        readable = True
    else:
        parts = x.request_parts()  # the parser's (a multipart upload's fields and files): not scanned twice
        for part in parts:
            coverage.add(part.source, part.path)
        known = {p.text for p in parts}
        readable = walk_text(req.body, req.headers.get("content-type", ""), x, coverage)
        x.extra = [p for p in x.extra if p.text not in known]
    x.coverage = coverage.lines()
    x.read = readable or x.parsed
    if not x.read:
        x.warn("the body is opaque (binary): its content was not inspected")
    elif not x.parsed:
        x.warn("read by the whole-body walk (no parser understood all of it)")


def _parse(req: HttpRequest, service: str, hints: tuple[str, ...]) -> Parsed:
    exchange = Exchange(service=service)
    for provider in _ordered(tuple(hints)):
        operation = provider.recognises(req, hints)
        if operation is None:
            continue
        exchange.operation = operation
        try:
            provider.parse_request(req, operation, exchange)
        except BodyError as e:
            return _unparsed(exchange, provider, f"{operation}: {e}")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
            return _unparsed(exchange, provider, f"{operation}: unexpected shape: {type(e).__name__}: {e}")
        return Parsed(exchange, provider)
    exchange.operation = "unknown"
    exchange.parsed = False
    exchange.warn(f"unrecognised request {req.method} {req.path}")
    return Parsed(exchange, None)


def _unparsed(exchange: Exchange, provider: Provider, error: str) -> Parsed:
    exchange.parsed = False
    exchange.warn(error)
    return Parsed(exchange, provider, error)


def response_parser(parsed: Parsed, content_type: str) -> ResponseParser | None:
    if parsed.provider is None:
        return None
    return parsed.provider.response_parser(parsed.exchange, content_type)


__all__ = ["HttpRequest", "Parsed", "PROVIDERS", "parse_request", "response_parser", "BodyError"]
