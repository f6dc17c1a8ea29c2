"""What every WebSocket conversation shares: from the messages of one connection to one `Exchange` per turn.

Each protocol (providers/websocket_openai.py, websocket_gemini.py, copilot_web.py, characterai_web.py) subclasses
`WsConversation`; providers/websocket.py picks the one for a connection. The base lives apart from that choice so
the protocol modules import it without importing the module that imports them. Pure: no mitmproxy import, so
fixtures drive it directly.

Why one event per turn and not per connection: a realtime or Copilot connection stays open for a whole session
with many prompts. Per turn, every prompt is paired with its answer and appears in the audit as soon as the answer
ends, exactly like an HTTP exchange, instead of one giant event written (or lost) when the tab closes. A
connection that ends with no completed turn still yields one event, so its use is never invisible.

Memory is bounded: a message larger than MAX_MESSAGE_BYTES is counted but not decoded, text per turn is capped by
`CompletionBuffer` and `MAX_PROMPT_CHARS`, and session state (instructions, tools) is replaced, never appended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from core.exchange import Exchange, Message, TextPart
from providers.base import MAX_COMPLETION_CHARS, CompletionBuffer

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


class WsConversation:
    """Base of the per-connection state machines. Subclasses implement `client(data)` and `server(data)` for
    decoded JSON messages and call `begin_turn`, `add_user_text`, `completion.add` and `end_turn`."""

    operation = "realtime"
    app = "websocket"

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
        data = self.decode(content, is_text)
        try:
            if data is not None:
                (self.client if from_client else self.server)(data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            self.bad_messages += 1
        return self._take()

    def close(self, reason: str = "") -> list[Turn]:
        """The connection ended: a turn still open is returned with a warning; a connection without any turn
        yields one event of its own."""
        if self.turn is not None:
            self.turn.warn(f"connection closed before the turn ended{': ' + reason if reason else ''}")
            self.end_turn()
        elif self.turns == 0:
            self.begin_turn()
            assert self.turn is not None
            if self.understood_nothing():
                self.turn.parsed = self.turn.read = False  # no walk reads WebSocket messages: none was inspected
                self.turn.warn(f"{self.app}: {self.messages} WebSocket messages, none understood")
                self.reported_bad = self.bad_messages
            else:
                self.turn.warn(f"{self.app}: connection ended without a conversation turn")
            self.end_turn()
        return self._take()

    def decode(self, content: bytes, is_text: bool) -> Any:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            self.bad_messages += 1
            return None

    def understood_nothing(self) -> bool:
        return self.messages > 0 and self.bad_messages + self.skipped_large >= self.messages

    def client(self, data: Any) -> None:
        raise NotImplementedError

    def server(self, data: Any) -> None:
        raise NotImplementedError

    # -- used by subclasses --------------------------------------------------------------------------------------

    def begin_turn(self) -> Exchange:
        if self.turn is None:
            self.turn = Exchange(service=self.service, operation=self.operation, model=self.model, stream=True,
                                 system=list(self.system))
            self.completion = CompletionBuffer(self.turn)
            self.prompt_chars = 0
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
        if self.model and not self.turn.model:
            self.turn.model = self.model
        self.done.append(Turn(self.turn, self.started, self.request_bytes, self.response_bytes))
        self.request_bytes = self.response_bytes = 0
        self.turn, self.completion = None, None
        self.turns += 1

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
