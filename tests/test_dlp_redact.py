"""Placeholders, redaction inside provider JSON bodies, and restoring the values in answers (plain and streamed)."""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import providers
from core.exchange import TextPart
from dlp.redact import Placeholders, StreamRestorer, mask, redact_json, redact_text, unredactable
from dlp.scanner import Finding, Scanner

RULES = Path(__file__).resolve().parent.parent / "rules"
EMAIL, EMAIL2 = "jane.doe@acme-corp.com", "omar.haddad@example.com"
KEY = "AKIA4QWE7RTY2UIO3PLK"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.from_rules(RULES)


def findings_of(text: str, value: str, entity: str, part: int = 0) -> list[Finding]:
    out, i = [], text.find(value)
    while i >= 0:
        out.append(Finding(entity, i, i + len(value), 1.0, part))
        i = text.find(value, i + 1)
    return out


# --- placeholders -------------------------------------------------------------------------------------------------

def test_placeholders_are_stable_per_value_and_numbered_per_entity():
    p = Placeholders()
    assert p.placeholder("EMAIL_ADDRESS", EMAIL) == "<EMAIL_ADDRESS_1>"
    assert p.placeholder("EMAIL_ADDRESS", EMAIL2) == "<EMAIL_ADDRESS_2>"
    assert p.placeholder("EMAIL_ADDRESS", EMAIL) == "<EMAIL_ADDRESS_1>"
    assert p.placeholder("AWS_ACCESS_KEY", KEY) == "<AWS_ACCESS_KEY_1>"
    assert p.values == {"<EMAIL_ADDRESS_1>": EMAIL, "<EMAIL_ADDRESS_2>": EMAIL2, "<AWS_ACCESS_KEY_1>": KEY}
    assert len(p) == 3


def test_a_placeholder_already_in_the_request_is_not_reused():
    p = Placeholders()
    text = f"as before, <EMAIL_ADDRESS_1> wrote; now {EMAIL} writes"
    redacted = redact_text(text, findings_of(text, EMAIL, "EMAIL_ADDRESS"), p)
    assert redacted == "as before, <EMAIL_ADDRESS_1> wrote; now <EMAIL_ADDRESS_2> writes"
    assert p.restore(redacted) == f"as before, <EMAIL_ADDRESS_1> wrote; now {EMAIL} writes"


def test_restore_puts_back_known_placeholders_only():
    p = Placeholders()
    p.placeholder("EMAIL_ADDRESS", EMAIL)
    assert p.restore("Sent to <EMAIL_ADDRESS_1> and <PHONE_NUMBER_1>, a < b.") == \
        f"Sent to {EMAIL} and <PHONE_NUMBER_1>, a < b."


def test_redact_text_replaces_every_occurrence_and_skips_overlaps():
    text = f"{EMAIL} / {EMAIL} / {EMAIL2}"
    fs = findings_of(text, EMAIL, "EMAIL_ADDRESS") + findings_of(text, EMAIL2, "EMAIL_ADDRESS")
    fs.append(Finding("URL", 5, 22, 0.5))  # overlaps the first e-mail: the earlier, longer one wins
    p = Placeholders()
    assert redact_text(text, fs, p) == "<EMAIL_ADDRESS_1> / <EMAIL_ADDRESS_1> / <EMAIL_ADDRESS_2>"


def test_markup_stays_well_formed_and_restores():
    xml = f'<customer id="7"><email>{EMAIL}</email><note>key {KEY}</note></customer>'
    fs = findings_of(xml, EMAIL, "EMAIL_ADDRESS") + findings_of(xml, KEY, "AWS_ACCESS_KEY")
    p = Placeholders()
    redacted = redact_text(xml, fs, p)
    root = ET.fromstring(redacted)  # still parses: the placeholder opened no element
    assert root.find("email").text == "<EMAIL_ADDRESS_1>" and EMAIL not in redacted
    assert p.restore(redacted) == xml
    # an answer quoting the escaped form in markup gets the value escaped for markup
    p2 = Placeholders()
    p2.placeholder("CUSTOMER_NAME", "Smith & Sons")
    assert p2.restore("<b>&lt;CUSTOMER_NAME_1&gt;</b> or <CUSTOMER_NAME_1>") == "<b>Smith &amp; Sons</b> or Smith & Sons"


def test_mask_never_shows_a_value():
    assert mask(EMAIL) == "ja********om (22)" and mask("hunter2") == "h*****2" and mask("abc") == "***"


