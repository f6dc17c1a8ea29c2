"""MCP (Model Context Protocol) over HTTP: the JSON-RPC 2.0 messages an MCP client and server exchange, in both
HTTP transports, read into the Exchange so that tool rules, DLP and the audit see an agent's MCP traffic like a
model API's tool calls.

Source [DOC]: the MCP specification's transports (Streamable HTTP, and the HTTP+SSE transport it replaced);
[SDK]: the official `mcp` Python SDK, which the end-to-end tests drive as client and as server (marks:
docs/providers.md).

- **Streamable HTTP**: the client POSTs one message (or, in older versions, a batch) to the endpoint; the server
  answers `application/json` or with an SSE stream of messages; a GET opens a stream of the server's own requests
  and notifications; `Mcp-Session-Id` names the session, `MCP-Protocol-Version` the version; DELETE ends it.
- **HTTP+SSE** (the older transport): a GET opens the stream, whose first event (`endpoint`) names the URL the
  client POSTs its messages to; those POSTs are answered 202 with no body, and every answer comes on the GET
  stream, matched by id.

Operations: `mcp.<method>` for one request or notification (`mcp.tools/call`, `mcp.tools/list`,
`mcp.initialize`, `mcp.notifications/initialized`), `mcp.other` for a method MCP does not define, `mcp.batch`,
`mcp.response` (the client answering a request of the server's, such as sampling), `mcp.stream` (a GET stream),
`mcp.session.end` (DELETE), `mcp.invalid` (not JSON-RPC 2.0). A `tools/call` is a ToolCall (name, parsed
arguments as leaves for DLP, the JSON-RPC id, the server); the tools a `tools/list` answer lists are the
exchange's definitions (with their hash, `ToolDefinition.digest`); a call's result is its completion.

Pure: no mitmproxy. What the gateway changes in the server's messages (`Rewrite`, `SseEvents`) lives here too, so
that the addon (addons/mcp.py) only wires it to flows.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import orjson

from core.exchange import Exchange, JsonPath, Message, ToolCall, ToolDefinition
from providers.base import (MAX_COMPLETION_CHARS, BufferedJson, CompletionBuffer, HttpRequest,
                            ResponseParser, SseParser, json_body, tool_call)

NAME = "mcp"
#: The methods MCP defines (besides `notifications/*`): a JSON-RPC body calling one of them is MCP on any host.
METHODS = frozenset({"initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
                     "resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list",
                     "prompts/get", "completion/complete", "logging/setLevel", "sampling/createMessage",
                     "elicitation/create", "roots/list", "tasks/get", "tasks/list", "tasks/cancel", "tasks/result",
                     "server/discover", "subscriptions/listen"})  # the last two: 2026-07-28 (stateless)
MAX_METHOD = 64  # a longer notification name is `mcp.other`: operations are a short column
#: Definitions a long-lived stream may add to one exchange (each listing of a session adds its tools again).
MAX_TOOLS = 4096
#: An SSE event the gateway may have to change is held until it is complete, up to this size; a larger one is
#: dropped (what the gateway cannot read whole, it cannot pass unfiltered).
MAX_EVENT = 8 * 1024 * 1024


def is_method(method: Any) -> bool:
    return isinstance(method, str) and (method in METHODS or method.startswith("notifications/"))


def server_of(url_or_host: str) -> str:
    """How rules name an MCP server (`tools: {servers: [...]}`): its host name, lower-case, without port."""
    if "://" in url_or_host:
        return (urlsplit(url_or_host).hostname or "").lower()
    return url_or_host.rsplit(":", 1)[0].lower() if url_or_host.count(":") == 1 else url_or_host.lower()


def rpc_key(rpc_id: Any) -> str:
    """A JSON-RPC id as a key: its JSON text, so `1` and `"1"` stay apart, as the client tells them apart."""
    return orjson.dumps(rpc_id).decode()


def messages(value: Any) -> Iterator[tuple[JsonPath, dict[str, Any] | None, str]]:
    """Each message of a body (one object or a batch) with its path, or None and why it is not JSON-RPC 2.0."""
    if isinstance(value, list):
        if not value:
            yield (), None, "empty batch"
        for i, item in enumerate(value):
            yield (i,), *_checked(item)
    else:
        yield (), *_checked(value)


def _checked(msg: Any) -> tuple[dict[str, Any] | None, str]:
    if not isinstance(msg, dict):
        return None, f"not a JSON-RPC message ({type(msg).__name__})"
    if msg.get("jsonrpc") != "2.0":
        return None, "not JSON-RPC 2.0 (no 'jsonrpc': '2.0')"
    rpc_id = msg.get("id")
    if "id" in msg and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int))):
        return None, f"id must be a string or an integer, not {orjson.dumps(rpc_id).decode()[:40]}"
    if "method" in msg:
        return (msg, "") if isinstance(msg["method"], str) else (None, "method is not a string")
    if "id" not in msg or ("result" in msg) == ("error" in msg):
        return None, "neither a request nor a response (a response has an id and one of result, error)"
    return msg, ""


def requests_of(value: Any) -> list[tuple[Any, str]]:
    """(id, method) of each request in a body: what must be answered when it is refused (notifications and the
    client's own responses are not answered)."""
    return [(m["id"], m["method"]) for _, m, _ in messages(value) if m is not None and "method" in m and "id" in m]


def operation_of(value: Any) -> str:
    if isinstance(value, list):
        return "mcp.batch" if value else "mcp.invalid"
    msg, problem = _checked(value)
    if msg is None:
        return "mcp.invalid"
    method = msg.get("method")
    if method is None:
        return "mcp.response"
    return f"mcp.{method}" if is_method(method) and len(method) <= MAX_METHOD else "mcp.other"


class McpProvider:
    name = NAME

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        """On a catalog MCP server (`formats: [mcp]`) every request; on any other host a JSON-RPC body calling an
        MCP method, or the GET stream of a Streamable HTTP session."""
        hinted = NAME in hints
        if req.method == "GET":
            if hinted or ("mcp-session-id" in req.headers and "text/event-stream" in req.headers.get("accept", "")):
                return "mcp.stream"
            return None
        if req.method == "DELETE":
            return "mcp.session.end" if hinted or "mcp-session-id" in req.headers else None
        if req.method != "POST":
            return None
        # cheap before parsing: a JSON body naming "jsonrpc", or holding an escape (`"json\u0072pc"` is the same
        # key to the server)
        if req.body.lstrip()[:1] not in (b"{", b"[") or not (b'"jsonrpc"' in req.body or b"\\u" in req.body):
            return "mcp.invalid" if hinted else None
        try:
            value = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return "mcp.invalid" if hinted else None
        if hinted:
            return operation_of(value)
        # any message calling an MCP method makes the body MCP (a batch cannot hide a call behind a response)
        mcp_call = any(m is not None and is_method(m.get("method")) for _, m, _ in messages(value))
        return operation_of(value) if mcp_call else None

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        if req.method == "GET":
            exchange.stream = True
        if req.method != "POST":
            return
        value = json_body(req)
        server = server_of(req.host)
        for path, msg, problem in messages(value):
            where = "/".join(map(str, path)) or "body"
            if msg is None:
                exchange.parsed = False
                exchange.warn(f"{where}: {problem}")
            elif msg.get("method") == "tools/call":
                call = _call(msg, path, server)
                if call is None:
                    exchange.parsed = False
                    exchange.warn(f"{where}: tools/call without a tool name")
                else:
                    exchange.messages.append(Message(role="assistant", tool_calls=[call]))
        # every other string (resource URIs, prompt arguments, sampling answers) is read by the whole-body walk

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser | None:
        """JSON or SSE; nothing for any other answer (the older transport's `202 Accepted`, whose answers come on
        the GET stream)."""
        answer = Answer(exchange)
        if content_type == "text/event-stream":
            return SseParser(exchange, answer.event, answer.done)
        return BufferedJson(exchange, answer.body) if content_type == "application/json" else None


def _call(msg: dict[str, Any], path: JsonPath, server: str) -> ToolCall | None:
    params = msg.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return None
    rpc_id = rpc_key(msg["id"]) if "id" in msg else ""
    if "arguments" in params:
        call = tool_call(params["name"], params["arguments"], (*path, "params", "arguments"), rpc_id)
    else:
        call = ToolCall(params["name"], "{}", rpc_id, value={})
    call.server = server
    return call


class Answer:
    """The server's messages, whole (JSON) or event by event (SSE): listed tools become the exchange's
    definitions, a call's result its completion, an error a warning. The `endpoint` event of the older transport
    is only a URL."""

    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.text = CompletionBuffer(exchange)

    def body(self, value: Any) -> None:
        for path, msg, problem in messages(value):
            if msg is None:
                self.exchange.warn(f"answer {'/'.join(map(str, path)) or 'body'}: {problem}")
            else:
                self.message(msg)
        self.done()

    def event(self, event: str, data: Any) -> None:
        if event == "endpoint":
            return
        if isinstance(data, (dict, list)):
            for path, msg, problem in messages(data):
                if msg is None:
                    self.exchange.warn(f"answer event: {problem}")
                else:
                    self.message(msg)
        elif data:
            self.exchange.warn("answer event: not JSON")

    def message(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            error = msg["error"] if isinstance(msg["error"], dict) else {}
            self.exchange.warn(f"JSON-RPC error {error.get('code')}: {str(error.get('message'))[:200]}")
            self.exchange.finish_reason = "error"
            return
        result = msg.get("result")
        if not isinstance(result, dict):
            return
        if isinstance(result.get("tools"), list):
            for tool in listed(result["tools"]):
                if len(self.exchange.tools) < MAX_TOOLS:
                    self.exchange.tools.append(tool)
            self.exchange.finish_reason = "tools"
        elif isinstance(result.get("content"), list):
            for item in result["content"]:
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    self.add(item["text"])
            if "structuredContent" in result:
                self.add(orjson.dumps(result["structuredContent"], default=str).decode()[:MAX_COMPLETION_CHARS])
            self.exchange.finish_reason = "tool_error" if result.get("isError") is True else "tool_result"

    def add(self, text: str) -> None:
        """A text of a result, on a line of its own (a stream carries many results)."""
        if self.text.pieces and text:
            self.text.add("\n")
        self.text.add(text)

    def done(self) -> None:
        self.exchange.completion = self.text.text()


def listed(tools: list[Any]) -> list[ToolDefinition]:
    """The tools of a `tools/list` result (`{name, description, inputSchema}`), each with its index as path (the
    server is the host's: the mcp stage names it)."""
    return [ToolDefinition(t["name"], str(t.get("description") or ""), t.get("inputSchema"), ("tools", i))
            for i, t in enumerate(tools) if isinstance(t, dict) and isinstance(t.get("name"), str)]


def hosted_servers(entries: Any, path: JsonPath, exchange: Exchange) -> None:
    """MCP servers a model provider connects to on the client's behalf: OpenAI Responses `tools[]` entries of
    `type: mcp` (`server_label`, `server_url` or a `connector_id`) and Anthropic `mcp_servers[]` (`name`, `url`).
    Each is a definition named by its label, with the server's host as `server`, so `tools: {servers: ...}` rules
    hold for it and `action: strip` can take it out at its path."""
    if not isinstance(entries, list):
        return
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or (path == ("tools",) and entry.get("type") != "mcp"):
            continue
        url = entry.get("server_url") or entry.get("url") or ""
        server = server_of(url) if isinstance(url, str) and url else f"connector:{entry.get('connector_id', '')}"
        name = str(entry.get("server_label") or entry.get("name") or server)
        at = (*path, i)
        known = next((t for t in exchange.tools if t.path == at), None)
        if known is None:
            exchange.tools.append(ToolDefinition(name, str(entry.get("server_description") or ""),
                                                 entry.get("allowed_tools"), at, server))
        else:
            known.name, known.server = name, server


#: A tool listed again and again is written again (its `last_seen`) at most this often: steady listings cost no
#: write, and pruning, which goes by `last_seen`, still tells a tool in use from one forgotten.
RESEEN = 3600.0


@dataclass(frozen=True, slots=True)
class Seen:
    """What the gateway remembers of one tool of one server: the digest of the first definition listed and when,
    and of the last one listed and when (the last is what a call of the tool is judged by)."""

    first: str
    first_seen: float
    last: str
    last_seen: float

    @property
    def changed(self) -> bool:
        return self.last != self.first


class FirstSeen:
    """The first definition (its digest) of each (server, tool) listed, so a listing whose definition differs is
    flagged: a server that changes a tool's description or schema after its users approved it (a "rug pull") is
    seen at the next listing, and its calls until it lists the first one again. And the server that first listed
    each tool name, so the same name listed by another server is flagged as shadowing it (an agent calling the
    name may reach the wrong server's tool).

    Bounded: at most `per_server` tools of one server and `limit` in all; past either, the tenth seen least
    recently (of that server, or of all) is forgotten and learned again from its next listing, so a server
    listing endless new names pushes out its own tools, not another server's. In memory: a store shared by the
    gateway's processes and kept across restarts (storage/first_seen.py) feeds it `merge`."""

    def __init__(self, limit: int = 100_000, per_server: int = MAX_TOOLS):
        self.limit, self.per_server = limit, per_server
        self.servers: dict[str, dict[str, Seen]] = {}  # server -> tool name -> what was seen
        self.names: dict[str, set[str]] = {}  # tool name -> the servers that listed it
        self.count = 0

    def get(self, server: str, name: str) -> Seen | None:
        return self.servers.get(server, {}).get(name)

    def observe(self, tools: list[ToolDefinition], now: float) -> list[tuple[str, str, Seen]]:
        """Remember a listing and mark each of its tools (`mark`). Returns what the listing changed (a new tool,
        another last definition, a `last_seen` older than RESEEN): what a shared store must write."""
        out = []
        for tool in tools:
            row = self.get(tool.server, tool.name)
            if row is None:
                row = Seen(tool.digest, now, tool.digest, now)
            elif row.last != tool.digest or now - row.last_seen >= RESEEN:
                row = replace(row, last=tool.digest, last_seen=max(now, row.last_seen))
            else:
                continue
            self._put(tool.server, tool.name, row)
            out.append((tool.server, tool.name, row))
        self._prune({server for server, _, _ in out})
        for tool in tools:
            self.mark(tool)
        return out

    def merge(self, rows: list[tuple[str, str, Seen]]) -> None:
        """Take what another process (or this one, earlier) wrote: its first definition holds (the first written
        wins when two processes learned a tool at once), and the last definition is the later one."""
        for server, name, theirs in rows:
            mine = self.get(server, name)
            if mine is not None and mine.last_seen > theirs.last_seen:
                theirs = replace(theirs, last=mine.last, last_seen=mine.last_seen)
            self._put(server, name, theirs)
        self._prune({server for server, _, _ in rows})

    def mark(self, tool: ToolDefinition) -> None:
        """`changed`: its server's last listing of it differed from the first (a listing's own tool: this one
        does); `shadows`: the server that first listed a tool of this name, when it is another."""
        row = self.get(tool.server, tool.name)
        tool.changed = row is not None and row.changed
        owner = self.owner(tool.name)
        tool.shadows = owner if owner is not None and owner != tool.server else ""

    def owner(self, name: str) -> str | None:
        """The server that listed a tool of this name first (of those remembered)."""
        servers = self.names.get(name)
        if not servers:
            return None
        return min(servers, key=lambda s: (self.servers[s][name].first_seen, s))

    def _put(self, server: str, name: str, row: Seen) -> None:
        tools = self.servers.setdefault(server, {})
        if name not in tools:
            self.count += 1
            self.names.setdefault(name, set()).add(server)
        tools[name] = row

    def _forget(self, server: str, name: str) -> None:
        tools = self.servers[server]
        del tools[name]
        if not tools:
            del self.servers[server]
        servers = self.names[name]
        servers.discard(server)
        if not servers:
            del self.names[name]
        self.count -= 1

    def _prune(self, grown: set[str]) -> None:
        """Back under the caps, after the servers in `grown` were told new tools (only they can have passed
        `per_server`: the others are not looked at, so one listing costs what it lists, not every server's)."""
        for server in [s for s in grown if len(self.servers.get(s, ())) > self.per_server]:
            self._forget_least_recent([(server, n) for n in self.servers[server]], self.per_server)
        if self.count > self.limit:
            self._forget_least_recent([(s, n) for s, tools in self.servers.items() for n in tools], self.limit)

    def _forget_least_recent(self, keys: list[tuple[str, str]], cap: int) -> None:
        keys.sort(key=lambda k: self.servers[k[0]][k[1]].last_seen)
        for server, name in keys[:overflow(len(keys), cap)]:
            self._forget(server, name)


def overflow(count: int, cap: int) -> int:
    """How many of `count` remembered tools to forget, the least recently seen first, when past `cap`: down to nine
    tenths of it, so that a full memory sorts once per tenth of it, not at every tool. The one rule of FirstSeen
    and of its file (storage/first_seen.py)."""
    return count - cap * 9 // 10 if count > cap else 0


#: The older transport answers on its GET stream, which may be another gateway process's connection: a request
#: the gateway refused is sent on as a `ping` under an id that carries the refusal itself, and whichever process
#: reads the server's answer to it puts the refusal in its place.
REFUSED_ID = "ai-gateway-refused:"
MAX_REFUSED_ID = 16 * 1024


def refused_ping(answer: dict[str, Any]) -> dict[str, Any]:
    """A ping under an id that carries `answer` (the refusal, under the refused request's own id)."""
    rpc_id = REFUSED_ID + base64.urlsafe_b64encode(orjson.dumps(answer)).decode()
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "ping"}


def refusal_in(rpc_id: Any) -> dict[str, Any] | None:
    """The refusal a ping's id carries, or None. Only the shapes of a refusal are taken (a tool error result, a
    JSON-RPC error): an id a server made up cannot smuggle a listing past the filter."""
    if not isinstance(rpc_id, str) or not rpc_id.startswith(REFUSED_ID) or len(rpc_id) > MAX_REFUSED_ID:
        return None
    try:
        answer = orjson.loads(base64.urlsafe_b64decode(rpc_id[len(REFUSED_ID):]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0" or _checked(answer)[0] is None:
        return None
    if set(answer) == {"jsonrpc", "id", "error"}:
        return answer if isinstance(answer["error"], dict) else None
    result = answer.get("result")
    if set(answer) == {"jsonrpc", "id", "result"} and isinstance(result, dict) and result.get("isError") is True \
            and set(result) <= {"content", "isError", "resultType", "_meta"}:
        return answer
    return None


class Rewrite:
    """The changes to a server's messages: every `tools/list` answer loses the tools `hide` names (any answer,
    whatever its id: a server answering under an id the client did not use gains nothing), and the answer to a
    refused request's ping (`refused_ping`) becomes the refusal it carries."""

    def __init__(self, hide: Callable[[list[ToolDefinition]], set[str]]):
        self.hide = hide

    def value(self, value: Any) -> Any | None:
        """The body as the client gets it, or None when nothing changed."""
        if isinstance(value, list):
            out = [self.message(m) for m in value]
            return None if all(o is None for o in out) else [m if o is None else o for m, o in zip(value, out)]
        return self.message(value)

    def message(self, msg: Any) -> dict[str, Any] | None:
        if not isinstance(msg, dict) or "method" in msg:
            return None
        refusal = refusal_in(msg.get("id"))
        if refusal is not None:
            return refusal
        result = msg.get("result")
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            hidden = self.hide(listed(result["tools"]))
            if hidden:
                kept = [t for t in result["tools"] if not (isinstance(t, dict) and t.get("name") in hidden)]
                return {**msg, "result": {**result, "tools": kept}}
        return None


def might_change(raw: bytes) -> bool:
    """Cheap test before parsing: only a listing or the answer to a refused request's ping changes."""
    return may_list(raw) or REFUSED_ID.encode() in raw


def may_list(raw: bytes) -> bool:
    """Could these bytes hold a listing? A `"tools"` key, or any JSON escape (`"tool\\u0073"` is the same key to
    the client's parser): what the gateway must read before the client does."""
    return b'"tools"' in raw or b"\\u" in raw


#: A blank line: a line end (CRLF, a CR not followed by LF, or LF) followed by another one.
_BLANK_LINE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")


class SseEvents:
    """Splits an SSE byte stream into whole events (raw bytes, blank line included), holding only the event still
    arriving; one larger than MAX_EVENT is dropped whole (`dropped` counts them). An event ends at a blank line
    whatever mix of CRLF, CR and LF makes it, as the client's parser reads it, so a server cannot hide a listing
    in what the gateway would take for the event before it. The bytes already searched are not searched again,
    so a long event in small chunks costs linear time."""

    def __init__(self, max_event: int = MAX_EVENT):
        self.buf = bytearray()
        self.max_event = max_event
        self.skipping = False
        self.dropped = 0
        self.searched = 0  # the buffer holds no blank line that ends before this offset

    def feed(self, chunk: bytes) -> list[bytes]:
        self.buf += chunk
        out: list[bytes] = []
        while True:
            m = _BLANK_LINE.search(self.buf, max(0, self.searched - 3))  # a line end split across chunks
            if m is None:
                self.searched = len(self.buf)
                if len(self.buf) > self.max_event:
                    del self.buf[:-3]  # the start of a line end that the next chunk completes
                    self.searched = len(self.buf)
                    if not self.skipping:
                        self.skipping, self.dropped = True, self.dropped + 1
                return out
            event = bytes(self.buf[:m.end()])
            del self.buf[:m.end()]
            self.searched = 0
            if self.skipping:
                self.skipping = False
                continue
            out.append(event)

    def rest(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        rest, self.buf, self.searched = bytes(self.buf), bytearray(), 0
        return b"" if self.skipping else rest


def rewrite_event(raw: bytes, rewrite: Rewrite) -> bytes:
    """An SSE event as the client gets it: b"" when it is dropped (data that may hold a listing but that the
    gateway cannot parse)."""
    lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    data = b"\n".join(line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:"))
    if not data or not might_change(data):
        return raw
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return b"" if may_list(data) else raw
    changed = rewrite.value(value)
    if changed is None:
        return raw
    head = b"".join(line + b"\n" for line in lines if line and not line.startswith(b"data:"))
    return head + b"data: " + orjson.dumps(changed) + b"\n\n"


PROVIDER = McpProvider()

__all__ = ["PROVIDER", "FirstSeen", "Rewrite", "Seen", "SseEvents", "hosted_servers", "may_list", "might_change",
           "refusal_in", "refused_ping", "requests_of", "rewrite_event", "server_of"]
