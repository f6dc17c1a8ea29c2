"""What a client is shown when the policy stops or warns it, in a form that client displays.

An SDK only shows a message it can parse: each provider's SDK reads its own error object (OpenAI's
`{"error": {"message"}}`, Anthropic's `{"type": "error", "error": {...}}`, Google's `{"error": {"status"}}`, Bedrock's
`x-amzn-ErrorType` header plus `{"message"}`, Cohere's `{"message"}`), so a block is answered in the shape of
the provider the request was written for, with status 403, and the message carries a reference id: the audit
event id, so a help desk finds the event from a user's screenshot. Browsers get an HTML page naming the policy.
Pure: builds (status, headers, body), the decide addon turns them into a response.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import orjson

from core.catalog import Service

CONTINUE_PATH = "/__ai-gateway/continue"  # the warn page's "continue" form posts here (intercepted, never sent)
WARNING_HEADER = "x-ai-gateway-warning"
#: Binds a "continue" past a warning to the browser that clicked it, when the proxy does not know the user: users
#: behind one NAT address must not share (nor be credited with) each other's acknowledgements. Set on the AI
#: service's host by the continue response; Recognise takes it off every request to a catalog host.
ACK_COOKIE = "ai_gateway_ack"
BROWSER_CATEGORIES = frozenset({"chat", "write", "img", "vid", "aud", "meet", "srch", "comp", "doc"})

# Wire-format hints (core.catalog Service.formats, provider names) -> the error dialect their SDKs parse.
_DIALECTS = {"openai": "openai", "azure-openai": "openai", "mistral": "openai", "ollama": "openai",
             "huggingface": "openai", "anthropic": "anthropic", "gemini": "google", "vertex": "google",
             "bedrock": "bedrock", "cohere": "cohere"}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def dialect(provider: str | None, service: Service) -> str:
    """The error shape to answer in: the parser that understood the request, else the service's format hints."""
    for name in (provider, *service.formats):
        if name in _DIALECTS:
            return _DIALECTS[name]
    return "openai"  # the most common shape, and what OpenAI-compatible clients everywhere parse


def wants_html(accept: str, service: Service, provider: str | None) -> bool:
    """A browser, or a consumer app whose requests no API parser claimed: answer with a page, not JSON."""
    if "text/html" in accept.lower():
        return True
    return service.category in BROWSER_CATEGORIES and provider not in _DIALECTS


def user_message(action: str, rule: str, message: str, ref: str) -> str:
    verb = "Blocked" if action == "block" else "Warning"
    text = message or "This request is not allowed by the organisation's AI usage policy."
    return f"{verb} by the AI gateway (policy rule '{rule}'): {text} Reference: {ref}"


def tool_refusal(tool: str, rule: str, message: str, ref: str) -> str:
    """What the model "says" instead of a tool call the policy refused (providers/toolcalls.py puts it in the
    answer's own shape): the agent shows it, or hands it back to the model, which can try another way."""
    text = message or "This tool may not be used under the organisation's AI usage policy."
    return f"The AI gateway refused the call of the tool '{tool}' (policy rule '{rule}'): {text} Reference: {ref}"


def api_error(dialect_name: str, text: str, ref: str, status: int = 403) -> Reply:
    """A refusal in the provider's own error shape: 403 for a policy decision, 400 for a request the gateway will
    not forward as written (its meaning is ambiguous), each typed the way that provider types such errors."""
    json = {"content-type": "application/json", "x-ai-gateway-reference": ref}
    invalid = status == 400
    if dialect_name == "anthropic":
        kind = "invalid_request_error" if invalid else "permission_error"
        body = {"type": "error", "error": {"type": kind, "message": text}, "request_id": ref}
    elif dialect_name == "google":
        body = {"error": {"code": status, "message": text, "status": "INVALID_ARGUMENT" if invalid else
                          "PERMISSION_DENIED"}}
    elif dialect_name == "bedrock":
        kind = "ValidationException" if invalid else "AccessDeniedException"
        json["x-amzn-errortype"] = f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        json["x-amzn-requestid"] = ref
        body = {"message": text}
    elif dialect_name == "cohere":
        body = {"id": ref, "message": text}
    else:
        body = {"error": {"message": text, "type": "invalid_request_error" if invalid else "permission_error",
                          "param": None, "code": "ambiguous_body" if invalid else "blocked_by_policy"}}
    return Reply(status, json, orjson.dumps(body))


