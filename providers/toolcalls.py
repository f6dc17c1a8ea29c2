"""Tool calls in a model's answer: each one judged as soon as it is complete, and a forbidden one replaced by a
refusal in the provider's own shapes, in a JSON answer and in a stream.

An agent runs what the model answers, so a call the policy forbids must not reach it; but what replaces the call
must be something the client already handles, or the agent crashes instead of going on: a text the model "said"
(OpenAI chat, Mistral's agents completions too: message content, `tool_calls` (or the legacy `function_call`)
gone, `finish_reason: stop`; Responses: a message item instead of the call item; Anthropic: a text block instead of
the tool_use block, `stop_reason: end_turn`; Gemini: a text part instead of the functionCall part; Bedrock Converse:
a text block instead of the toolUse block, `stopReason: end_turn`; Mistral conversations: a `message.output` entry
instead of the `function.call` entry; Cohere v2: text content instead of the call, `finish_reason: COMPLETE`;
Cohere v1: the answer's text, the call gone from `tool_calls` and from the chat history it returns; Ollama: message
content). The finish reason says "tool calls" only while an allowed call is left. Bedrock's InvokeModel answers in
its model vendor's own shapes, read as theirs: Claude's (Anthropic), Command R's (Cohere v1), Mistral Large's (chat
choices), Amazon Nova's (Converse's: its JSON answer [DOC], its stream's chunks each one ConverseStream event keyed by
its name [DOC], the tool-use events in them as ConverseStream's [UNCONFIRMED]) and gpt-oss's (OpenAI chat: its JSON
answer a chat completion object [DOC], its stream's chunks chat.completion.chunk objects [UNCONFIRMED]), in a JSON
answer and in the chunk frames of its stream.

Streams are not held back: an event that is not part of a tool call goes on as soon as it is complete (an SSE event,
an NDJSON line or an AWS event-stream frame is the smallest unit a client reads anyway). Only the events of a tool
call are held, until the call is complete (OpenAI chat and Mistral conversations: its arguments' JSON closed;
Responses: its `output_item.done`; Anthropic, Claude on Bedrock's InvokeModel stream, Converse and Nova's InvokeModel
stream: its block's stop; Cohere v2: its `tool-call-end`; Cohere v1: its `tool-calls-generation`; Gemini and Ollama
send a call whole in one event). Then they go on unchanged when the call is allowed, or refusal events take their
place. A call that never completes before the stream ends, or while the events held (of all the calls held at once)
outgrow `max_call_bytes`, is refused too: nothing is held without bound, and what could not be judged does not reach
the agent.

`judge(call) -> refusal text | None` is the policy's (addons/toolcalls.py); everything here is pure: no mitmproxy.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.exchange import ToolCall
from core.mediatypes import EVENTSTREAM_TYPE, NDJSON_TYPES, SSE_TYPE
from providers import bedrock, eventstream, mistral, openai_chat
from providers.base import tool_call
from providers.openai_responses import CLIENT_CALL_ITEMS

Judge = Callable[[ToolCall], "str | None"]
MAX_CALL_BYTES = 1 << 20  # events of streamed tool calls held at once, by default
MAX_EVENT_BYTES = 16 << 20  # one SSE event, NDJSON line or event-stream frame that has not ended yet
CHAT, RESPONSES, ANTHROPIC, GEMINI, CONVERSE = "openai-chat", "openai-responses", "anthropic", "gemini", "converse"
BEDROCK_ANTHROPIC = "bedrock-anthropic"  # Claude's own Messages bodies through Bedrock's InvokeModel
BEDROCK_COHERE = "bedrock-cohere"  # Command R's Cohere v1 chat bodies through InvokeModel
BEDROCK_MISTRAL = "bedrock-mistral"  # Mistral Large's chat-shaped bodies through InvokeModel
BEDROCK_NOVA = "bedrock-nova"  # Amazon Nova's Converse-shaped bodies through InvokeModel
BEDROCK_OPENAI = "bedrock-openai"  # gpt-oss's OpenAI chat bodies through InvokeModel
MISTRAL_CONVERSATIONS, COHERE, COHERE_V1, OLLAMA = "mistral-conversations", "cohere-v2", "cohere-v1", "ollama"
INCOMPLETE = "did not complete"
OVERSIZED = "grew past the cap"
_FORMATS = {("openai", "chat.completions"): CHAT, ("vertex", "chat.completions"): CHAT,  # Vertex: partner models
            ("mistral", "agents.completions"): CHAT,  # a chat body naming an agent, answered as chat
            ("openai", "responses"): RESPONSES, ("anthropic", "messages"): ANTHROPIC,  # Claude on Vertex too
            ("gemini", "generateContent"): GEMINI,  # Vertex's Gemini too
            ("bedrock", "converse"): CONVERSE, ("mistral", "conversations"): MISTRAL_CONVERSATIONS,
            **{("mistral", op): MISTRAL_CONVERSATIONS for op in mistral.CONTINUED},
            ("cohere", "v2.chat"): COHERE, ("cohere", "v1.chat"): COHERE_V1, ("ollama", "chat"): OLLAMA}


_BEDROCK_VENDORS = {"anthropic": BEDROCK_ANTHROPIC, "cohere": BEDROCK_COHERE, "mistral": BEDROCK_MISTRAL,
                    "nova": BEDROCK_NOVA}
# by the model id's own prefix: vendor_of's "openai" is also what it says of every id it does not know (DeepSeek,
# Qwen, a provisioned model's ARN), whose answers are not read here
_BEDROCK_MODELS = (("openai.gpt-oss", BEDROCK_OPENAI),)


def format_of(provider: str | None, operation: str, model: str = "") -> str | None:
    """The answer format whose tool calls this module reads, for the parser that understood the request (and the
    model it names: Bedrock's InvokeModel answers in the model vendor's own format). None for answers whose calls
    are not judged: Bedrock's other vendors (Titan, Llama, the other OpenAI-style models, and a model id that names
    none, such as a provisioned model's ARN), and operations that take no tools."""
    if provider == "bedrock" and operation == "invoke":
        base = bedrock.base_model(model)
        for prefix, fmt in _BEDROCK_MODELS:
            if base.startswith(prefix):
                return fmt
        return _BEDROCK_VENDORS.get(bedrock.vendor_of(model, None))
    return _FORMATS.get((provider, operation))


def runs_unseen_tools(provider: str | None, operation: str, model: str) -> bool:
    """Does the request run tools it does not offer? A Mistral agent's are defined on Mistral's side (an agents
    completion, a conversation with an `agent_id`), and so are those a conversation was started with, when it is
    continued or restarted: the answer may call them though the request names none, so its calls are judged as
    those of a request that offers tools."""
    return provider == "mistral" and (operation in ("agents.completions", *mistral.CONTINUED)
                                      or model.startswith(mistral.AGENT))


# --- JSON answers --------------------------------------------------------------------------------------------------

def rewrite_body(fmt: str, data: Any, judge: Judge) -> bool:
    """Replace the forbidden calls of a parsed JSON answer in place; True if anything changed."""
    if not isinstance(data, dict):
        return False
    return bool(_BODIES[fmt](data, judge))


