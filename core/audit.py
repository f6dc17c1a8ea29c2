"""The audit records: one `AuditEvent` per AI exchange, one `ConnectionEvent` per tunnelled AI connection.

Built from the flow's `Interaction` (or from a tunnelled connection) by the audit addon, written by
`storage.writer`. Field names are the column names of the ClickHouse `events` and `connections` tables
(storage/schema.py).

Capture levels decide how much text an event keeps: `metadata` (none), `redacted` (the prompt with every DLP
finding masked as `<ENTITY>`), `full` (raw). Whatever the level, the SHA-256 of the raw prompt is kept, so the
same prompt can be found again without storing it, and findings are kept as entity types and positions, never as
the values they matched.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Protocol, Self

from core.exchange import RESPONSE_PART, Exchange

CAPTURE_LEVELS = ("metadata", "redacted", "full")
MAX_TOOL_RECORDS = 1000  # tools one row records (an MCP server may list thousands; a row must stay small)
MAX_TOOL_NAME = 200


def new_event_id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


class FindingLike(Protocol):
    """What the audit needs of a DLP finding (dlp.scanner.Finding): where it is and what it is, never its value.

    `part` indexes `Exchange.request_parts()`, or is RESPONSE_PART for a finding in the completion (a response-side
    scan); `start`/`end` are character offsets in that part's text.
    """

    entity: str
    part: int
    start: int
    end: int
    score: float


@dataclass
class AuditRecord:
    """The columns both audit tables begin with: which record, when, and who reached which host. Written once, so
    `events` and `connections` cannot drift apart in the columns a query joins them on; also the row conversion
    both need.

    It declares no slots of its own: the dataclass-made `__slots__` of each record then lists all of its fields,
    these first, which is the table's column order (storage/store.py reads the columns from it). Having no slots,
    it is never built itself: only the two records are."""

    __slots__ = ()

    event_id: str = field(default_factory=new_event_id)
    ts: datetime = field(default_factory=_now)
    client_addr: str = ""
    user: str = ""
    host: str = ""

    def as_row(self) -> dict[str, Any]:
        """Column name -> value; shallow (dataclasses.asdict deep-copies every list, the writer's main cost)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        """Rebuild from `as_row()` after a JSON round trip (the spool): unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        ts = values.get("ts")
        if isinstance(ts, str):
            values["ts"] = datetime.fromisoformat(ts)
        return cls(**values)


@dataclass(slots=True)
class AuditEvent(AuditRecord):
    """One AI exchange: what was asked of which service, what came back, and what the gateway decided."""

    method: str = ""
    path: str = ""
    service: str = ""
    category: str = ""
    sanctioned: bool = False
    operation: str = ""
    model: str = ""
    stream: bool = False
    prompt: str = ""
    completion: str = ""
    prompt_sha256: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    status: int = 0  # HTTP status the client saw; 0 if none
    latency_ms: float = 0.0
    decision: str = "allow"  # allow | monitor | redact | warn | block
    reason: str = ""  # the rule or condition behind the decision
    inspection: str = "inspected"  # inspected | skipped | errored | unparsed
    parsed: bool = True
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    # --- schema v2 ---
    groups: list[str] = field(default_factory=list)
    source: str = "http"  # http | websocket
    capture: str = "redacted"  # metadata | redacted | full: how much text this row holds
    rule_id: str = ""
    justification: str = ""  # what the user typed to continue past a warning
    finish_reason: str = ""
    entity_types: list[str] = field(default_factory=list)  # distinct DLP entity types, sorted
    entity_counts: list[int] = field(default_factory=list)  # findings per entity type (parallel to entity_types)
    finding_entities: list[str] = field(default_factory=list)  # one element per finding, in the arrays below
    finding_parts: list[int] = field(default_factory=list)  # index in Exchange.request_parts(); 65535: completion
    finding_starts: list[int] = field(default_factory=list)
    finding_ends: list[int] = field(default_factory=list)
    finding_scores: list[float] = field(default_factory=list)
    # --- schema v3 ---
    #: What of the request body was read and how: `parser|walk|upload|not inspected ... /path/pattern xN`.
    coverage: list[str] = field(default_factory=list)
    # --- schema v4 ---
    #: Where each finding's text came from (user, system, tool_result, mcp_result, document, tool_definition,
    #: answer, ...: dlp.injection.SOURCES), parallel to finding_entities: prompt injection is judged by it.
    finding_sources: list[str] = field(default_factory=list)
    # --- schema v5 ---
    #: The tools of the exchange, one element per tool in these parallel arrays (at most MAX_TOOL_RECORDS):
    #: `offered` (a definition the request gives the model), `listed` (in an MCP server's tools/list answer) or
    #: `called` (a call in the request: history, an MCP tools/call); the MCP server's host ('' for the client's own
    #: tools) and the definition's digest ('' for a call). `gateway audit tools` is the inventory built from them.
    tool_kinds: list[str] = field(default_factory=list)
    tool_names: list[str] = field(default_factory=list)
    tool_servers: list[str] = field(default_factory=list)
    tool_digests: list[str] = field(default_factory=list)

    def set_tools(self, x: Exchange) -> None:
        kind = "listed" if x.operation.startswith("mcp.") else "offered"  # an MCP exchange's tools are its answer's
        rows = [(kind, t.name, t.server, t.digest) for t in x.tools]
        rows += [("called", c.name, c.server, "") for m in x.messages for c in m.tool_calls]
        rows = list(dict.fromkeys(rows))[:MAX_TOOL_RECORDS]  # a history calls the same tool many times
        self.tool_kinds = [r[0] for r in rows]
        self.tool_names = [r[1][:MAX_TOOL_NAME] for r in rows]
        self.tool_servers = [r[2] for r in rows]
        self.tool_digests = [r[3] for r in rows]

    def set_findings(self, findings: Sequence[FindingLike]) -> None:
        ordered = sorted(findings, key=lambda f: (f.part, f.start, f.end))
        self.finding_entities = [f.entity for f in ordered]
        self.finding_parts = [int(f.part) for f in ordered]
        self.finding_starts = [int(f.start) for f in ordered]
        self.finding_ends = [int(f.end) for f in ordered]
        self.finding_scores = [round(float(f.score), 4) for f in ordered]
        self.finding_sources = [getattr(f, "source", "") for f in ordered]
        counts = Counter(self.finding_entities)
        self.entity_types = sorted(counts)
        self.entity_counts = [counts[e] for e in self.entity_types]


@dataclass(slots=True)
class ConnectionEvent(AuditRecord):
    """A connection to an AI service that was tunnelled, not decrypted (do-not-decrypt hosts, shadow AI).

    Only what the proxy truly knows: who, where, when (`ts`: when the client connected), how long. mitmproxy does
    not count the bytes of a connection it does not intercept, so the byte counts are None unless a transport that
    counts them is used.
    """

    server_addr: str = ""
    service: str = ""
    category: str = ""
    sanctioned: bool = False
    reason: str = ""  # why it was not decrypted
    duration_ms: float = 0.0
    bytes_sent: int | None = None  # client -> server
    bytes_received: int | None = None  # server -> client
    error: str = ""


def sha256_text(text: str) -> str:
    """Identical prompts share a hash, so they can be found without storing the text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() if text else ""


def _text_slots(x: Exchange) -> Iterator[tuple[object, str]]:
    """(object, attribute) holding each text of `x.request_parts()`, in the same order, so a copy of the
    exchange can have its request texts replaced in place. Must mirror `Exchange.request_parts` (a test checks)."""
    for p in x.system:
        yield p, "text"
    for m in x.messages:
        for p in m.parts:
            yield p, "text"
        for tc in m.tool_calls:
            if tc.leaves:
                for leaf in tc.leaves:
                    yield leaf, "text"
            else:
                yield tc, "arguments"
        for tr in m.tool_results:
            yield tr, "text"
        for a in m.attachments:
            if a.text:
                yield a, "text"
    for p in x.extra:
        yield p, "text"


def mask_spans(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """Replace each (start, end, entity) span by `<ENTITY>`; a span overlapping an earlier one
    masks only what is left of it.
    Spans outside the text are clipped, so a finding from a stale offset never leaks the text around it."""
    out, pos = [], 0
    for start, end, entity in sorted(spans):
        start, end = max(start, pos), min(end, len(text))
        if start >= end:
            continue
        out.append(text[pos:start])
        out.append(f"<{entity}>")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redacted_prompt(x: Exchange, findings: Sequence[FindingLike]) -> str:
    """The prompt text as `Exchange.prompt_text` renders it, with every finding in a request part masked."""
    by_part: dict[int, list[tuple[int, int, str]]] = {}
    for f in findings:
        if int(f.part) == RESPONSE_PART:
            continue
        by_part.setdefault(int(f.part), []).append((int(f.start), int(f.end), f.entity))
    if not by_part:
        return x.prompt_text
    masked = copy.deepcopy(x)
    for i, (obj, attr) in enumerate(_text_slots(masked)):
        if i in by_part:
            setattr(obj, attr, mask_spans(getattr(obj, attr), by_part[i]))
    return masked.prompt_text


def captured_text(x: Exchange, findings: Sequence[FindingLike], capture: str) -> tuple[str, str]:
    """(prompt, completion) as the capture level allows them to be stored. The completion is masked where a
    response-side scan found something (only policies that ask for it scan completions)."""
    if capture == "metadata":
        return "", ""
    if capture == "full":
        return _capped(x.prompt_text), x.completion
    answer = [(int(f.start), int(f.end), f.entity) for f in findings if int(f.part) == RESPONSE_PART]
    completion = mask_spans(x.completion, answer) if answer else x.completion
    return _capped(redacted_prompt(x, findings)), mask_echoed_values(completion, x, findings)


#: Stored prompt text is capped like the reassembled completion: a 100 MB paste must not become a 100 MB row.
MAX_STORED_CHARS = 1_000_000


def _capped(text: str) -> str:
    return text if len(text) <= MAX_STORED_CHARS else text[:MAX_STORED_CHARS] + f"\n<truncated {len(text)} chars>"


def mask_echoed_values(completion: str, x: Exchange, findings: Sequence[FindingLike]) -> str:
    """Models repeat what they were given ("Sure, I'll email bob@x.com"): every value found in the prompt is masked
    in the stored completion too, even when no response-side scan ran."""
    if not completion or not findings:
        return completion
    parts = x.request_parts()
    values: dict[str, str] = {}
    for f in findings:
        part = int(f.part)
        if part != RESPONSE_PART and 0 <= part < len(parts):
            value = parts[part].text[int(f.start):int(f.end)]
            if len(value) >= 4:  # a 1-3 character match would mask unrelated text
                values[value] = f.entity
    for value in sorted(values, key=len, reverse=True):
        completion = completion.replace(value, f"<{values[value]}>")
    return completion
