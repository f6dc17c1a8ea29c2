"""Gemini Live over WebSocket (`wss://generativelanguage.googleapis.com/ws/...BidiGenerateContent`, Vertex alike).

Message names [UNCONFIRMED]: check them against a live capture (marks: docs/providers.md). The client sends `setup`
(model, `systemInstruction`, `tools`), then `clientContent` (`turns[]` of `{role, parts[{text}]}`, `turnComplete`),
`realtimeInput` (text or media chunks: counted, not inspected) and `toolResponse`. The server answers
`setupComplete`, `serverContent` (`modelTurn.parts[].text`, `outputTranscription.text`, `inputTranscription.text`,
`turnComplete`), `toolCall` and `usageMetadata`. `turnComplete` from the server ends the turn. Field names are
accepted in camelCase and snake_case; the server often sends its JSON in binary frames, so frames are decoded
whatever their type.
"""

from __future__ import annotations

from typing import Any

import orjson

from core.exchange import Attachment, TextPart, ToolCall, ToolDefinition, ToolResult
from providers.websocket_base import WsConversation, get


class GeminiLiveConversation(WsConversation):
    operation = "live"
    app = "gemini-live"

    def __init__(self, service: str):
        super().__init__(service)
        self.tools: list[ToolDefinition] = []
        self.media_bytes = 0

    def client(self, data: Any) -> None:
        if (setup := get(data, "setup")) is not None:
            self._setup(setup)
        elif (content := get(data, "clientContent", "client_content")) is not None:
            for turn in get(content, "turns") or []:
                role = "assistant" if get(turn, "role") == "model" else "user"
                for part in get(turn, "parts") or []:
                    if isinstance(get(part, "text"), str):
                        self.add_user_text(part["text"], role)
                    elif (blob := get(part, "inlineData", "inline_data")) is not None:
                        self.user_message(role).attachments.append(Attachment(
                            kind=str(get(blob, "mimeType", "mime_type") or "/").split("/")[0] or "file",
                            mime_type=str(get(blob, "mimeType", "mime_type") or ""),
                            size=len(get(blob, "data") or "") * 3 // 4))
            self.begin_turn()
        elif (realtime := get(data, "realtimeInput", "realtime_input")) is not None:
            self.begin_turn()
            if isinstance(get(realtime, "text"), str):
                self.add_user_text(realtime["text"])
            for key in ("audio", "video", "mediaChunks", "media_chunks"):
                chunks = realtime.get(key)
                for blob in chunks if isinstance(chunks, list) else [chunks] if chunks else []:
                    self.media_bytes += self.media(get(blob, "data"))
        elif (response := get(data, "toolResponse", "tool_response")) is not None:
            for fr in get(response, "functionResponses", "function_responses") or []:
                self.user_message("tool").tool_results.append(ToolResult(
                    str(get(fr, "id") or get(fr, "name") or ""), orjson.dumps(get(fr, "response")).decode()))
        else:
            raise KeyError("unknown client message")

    def _setup(self, setup: dict) -> None:
        if isinstance(get(setup, "model"), str):
            self.model = setup["model"].removeprefix("models/")
        instruction = get(setup, "systemInstruction", "system_instruction")
        if isinstance(instruction, str):
            self.system = [TextPart(instruction)]
        elif isinstance(instruction, dict):
            self.system = [TextPart(p["text"]) for p in get(instruction, "parts") or []
                           if isinstance(get(p, "text"), str)]
        self.tools = []
        # each with its place in the message, so the walk's texts there (a description) count as a tool's
        for i, tool in enumerate(get(setup, "tools") or []):
            key = next((k for k in ("functionDeclarations", "function_declarations") if k in tool), "") \
                if isinstance(tool, dict) else ""
            for j, fn in enumerate(tool[key] if key and isinstance(tool[key], list) else []):
                self.tools.append(ToolDefinition(str(get(fn, "name") or ""), str(get(fn, "description") or ""),
                                                 get(fn, "parameters"), path=("setup", "tools", i, key, j)))

    def server(self, data: Any) -> None:
        if (usage := get(data, "usageMetadata", "usage_metadata")) is not None:
            turn = self.begin_turn()
            turn.usage.input_tokens = get(usage, "promptTokenCount", "prompt_token_count")
            turn.usage.output_tokens = get(usage, "responseTokenCount", "response_token_count",
                                           "candidatesTokenCount")
        if (content := get(data, "serverContent", "server_content")) is not None:
            model_turn = get(content, "modelTurn", "model_turn") or {}
            for part in get(model_turn, "parts") or []:
                if not get(part, "thought"):
                    self.add_completion(get(part, "text"))
            if (said := get(content, "inputTranscription", "input_transcription")) is not None:
                self.add_user_text(str(get(said, "text") or ""))
            if (spoken := get(content, "outputTranscription", "output_transcription")) is not None and \
                    not get(model_turn, "parts"):
                self.add_completion(get(spoken, "text"))
            if get(content, "interrupted"):
                self.begin_turn().finish_reason = "interrupted"
            if get(content, "turnComplete", "turn_complete"):
                self._complete()
        elif (call := get(data, "toolCall", "tool_call")) is not None:
            turn = self.begin_turn()
            for fc in get(call, "functionCalls", "function_calls") or []:
                turn.completion_tool_calls.append(ToolCall(str(get(fc, "name") or ""),
                                                           orjson.dumps(get(fc, "args")).decode(),
                                                           str(get(fc, "id") or "")))
        elif get(data, "setupComplete", "setup_complete") is None and usage is None and \
                get(data, "toolCallCancellation", "goAway", "sessionResumptionUpdate") is None:
            raise KeyError("unknown server message")

    def _complete(self) -> None:
        turn = self.begin_turn()
        turn.tools = list(self.tools)
        turn.finish_reason = turn.finish_reason or "turn_complete"
        if self.media_bytes:
            self.user_message("user").attachments.append(Attachment(kind="audio", name="realtimeInput",
                                                                    size=self.media_bytes))
            self.media_bytes = 0
        self.end_turn()
