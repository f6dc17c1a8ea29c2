"""The normalized model of one AI exchange.

Every provider parser maps its wire format into an `Exchange`; DLP, policy and audit only ever see this model,
so adding a provider never touches them. Nothing here imports mitmproxy: the model is built and inspected in unit
tests and in worker processes.

A `TextPart` remembers where its text lives in the request body (`path`, a JSON pointer as a tuple of keys and
indexes), so redaction can rewrite exactly that string in the original JSON and keep the request valid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, overload

JsonPath = tuple[str | int, ...]
#: The `part` of a DLP finding in the completion (a response-side scan); request findings index request_parts().
#: The largest value the audit's part column (UInt16) holds, so it sorts after every request part.
RESPONSE_PART = 65535


@dataclass(slots=True)
class TextPart:
    """A piece of text the user or the model sent, and where it lives in the body (None: not addressable)."""

    text: str
    path: JsonPath | None = None
    #: Words that give the text its meaning, scanned just before it but never part of it (the key a tool-call
    #: argument value sits under: `"password": "..."` is a secret, the bare value may not look like one).
    context: str = ""
    #: Who found this text: "parser" (a provider parser, which knows its role), "walk" (the whole-body walk, for
    #: fields and endpoints no parser reads: providers/walk.py) or "upload" (text extracted from a file).
    source: str = "parser"


@dataclass(slots=True)
class Attachment:
    """A non-text part: image, audio, file. `inspected` says whether its text reached DLP."""

    kind: str  # image | audio | file | video | document
    name: str = ""
    mime_type: str = ""
    size: int = 0  # bytes, decoded size when known
    text: str | None = None  # text extracted for inspection (text-like uploads)
    inspected: bool = False


@dataclass(slots=True)
class ToolCall:
    """A tool call made by the model (or echoed back in history).

    Arguments come as a JSON object (Anthropic `tool_use.input`, Gemini `args`; `path` is the object's path) or as
    JSON text in a string (OpenAI `function.arguments`; `path` is the string's). Either way, when they parse, each
    string (and number) value is a `leaves` part with its own path, running on into the string for JSON text, and
    its key as context: DLP scans the values as written, not JSON-escaped, and redaction rewrites the strings in
    place (a finding in a number cannot be rewritten and blocks). Arguments that do not parse are one part.
    """

    name: str
    arguments: str  # JSON text as sent on the wire (or the object serialized)
    id: str = ""
    path: JsonPath | None = None
    leaves: list[TextPart] = field(default_factory=list)
    value: Any = None  # the arguments parsed, when they are a JSON object or array that parses one way
    server: str = ""  # the MCP server the tool lives on (its host), "" for the client's own tools

    def text_parts(self) -> list[TextPart]:
        """What DLP scans of the arguments: the values of an object, else the JSON text."""
        return self.leaves or [TextPart(self.arguments, self.path)]

    def rendered(self) -> str:
        """The arguments as the audit shows them: the JSON text, with the current text of each leaf in place (so
        a copy whose leaves were masked renders masked)."""
        if not self.leaves or self.path is None:
            return self.arguments
        try:
            value, changed = json.loads(self.arguments), False
            keys = _keys(value)
            if any(leaf.path is None and leaf.text not in keys for leaf in self.leaves):
                return WITHHELD  # a key was masked: the JSON cannot show it masked, so none of it is shown
            for leaf in self.leaves:
                if leaf.path is None:  # a key, unchanged
                    continue
                rel = leaf.path[len(self.path):]
                node = value
                for step in rel[:-1]:
                    node = node[step]
                old = node[rel[-1]] if rel else leaf.text
                if (old if isinstance(old, str) else json.dumps(old)) != leaf.text:
                    node[rel[-1]], changed = leaf.text, True
        except (ValueError, KeyError, IndexError, TypeError):
            return self.arguments
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")) if changed else self.arguments


#: What the audit shows of tool-call arguments whose keys held something DLP found.
WITHHELD = '{"<withheld>": "a key of these arguments held data DLP found"}'


def _keys(value) -> set[str]:
    """Every object key in a JSON value."""
    out: set[str] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.update(map(str, node))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


@dataclass(slots=True)
class ToolResult:
    """What a tool returned, sent back to the model."""

    call_id: str
    text: str
    path: JsonPath | None = None


@dataclass(slots=True)
class ToolDefinition:
    """A tool the request offers the model; `path` is its entry in the body, so a rule can strip it."""

    name: str
    description: str = ""
    parameters: Any = None
    path: JsonPath | None = None
    server: str = ""  # the MCP server the tool lives on (its host), "" for the client's own tools
    changed: bool = False  # its server first listed another definition of it (a "rug pull"; addons/mcp.py)
    shadows: str = ""  # the other MCP server that first listed a tool of this name (addons/mcp.py)

    @property
    def digest(self) -> str:
        """A stable hash of what the model is told about the tool (name, description, parameter schema; keys
        sorted), so the same definition hashes alike in every request and a changed one does not."""
        canon = json.dumps([self.name, self.description, self.parameters], sort_keys=True, ensure_ascii=False,
                           separators=(",", ":"), default=str)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def joined(parts: list[TextPart]) -> str:
    """Texts as one, a line each: how a message, the system prompt and a tool result are shown and audited, so
    all three read the same way."""
    return "\n".join(p.text for p in parts)


class JoinedText:
    """An attribute that reads a list of parts as one text (`joined`): `Message.text`, `Exchange.system_text`."""

    def __init__(self, parts: str):
        self.parts = parts  # the name of the attribute holding the list

    @overload
    def __get__(self, obj: None, owner: type) -> JoinedText: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> str: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> str | JoinedText:
        return self if obj is None else joined(getattr(obj, self.parts))


@dataclass(slots=True)
class Message:
    role: str  # system | developer | user | assistant | tool
    parts: list[TextPart] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    text = JoinedText("parts")


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(slots=True)
class Exchange:
    """One AI request and its response, provider-independent.

    `parsed` is False when no provider parser understood the body; `warnings` says why. `read` is False when the
    gateway could not read the body's text at all (opaque bytes, ambiguous JSON): only then is its inspection
    `unparsed`, since the whole-body walk reads what parsers do not (providers/walk.py). Either way the exchange is
    still decided and audited.
    """

    service: str = ""
    operation: str = "unknown"  # chat.completions, responses, messages, embeddings, upload, ...
    model: str = ""
    stream: bool = False
    system: list[TextPart] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    tools: list[ToolDefinition] = field(default_factory=list)
    completion: str = ""
    completion_tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = ""
    usage: Usage = field(default_factory=Usage)
    parsed: bool = True
    read: bool = True
    warnings: list[str] = field(default_factory=list)
    #: Texts of the body that no parser placed in the structure above, found by the whole-body walk: every other
    #: string, key and long number, and what encoded files and non-JSON bodies hold (providers/walk.py).
    extra: list[TextPart] = field(default_factory=list)
    #: What of the body was read and how (`how path-pattern xN`), for the audit.
    coverage: list[str] = field(default_factory=list)
    #: The system prompt as one text, whichever fields it came from (instructions, system turns, a preamble).
    system_text = JoinedText("system")

    @property
    def prompt_text(self) -> str:
        """The text the client sent, one message per line block, role-prefixed; what the audit stores."""
        lines = [f"[system] {self.system_text}"] if self.system else []
        for m in self.messages:
            body = m.text
            for tc in m.tool_calls:
                body += f"\n<tool_call {tc.name}> {tc.rendered()}"
            for tr in m.tool_results:
                body += f"\n<tool_result {tr.call_id}> {tr.text}"
            for a in m.attachments:
                body += f"\n<{a.kind} {a.name or a.mime_type} {a.size}B{'' if a.inspected else ' not inspected'}>"
            lines.append(f"[{m.role}] {body}")
        return "\n".join(lines)

    def request_parts(self) -> list[TextPart]:
        """Every addressable text the client sent: what DLP scans and redaction rewrites."""
        return [p for _, p in self._sourced_parts()]

    def request_sources(self) -> list[str]:
        """Where each of `request_parts()` came from (parallel to it), as prompt-injection findings are scored
        (dlp.injection.SOURCES): user, system, assistant, tool_call, tool_result, mcp_result (the result of a call
        to a tool on an MCP server), document (an uploaded or attached file), tool_definition, other."""
        return [s for s, _ in self._sourced_parts()]

    def _sourced_parts(self):
        on_mcp = {tc.id for m in self.messages for tc in m.tool_calls if tc.server and tc.id}
        roles = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
        tools = [t.path for t in self.tools if t.path]
        yield from (("system", p) for p in self.system)
        for m in self.messages:
            role = roles.get(m.role, "tool_result" if m.role == "tool" else "other")
            yield from ((role, p) for p in m.parts)
            yield from (("tool_call", p) for tc in m.tool_calls for p in tc.text_parts())
            yield from (("mcp_result" if tr.call_id in on_mcp else "tool_result", TextPart(tr.text, tr.path))
                        for tr in m.tool_results)
            yield from (("document", TextPart(a.text, source="upload")) for a in m.attachments if a.text)
        for p in self.extra:
            if p.source == "upload":
                yield "document", p
            elif p.path and any(p.path[:len(t)] == t for t in tools):
                yield "tool_definition", p
            else:
                yield "other", p

    def warn(self, message: str) -> None:
        self.warnings.append(message)
