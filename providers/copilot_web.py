"""Microsoft Copilot (copilot.microsoft.com): the chat WebSocket. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). `wss://copilot.microsoft.com/c/api/chat?api-version=2`. The client sends
`{event: "send", conversationId, content: [{type: "text", text}], mode}` (after an optional `setOptions`); the
server streams `{event: "appendText", text}` deltas between `received`/`startMessage` and `done`, which ends the
turn. The chat `mode` (chat, smart, reasoning) is the model choice the user made, so it is recorded as the model.
"""

from __future__ import annotations

from typing import Any

from core.exchange import Attachment
from providers.websocket_base import WsConversation

_SERVER_EVENTS = {"received", "startMessage", "partCompleted", "citation", "suggestedFollowups", "titleUpdate",
                  "connected", "pong", "challenge", "imageGenerated", "generatingImage", "startCard"}


class CopilotConversation(WsConversation):
    operation = "conversation"
    app = "copilot-web"

    def client(self, data: Any) -> None:
        event = data["event"]
        if event == "send":
            if isinstance(data.get("mode"), str):
                self.model = data["mode"]
            self.begin_turn().model = self.model
            for part in data.get("content") or []:
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    self.add_user_text(part["text"])
                elif part.get("type") in ("image", "file", "document"):
                    self.user_message().attachments.append(Attachment(
                        kind="image" if part["type"] == "image" else "file",
                        name=str(part.get("fileName") or part.get("name") or part.get("url") or "")[:300]))
        elif event not in ("setOptions", "ping", "reportLocalConsents", "challengeResponse"):
            raise KeyError(f"unknown client event {event!r}")

    def server(self, data: Any) -> None:
        event = data["event"]
        if event == "appendText":
            self.add_completion(data.get("text"))
        elif event == "done":
            if self.turn is not None:
                self.turn.finish_reason = "done"
                self.end_turn()
        elif event == "error":
            self.begin_turn().warn(f"copilot-web: error event: {str(data)[:300]}")
        elif event not in _SERVER_EVENTS:
            raise KeyError(f"unknown server event {event!r}")