def _chat_body(data: dict, judge: Judge, finishes: tuple[str, ...] = ("finish_reason",)) -> bool:
    """`finishes`: the keys of a choice's finish reason (Mistral on Bedrock names it `stop_reason`)."""
    changed = False
    for i, choice in enumerate(data.get("choices") or []):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        refusals = _function_calls(message, ("choices", i, "message"), judge)
        legacy = message.get("function_call")  # the deprecated single call, which clients still run
        if isinstance(legacy, dict) and (text := judge(tool_call(
                str(legacy.get("name", "")), str(legacy.get("arguments") or ""),
                ("choices", i, "message", "function_call", "arguments"), ""))):
            refusals.append(text)
            del message["function_call"]
        if refusals:
            changed = True
            content = message.get("content")
            if isinstance(content, list):  # parts (Mistral, on Vertex too): the refusals are text parts after them
                message["content"] = [*content, *({"type": "text", "text": text} for text in refusals)]
            else:
                message["content"] = _joined(content, refusals)
            if not message.get("tool_calls") and "function_call" not in message:
                _stopped(choice, finishes)
    return changed


def _stopped(choice: dict, finishes: tuple[str, ...]) -> bool:
    """A chat choice's finish reason that says "tool calls" says `stop` (once no call is left); True if it did."""
    stale = [key for key in finishes if choice.get(key) in CHAT_CALL_FINISHES]
    for key in stale:
        choice[key] = "stop"
    return bool(stale)


def _function_calls(message: dict, path: tuple, judge: Judge) -> list[str]:
    """The calls of a message in the chat shape (`tool_calls[] = {id, function: {name, arguments}}`: OpenAI chat,
    Mistral, Cohere v2, Ollama, whose arguments are an object) judged: the refused ones are taken out (`tool_calls`
    too once none is left) and their refusal texts returned."""
    refused, texts = set(), []
    for tc, fn, at in openai_chat.function_calls(message, path):
        if text := judge(tool_call(str(fn.get("name", "")), fn.get("arguments"), at, str(tc.get("id", "")))):
            refused.add(id(tc))
            texts.append(text)
    if texts:
        kept = [tc for tc in message["tool_calls"] if id(tc) not in refused]
        if kept:
            message["tool_calls"] = kept
        else:
            del message["tool_calls"]
    return texts


def _joined(content: Any, refusals: list[str]) -> str:
    """A message's text content with the refusals after it."""
    return "\n\n".join(filter(None, [content if isinstance(content, str) else "", *refusals]))


CHAT_CALL_FINISHES = ("tool_calls", "function_call")  # a chat finish reason that says the answer is calls


def _responses_body(data: dict, judge: Judge) -> bool:
    output, changed = data.get("output"), False
    for i, item in enumerate(output if isinstance(output, list) else ()):
        call = _responses_call(item, ("output", i))
        if call is not None and (text := judge(call)):
            output[i], changed = responses_message(item, text), True
    return changed


def _responses_call(item: Any, path: tuple) -> ToolCall | None:
    if not isinstance(item, dict) or item.get("type") not in CLIENT_CALL_ITEMS:
        return None
    key, args = _responses_args(item)
    return tool_call(_responses_name(item), args, (*path, key), str(item.get("call_id", "")))


def _responses_name(item: dict) -> str:
    """A call item's tool name: a function's own, else the built-in tool's as the request's definitions name it, by
    its type (`local_shell`, `shell`, `apply_patch`, `computer`): a shell, computer or patch call has no name."""
    return str(item.get("name") or str(item.get("type") or "").removesuffix("_call"))


def _responses_args(item: dict) -> tuple[str, Any]:
    """Where a call item's arguments are and what they are: a function's JSON text, a custom tool's input, the
    action of a shell or computer call, the operation of a patch."""
    for key in ("arguments", "input", "action", "operation"):
        if key in item:
            value = item[key]
            return key, "" if value is None else value if isinstance(value, (dict, list)) else str(value)
    return "arguments", ""


def responses_message(item: dict, text: str, status: str = "completed") -> dict:
    """The message item that takes a refused function_call item's place."""
    return {"type": "message", "id": f"msg_{item.get('id') or item.get('call_id') or 'refused'}", "status": status,
            "role": "assistant", "content": [] if status != "completed" else [_output_text(text)]}


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": []}


def _anthropic_body(data: dict, judge: Judge) -> bool:
    content, changed = data.get("content"), False
    for i, block in enumerate(content if isinstance(content, list) else ()):
        if isinstance(block, dict) and block.get("type") == "tool_use":
            text = judge(tool_call(str(block.get("name", "")), block.get("input"), ("content", i, "input"),
                                   str(block.get("id", ""))))
            if text:
                content[i], changed = {"type": "text", "text": text}, True
    if changed and data.get("stop_reason") == "tool_use" and not any(
            isinstance(b, dict) and b.get("type") == "tool_use" for b in content):
        data["stop_reason"] = "end_turn"
    return changed


def _gemini_body(data: dict, judge: Judge) -> bool:
    changed = False
    if isinstance(data.get("response"), dict) and "candidates" not in data:
        data = data["response"]  # Code Assist envelope
    for i, candidate in enumerate(data.get("candidates") or []):
        parts = ((candidate.get("content") or {}).get("parts") if isinstance(candidate, dict) else None) or []
        for j, part in enumerate(parts):
            fc = part.get("functionCall") if isinstance(part, dict) else None
            if isinstance(fc, dict):
                text = judge(tool_call(str(fc.get("name", "")), fc.get("args") or {},
                                       ("candidates", i, "content", "parts", j, "functionCall", "args"),
                                       str(fc.get("id") or "")))
                if text:
                    parts[j], changed = {"text": text}, True
    return changed


def _converse_body(data: dict, judge: Judge) -> bool:
    content = ((data.get("output") or {}).get("message") or {}).get("content")
    changed = False
    for i, block in enumerate(content if isinstance(content, list) else ()):
        tu = block.get("toolUse") if isinstance(block, dict) else None
        if isinstance(tu, dict):
            text = judge(tool_call(str(tu.get("name", "")), tu.get("input"),
                                   ("output", "message", "content", i, "toolUse", "input"),
                                   str(tu.get("toolUseId", ""))))
            if text:
                content[i], changed = {"text": text}, True
    if changed and data.get("stopReason") == "tool_use" and not any(
            isinstance(b, dict) and "toolUse" in b for b in content):
        data["stopReason"] = "end_turn"
    return changed


def _mistral_body(data: dict, judge: Judge) -> bool:
    outputs, changed = data.get("outputs"), False
    for i, entry in enumerate(outputs if isinstance(outputs, list) else ()):
        if isinstance(entry, dict) and entry.get("type") == "function.call" and (text := judge(tool_call(
                str(entry.get("name", "")), entry.get("arguments"), ("outputs", i, "arguments"),
                str(entry.get("tool_call_id", ""))))):
            kept = {k: entry[k] for k in ("id", "created_at", "completed_at", "model", "agent_id") if k in entry}
            outputs[i], changed = {"object": "entry", "type": "message.output", "role": "assistant", **kept,
                                   "content": text}, True
    return changed