# --- redact_json on the providers' own parts --------------------------------------------------------------------

def parts_of(host: str, path: str, body: dict, hint: str) -> list[TextPart]:
    raw = json.dumps(body).encode()
    req = providers.HttpRequest.from_url_parts("POST", host, path, {"content-type": "application/json"}, raw)
    parsed = providers.parse_request(req, hint, (hint,))
    assert parsed.exchange.parsed, parsed.exchange.warnings
    return parsed.exchange.request_parts()


BODIES = {
    "openai-chat": ("api.openai.com", "/v1/chat/completions", "openai", {
        "model": "gpt-4o", "temperature": 0.2,
        "messages": [
            {"role": "system", "content": f"You help {EMAIL}'s team."},
            {"role": "user", "content": [{"type": "text", "text": f"Mail {EMAIL} and {EMAIL2}, key {KEY}"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "send", "arguments": json.dumps({"to": EMAIL2, "note": "quote \" and \\ stay"})}}]},
            {"role": "tool", "tool_call_id": "c1", "content": f"sent to {EMAIL2}"}]}),
    "openai-responses": ("api.openai.com", "/v1/responses", "openai", {
        "model": "gpt-4.1", "instructions": f"Escalate to {EMAIL}.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": f"My key is {KEY}, mail {EMAIL}"}]}]}),
    "anthropic-messages": ("api.anthropic.com", "/v1/messages", "anthropic", {
        "model": "claude-sonnet-4", "max_tokens": 512,
        "system": [{"type": "text", "text": f"Owner: {EMAIL2}"}],
        "messages": [{"role": "user", "content": f"<doc>Contact {EMAIL} about {KEY}</doc> and {EMAIL2}"},
                     {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup",
                                                        "input": {"who": EMAIL, "limit": 3}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                   "content": f"{EMAIL} is on leave"}]}]}),
    "gemini-generate": ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent",
                        "gemini", {
        "contents": [{"role": "user", "parts": [{"text": f"Mail {EMAIL}, key {KEY}"}]},
                     {"role": "model", "parts": [{"functionCall": {"name": "send", "args": {
                         "to": [EMAIL2], "subject": "hi", "retries": 2}}}]},
                     {"role": "model", "parts": [{"function_call": {"name": "send", "args": {"cc": EMAIL}}}]}]}),
    "bedrock-converse": ("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3-5-sonnet/converse",
                         "bedrock", {
        "messages": [{"role": "user", "content": [{"text": f"Mail {EMAIL}, key {KEY}"}]},
                     {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "send",
                                                                    "input": {"to": EMAIL2, "n": 1}}}]}]}),
}


