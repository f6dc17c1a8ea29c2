"""Character.AI (neo.character.ai): the chat WebSocket. Best effort, fails soft.

Format [OBS] (marks: docs/providers.md). `wss://neo.character.ai/ws/`: the client sends
`{command: "create_and_generate_turn", payload: {character_id, turn: {candidates: [{raw_content}]}}}` (also
`create_turn`); the server answers `add_turn` / `update_turn` frames whose `turn.candidates[].raw_content` is the
text so far, finished when `is_final`. The server also echoes the human turn (`author.is_human`): skipped. The
character is what the user talks to, so it is recorded as the model (`character:{id}`).
"""

from __future__ import annotations

from typing import Any

from providers.websocket_base import WsConversation

_CLIENT = {"create_and_generate_turn", "create_turn"}
_IGNORED = {"create_chat", "create_chat_response", "generate_turn", "ok", "neo_error", "remove_turns",
            "fetch_history", "update_primary_candidate", "ping", "pong"}


class CharacterAIConversation(WsConversation):
    operation = "conversation"
    app = "character-ai"

    def client(self, data: Any) -> None:
        command = data["command"]
        if command in _CLIENT:
            payload = data.get("payload") or {}
            character = payload.get("character_id")
            if isinstance(character, str):
                self.model = f"character:{character}"
            turn = payload.get("turn") or {}
            self.begin_turn().model = self.model
            for candidate in turn.get("candidates") or []:
                if isinstance(candidate.get("raw_content"), str):
                    self.add_user_text(candidate["raw_content"])
        elif command not in _IGNORED:
            raise KeyError(f"unknown client command {command!r}")

    def server(self, data: Any) -> None:
        command = data["command"]
        if command in ("add_turn", "update_turn"):
            turn = data.get("turn") or {}
            if (turn.get("author") or {}).get("is_human"):
                return
            candidates = [c for c in turn.get("candidates") or [] if isinstance(c, dict)]
            primary = turn.get("primary_candidate_id")
            chosen = next((c for c in candidates if c.get("candidate_id") == primary), None) or \
                (candidates[0] if candidates else None)
            if chosen is None or not isinstance(chosen.get("raw_content"), str):
                return
            self.begin_turn()
            self.replace_completion(chosen["raw_content"])
            if chosen.get("is_final"):
                self.begin_turn().finish_reason = "final"
                self.end_turn()
        elif command == "neo_error":
            self.begin_turn().warn(f"character-ai: error: {str(data.get('comment') or data)[:300]}")
        elif command not in _IGNORED:
            raise KeyError(f"unknown server command {command!r}")