def _cohere_body(data: dict, judge: Judge) -> bool:
    """Cohere v2 chat: the message's calls are chat-shaped; its `tool_plan` stays (the model's words, no call)."""
    message = data.get("message")
    refusals = _function_calls(message, ("message",), judge) if isinstance(message, dict) else []
    if refusals:
        content = message.get("content")
        message["content"] = [*(content if isinstance(content, list) else ()),
                              *({"type": "text", "text": text} for text in refusals)]
        if not message.get("tool_calls") and data.get("finish_reason") == "TOOL_CALL":
            data["finish_reason"] = "COMPLETE"
    return bool(refusals)


def _cohere_v1_body(data: dict, judge: Judge) -> bool:
    """Cohere v1 chat (the answer, or the `response` of its stream's end): `tool_calls: [{name, parameters}]` beside
    its `text`; the `chat_history` it returns ends in a CHATBOT turn with the same calls, which says the same (a
    client sends that history back)."""
    calls, refusals = data.get("tool_calls"), []
    for j, tc in enumerate(calls if isinstance(calls, list) else ()):
        if isinstance(tc, dict) and (text := judge(tool_call(str(tc.get("name", "")), tc.get("parameters"),
                                                             ("tool_calls", j, "parameters")))):
            refusals.append((tc, text))
    if not refusals:
        return False
    refused, texts = [tc for tc, _ in refusals], [text for _, text in refusals]
    history = data.get("chat_history")
    turns = [t for t in history if isinstance(t, dict) and str(t.get("role", "")).upper() == "CHATBOT"
             and isinstance(t.get("tool_calls"), list)] if isinstance(history, list) else []
    for holder, key in [(data, "text"), *([(turns[-1], "message")] if turns else [])]:
        kept = [tc for tc in holder["tool_calls"] if tc not in refused]
        if kept:
            holder["tool_calls"] = kept
        else:
            del holder["tool_calls"]
        holder[key] = _joined(holder.get(key), texts)
    return True


def _ollama_body(data: dict, judge: Judge) -> bool:
    """Ollama chat (the answer, or one line of its stream): the message's calls are chat-shaped, their arguments an
    object; a refusal is the message's text (`done_reason` says `stop` with calls or without)."""
    message = data.get("message")
    refusals = _function_calls(message, ("message",), judge) if isinstance(message, dict) else []
    if refusals:
        message["content"] = _joined(message.get("content"), refusals)
    return bool(refusals)


BEDROCK_MISTRAL_FINISHES = ("finish_reason", "stop_reason")  # [UNCONFIRMED] which Bedrock writes: both are read


def _bedrock_mistral_body(data: dict, judge: Judge) -> bool:
    """Mistral Large on Bedrock's InvokeModel: chat choices whose finish reason may be named `stop_reason`."""
    return _chat_body(data, judge, BEDROCK_MISTRAL_FINISHES)


_BODIES = {CHAT: _chat_body, RESPONSES: _responses_body, ANTHROPIC: _anthropic_body, GEMINI: _gemini_body,
           CONVERSE: _converse_body, BEDROCK_ANTHROPIC: _anthropic_body, BEDROCK_COHERE: _cohere_v1_body,
           BEDROCK_MISTRAL: _bedrock_mistral_body, BEDROCK_NOVA: _converse_body, BEDROCK_OPENAI: _chat_body,
           MISTRAL_CONVERSATIONS: _mistral_body, COHERE: _cohere_body,
           COHERE_V1: _cohere_v1_body, OLLAMA: _ollama_body}


# --- streams -------------------------------------------------------------------------------------------------------

@dataclass
class _Held:
    """A streamed tool call being assembled, and the events of it held back meanwhile."""

    name: str = ""
    id: str = ""
    arguments: str = ""
    events: list[bytes] = field(default_factory=list)
    size: int = 0
    end: _JsonEnd | None = None  # OpenAI chat, Mistral conversations: where the arguments' JSON closes
    extra: dict = field(default_factory=dict)  # what a format needs to build its refusal (Responses: the item)


def _arguments_piece(value: Any) -> str:
    """A streamed piece of a call's arguments: JSON text, or an object (Mistral's SDK takes either) as its JSON (its
    Python repr would close as JSON does but parse as nothing, and no `args` condition could match it)."""
    return orjson.dumps(value).decode() if isinstance(value, (dict, list)) else str(value or "")


class _JsonEnd:
    """Where a JSON value written piece by piece closes: brackets counted outside strings, linear in the text (the
    whole text is parsed once, when it has closed). It runs on the event loop for every piece of a held call, so it
    jumps from one character that matters to the next with a regex (quotes and backslashes in a string, quotes and
    brackets outside one) instead of looking at each character in Python: a megabyte of long strings costs a few
    ms; one of tiny strings or brackets (`["a","b",...]`) still costs about 0.1 s, a Python step each, within the
    `max_call_bytes` cap (1 MiB by default)."""

    _IN_STRING = re.compile(r'["\\]')
    _OUTSIDE = re.compile(r'["{}\[\]]')

    def __init__(self) -> None:
        self.depth, self.in_string, self.escaped, self.opened = 0, False, False, False

    def feed(self, text: str) -> bool:
        i, n = 0, len(text)
        if self.escaped and n:  # the previous piece ended on a backslash inside a string: this character is escaped
            self.escaped, i = False, 1
        while i < n:
            m = (self._IN_STRING if self.in_string else self._OUTSIDE).search(text, i)
            if m is None:
                return False
            ch, i = m.group(), m.end()
            if ch == "\\":
                if i >= n:
                    self.escaped = True
                    return False
                i += 1
            elif ch == '"':
                self.in_string = not self.in_string
            elif ch in "{[":
                self.depth, self.opened = self.depth + 1, True
            else:
                self.depth -= 1
                if self.opened and self.depth <= 0:
                    return True
        return False


