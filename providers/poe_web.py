"""Poe (poe.com): the send-message GraphQL mutation. Best effort, fails soft; request side only.

Format [OBS] (marks: docs/providers.md). Everything goes through `POST /api/gql_POST` with `{queryName, variables,
extensions}`; a prompt is a mutation whose name contains `sendMessage` (`chatHelpers_sendMessageMutation_Mutation`,
`sendMessageMutation`), with the text in `variables.query` and the bot in `variables.bot`. Other queries are not
claimed. The answer does not come back on this request (it arrives over Poe's update channel, [UNCONFIRMED]), so
the event has the prompt and a warning saying the answer is not captured.
"""

from __future__ import annotations

from core.exchange import Attachment, Exchange, Message, TextPart
from providers.base import HttpRequest, ResponseParser, json_body
from providers.webapp import Ignore, WebAppProvider, str_field


class PoeWebProvider(WebAppProvider):
    name = "poe-web"

    def operation(self, req: HttpRequest) -> str | None:
        if req.method != "POST" or req.path != "/api/gql_POST":
            return None
        name = req.headers.get("poe-queryname", "")
        # the query name is in a header and in the body; without the header, the body decides in parse()
        return "conversation" if "sendMessage" in name or not name else None

    def parse(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        body = json_body(req)
        if not isinstance(body, dict):
            raise TypeError("body is not a JSON object")
        variables = body.get("variables") if isinstance(body.get("variables"), dict) else {}
        if "sendMessage" not in str_field(body, "queryName") and not isinstance(variables.get("query"), str):
            exchange.operation = "graphql"  # some other query: nothing sent to a model
            return
        if not isinstance(variables.get("query"), str):
            raise TypeError("no 'variables.query' string")
        exchange.model = str_field(variables, "bot")
        message = Message("user", parts=[TextPart(variables["query"], ("variables", "query"))])
        for att in variables.get("attachments") or []:
            message.attachments.append(Attachment(kind="file", name=str_field(att, "name", "url") if
                                                  isinstance(att, dict) else str(att)[:300]))
        exchange.messages.append(message)
        exchange.warn("poe-web: the answer arrives over a separate channel and is not captured")

    def answer(self, exchange: Exchange) -> ResponseParser:
        return Ignore()  # it arrives over another channel


PROVIDER = PoeWebProvider()
