"""The audit event: one row per AI exchange, what the security team queries.

Built from the flow's `Interaction` by the audit addon, written by `storage.writer`. Field names are the column
names of the ClickHouse `events` table (storage/schema.py).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime


def new_event_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class AuditEvent:
    event_id: str = field(default_factory=new_event_id)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    client_addr: str = ""
    user: str = ""
    host: str = ""
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

    def as_row(self) -> dict:
        return asdict(self)


def sha256_text(text: str) -> str:
    """Identical prompts share a hash, so they can be found without storing the text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() if text else ""