class StreamGuard:
    """Stream callable logic: `feed(chunk)` returns what the client gets now, `finish()` what it gets at the end.
    `refused` lists (call name, why) for calls refused for what they are not (incomplete, oversized); calls the
    policy refused went through `judge`, which records them."""

    marker: tuple[bytes, ...] = ()  # what an event that may hold a tool call (or its stop reason) holds
    CONTENT_TYPES: tuple[str, ...] = ()  # the streams of the framing it reads

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        self.judge = judge
        self.max_call_bytes = max_call_bytes
        self.refused: list[tuple[str, str]] = []
        self.broken = ""  # why nothing more is passed on (a frame too large, an unreadable frame)

    def feed(self, chunk: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError

    def _holds_marker(self, data: bytes) -> bool:
        """May this event hold a call: a `marker` in it, or a `\\u` escape, which could spell one? Only those are
        parsed at all: the others go on as they are."""
        return b"\\u" in data or any(m in data for m in self.marker)

    def _loads(self, text: bytes | str) -> Any:
        """The JSON of an event that may hold a call. One that does not parse stops the stream (`broken`; the
        caller passes nothing on): a client's parser may read what orjson does not (a lone surrogate, NaN), and a
        call in it with it."""
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            self.broken = "an event that may hold a tool call and does not parse"
            return None

    def _verdict(self, held: _Held, value: Any) -> str | None:
        """The refusal text for a complete call, None to let it through."""
        return self.judge(tool_call(held.name, value, ("arguments",), held.id))

    def _not_judged(self, held: _Held, why: str) -> str:
        self.refused.append((held.name, why))
        return (f"The AI gateway did not pass on the call of the tool '{held.name}': the call {why} "
                f"({held.size} bytes held).")


# SSE lines end in \r\n, \r or \n (the spec, and the SDKs' decoders: nothing else, so not U+2028 and its kin, which
# str.splitlines also breaks on); an event ends at an empty line. A \r last in the buffer waits: a \n may follow it.
_LINE_END = rb"(?:\r\n|\r(?=[^\n])|\n)"
_SSE_END = re.compile(_LINE_END * 2)
_SSE_LINE = re.compile(r"\r\n|\r|\n")


class _Framed(StreamGuard):
    """A text framing read unit by unit (an SSE event, an NDJSON line), raw bytes kept to pass on unchanged: each
    complete unit goes to `_unit(raw, end)`, `end` what ended it (b"" for what is left when the stream ends). A unit
    that has not ended past MAX_EVENT_BYTES stops the stream (`broken`): nothing is held without bound."""

    END: re.Pattern[bytes]  # where a unit ends
    UNIT = "an event"

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        if self.broken:
            return b""
        start = max(0, len(self.buf) - 3)  # an end may have begun in the last chunk (`\r\n\r\n` split in two)
        self.buf += chunk
        out, begin = [], 0
        for m in self.END.finditer(self.buf, start):
            out.append(self._unit(bytes(self.buf[begin:m.end()]), m.group()))
            begin = m.end()
            if self.broken:
                break
        del self.buf[:begin]
        if not self.broken and len(self.buf) > MAX_EVENT_BYTES:
            self.broken = f"{self.UNIT} of more than {MAX_EVENT_BYTES} bytes"
        if self.broken:
            self.buf.clear()
            out.append(self.end())
        return b"".join(out)

    def finish(self) -> bytes:
        if self.broken:
            return b""
        out = self._unit(bytes(self.buf), b"") if self.buf else b""
        self.buf.clear()
        return out + self.end()

    def _unit(self, raw: bytes, end: bytes) -> bytes:
        raise NotImplementedError

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        """A unit that may hold a call, its JSON object `data` (SSE: the event's `name`)."""
        raise NotImplementedError

    def end(self) -> bytes:
        """The stream ended: what the calls still held become."""
        raise NotImplementedError


class SseGuard(_Framed):
    """SSE framing: complete events go to `event(raw, name, data)` when their data is a JSON object that may hold a
    call (`_holds_marker`, `_loads`)."""

    END = _SSE_END
    CONTENT_TYPES = (SSE_TYPE,)

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.newline = b"\n\n"

    def _unit(self, raw: bytes, end: bytes) -> bytes:
        if not end and (last := re.search(rb"(?:\r\n|\r|\n){2}\Z", raw)):  # a last \r\r waited for what never came
            end = last.group()
        if end:
            self.newline = end
        if not self._holds_marker(raw):
            return raw
        name, data = "", []
        for line in _SSE_LINE.split(raw.decode("utf-8", "replace")):
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                data.append(value)
            elif key == "event":
                name = value
        if not data:
            return raw
        payload = self._loads("\n".join(data))
        if self.broken:
            return b""
        return self.event(raw, name, payload) if isinstance(payload, dict) else raw

    def sse(self, payload: dict, name: str = "") -> bytes:
        """An event the guard writes, in the stream's own line endings."""
        nl = re.match(_LINE_END, self.newline + b"x").group()
        head = f"event: {name}".encode() + nl if name else b""
        return head + b"data: " + orjson.dumps(payload) + self.newline


class NdjsonGuard(_Framed):
    """NDJSON framing (Ollama, Cohere v1): one JSON value a line; a line that may hold a call goes to `event(raw,
    "", data)` when it is an object."""

    END = re.compile(rb"\r?\n")
    UNIT = "a line"
    CONTENT_TYPES = NDJSON_TYPES

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.newline = b"\n"

    def _unit(self, raw: bytes, end: bytes) -> bytes:
        self.newline = end or self.newline
        if not self._holds_marker(raw):
            return raw
        payload = self._loads(raw)
        if self.broken:
            return b""
        return self.event(raw, "", payload) if isinstance(payload, dict) else raw

    def line(self, payload: dict) -> bytes:
        """A line the guard writes, in the stream's own line ending."""
        return orjson.dumps(payload) + self.newline


class ChatGuard(SseGuard):
    """OpenAI chat completions (`choices[].delta.tool_calls[]` by index, `finish_reason`, `[DONE]`)."""

    marker = (b"tool_calls", b"function_call")
    KEPT = ("usage",)  # what a finish event rewritten keeps beside its choices
    LEGACY = -1  # the call index of a legacy `delta.function_call` (one per choice, no index of its own)

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.pending: dict[tuple[int, int], _Held] = {}  # (choice, call index) -> the call being held
        self.done: set[tuple[int, int]] = set()  # judged or refused: later pieces of them are dropped
        self.batch: list[bytes] = []  # the held events, in order, while any call is pending
        self.batch_keys: list[tuple[int, int]] = []
        self.batch_size = 0
        self.results: dict[tuple[int, int], str | None] = {}
        self.judged: dict[tuple[int, int], _Held] = {}
        self.allowed: dict[int, int] = {}  # choice -> allowed calls passed on (their indexes on the client)
        self.refusals: dict[int, int] = {}
        self.released: list[bytes] = []  # the last batch that went out as it came
        self.template: dict = {}

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        self.template = {k: data[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in data}
        choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
        pieces = []  # ((choice, call index), the piece's {name, arguments}, its id)
        for c in choices:
            ci, delta = int(c.get("index", 0)), c.get("delta") or {}
            pieces += [((ci, int(tc.get("index", 0))), tc.get("function") or {}, tc.get("id"))
                       for tc in delta.get("tool_calls") or [] if isinstance(tc, dict)]
            if isinstance(delta.get("function_call"), dict):
                pieces.append(((ci, self.LEGACY), delta["function_call"], None))
        finished = [int(c.get("index", 0)) for c in choices if c.get("finish_reason")]
        out = []
        if pieces:
            live = False
            for key, fn, call_id in pieces:
                if key in self.done:
                    continue  # a piece after the call was judged: the client never gets more than was judged
                held = self.pending.get(key)
                if held is None:
                    held = self.pending[key] = _Held(end=_JsonEnd())
                    self.batch_keys.append(key)
                held.name += str(fn.get("name") or "")
                held.id = held.id or str(call_id or "")
                piece = _arguments_piece(fn.get("arguments"))
                held.arguments += piece
                held.size += len(raw)
                live = True
                if held.end.feed(piece):
                    out.append(self._resolve(key, None))
            if live:
                self.batch.append(raw)
                self.batch_size += len(raw)
                if self.batch_size > self.max_call_bytes:  # everything held at once counts
                    out += [self._resolve(key, OVERSIZED) for key in list(self.pending)]
            out.append(self._flush())
            if not finished:
                return b"".join(out)
        if finished:
            for key in list(self.pending):
                if key[0] in finished:
                    out.append(self._resolve(key, INCOMPLETE))
            out.append(self._flush())
            if pieces:  # the finish rode on a held event: unless that went out as it came, say it as it stands
                if not any(r is raw for r in self.released):
                    out.append(self._finish_event(finished, data))
            else:
                out.append(self._finish_event(finished, data, raw))
            return b"".join(out)
        return raw

    def _resolve(self, key: tuple[int, int], why: str | None) -> bytes:
        held = self.pending.pop(key)
        self.done.add(key)
        if why is not None:
            self.results[key] = self._not_judged(held, why)
        else:
            try:
                value = json.loads(held.arguments)
            except ValueError:
                value = held.arguments  # judged on the text as sent
            self.results[key] = self._verdict(held, value)
        self.judged[key] = held
        return b""

    def _flush(self) -> bytes:
        """Once no call is pending, the batch goes out: as it came if every call in it was allowed and none before
        it was refused (indexes unchanged), else rebuilt: the allowed calls whole, a refusal text for the others."""
        if self.pending or not self.batch_keys:
            return b""
        keys, batch, self.batch_keys, self.batch, self.batch_size = self.batch_keys, self.batch, [], [], 0
        held = {k: self.judged.pop(k) for k in keys}
        if all(self.results[k] is None for k in keys) and not any(self.refusals.get(k[0]) for k in keys):
            for ci, _ in keys:
                self.allowed[ci] = self.allowed.get(ci, 0) + 1
            self.released = batch
            return b"".join(batch)
        out = []
        for key in keys:
            ci, h = key[0], held[key]
            text = self.results.pop(key)
            if text is None:
                n = self.allowed.get(ci, 0)
                self.allowed[ci] = n + 1
                fn = {"name": h.name, "arguments": h.arguments}
                delta = {"function_call": fn} if key[1] == self.LEGACY else {
                    "tool_calls": [{"index": n, "id": h.id, "type": "function", "function": fn}]}
            else:
                self.refusals[ci] = self.refusals.get(ci, 0) + 1
                delta = {"role": "assistant", "content": text}
            out.append(self.sse({**self.template, "choices": [{"index": ci, "delta": delta, "finish_reason": None}]}))
        return b"".join(out)

    def _finish_event(self, finished: list[int], data: dict, raw: bytes | None = None) -> bytes:
        """`finish_reason: tool_calls` (or `function_call`) becomes `stop` for a choice whose every call was
        refused."""
        stale = [c for c in data.get("choices") or [] if isinstance(c, dict)
                 and c.get("finish_reason") in CHAT_CALL_FINISHES
                 and self.refusals.get(int(c.get("index", 0))) and not self.allowed.get(int(c.get("index", 0)))]
        if raw is not None and not stale:
            return raw
        choices = []
        for c in data.get("choices") or []:
            if not isinstance(c, dict) or not c.get("finish_reason"):
                continue
            reason = "stop" if c in stale else c["finish_reason"]
            choices.append({"index": c.get("index", 0), "delta": {}, "finish_reason": reason})
        extra = {k: data[k] for k in self.KEPT if k in data} if raw is not None else {}
        return self.sse({**self.template, "choices": choices, **extra})

    def end(self) -> bytes:
        out = [self._resolve(key, INCOMPLETE) for key in list(self.pending)]
        return b"".join(out) + self._flush()


class _BlockCalls:
    """What the formats that stream a call as a block of its own share (its start, its pieces, its stop, by
    index: Anthropic, Responses, Converse and Nova, Cohere v2 and v1, Mistral conversations): the block's events are
    held from its start to its stop, then released or replaced (`_release`, the format's). Everything held at once
    counts against the cap: past it, every call held is refused and the rest of its events are dropped."""

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.pending: dict[Any, _Held] = {}
        self.dropped: set = set()  # refused before their stop: what else comes of them is dropped
        self.held_total = 0
        self.allowed = self.refusals = 0

    def _open(self, index: Any, held: _Held, raw: bytes) -> bytes:
        self.dropped.discard(index)
        self.pending[index] = held
        return self._add(index, raw)

    def _add(self, index: Any, raw: bytes) -> bytes:
        held = self.pending[index]
        held.events.append(raw)
        held.size += len(raw)
        self.held_total += len(raw)
        if self.held_total <= self.max_call_bytes:
            return b""
        out = []
        for i in list(self.pending):
            self.dropped.add(i)
            held = self._take(i)
            out.append(self._refuse(i, held, self._not_judged(held, OVERSIZED)))
        return b"".join(out)

    def _take(self, index: Any) -> _Held:
        held = self.pending.pop(index)
        self.held_total -= held.size
        return held

    def _close(self, index: Any, raw: bytes) -> bytes:
        """The block's stop: the call is complete, judged on its arguments (parsed if they parse, else the text)."""
        held = self._take(index)
        held.events.append(raw)
        try:
            value = json.loads(held.arguments) if held.arguments.strip() else {}
        except ValueError:
            value = held.arguments
        text = self._verdict(held, value)
        if text is None:
            self.allowed += 1
            return b"".join(held.events)
        return self._refuse(index, held, text)

    def _refuse(self, index: Any, held: _Held, text: str) -> bytes:
        self.refusals += 1
        return self._release(index, held, text)

    def _release(self, index: Any, held: _Held, text: str) -> bytes:
        """The events that take a refused call's place."""
        raise NotImplementedError

    def _dropping(self, index: Any, stop: bool) -> bool:
        """Is this an event of a call refused before its stop (dropped; the stop ends that)?"""
        if index not in self.dropped:
            return False
        if stop:
            self.dropped.discard(index)
        return True

    def _ended(self, raw: bytes, data: dict, holder: dict, key: str, stops: tuple[str, str],
               write: Callable[[dict], bytes]) -> bytes:
        """The message's end (the event `raw`, parsed as `data`): the calls still held never completed, and its
        stop reason (`holder[key]`, in `data`) says calls (`stops[0]`) or, once every call was refused, `stops[1]`
        (the event written anew by `write`)."""
        out = self.end()
        if holder.get(key) == stops[0] and self.refusals and not self.allowed:
            holder[key] = stops[1]
            return out + write(data)
        return out + raw

    def end(self) -> bytes:
        out = []
        for index in list(self.pending):
            held = self._take(index)
            out.append(self._refuse(index, held, self._not_judged(held, INCOMPLETE)))
        return b"".join(out)


class AnthropicGuard(_BlockCalls, SseGuard):
    """Anthropic Messages (`content_block_start` tool_use, `input_json_delta`, `content_block_stop`, and the
    `message_delta` stop reason). A refused call's block becomes a text block at the same index."""

    marker = (b"tool_use", b"input_json_delta", b"content_block_stop", b"message_delta")

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        kind = data.get("type") or name
        index = data.get("index")
        if kind == "content_block_start" and (data.get("content_block") or {}).get("type") == "tool_use":
            block = data["content_block"]
            return self._open(index, _Held(str(block.get("name", "")), str(block.get("id", ""))), raw)
        if kind in ("content_block_delta", "content_block_stop") and self._dropping(
                index, kind == "content_block_stop"):
            return b""
        if kind == "content_block_delta" and index in self.pending:
            self.pending[index].arguments += str((data.get("delta") or {}).get("partial_json") or "")
            return self._add(index, raw)
        if kind == "content_block_stop" and index in self.pending:
            return self._close(index, raw)
        if kind == "message_delta":
            return self._ended(raw, data, data.get("delta") or {}, "stop_reason", ("tool_use", "end_turn"),
                               lambda d: self.sse(d, name or kind))
        return raw

    def _release(self, index: Any, held: _Held, text: str) -> bytes:
        return (self.sse({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                         "content_block_start")
                + self.sse({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": text}}, "content_block_delta")
                + self.sse({"type": "content_block_stop", "index": index}, "content_block_stop"))


class ResponsesGuard(_BlockCalls, SseGuard):
    """OpenAI Responses: a call item's events (a function's, a custom tool's, a shell, computer or patch call's),
    `output_item.added` to `output_item.done`, are held; a refused one is replaced by a message item's events at
    the same output index, and the final response's `output` says the same."""

    CALLS = CLIENT_CALL_ITEMS
    marker = (*(c.encode() for c in CALLS), b"response.completed", b"response.incomplete", b"response.failed")
    FINAL = ("response.completed", "response.incomplete", "response.failed")

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.replaced: dict[int, dict] = {}  # output index -> the message item that replaced the call
        self.seq = 0

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        kind = str(data.get("type") or name)
        self.seq = max(self.seq, int(data.get("sequence_number") or 0))
        index = data.get("output_index")
        item = data.get("item") if isinstance(data.get("item"), dict) else {}
        if kind == "response.output_item.added" and item.get("type") in self.CALLS:
            held = _Held(_responses_name(item), str(item.get("call_id", "")), extra={"item": item})
            return self._open(index, held, raw)
        # every event of a call's item is held (a patch's diff deltas, a shell call's command deltas too)
        item_event = index is not None and kind not in self.FINAL
        if item_event and self._dropping(index, kind == "response.output_item.done"):
            return b""
        if index in self.pending and item_event and kind != "response.output_item.done":
            return self._add(index, raw)
        if index in self.pending and kind == "response.output_item.done":
            held = self.pending[index]
            _, args = _responses_args(item)
            held.name = _responses_name(item) or held.name
            held.arguments = args if isinstance(args, str) else json.dumps(args)
            held.extra["item"] = item
            return self._close(index, raw)
        if kind in self.FINAL and isinstance(data.get("response"), dict):
            out = self.end()
            output = data["response"].get("output")
            if not self.replaced or not isinstance(output, list):
                return out + raw
            for i, it in enumerate(output):
                if i in self.replaced and isinstance(it, dict) and it.get("type") in self.CALLS:
                    output[i] = self.replaced[i]
            return out + self.sse(data, name or kind)
        return raw

    def _release(self, index: Any, held: _Held, text: str) -> bytes:
        item = held.extra["item"]
        done = self.replaced[index] = responses_message(item, text)
        base = {"output_index": index}
        part = {**base, "item_id": done["id"], "content_index": 0}
        events = [("response.output_item.added", {**base, "item": responses_message(item, text, "in_progress")}),
                  ("response.content_part.added", {**part, "part": _output_text("")}),
                  ("response.output_text.delta", {**part, "delta": text, "logprobs": []}),
                  ("response.output_text.done", {**part, "text": text, "logprobs": []}),
                  ("response.content_part.done", {**part, "part": _output_text(text)}),
                  ("response.output_item.done", {**base, "item": done})]
        out = []
        for kind, payload in events:
            self.seq += 1
            out.append(self.sse({"type": kind, "sequence_number": self.seq, **payload}, kind))
        return b"".join(out)


class GeminiGuard(SseGuard):
    """Gemini (`alt=sse`): each event carries whole `functionCall` parts, judged at once and, if refused,
    replaced in that event by text parts."""

    marker = (b"functionCall",)

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        return self.sse(data) if _gemini_body(data, self.judge) else raw

    def end(self) -> bytes:
        return b""


class CohereGuard(_BlockCalls, SseGuard):
    """Cohere v2 chat: a call's events (`tool-call-start`, its `tool-call-delta`s, its `tool-call-end`, by call
    index) are held; a refused one becomes a text content's events (`content-start`, `-delta`, `-end`) at a content
    index after every one the stream used so far (calls and contents are numbered apart), and `message-end` says
    COMPLETE instead of TOOL_CALL once every call was refused."""

    marker = (b"tool-call", b"content-start", b"message-end")

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.contents = 0  # content indexes used so far: a refusal takes the next

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        kind = data.get("type") or name
        index = data.get("index")
        call = ((data.get("delta") or {}).get("message") or {}).get("tool_calls") or {}
        fn = call.get("function") or {}
        if kind == "content-start":
            self.contents = max(self.contents, (index if isinstance(index, int) else 0) + 1)
            return raw
        if kind == "tool-call-start":
            held = _Held(str(fn.get("name", "")), str(call.get("id", "")), str(fn.get("arguments") or ""))
            return self._open(index, held, raw)
        if kind in ("tool-call-delta", "tool-call-end") and self._dropping(index, kind == "tool-call-end"):
            return b""
        if kind == "tool-call-delta" and index in self.pending:
            self.pending[index].arguments += str(fn.get("arguments") or "")
            return self._add(index, raw)
        if kind == "tool-call-end" and index in self.pending:
            return self._close(index, raw)
        if kind == "message-end":
            return self._ended(raw, data, data.get("delta") or {}, "finish_reason", ("TOOL_CALL", "COMPLETE"),
                               lambda d: self.sse(d, name or kind))
        return raw

    def _release(self, index: Any, held: _Held, text: str) -> bytes:
        at, self.contents = self.contents, self.contents + 1
        return (self.sse({"type": "content-start", "index": at,
                          "delta": {"message": {"content": {"type": "text", "text": ""}}}}, "content-start")
                + self.sse({"type": "content-delta", "index": at,
                            "delta": {"message": {"content": {"text": text}}}}, "content-delta")
                + self.sse({"type": "content-end", "index": at}, "content-end"))


class MistralConversationGuard(_BlockCalls, SseGuard):
    """Mistral conversations: a function call entry streams as `function.call.delta` events at its output index,
    its arguments in pieces (Mistral sends them whole, in one), and no event closes it: it is complete when its
    arguments' JSON closes, and what else comes of it is dropped (the client never gets more than was judged). A
    refused one becomes a `message.output.delta` of the refusal at the same output index."""

    marker = (b"function.call", b"conversation.response.done")

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        kind = data.get("type") or name
        if kind == "conversation.response.done":
            return self.end() + raw
        if kind != "function.call.delta":
            return raw
        index = data.get("output_index", 0)
        if self._dropping(index, False):
            return b""
        held = self.pending.get(index) or _Held(str(data.get("name", "")), str(data.get("tool_call_id", "")),
                                                end=_JsonEnd(), extra={"event": data})
        piece = _arguments_piece(data.get("arguments"))
        held.arguments += piece
        if not held.end.feed(piece):
            return self._add(index, raw) if index in self.pending else self._open(index, held, raw)
        self.pending[index] = held
        self.dropped.add(index)
        return self._close(index, raw)

    def _release(self, index: Any, held: _Held, text: str) -> bytes:
        first = held.extra["event"]
        kept = {k: first[k] for k in ("created_at", "model", "agent_id") if k in first}
        return self.sse({"type": "message.output.delta", "id": str(first.get("id") or held.id), **kept,
                         "output_index": index, "content_index": 0, "role": "assistant", "content": text},
                        "message.output.delta")


class OllamaGuard(NdjsonGuard):
    """Ollama chat: each line carries whole calls, judged at once and, if refused, replaced in that line by the
    refusal as its text."""

    marker = (b"tool_calls",)

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        return self.line(data) if _ollama_body(data, self.judge) else raw

    def end(self) -> bytes:
        return b""


class CohereV1Guard(_BlockCalls, NdjsonGuard):
    """Cohere v1 chat: a call's `tool-calls-chunk` lines (its name and parameters in pieces, by index) are held
    until the `tool-calls-generation` line, which carries every call whole: they are judged there. When all are
    allowed, the held lines and it go on unchanged; else a `text-generation` line of each refusal takes a refused
    call's place, the allowed calls' chunks are rebuilt (renumbered, one line each) and the generation lists only
    them. The `stream-end` line's `response` says the same; v1 has no finish reason for calls."""

    marker = (b"tool_call", b"stream-end")

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.verdicts: dict[tuple[str, str], str | None] = {}  # each call judged once: the end repeats them
        self.said: dict[Any, str] = {}  # call index -> the refusal that took its place (before the generation)

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        kind, delta = data.get("event_type"), data.get("tool_call_delta")
        if kind == "tool-calls-chunk" and isinstance(delta, dict):
            index, piece = delta.get("index"), str(delta.get("parameters") or "")
            if self._dropping(index, False):
                return b""
            if index not in self.pending:
                return self._open(index, _Held(str(delta.get("name") or ""), arguments=piece), raw)
            held = self.pending[index]
            held.name, held.arguments = held.name or str(delta.get("name") or ""), held.arguments + piece
            return self._add(index, raw)
        if kind == "tool-calls-generation":
            return self._generation(raw, data)
        if kind == "stream-end":
            out, response = self.end(), data.get("response")
            changed = isinstance(response, dict) and _cohere_v1_body(response, self._judged)
            return out + (self.line(data) if changed else raw)
        return raw

    def _generation(self, raw: bytes, data: dict) -> bytes:
        calls = data.get("tool_calls")
        kept, out, changed = [], [], False
        for j, tc in enumerate(calls if isinstance(calls, list) else ()):
            held = self._take(j) if j in self.pending else None
            call = tool_call(str(tc.get("name", "")), tc.get("parameters"), ("tool_calls", j, "parameters")) \
                if isinstance(tc, dict) else None
            if self._dropping(j, True):  # refused while its chunks came (past the cap): the end says so too
                if call is not None:
                    self.verdicts[(call.name, call.arguments)] = self.said[j]
                changed = True
            elif call is not None and (text := self._judged(call)):
                out.append(self._refuse(j, held or _Held(call.name), text))
                changed = True
            else:
                kept.append((tc, held))
        if not changed:
            return b"".join(e for _, held in kept if held is not None for e in held.events) + raw
        for n, (_, held) in enumerate(kept):  # the pieces of an allowed call, as it streamed them, in one line
            if held is not None:
                out.append(self.line({"is_finished": False, "event_type": "tool-calls-chunk", "tool_call_delta": {
                    "index": n, "name": held.name, "parameters": held.arguments}}))
        if kept:
            out.append(self.line({**data, "tool_calls": [tc for tc, _ in kept]}))
        return b"".join(out)

    def _judged(self, call: ToolCall) -> str | None:
        key = (call.name, call.arguments)
        if key not in self.verdicts:
            self.verdicts[key] = self.judge(call)
        return self.verdicts[key]

    def _release(self, index: Any, held: _Held, text: str) -> bytes:
        self.said[index] = text
        return self.line({"is_finished": False, "event_type": "text-generation", "text": text})


class _EventStreamFraming:
    """AWS event-stream framing (Bedrock's streams): complete frames, raw bytes kept, go to `_frame(raw, message)`.
    A frame that does not decode (a wrong length or CRC) stops the stream there: botocore would fail on it too; so
    does a frame of a kind that may hold a call whose payload does not read, as an unreadable SSE event does."""

    CONTENT_TYPES = (EVENTSTREAM_TYPE,)

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.frames = bytearray()
        self.decoder = eventstream.EventStreamDecoder()

    def feed(self, chunk: bytes) -> bytes:
        if self.broken:
            return b""
        self.frames += chunk
        out = []
        while len(self.frames) >= eventstream.PRELUDE:
            total = int.from_bytes(self.frames[:4], "big")
            if total > MAX_EVENT_BYTES or total < eventstream.PRELUDE + 4:
                self.broken = f"a frame of {total} bytes"
                break
            if len(self.frames) < total:
                break
            raw = bytes(self.frames[:total])
            del self.frames[:total]
            messages = self.decoder.feed(raw)
            if self.decoder.error or len(messages) != 1:
                self.broken = f"an unreadable frame ({self.decoder.error or 'no message'})"
                break
            out.append(self._frame(raw, messages[0]))
            if self.broken:
                break
        if self.broken:
            self.frames.clear()
            out.append(self.end())
        return b"".join(out)

    def finish(self) -> bytes:
        return b"" if self.broken else self.end()


class ConverseGuard(_EventStreamFraming, _BlockCalls, StreamGuard):
    """Bedrock ConverseStream: a toolUse block's frames (`contentBlockStart` with `start.toolUse`, its
    `contentBlockDelta`s, its `contentBlockStop`) are held; a refused one becomes a text delta and a stop at the
    same block index, and `messageStop` says `end_turn` when no call is left. The events' logic (`_event`) is
    apart from their framing: each frame the guard writes goes through `_write`, so Nova's chunks share it."""

    EVENTS = ("contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop")

    def _frame(self, raw: bytes, message: eventstream.EventMessage) -> bytes:
        kind = message.event_type
        if kind not in self.EVENTS:
            return raw
        data = self._loads(message.payload)
        if self.broken:
            return b""
        return self._event(raw, kind, data) if isinstance(data, dict) else raw

    def _event(self, raw: bytes, kind: str, data: dict) -> bytes:
        """One ConverseStream event: its name `kind`, its payload `data`, `raw` what carried it (passed on as it is
        when nothing changes)."""
        index = data.get("contentBlockIndex")
        if kind == "contentBlockStart" and isinstance((data.get("start") or {}).get("toolUse"), dict):
            tu = data["start"]["toolUse"]
            return self._open(index, _Held(str(tu.get("name", "")), str(tu.get("toolUseId", ""))), raw)
        if kind in ("contentBlockDelta", "contentBlockStop") and self._dropping(index, kind == "contentBlockStop"):
            return b""
        if kind == "contentBlockDelta" and index in self.pending:
            self.pending[index].arguments += _arguments_piece(((data.get("delta") or {}).get("toolUse") or {})
                                                              .get("input"))
            return self._add(index, raw)
        if kind == "contentBlockStop" and index in self.pending:
            return self._close(index, raw)
        if kind == "messageStop":
            return self._ended(raw, data, data, "stopReason", ("tool_use", "end_turn"),
                               lambda d: self._write(kind, d))
        return raw

    def _release(self, index: Any, held: _Held, text: str) -> bytes:
        return (self._write("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": text}})
                + self._write("contentBlockStop", {"contentBlockIndex": index}))

    def _write(self, kind: str, payload: dict) -> bytes:
        """A frame the guard writes: the event `kind` with its payload (ConverseStream: a frame of that type)."""
        return _converse_frame(kind, payload)


class _ChunkFrames(_EventStreamFraming):
    """Bedrock's InvokeModelWithResponseStream: the `bytes` of each `chunk` frame are base64 of one of the model
    vendor's own stream objects (what its API sends as an SSE event's data or an NDJSON line), guarded by the
    vendor's guard, which this precedes in the class's bases; what that guard writes, as events or as lines, goes
    out as chunk frames."""

    def _frame(self, raw: bytes, message: eventstream.EventMessage) -> bytes:
        if message.event_type != "chunk":
            return raw
        try:  # the event, base64 in a JSON payload: a chunk that does not read that far may hold anything
            event = base64.b64decode(orjson.loads(message.payload).get("bytes") or "", validate=True)
        except (binascii.Error, ValueError, AttributeError, TypeError):
            self.broken = "a chunk frame that may hold a tool call and does not read"
            return b""
        if not self._holds_marker(event):
            return raw
        data = self._loads(event)
        if self.broken:
            return b""
        return self.event(raw, "", data) if isinstance(data, dict) else raw

    def sse(self, payload: dict, name: str = "") -> bytes:
        return _converse_frame("chunk", {"bytes": base64.b64encode(orjson.dumps(payload)).decode()})

    def line(self, payload: dict) -> bytes:
        return self.sse(payload)


class BedrockAnthropicGuard(_ChunkFrames, AnthropicGuard):
    """Claude on Bedrock's InvokeModelWithResponseStream: Anthropic's events, guarded as AnthropicGuard does."""


class BedrockCohereGuard(_ChunkFrames, CohereV1Guard):
    """Command R on Bedrock's InvokeModelWithResponseStream: Cohere v1's stream lines, guarded as CohereV1Guard
    does."""


class BedrockNovaGuard(_ChunkFrames, ConverseGuard):
    """Amazon Nova on Bedrock's InvokeModelWithResponseStream: each chunk's object is one ConverseStream event keyed by
    its name (`{"contentBlockDelta": {...}}`) [DOC], its tool-use events read as ConverseStream's [UNCONFIRMED];
    guarded as ConverseGuard does, and what that writes goes out as chunks of the same shape. A chunk rewritten (its
    `messageStop`) keeps what else it carries (the invocation metrics); one that carries two of the events a call
    is made of is not read (where would a refusal go?): the stream stops there, as for an unreadable frame."""

    marker = tuple(kind.encode() for kind in ConverseGuard.EVENTS)

    def __init__(self, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES):
        super().__init__(judge, max_call_bytes)
        self.chunk: dict = {}  # the chunk's object being read

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        kinds = [k for k in data if k in self.EVENTS]
        if len(kinds) > 1:
            self.broken = "a chunk that carries more than one event of a tool call"
            return b""
        payload = data[kinds[0]] if kinds else None
        if not isinstance(payload, dict):
            return raw
        self.chunk = data
        return self._event(raw, kinds[0], payload)

    def _write(self, kind: str, payload: dict) -> bytes:
        kept = {k: v for k, v in self.chunk.items() if k != kind} if self.chunk.get(kind) is payload else {}
        return self.sse({kind: payload, **kept})


class BedrockMistralGuard(_ChunkFrames, ChatGuard):
    """Mistral Large on Bedrock's InvokeModelWithResponseStream [UNCONFIRMED]: chat-shaped chunks whose choices
    carry a `message` with its calls whole (not OpenAI's `delta` pieces) and a `stop_reason`. Such a chunk is judged
    at once, as a JSON answer is; a later one whose finish reason still says `tool_calls` for a choice that has no
    call left says `stop`. A chunk of `delta` pieces is guarded as OpenAI chat's."""

    KEPT = ("usage", "amazon-bedrock-invocationMetrics")

    def event(self, raw: bytes, name: str, data: dict) -> bytes:
        choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
        if not any(isinstance(c.get("message"), dict) for c in choices):
            return super().event(raw, name, data)
        offered = [_calls_in(c) for c in choices]
        changed = _chat_body(data, self.judge, ())  # the finish reason: below, by what the whole stream has left
        for c, before in zip(choices, offered):
            ci, left = int(c.get("index", 0)), _calls_in(c)
            self.allowed[ci] = self.allowed.get(ci, 0) + left
            self.refusals[ci] = self.refusals.get(ci, 0) + before - left
            if self.refusals[ci] and not self.allowed[ci]:
                changed = _stopped(c, BEDROCK_MISTRAL_FINISHES) or changed
        return self.sse(data) if changed else raw


class BedrockOpenAIGuard(BedrockMistralGuard):
    """gpt-oss on Bedrock's InvokeModelWithResponseStream [UNCONFIRMED]: OpenAI's chat.completion.chunk objects, one
    a chunk (`delta` pieces by call index, `finish_reason`), guarded as OpenAI chat's; a chunk that carries a whole
    `message` instead is judged at once, as Mistral Large's are."""


def _calls_in(choice: dict) -> int:
    """The calls a chat choice's message carries."""
    message = choice.get("message")
    if not isinstance(message, dict):
        return 0
    calls = message.get("tool_calls")
    return (len(calls) if isinstance(calls, list) else 0) + isinstance(message.get("function_call"), dict)


def _converse_frame(event_type: str, payload: dict) -> bytes:
    return eventstream.encode({":event-type": event_type, ":content-type": "application/json",
                               ":message-type": "event"}, orjson.dumps(payload))


GUARDS: dict[str, type[StreamGuard]] = {CHAT: ChatGuard, RESPONSES: ResponsesGuard, ANTHROPIC: AnthropicGuard,
                                        GEMINI: GeminiGuard, CONVERSE: ConverseGuard,
                                        BEDROCK_ANTHROPIC: BedrockAnthropicGuard, BEDROCK_COHERE: BedrockCohereGuard,
                                        BEDROCK_MISTRAL: BedrockMistralGuard, BEDROCK_NOVA: BedrockNovaGuard,
                                        BEDROCK_OPENAI: BedrockOpenAIGuard,
                                        MISTRAL_CONVERSATIONS: MistralConversationGuard, COHERE: CohereGuard,
                                        COHERE_V1: CohereV1Guard, OLLAMA: OllamaGuard}


def stream_guard(fmt: str, content_type: str, judge: Judge, max_call_bytes: int = MAX_CALL_BYTES
                 ) -> StreamGuard | None:
    """The guard for a streamed answer of this format, None for a framing it does not read (Gemini's JSON-array
    stream without alt=sse)."""
    guard = GUARDS[fmt]
    return guard(judge, max_call_bytes) if content_type in guard.CONTENT_TYPES else None
