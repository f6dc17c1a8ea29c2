"""OpenAI Realtime over WebSocket (wss://api.openai.com/v1/realtime, Azure `/openai/realtime`).

Source [SDK]: openai-python (marks: docs/providers.md). Client events: `session.update` (session `instructions`,
`model`, `tools`: session state, copied into every turn), `conversation.item.create` (a user message with
`input_text` parts, or a `function_call_output`), `input_audio_buffer.append` (audio, counted, not inspected),
`response.create` (may carry per-response `instructions`). Server events: `response.output_text.delta` /
`response.output_audio_transcript.delta` (and the beta names `response.text.delta` /
`response.audio_transcript.delta`), `response.function_call_arguments.done`,
`conversation.item.input_audio_transcription.completed` (what the user said), and `response.done` with
`response.usage`, which ends the turn.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from core.exchange import Attachment, TextPart, ToolCall, ToolDefinition, ToolResult
from providers.websocket_base import WsConversation

_TEXT_DELTAS = {"response.output_text.delta", "response.text.delta", "response.output_audio_transcript.delta",
                "response.audio_transcript.delta"}


class RealtimeConversation(WsConversation):
    operation = "realtime"
    app = "openai-realtime"

    def __init__(self, service: str, path: str = ""):
        super().__init__(service)
        query = parse_qs(path.partition("?")[2])
        self.model = (query.get("model") or query.get("deployment") or [""])[0]
        self.tools: list[ToolDefinition] = []
        self.audio_bytes = 0

    def client(self, data: Any) -> None:
        kind = data["type"]
        if kind == "session.update":
            self._session(data.get("session") or {})
        elif kind == "conversation.item.create":
            self._item(data.get("item") or {})
        elif kind == "input_audio_buffer.append":
            self.begin_turn()
            self.audio_bytes += self.media(data.get("audio"))
        elif kind == "response.create":
            response = data.get("response") or {}
            turn = self.begin_turn()
            if isinstance(response.get("instructions"), str):
                turn.system = [TextPart(response["instructions"])]

    def _session(self, session: dict) -> None:
        if isinstance(session.get("model"), str):
            self.model = session["model"]
        if isinstance(session.get("instructions"), str):
            self.system = [TextPart(session["instructions"])]
        if isinstance(session.get("tools"), list):
            # each with its place in the message, so the walk's texts there (a description) count as a tool's
            self.tools = [ToolDefinition(str(t.get("name", "")), str(t.get("description", "")), t.get("parameters"),
                                         path=("session", "tools", i))
                          for i, t in enumerate(session["tools"]) if isinstance(t, dict)]

    def _item(self, item: dict) -> None:
        kind = item.get("type", "message")
        if kind == "function_call_output":
            self.user_message("tool").tool_results.append(ToolResult(str(item.get("call_id", "")),
                                                                     str(item.get("output", ""))))
            return
        if kind != "message":
            return
        role = str(item.get("role") or "user")
        for part in item.get("content") or []:
            ptype = part.get("type")
            if ptype in ("input_text", "text", "output_text") and isinstance(part.get("text"), str):
                self.add_user_text(part["text"], "system" if role in ("system", "developer") else role)
            elif ptype == "input_audio":
                self.audio_bytes += self.media(part.get("audio"))
                if isinstance(part.get("transcript"), str):
                    self.add_user_text(part["transcript"], role)
            elif ptype == "input_image":
                url = part.get("image_url") or ""
                self.user_message(role).attachments.append(Attachment(
                    kind="image", mime_type=url[5:].split(";", 1)[0] if url.startswith("data:") else "",
                    size=len(url.split(",", 1)[-1]) * 3 // 4))

    def server(self, data: Any) -> None:
        kind = data["type"]
        if kind in _TEXT_DELTAS:
            self.add_completion(data.get("delta"))
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.add_user_text(str(data.get("transcript") or ""))
        elif kind == "response.function_call_arguments.done":
            self.begin_turn().completion_tool_calls.append(
                ToolCall(str(data.get("name", "")), str(data.get("arguments", "")), str(data.get("call_id", ""))))
        elif kind in ("session.created", "session.updated"):
            session = data.get("session") or {}
            if isinstance(session.get("model"), str):
                self.model = session["model"]
        elif kind == "error":
            self.begin_turn().warn(f"openai-realtime: error event: {str(data.get('error'))[:300]}")
        elif kind == "response.done":
            self._done(data.get("response") or {})

    def _done(self, response: dict) -> None:
        turn = self.begin_turn()
        turn.tools = list(self.tools)
        if self.audio_bytes:
            message = self.user_message("user")
            message.attachments.append(Attachment(kind="audio", name="input_audio_buffer", size=self.audio_bytes))
            self.audio_bytes = 0
        usage = response.get("usage")
        if isinstance(usage, dict):
            turn.usage.input_tokens = usage.get("input_tokens")
            turn.usage.output_tokens = usage.get("output_tokens")
        if isinstance(response.get("status"), str):
            turn.finish_reason = response["status"]
        self.end_turn()