#: The JSON-RPC error code of an MCP request the gateway refused (in the range JSON-RPC leaves to servers).
MCP_REFUSED = -32001
MCP_INVALID = -32600  # JSON-RPC's own code for a request that is not valid JSON-RPC


def mcp_refusals(requests: list[tuple[object, str]], text: str, ref: str, code: int = MCP_REFUSED) -> list[dict]:
    """What an MCP client shows for requests the gateway refused, one answer per request id: a `tools/call` gets
    a tool result with `isError` (clients hand it to the model, which reads why), any other request a JSON-RPC
    error. A body with no request that can be answered by id (not JSON-RPC) gets one error with id null. The
    result says `resultType: complete`, which the 2026-07-28 protocol requires and earlier ones allow (a result may
    carry more fields than it names)."""
    data = {"reference": ref}
    if not requests:
        return [{"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text, "data": data}}]
    return [{"jsonrpc": "2.0", "id": rpc_id, "result": {"content": [{"type": "text", "text": text}], "isError": True,
                                                         "resultType": "complete", "_meta": data}}
            if method == "tools/call" and code == MCP_REFUSED else
            {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": text, "data": data}}
            for rpc_id, method in requests]


def mcp_reply(answers: list[dict], batch: bool, ref: str) -> Reply:
    """The answers as a Streamable HTTP POST's response (200 JSON; a batch answered as one); none: 202, no body,
    as for notifications."""
    headers = {"x-ai-gateway-reference": ref}
    if not answers:
        return Reply(202, headers, b"")
    return Reply(200, {"content-type": "application/json", **headers}, orjson.dumps(answers if batch else answers[0]))


def gateway_error(status: int, code: str, message: str, kind: str = "invalid_request_error",
                  headers: dict[str, str] | None = None) -> Reply:
    """A refusal that is the gateway's own, not the policy's (a body it cannot read, a compression bomb, too busy):
    OpenAI-style JSON, which Anthropic's and most other SDKs also surface."""
    return Reply(status, {"content-type": "application/json", **(headers or {})},
                 orjson.dumps({"error": {"type": kind, "code": code, "message": message}}))


def plain_refusal(text: str, ref: str = "", status: int = 403) -> Reply:
    """A refusal as plain text, for what no provider's client parses: a CONNECT, a connection blocked at its
    handshake, a warn page's expired link."""
    headers = {"content-type": "text/plain; charset=utf-8"}
    if ref:
        headers["x-ai-gateway-reference"] = ref
    return Reply(status, headers, text.encode())


def block_page(service: Service, rule: str, message: str, ref: str) -> Reply:
    body = _page("Blocked by your organisation's AI policy",
                 f"<p>Your request to <b>{_e(service.name)}</b> was blocked by the policy rule "
                 f"<code>{_e(rule)}</code>.</p><p>{_e(message or 'This use of AI is not allowed.')}</p>"
                 f"<p class=ref>Reference: <code>{_e(ref)}</code>. Quote it if you ask for an exception.</p>")
    return Reply(403, _html_headers(ref), body)


def warn_page(service: Service, rule: str, message: str, ref: str, token: str, target: str) -> Reply:
    body = _page("Check before you continue",
                 f"<p>You are about to use <b>{_e(service.name)}</b>. The policy rule <code>{_e(rule)}</code> "
                 f"asks you to confirm.</p><p>{_e(message or 'Make sure this use of AI is allowed.')}</p>"
                 f'<form method="post" action="{CONTINUE_PATH}">'
                 f'<input type="hidden" name="token" value="{_e(token)}">'
                 f'<input type="hidden" name="target" value="{_e(target)}">'
                 f'<label>Why do you need it? (optional)<br><textarea name="justification" rows="3" cols="60">'
                 f'</textarea></label><br><button type="submit">Continue</button></form>'
                 f"<p class=ref>Reference: <code>{_e(ref)}</code></p>")
    return Reply(403, _html_headers(ref), body)


def _html_headers(ref: str) -> dict[str, str]:
    return {"content-type": "text/html; charset=utf-8", "cache-control": "no-store", "x-ai-gateway-reference": ref}


def _page(title: str, content: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title><style>body{{font-family:"
            f"sans-serif;max-width:40em;margin:4em auto;line-height:1.5}}.ref{{color:#666;font-size:.9em}}</style>"
            f"</head><body><h1>{_e(title)}</h1>{content}</body></html>").encode()


def _e(text: str) -> str:
    return html.escape(text, quote=True)