def _embedded_parsed(value):
    """The body with JSON text held in strings parsed (OpenAI tool-call arguments come back as equivalent JSON)."""
    if isinstance(value, dict):
        return {k: _embedded_parsed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_embedded_parsed(v) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        try:
            return _embedded_parsed(json.loads(value))
        except ValueError:
            return value
    return value


@pytest.mark.parametrize("name", BODIES)
def test_redact_json_rewrites_the_parts_in_place(scanner, name):
    host, path, hint, body = BODIES[name]
    parts = parts_of(host, path, body, hint)
    findings = [f for f in scanner.scan_parts([p.text for p in parts])]
    assert {f.entity for f in findings} >= {"EMAIL_ADDRESS", "AWS_ACCESS_KEY"}
    placeholders = Placeholders()
    redacted = redact_json(json.loads(json.dumps(body)), parts, findings, placeholders)
    wire = json.dumps(redacted)
    assert json.loads(wire) == redacted  # valid JSON
    for value in (EMAIL, EMAIL2, KEY):
        assert value not in wire
    assert {"<EMAIL_ADDRESS_1>", "<AWS_ACCESS_KEY_1>"} <= set(placeholders.values)
    # in place: plain in text, entity-escaped in a part that holds markup (the Anthropic <doc> message)
    assert all(t in wire or html.escape(t, quote=False) in wire for t in placeholders.values)
    # same shape: only strings changed, and every placeholder restores to what was there
    restored = json.loads(placeholders.restore(wire))
    assert _embedded_parsed(restored) == _embedded_parsed(body)  # tool-call arguments may be re-serialized
    # the same value is the same placeholder everywhere in the request
    assert set(placeholders.values.values()) <= {EMAIL, EMAIL2, KEY}


def test_a_part_that_is_the_text_of_a_json_value_is_rewritten_inside_its_strings():
    body = {"input": {"to": EMAIL, "n": 2, "tags": ["x", KEY]}}
    text = json.dumps(body["input"])
    parts = [TextPart(text, ("input",))]
    findings = findings_of(text, EMAIL, "EMAIL_ADDRESS") + findings_of(text, KEY, "AWS_ACCESS_KEY")
    assert redact_json(body, parts, findings, Placeholders()) == {
        "input": {"to": "<EMAIL_ADDRESS_1>", "n": 2, "tags": ["x", "<AWS_ACCESS_KEY_1>"]}}
    # a finding that would change more than the text of a string (here: a key) is refused
    body = {"input": {EMAIL: 1}}
    text = json.dumps(body["input"])
    with pytest.raises(ValueError):
        redact_json(body, [TextPart(text, ("input",))], findings_of(text, EMAIL, "EMAIL_ADDRESS"), Placeholders())


def test_parts_that_cannot_be_rewritten_are_named_and_refused():
    body = {"messages": [{"role": "user", "content": f"mail {EMAIL}"}]}
    parts = [TextPart(f"mail {EMAIL}", ("messages", 0, "content")), TextPart(f"upload {EMAIL}", None),
             TextPart(f"mail {EMAIL}!", ("messages", 0, "content")), TextPart("x", ("messages", 3, "content"))]
    findings = [Finding("EMAIL_ADDRESS", 5, 5 + len(EMAIL), 1.0, 0), Finding("EMAIL_ADDRESS", 7, 7 + len(EMAIL), 1.0, 1),
                Finding("EMAIL_ADDRESS", 5, 5 + len(EMAIL), 1.0, 2), Finding("EMAIL_ADDRESS", 0, 1, 1.0, 3)]
    assert unredactable(body, parts, findings) == [1, 2, 3]
    with pytest.raises(ValueError, match="1, 2, 3"):
        redact_json(body, parts, findings, Placeholders())
    assert redact_json(body, parts, findings[:1], Placeholders()) == {
        "messages": [{"role": "user", "content": "mail <EMAIL_ADDRESS_1>"}]}


# --- streamed answers ---------------------------------------------------------------------------------------------

def test_stream_restorer_restores_a_placeholder_split_at_every_position():
    p = Placeholders()
    p.placeholder("EMAIL_ADDRESS", EMAIL)
    p.placeholder("AWS_ACCESS_KEY", KEY)
    answer = "Write to <EMAIL_ADDRESS_1> (a < b, x<y) and rotate <AWS_ACCESS_KEY_1>.<EMAIL_ADDRESS_1>"
    expected = p.restore(answer)
    for i in range(len(answer) + 1):
        for j in range(i, len(answer) + 1, 7):
            r = StreamRestorer(p)
            got = r.feed(answer[:i]) + r.feed(answer[i:j]) + r.feed(answer[j:]) + r.flush()
            assert got == expected, (i, j)


def test_stream_restorer_holds_back_only_a_possible_placeholder():
    p = Placeholders()
    p.placeholder("EMAIL_ADDRESS", EMAIL)
    r = StreamRestorer(p)
    assert r.feed("if a < b then <") == "if a < b then "  # `<` may start a placeholder: held
    assert r.feed("EMAIL_ADD") == ""
    assert r.feed("RESS_1> done <b>") == f"{EMAIL} done <b>"  # `<b>` cannot be one: sent at once
    assert r.feed("&l") == "" and r.feed("t;EMAIL_ADDRESS_1&gt;!") == f"{EMAIL}!"
    assert r.feed("<EMAIL_PHONE") == "<EMAIL_PHONE" and r.flush() == ""
    r = StreamRestorer(p)
    assert r.feed("tail <EMA") == "tail " and r.flush() == "<EMA"  # the end of the stream sends what was held


def test_a_tool_argument_is_scanned_with_its_key_and_redacted_in_place(scanner):
    """Values of an argument object are scanned with their key in front (a bare `Tr0ub4dor&3xyzQ` is no secret,
    under "password" it is), and the findings land on the values themselves, which redaction rewrites."""
    from dlp.scanner import in_parts, scan_texts

    body = {"contents": [{"role": "model", "parts": [{"functionCall": {"name": "login", "args": {
        "password": "Tr0ub4dor&3xyzQ", "routing number": "021000021", "cc": [f"mail {EMAIL}"]}}}]}]}
    parts = parts_of("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent",
                     body, "gemini")
    assert {f.entity for f in scanner.scan_parts([p.text for p in parts])} == {"EMAIL_ADDRESS"}  # without keys
    findings = in_parts(scanner.scan_parts(scan_texts(parts)), parts)
    assert sorted((f.entity, parts[f.part].text[f.start:f.end]) for f in findings) == [
        ("EMAIL_ADDRESS", EMAIL), ("GENERIC_SECRET", "Tr0ub4dor&3xyzQ"), ("US_BANK_NUMBER", "021000021")]
    placeholders = Placeholders()
    redacted = redact_json(json.loads(json.dumps(body)), parts, findings, placeholders)
    args = redacted["contents"][0]["parts"][0]["functionCall"]["args"]
    assert args["password"].startswith("<GENERIC_SECRET_") and args["cc"] == ["mail <EMAIL_ADDRESS_1>"]
    assert args["routing number"].startswith("<US_BANK_NUMBER_")


def test_openai_tool_arguments_are_scanned_as_values_not_as_escaped_json_text(scanner):
    """`function.arguments` is JSON text in a string. Scanned as that text, a table's line breaks are `\\n`
    escapes, and its column headers no longer head anything; as values (with their keys) they do, and the
    redaction rewrites the values inside the arguments, which stay valid JSON."""
    from dlp.scanner import in_parts, scan_texts

    table = "name\tssn\nJohn Smith\t536-22-8470\nMary Jones\t078-05-1120"
    args = json.dumps({"rows": table, "mail": EMAIL})
    body = {"model": "gpt-4o", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "store", "arguments": args}}]}]}
    parts = parts_of("api.openai.com", "/v1/chat/completions", body, "openai")
    as_text = {f.entity for f in scanner.scan(args)}
    findings = in_parts(scanner.scan_parts(scan_texts(parts)), parts)
    assert {f.entity for f in findings} >= {"US_SSN", "EMAIL_ADDRESS"} and "US_SSN" not in as_text
    redacted = redact_json(json.loads(json.dumps(body)), parts, findings, Placeholders())
    sent = json.loads(redacted["messages"][0]["tool_calls"][0]["function"]["arguments"])
    assert "536-22-8470" not in sent["rows"] and sent["mail"] == "<EMAIL_ADDRESS_1>"


