"""Amazon Bedrock agent runtime (bedrock-agent-runtime.{region}.amazonaws.com): agents and knowledge bases.

Source [SDK]: botocore's bedrock-agent-runtime service model (marks: docs/providers.md).
  InvokeAgent               POST /agents/{agentId}/agentAliases/{aliasId}/sessions/{sessionId}/text  `inputText`
  InvokeInlineAgent         POST /agents/{sessionId}   `inputText`, `instruction`, `foundationModel`
  RetrieveAndGenerate       POST /retrieveAndGenerate(Stream)   `input.text`, the model ARN in the configuration
  Retrieve                  POST /knowledgebases/{kbId}/retrieve   `retrievalQuery.text`
Agent answers are always an event stream of `chunk` events whose `bytes` are base64 TEXT (not JSON, unlike
InvokeModel's chunks); `returnControl` events ask the client to run a function. RetrieveAndGenerateStream sends
`output` events with `text`.

These paths are generic (`/agents/...`), so they are claimed only where the catalog names the `bedrock` format.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from core.exchange import Exchange, Message, TextPart, ToolCall
from providers import uploads
from providers.base import BodyError, BufferedJson, HttpRequest, Reassembly, ResponseParser, json_body
from providers.bedrock import EventStreamParser, base_model

_ROUTES = (
    (re.compile(r"^/agents/(?P<agent>[^/]+)/agentAliases/(?P<alias>[^/]+)/sessions/[^/]+/text$"), "agent.invoke"),
    (re.compile(r"^/agents/[^/]+$"), "agent.invoke_inline"),
    (re.compile(r"^/retrieveAndGenerate(?:Stream)?$"), "retrieveAndGenerate"),
    (re.compile(r"^/knowledgebases/(?P<kb>[^/]+)/retrieve$"), "retrieve"),
)


class BedrockAgentProvider:
    name = "bedrock-agent"

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if req.method != "POST" or "bedrock" not in hints:
            return None
        return next((operation for rx, operation in _ROUTES if rx.match(req.path)), None)

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        if not isinstance(body, dict):
            raise BodyError("agent runtime body must be a JSON object")
        m = next(rx.match(req.path) for rx, op in _ROUTES if op == operation)
        if operation == "agent.invoke":
            exchange.model = f"agent:{m['agent']}/{m['alias']}"
        elif operation == "agent.invoke_inline":
            exchange.model = str(body.get("foundationModel") or "")
            if isinstance(body.get("instruction"), str):
                exchange.system.append(TextPart(body["instruction"], ("instruction",)))
        if operation.startswith("agent."):
            exchange.stream = True  # agent answers are always an event stream
            if not isinstance(body.get("inputText"), str):
                raise BodyError("agent body needs an 'inputText' string")
            exchange.messages.append(Message("user", [TextPart(body["inputText"], ("inputText",))]))
        elif operation == "retrieve":
            exchange.model = f"knowledge-base:{m['kb']}"
            query = body.get("retrievalQuery")
            if not isinstance(query, dict) or not isinstance(query.get("text"), str):
                raise BodyError("retrieve body needs 'retrievalQuery.text'")
            exchange.messages.append(Message("user", [TextPart(query["text"], ("retrievalQuery", "text"))]))
        else:
            _retrieve_and_generate(req, body, exchange)

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        reader = AnswerReader(exchange)
        if content_type == "application/vnd.amazon.eventstream":
            return EventStreamParser(exchange, reader.add_event, reader.done)
        return BufferedJson(exchange, lambda data: (reader.add_response(data), reader.done()))


def _retrieve_and_generate(req: HttpRequest, body: dict[str, Any], exchange: Exchange) -> None:
    exchange.stream = req.path.endswith("Stream")
    query = body.get("input")
    if not isinstance(query, dict) or not isinstance(query.get("text"), str):
        raise BodyError("retrieveAndGenerate body needs 'input.text'")
    message = Message("user", [TextPart(query["text"], ("input", "text"))])
    config = body.get("retrieveAndGenerateConfiguration")
    config = config if isinstance(config, dict) else {}
    for key in ("knowledgeBaseConfiguration", "externalSourcesConfiguration"):
        sub = config.get(key)
        if not isinstance(sub, dict):
            continue
        exchange.model = base_model(str(sub.get("modelArn") or exchange.model))
        template = ((sub.get("generationConfiguration") or {}).get("promptTemplate") or {}).get("textPromptTemplate")
        if isinstance(template, str):
            exchange.system.append(TextPart(template, ("retrieveAndGenerateConfiguration", key,
                                                       "generationConfiguration", "promptTemplate",
                                                       "textPromptTemplate")))
        for source in sub.get("sources") or []:  # documents sent inline with the question
            content = source.get("byteContent") if isinstance(source, dict) else None
            if isinstance(content, dict) and isinstance(content.get("data"), str):
                message.attachments.append(uploads.base64_attachment(
                    content["data"], str(content.get("identifier") or ""), str(content.get("contentType") or ""),
                    "document"))
    exchange.messages.append(message)


class AnswerReader(Reassembly):
    """Agent `chunk` text and `returnControl` function calls; RetrieveAndGenerate `output` text, whole or
    streamed; Retrieve results (the knowledge-base passages the client receives)."""

    def add_event(self, event_type: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        if event_type == "chunk" and "bytes" in payload:
            try:
                self.text.add(base64.b64decode(payload["bytes"], validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                self.exchange.warn("agent chunk: bytes are not base64")
        elif event_type == "output":
            self.text.add(payload.get("text"))
        elif event_type == "returnControl":
            for item in payload.get("invocationInputs") or []:
                fn = item.get("functionInvocationInput") or item.get("apiInvocationInput") or {}
                name = fn.get("function") or fn.get("apiPath") or ""
                self.exchange.completion_tool_calls.append(ToolCall(
                    str(name), orjson.dumps(fn.get("parameters") or [], default=str).decode(),
                    str(payload.get("invocationId") or "")))

    def add_response(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        output = data.get("output")
        if isinstance(output, dict):
            self.text.add(output.get("text"))
        for i, result in enumerate(data.get("retrievalResults") or []):
            self.text.add(("\n\n" if i else "") + str((result.get("content") or {}).get("text") or ""))


PROVIDER = BedrockAgentProvider()
