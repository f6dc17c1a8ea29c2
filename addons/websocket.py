"""Audit AI conversations carried over WebSockets (OpenAI Realtime, Gemini Live, Microsoft Copilot).

Only flows that already have an `Interaction` are looked at: the upgrade request went to a recognised AI host.
Each message is handed to the connection's `providers.websocket.WsConversation` and relayed untouched: nothing is
held back, dropped or rewritten. Every completed conversation turn becomes its own audit event (why per turn:
see providers/websocket.py), written through the Audit addon like an HTTP exchange. The upgrade exchange itself
is not audited separately: its turns are.

Each turn is announced as the `ai_turn` event (addons/hooks.py) from a background task: Inspect scans it (in the
worker pool), Decide judges it, Audit records it; the messages have long been relayed, so nothing waits for it.
The policy's outcome is recorded, never enforced: a turn the policy would block or redact was already on its
way, so its event says `monitor` with "would block ... (not enforced on a WebSocket)" and the rule id. With
capture `redacted` the stored prompt has the findings masked, as for HTTP.

mitmproxy keeps every message of a flow in `flow.websocket.messages`; for a realtime audio session that grows
without bound, so once a message has been read it is removed from that list (the last one stays for display).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from mitmproxy import ctx, http

from addons.hooks import AiTurnHook
from core.audit import new_event_id
from core.interaction import KEY, Interaction, Stages
from providers.base import folded_headers
from providers.websocket import Turn, conversation_for

log = logging.getLogger(__name__)

#: Query parameters that carry credentials in WebSocket URLs (browsers cannot set headers on a WebSocket).


class WebSocketAudit:
    def __init__(self) -> None:
        self.pending: set[asyncio.Task] = set()  # turns being scanned before they are audited

    def response(self, flow: http.HTTPFlow) -> None:
        """An upgrade to an AI host: start following the conversation; its turns are audited, not the upgrade."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.websocket is None:
            return
        it.audited = True
        it.stages.conversation = conversation_for(it.service.id, it.service.formats, flow.request.path)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        conversation = it.stages.conversation if it is not None else None
        if conversation is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        self._record(flow, conversation.message(message.from_client, message.content, message.is_text))
        del flow.websocket.messages[:-1]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None:
            return
        conversation, it.stages.conversation = it.stages.conversation, None
        if conversation is None or flow.websocket is None:
            return
        reason = flow.websocket.close_reason or (flow.error.msg if flow.error else "")
        self._record(flow, conversation.close(reason))

    def _record(self, flow: http.HTTPFlow, turns: list[Turn]) -> None:
        if not turns:
            return
        it: Interaction = flow.metadata[KEY]
        headers = folded_headers(flow.request.headers.fields)  # of the upgrade request: what header conditions of rules see
        for turn in turns:
            event = dataclasses.replace(it, exchange=turn.exchange, source="websocket", status=101,
                                        request_bytes=turn.request_bytes, response_bytes=turn.response_bytes,
                                        findings=[], inspection="skipped", started=turn.started, audited=False,
                                        event_id=new_event_id(), stages=Stages(), reasons=list(it.reasons))
            task = asyncio.get_running_loop().create_task(self._inspect_and_audit(event, headers))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    @staticmethod
    async def _inspect_and_audit(event: Interaction, headers: dict[str, str]) -> None:
        """Scan, judge (record only) and audit one turn: the ai_turn event, handled by Inspect, Decide and Audit
        in turn (addons.hooks.AiTurnHook). mitmproxy logs a handler that fails and goes on to the next, so the
        turn's event is written whatever goes wrong on the way."""
        await ctx.master.addons.trigger_event(AiTurnHook(event, headers))
