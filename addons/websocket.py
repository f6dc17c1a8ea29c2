"""Audit AI conversations carried over WebSockets (OpenAI Realtime, Gemini Live, Microsoft Copilot).

Only flows that already have an `Interaction` are looked at: the upgrade request went to a recognised AI host.
Each message is handed to the connection's `providers.websocket.WsConversation` and relayed untouched: nothing is
held back, dropped or rewritten. Every completed conversation turn becomes its own audit event (why per turn:
see providers/websocket.py), written through the Audit addon like an HTTP exchange. The upgrade exchange itself
is not audited separately: its turns are. Turns are not scanned by DLP yet (the inspect stage works on HTTP
request hooks), and their events say so: inspection `skipped`.

mitmproxy keeps every message of a flow in `flow.websocket.messages`; for a realtime audio session that grows
without bound, so once a message has been read it is removed from that list (the last one stays for display).
"""

from __future__ import annotations

import dataclasses
import logging

from mitmproxy import ctx, http

from core.audit import new_event_id
from core.interaction import KEY, Interaction
from providers.websocket import Turn, WsConversation, conversation_for

log = logging.getLogger(__name__)

CONVERSATION_KEY = "gateway.websocket"  # the flow's WsConversation
#: Query parameters that carry credentials in WebSocket URLs (browsers cannot set headers on a WebSocket).


class WebSocketAudit:
    def response(self, flow: http.HTTPFlow) -> None:
        """An upgrade to an AI host: start following the conversation; its turns are audited, not the upgrade."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.websocket is None:
            return
        it.audited = True
        flow.metadata[CONVERSATION_KEY] = conversation_for(it.service.id, it.service.formats, flow.request.path)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        conversation: WsConversation | None = flow.metadata.get(CONVERSATION_KEY)
        if conversation is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        self._record(flow, conversation.message(message.from_client, message.content, message.is_text))
        del flow.websocket.messages[:-1]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        conversation: WsConversation | None = flow.metadata.pop(CONVERSATION_KEY, None)
        if conversation is None or flow.websocket is None:
            return
        reason = flow.websocket.close_reason or (flow.error.msg if flow.error else "")
        self._record(flow, conversation.close(reason))

    def _record(self, flow: http.HTTPFlow, turns: list[Turn]) -> None:
        if not turns:
            return
        it: Interaction = flow.metadata[KEY]
        audit = ctx.master.addons.get("audit")
        for turn in turns:
            event = dataclasses.replace(it, exchange=turn.exchange, source="websocket", status=101,
                                        request_bytes=turn.request_bytes, response_bytes=turn.response_bytes,
                                        findings=[], inspection="skipped", started=turn.started, audited=False,
                                        event_id=new_event_id())
            if audit is None:
                log.info("AI websocket turn %s %s (audit addon not loaded)", it.service.id, turn.exchange.operation)
            else:
                audit.record(event)
