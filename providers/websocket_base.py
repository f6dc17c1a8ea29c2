"""What every WebSocket conversation shares: from the messages of one connection to one `Exchange` per turn.

Each protocol (providers/websocket_openai.py, websocket_gemini.py, copilot_web.py, characterai_web.py) subclasses
`WsConversation`; providers/websocket.py picks the one for a connection. The base lives apart from that choice so
the protocol modules import it without importing the module that imports them. Pure: no mitmproxy import, so
fixtures drive it directly.

Why one event per turn and not per connection: a realtime or Copilot connection stays open for a whole session
with many prompts. Per turn, every prompt is paired with its answer and appears in the audit as soon as the answer
ends, exactly like an HTTP exchange, instead of one giant event written (or lost) when the tab closes. A
connection that ends with no completed turn still yields one event, so its use is never invisible.

Nothing the client sends is left unread: beside the parser, every client message that decodes as JSON is walked
like an HTTP body (providers/walk.py): each string, key and long number the parser did not take from it becomes a
text of the open turn (source "walk"), and the turn's `coverage` says what was read and how. A secret in a field
no parser reads (a tool's description, `metadata`, an event type the parser does not know) is scanned with the
turn. The parser names the media chunks it reads (`media`): those are recorded as binary without being looked at.

Memory is bounded: a message larger than MAX_MESSAGE_BYTES is counted but not decoded, text per turn is capped by
`CompletionBuffer` and `MAX_PROMPT_CHARS` (the parser's and the walk's each), and session state (instructions,
tools) is replaced, never appended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.exchange import Exchange, JsonPath, Message, TextPart
from providers.base import MAX_COMPLETION_CHARS, CompletionBuffer
from providers.walk import ENCODED_MIN, Coverage, add_keys, walk_value

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: User text collected per turn; longer input is cut with a warning.
MAX_PROMPT_CHARS = MAX_COMPLETION_CHARS


@dataclass(slots=True)
class Turn:
    """A completed turn: the exchange, when it began (monotonic clock) and the message bytes each way."""

    exchange: Exchange
    started: float
    request_bytes: int = 0
    response_bytes: int = 0


@dataclass(slots=True)
class TurnWalk:
    """What the walk has read for the open turn: its coverage, the short texts it holds already (a realtime client
    repeats the same event types and keys many times a second: each is scanned once per turn) and the size of all
    it added."""

    coverage: Coverage = field(default_factory=Coverage)
    seen: set[Any] = field(default_factory=set)
    chars: int = 0
    capped: bool = False
    taken: set[str] = field(default_factory=set)  # the parser's texts in the turn, indexed as they come:
    message: int = 0  # the message read last (the parser may still add to it), and how many of its parts and
    parts: int = 0  # tool results were read, so a message costs what the parser added since the one before,
    results: int = 0  # not the whole turn again


class WsConversation:
    """Base of the per-connection state machines. Subclasses implement `client(data)` and `server(data)` for
    decoded JSON messages and call `begin_turn`, `add_user_text`, `completion.add` and `end_turn`."""

    operation = "realtime"
    app = "websocket"
    #: False for a protocol whose server messages nothing reads (the walk reads the client's only)
    reads_server = True

    def __init__(self, service: str):
        self.service = service
        self.model = ""
        self.system: list[TextPart] = []
        self.turn: Exchange | None = None
        self.completion: CompletionBuffer | None = None
        self.prompt_chars = 0
        self.started = 0.0
        self.request_bytes = 0  # message bytes since the last turn ended, each way
        self.response_bytes = 0
        self.done: list[Turn] = []
        self.turns = 0
        self.messages = 0
        self.bad_messages = 0
        self.reported_bad = 0
        self.skipped_large = 0
        self.walked = 0  # client messages read by the walk
        self.walk = TurnWalk()
        self.media_chunks: set[int] = set()  # ids of the strings of this message the parser read as media

    # -- fed by the addon ----------------------------------------------------------------------------------------

    def message(self, from_client: bool, content: bytes, is_text: bool) -> list[Turn]:
        """Handle one message; return the turns it completed (usually none). Never raises."""
        self.messages += 1
        if from_client:
            self.request_bytes += len(content)
        else:
            self.response_bytes += len(content)
        if len(content) > MAX_MESSAGE_BYTES:
            self.skipped_large += 1
            return self._take()
        if not from_client and not self.reads_server:  # nothing would read it: not decoded, not understood
            self.bad_messages += 1
            return self._take()
        data = self.decode(content, is_text)
        try:
            if data is not None:
                (self.client if from_client else self.server)(data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            self.bad_messages += 1
        if from_client and data is not None:
            self._walk(data)
        self.media_chunks.clear()
        return self._take()

    def close(self, reason: str = "") -> list[Turn]:
        """The connection ended: a turn still open is returned with a warning; a connection without any turn
        yields one event of its own."""
        if self.turns == 0 and self.understood_nothing():
            turn = self.begin_turn()
            turn.parsed = False
            # What the walk read of the client's JSON messages was inspected; with nothing walked, nothing was.
            turn.read = self.walked > 0
            turn.warn(f"{self.app}: {self.messages} WebSocket messages, none understood"
                      + (f"; {self.walked} from the client read by the whole-message walk" if self.walked else ""))
            self.reported_bad = self.bad_messages
        elif self.turn is not None and (self.turn.messages or self.completion.size):
            self.turn.warn(f"connection closed before the turn ended{': ' + reason if reason else ''}")
        elif self.turn is not None:  # only the walk's texts: what the client sent after its last turn
            self.turn.warn("client messages after the last turn, read by the whole-message walk; then the "
                           f"connection closed{': ' + reason if reason else ''}")
        elif self.turns == 0:
            self.begin_turn().warn(f"{self.app}: connection ended without a conversation turn")
        self.end_turn()
        return self._take()

    def decode(self, content: bytes, is_text: bool) -> Any:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            self.bad_messages += 1
            return None

    def understood_nothing(self) -> bool:
        """No message made sense to the parser (the walk may still have read the client's)."""
        return self.messages > 0 and self.bad_messages + self.skipped_large >= self.messages

    def client(self, data: Any) -> None:
        raise NotImplementedError

    def server(self, data: Any) -> None:
        raise NotImplementedError

    # -- used by subclasses --------------------------------------------------------------------------------------

    def begin_turn(self) -> Exchange:
        """The open turn, begun if none is. Its model is the session's when the turn ends (`end_turn`), unless the
        protocol names one for the turn: the walk begins a turn at the client's first message (a realtime
        `session.update`), before the server says which model it is."""
        if self.turn is None:
            self.turn = Exchange(service=self.service, operation=self.operation, stream=True,
                                 system=list(self.system))
            self.completion = CompletionBuffer(self.turn)
            self.prompt_chars = 0
            self.walk = TurnWalk()
            self.started = time.monotonic()
        return self.turn

    def add_user_text(self, text: str, role: str = "user") -> None:
        turn = self.begin_turn()
        if not text:
            return
        room = MAX_PROMPT_CHARS - self.prompt_chars
        if room <= 0:
            return
        if len(text) > room:
            text = text[:room]
            turn.warn(f"prompt truncated at {MAX_PROMPT_CHARS} characters for the audit")
        self.prompt_chars += len(text)
        if turn.messages and turn.messages[-1].role == role and not turn.messages[-1].tool_results:
            turn.messages[-1].parts.append(TextPart(text))
        else:
            turn.messages.append(Message(role, parts=[TextPart(text)]))

    def user_message(self, role: str = "user") -> Message:
        turn = self.begin_turn()
        if not turn.messages or turn.messages[-1].role != role:
            turn.messages.append(Message(role))
        return turn.messages[-1]

    def media(self, data: Any) -> int:
        """A base64 media chunk the parser read (audio or video, which a realtime client sends many times a
        second): its decoded size. The walk records it as binary without looking at it: sniffing every chunk is
        event-loop time spent learning what the parser knows, and a chunk shorter than an encoded file
        (walk.ENCODED_MIN) would be read as text."""
        if not isinstance(data, str):
            return 0
        self.media_chunks.add(id(data))
        return len(data) * 3 // 4

    def add_completion(self, text: Any) -> None:
        self.begin_turn()
        assert self.completion is not None
        if isinstance(text, str):
            self.completion.add(text)

    def replace_completion(self, text: str) -> None:
        """For protocols that resend the whole answer so far rather than deltas."""
        self.completion = CompletionBuffer(self.begin_turn())
        self.completion.add(text)

    def end_turn(self) -> None:
        if self.turn is None:
            return
        assert self.completion is not None
        self.turn.completion = self.completion.text()
        self.turn.coverage = self.walk.coverage.lines()
        if self.model and not self.turn.model:
            self.turn.model = self.model
        self.done.append(Turn(self.turn, self.started, self.request_bytes, self.response_bytes))
        self.request_bytes = self.response_bytes = 0
        self.turn, self.completion = None, None
        self.turns += 1

    def _walk(self, data: Any) -> None:
        """Walk a client message into the open turn (begun if none is): what the parser did not take from it."""
        turn = self.begin_turn()
        self.walked += 1
        taken = self._parsers_texts(turn)
        before = len(turn.extra)
        keys = walk_value(data, turn, self.walk.coverage, lambda at, node: self._read(at, node, taken))
        add_keys([k for k in keys if not self._read("(keys)", k, taken)], turn, self.walk.coverage)
        self.walk.chars += sum(len(p.text) for p in turn.extra[before:])

    def _parsers_texts(self, turn: Exchange) -> set[str]:
        """The texts the parser has taken into the turn (system, message parts, tool results), brought up to date
        with what it added since the last message."""
        walk = self.walk
        walk.taken.update(p.text for p in turn.system)  # a few instructions, replaced rather than added to
        for i in range(walk.message, len(turn.messages)):
            m = turn.messages[i]
            parts, results = (walk.parts, walk.results) if i == walk.message else (0, 0)
            walk.taken.update(p.text for p in m.parts[parts:])
            walk.taken.update(r.text for r in m.tool_results[results:])
            walk.message, walk.parts, walk.results = i, len(m.parts), len(m.tool_results)
        return walk.taken

    def _read(self, at: JsonPath | str, node: Any, taken: set[str]) -> bool:
        """Whether `node` (at `at` in the message) needs no new text: a media chunk, the parser's text, a text the
        turn holds already, or any once the turn's walked text has reached MAX_PROMPT_CHARS (then the audit says
        so). The cap is checked per message, on the text the walk added (a binary file adds none): a message's
        text is kept whole, so the turn holds at most the cap and one message's text (MAX_MESSAGE_BYTES)."""
        walk = self.walk
        if id(node) in self.media_chunks:
            walk.coverage.add("not inspected (binary)", at)
        elif node in taken:
            walk.coverage.add("parser", at)
        elif node in walk.seen:
            walk.coverage.add("walk (again)", at)
        elif walk.chars >= MAX_PROMPT_CHARS:
            walk.coverage.add("not inspected (over the walk cap)", at)
            if not walk.capped:
                walk.capped = True
                self.begin_turn().warn(f"{self.app}: the whole-message walk stopped at {MAX_PROMPT_CHARS} "
                                       f"characters for this turn: later WebSocket text was not inspected")
        else:
            if not isinstance(node, str) or len(node) < ENCODED_MIN:  # an encoded file may add no text: not kept
                walk.seen.add(node)
            return False
        return True

    def _take(self) -> list[Turn]:
        out, self.done = self.done, []
        if out and self.bad_messages > self.reported_bad:
            unread = self.bad_messages - self.reported_bad
            out[-1].exchange.warn(f"{self.app}: {unread} WebSocket messages not understood")
            self.reported_bad = self.bad_messages
        return out


def get(data: Any, *names: str) -> Any:
    """The first present key among `names` (camelCase and snake_case spellings of the same field)."""
    if isinstance(data, dict):
        for n in names:
            if n in data:
                return data[n]
    return None
