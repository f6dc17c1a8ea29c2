"""What blocked and warned clients are shown: the error dialect, browser detection, and pages that escape text."""

from __future__ import annotations

import orjson

from core.catalog import Service
from policy import enforcement

API = Service("x", "X API", "X", "api", formats=("bedrock", "anthropic"))
APP = Service("chatgpt", "ChatGPT <beta>", "OpenAI", "chat", formats=("chatgpt-web", "openai"))


def test_dialect_prefers_the_parser_then_the_catalog_hints():
    assert enforcement.dialect("anthropic", API) == "anthropic"
    assert enforcement.dialect(None, API) == "bedrock"
    assert enforcement.dialect("gemini", API) == "google"
    assert enforcement.dialect(None, Service("y", "Y", "", "api")) == "openai"


def test_browsers_and_consumer_apps_get_pages_api_clients_get_json():
    assert enforcement.wants_html("text/html,application/xhtml+xml", API, "openai")
    assert enforcement.wants_html("*/*", APP, "chatgpt-web")  # the app's own calls
    assert not enforcement.wants_html("application/json", APP, "openai")  # an API client on an app host
    assert not enforcement.wants_html("", API, None)


def test_error_objects_carry_the_message_and_reference():
    text = enforcement.user_message("block", "r1", "No.", "ref-1")
    assert text == "Blocked by the AI gateway (policy rule 'r1'): No. Reference: ref-1"
    for dialect, path in [("openai", ("error", "message")), ("anthropic", ("error", "message")),
                          ("google", ("error", "message")), ("bedrock", ("message",)), ("cohere", ("message",))]:
        reply = enforcement.api_error(dialect, text, "ref-1")
        body = orjson.loads(reply.body)
        for key in path:
            body = body[key]
        assert (reply.status, body, reply.headers["x-ai-gateway-reference"]) == (403, text, "ref-1")
    assert enforcement.api_error("bedrock", text, "r").headers["x-amzn-errortype"].startswith("AccessDenied")


def test_pages_escape_what_they_show():
    page = enforcement.block_page(APP, "r<1>", "<script>alert(1)</script>", "ref").body.decode()
    assert "<script>" not in page and "&lt;script&gt;" in page and "ChatGPT &lt;beta&gt;" in page
    warn = enforcement.warn_page(APP, "r", "careful", "ref", 'tok"en', '/c/1"><x').body.decode()
    assert 'value="tok&quot;en"' in warn and 'value="/c/1&quot;&gt;&lt;x"' in warn
    assert f'action="{enforcement.CONTINUE_PATH}"' in warn and "justification" in warn
