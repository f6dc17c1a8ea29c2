"""Capture levels and finding positions: what an audit event may hold, decided in pure code."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.audit import (
    AuditEvent,
    ConnectionEvent,
    _text_slots,
    mask_spans,
    redacted_prompt,
    sha256_text,
)
from core.catalog import Service
from core.exchange import Attachment, Exchange, Message, TextPart, ToolCall, ToolResult
from core.interaction import Interaction

SECRET_EMAIL = "jane.doe@corp.example"
SECRET_KEY = "AKIAABCDEFGHIJKLMNOP"


@dataclass
class Finding:
    entity: str
    part: int
    start: int
    end: int
    score: float = 0.9


def exchange() -> Exchange:
    return Exchange(
        service="openai", operation="chat.completions", model="gpt-4o",
        system=[TextPart(f"Reply to {SECRET_EMAIL}", ("messages", 0, "content"))],
        messages=[
            Message("user", [TextPart(f"My key is {SECRET_KEY} and mail {SECRET_EMAIL}.", ("messages", 1, "content"))],
                    tool_results=[ToolResult("call1", f"owner: {SECRET_EMAIL}")]),
            Message("assistant", tool_calls=[ToolCall("send", f'{{"to": "{SECRET_EMAIL}"}}')]),
            Message("user", attachments=[Attachment("file", "a.txt", text=f"cc {SECRET_EMAIL}", inspected=True)]),
        ],
        completion="Done.")


def findings(x: Exchange) -> list[Finding]:
    """Every occurrence of the two secrets, located the way the DLP stage reports them."""
    out = []
    for i, p in enumerate(x.request_parts()):
        for value, entity in ((SECRET_EMAIL, "EMAIL_ADDRESS"), (SECRET_KEY, "AWS_ACCESS_KEY")):
            start = p.text.find(value)
            if start >= 0:
                out.append(Finding(entity, i, start, start + len(value)))
    return out


def interaction(x: Exchange, found: list) -> Interaction:
    return Interaction(service=Service("openai", "OpenAI", "OpenAI", "api", sanctioned=True), client_addr="10.0.0.5",
                       host="api.openai.com", method="POST", path="/v1/chat/completions", user="jane",
                       groups=["eng", "ml"], exchange=x, findings=found, decision="redact", rule_id="pii-redact",
                       justification="customer asked", inspection="inspected")


def test_text_slots_mirror_request_parts():
    """The masking walks the exchange in request_parts order; if Exchange changes, this fails first."""
    x = exchange()
    assert [getattr(o, a) for o, a in _text_slots(x)] == [p.text for p in x.request_parts()]


def test_redacted_capture_masks_every_finding_and_keeps_the_rest():
    x = exchange()
    event = interaction(x, findings(x)).to_event("redacted")
    assert SECRET_EMAIL not in event.prompt and SECRET_KEY not in event.prompt
    assert "[system] Reply to <EMAIL_ADDRESS>" in event.prompt
    assert "My key is <AWS_ACCESS_KEY> and mail <EMAIL_ADDRESS>." in event.prompt
    assert '<tool_call send> {"to": "<EMAIL_ADDRESS>"}' in event.prompt
    assert "<tool_result call1> owner: <EMAIL_ADDRESS>" in event.prompt
    assert event.completion == "Done." and event.capture == "redacted"
    assert event.prompt_sha256 == sha256_text(x.prompt_text)  # of the raw prompt
    assert SECRET_EMAIL in x.prompt_text, "masking must not change the exchange itself"


def test_findings_are_positions_never_values():
    x = exchange()
    event = interaction(x, findings(x)).to_event("full")
    assert event.entity_types == ["AWS_ACCESS_KEY", "EMAIL_ADDRESS"]
    assert event.entity_counts == [1, 5]
    assert event.finding_parts == sorted(event.finding_parts)
    assert len(event.finding_entities) == len(event.finding_starts) == len(event.finding_ends) == 6
    row = {k: v for k, v in event.as_row().items() if k not in ("prompt", "completion")}
    assert SECRET_EMAIL not in repr(row) and SECRET_KEY not in repr(row)
    parts = x.request_parts()
    for part, start, end, entity in zip(event.finding_parts, event.finding_starts, event.finding_ends,
                                        event.finding_entities):
        assert parts[part].text[start:end] == (SECRET_EMAIL if entity == "EMAIL_ADDRESS" else SECRET_KEY)


def test_metadata_capture_keeps_no_text_but_the_hash():
    x = exchange()
    event = interaction(x, findings(x)).to_event("metadata")
    assert (event.prompt, event.completion, event.justification) == ("", "", "")
    assert event.prompt_sha256 == sha256_text(x.prompt_text) != ""
    assert event.entity_types == ["AWS_ACCESS_KEY", "EMAIL_ADDRESS"]


def test_full_capture_keeps_raw_text_and_identity():
    x = exchange()
    event = interaction(x, findings(x)).to_event("full")
    assert event.prompt == x.prompt_text and SECRET_EMAIL in event.prompt
    assert (event.user, event.groups, event.rule_id, event.justification, event.decision) == (
        "jane", ["eng", "ml"], "pii-redact", "customer asked", "redact")


def test_event_id_is_the_interactions():
    it = interaction(exchange(), [])
    assert it.to_event().event_id == it.event_id == it.to_event().event_id


@pytest.mark.parametrize("text, spans, expected", [
    ("abc", [], "abc"),
    ("hello world", [(6, 11, "X")], "hello <X>"),
    ("hello world", [(0, 5, "A"), (3, 8, "B")], "<A><B>rld"),  # overlap: the rest of the second is masked
    ("hello world", [(0, 11, "A"), (2, 4, "B")], "<A>"),  # contained span
    ("short", [(3, 99, "X")], "sho<X>"),  # clipped, never leaks around
    ("short", [(9, 12, "X")], "short"),  # out of range: nothing to mask
])
def test_mask_spans(text, spans, expected):
    assert mask_spans(text, spans) == expected


def test_redacted_without_findings_is_the_prompt():
    x = exchange()
    assert redacted_prompt(x, []) == x.prompt_text


def test_rows_survive_a_json_round_trip():
    import orjson

    e = AuditEvent(prompt="p", groups=["g"], input_tokens=3)
    e.set_findings([Finding("EMAIL_ADDRESS", 0, 1, 2)])
    assert AuditEvent.from_row(orjson.loads(orjson.dumps(e.as_row()))) == e
    c = ConnectionEvent(host="claude.ai", bytes_sent=None)
    assert ConnectionEvent.from_row(orjson.loads(orjson.dumps(c.as_row()))) == c


@pytest.mark.parametrize("inspection", ["skipped", "errored"])
def test_text_dlp_did_not_inspect_is_not_stored_under_redacted_capture(inspection):
    x = exchange()
    it = interaction(x, [])
    it.inspection = inspection
    event = it.to_event("redacted")
    assert event.capture == "metadata" and event.prompt == "" and event.completion == ""
    assert event.inspection == inspection and event.prompt_sha256 == sha256_text(x.prompt_text)
    assert it.to_event("full").prompt == x.prompt_text


def test_values_found_in_the_prompt_are_masked_where_the_answer_repeats_them():
    x = exchange()
    x.completion = f"Sure, I will email {SECRET_EMAIL} and rotate {SECRET_KEY}."
    event = interaction(x, findings(x)).to_event("redacted")
    assert event.completion == "Sure, I will email <EMAIL_ADDRESS> and rotate <AWS_ACCESS_KEY>."
    assert interaction(x, findings(x)).to_event("full").completion == x.completion


def test_response_side_findings_mask_the_stored_completion_only():
    from core.exchange import RESPONSE_PART

    x = exchange()
    x.completion = f"Sent to {SECRET_EMAIL}."
    start = x.completion.index(SECRET_EMAIL)
    answer = Finding("EMAIL_ADDRESS", RESPONSE_PART, start, start + len(SECRET_EMAIL))
    event = interaction(x, [*findings(x), answer]).to_event("redacted")
    assert event.completion == "Sent to <EMAIL_ADDRESS>." and SECRET_EMAIL not in event.prompt
    assert event.finding_parts[-1] == RESPONSE_PART and event.entity_counts == [1, 6]
    assert interaction(x, [answer]).to_event("full").completion == x.completion


def test_stored_prompt_text_is_capped():
    from core.audit import MAX_STORED_CHARS
    x = Exchange(service="openai", messages=[Message("user", [TextPart("x" * (MAX_STORED_CHARS + 5000), None)])])
    it = interaction(x, [])
    it.inspection = "inspected"
    for capture in ("full", "redacted"):
        prompt = it.to_event(capture).prompt
        assert len(prompt) < MAX_STORED_CHARS + 100 and prompt.endswith(f"<truncated {len(x.prompt_text)} chars>")
