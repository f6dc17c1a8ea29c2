"""WebSocket conversations: which state machine reads an AI WebSocket connection.

The addon (addons/websocket.py) feeds every message of an AI WebSocket connection to the `WsConversation` chosen
by `conversation_for` (OpenAI Realtime, Gemini Live, Microsoft Copilot, Character.AI; anything else is counted, not
understood, and its client's JSON walked) and gets back the `Turn`s that completed. The state machines share
providers/websocket_base.py, which imports none of them: this module imports them all, and nothing imports this
module back. Pure: no mitmproxy import, so fixtures drive it directly.
"""

from __future__ import annotations

from typing import Any

from providers.characterai_web import CharacterAIConversation
from providers.copilot_web import CopilotConversation
from providers.websocket_base import Turn, WsConversation
from providers.websocket_gemini import GeminiLiveConversation
from providers.websocket_openai import RealtimeConversation

__all__ = ["Turn", "WsConversation", "UnknownConversation", "conversation_for"]


class UnknownConversation(WsConversation):
    """A WebSocket to an AI host whose protocol the gateway does not know: no message is understood, but what the
    client sends as JSON is still read by the whole-message walk (websocket_base), so its one event per connection
    is audited as unparsed only when nothing could be read."""

    operation = "websocket"
    reads_server = False  # the answers of an unknown protocol are not decoded only to be discarded

    def client(self, data: Any) -> None:
        raise KeyError("unknown protocol")


def conversation_for(service: str, formats: tuple[str, ...], path: str) -> WsConversation:
    """The state machine for a WebSocket upgrade request: by path first, as the same host serves several."""
    route = path.split("?", 1)[0]
    if "BidiGenerateContent" in route:
        return GeminiLiveConversation(service)
    if route.endswith("/realtime") and ("openai" in formats or "azure-openai" in formats or not formats):
        return RealtimeConversation(service, path)
    if route.startswith("/c/api/chat") and "copilot-web" in formats:
        return CopilotConversation(service)
    if route.startswith("/ws") and "character-ai-web" in formats:
        return CharacterAIConversation(service)
    return UnknownConversation(service)