@pytest.mark.parametrize("arguments, in_place", [
    ('{"note": "536-22-8470 john.smith@example.com", "note": "hi"}', True),  # a repeated key (either may be read)
    ('{"note": "hi", "john.smith@example.com": "x"}', False),  # the value written as a key
])
def test_tool_arguments_hide_nothing_in_repeated_keys_or_in_keys(scanner, arguments, in_place):
    """What a tool could read is scanned: arguments with a repeated key are scanned (and redacted) as the text
    sent, and keys are parts of their own, which cannot be redacted in place (a `redact` decision blocks). The
    audit never shows what DLP found."""
    from core.audit import _text_slots
    from core.exchange import WITHHELD
    from dlp.redact import unredactable
    from dlp.scanner import in_parts, scan_texts

    body = {"model": "gpt-4o", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "note", "arguments": arguments}}]}]}
    raw = json.dumps(body).encode()
    req = providers.HttpRequest.from_url_parts("POST", "api.openai.com", "/v1/chat/completions",
                                               {"content-type": "application/json"}, raw)
    exchange = providers.parse_request(req, "openai", ("openai",)).exchange
    parts = exchange.request_parts()
    findings = in_parts(scanner.scan_parts(scan_texts(parts)), parts)
    assert "EMAIL_ADDRESS" in {f.entity for f in findings}
    if in_place:
        sent = redact_json(json.loads(raw), parts, findings, Placeholders())
        assert "john.smith@example.com" not in json.dumps(sent)
    else:
        assert unredactable(body, parts, findings)  # so a redact decision blocks
    for (obj, attr), f in ((slot, f) for f in findings for i, slot in enumerate(_text_slots(exchange))
                           if i == f.part):
        setattr(obj, attr, "<EMAIL_ADDRESS>")  # what the audit's masking does
    rendered = exchange.messages[0].tool_calls[0].rendered()
    assert "john.smith@example.com" not in rendered and (rendered == WITHHELD or "<EMAIL_ADDRESS>" in rendered)
