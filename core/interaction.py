"""Everything the gateway learns about one AI request as it crosses the proxy: the one per-flow record.

The addons fill it in stage by stage (recognise, identify, admission, extract, inspect, decide, redact) and the
audit addon turns it into an `AuditEvent`. It lives in `flow.metadata[KEY]`, the only metadata key the gateway
uses; a flow without one is not AI traffic. Its fields are the facts the audit records; `Interaction.stages`
holds what the stages hand each other on the way, each field written by one stage only (docs/architecture.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode

from core.audit import AuditEvent, captured_text, mask_echoed_values, new_event_id, sha256_text
from core.catalog import Service
from core.exchange import Exchange

if TYPE_CHECKING:
    import asyncio

    from core.offload import Deferred
    from dlp.answer import StreamedAnswer
    from dlp.redact import Placeholders
    from policy.engine import Decision
    from policy.language import Policy
    from providers import Parsed
    from providers.base import ResponseParser
    from providers.websocket import WsConversation

KEY = "gateway"


class Tap(Protocol):
    """Extract's stream callable on a streamed answer: its parser reads what the upstream sends; `then`, when a
    later stage sets it, changes what the client receives (redact: the original values restored)."""

    then: Callable[[bytes], bytes] | None

    def __call__(self, chunk: bytes) -> bytes: ...


@dataclass
class Stages:
    """What one stage leaves for a later one about this flow, beyond the audited facts. One writer per field (named
    first); the others only read. Nothing here reaches the audit event."""

    browser: str | None = None  # recognise: the warn pages' cookie (policy.enforcement.ACK_COOKIE), taken off
    parsed: Parsed | None = None  # extract: the request's exchange and the provider that understood it
    body: Any = None  # extract: the canonical parse of a JSON body, what was inspected; redact takes it (and so
    # releases it) once the decision is known, and rewrites it for a redaction
    tap: Tap | None = None  # extract: the tap on a streamed answer
    response_parser: ResponseParser | None = None  # extract: reassembling the response, until it has ended
    deferred_scan: Deferred | None = None  # inspect: the scan of a request sent before it was scanned
    response_scan: asyncio.Task | None = None  # inspect: the scan of the completion, awaited by response and error
    decision: Decision | None = None  # decide: the policy's decision on the request, which warn and redact carry out
    asked_model: str | None = None  # decide: the model the request named (the answer may name a dated version)
    sent_under: Policy | None = None  # inspect: the policy that let the request go before its scan ended
    deferred_decision: Decision | None = None  # decide: what that policy decided on no findings
    answer_judged: bool = False  # decide: the response-side rules were applied
    warning: str | None = None  # warn: the warning header an API client gets on a `warn` it was let through on
    placeholders: Placeholders | None = None  # redact: the values of a reversible redaction, to restore
    restoring: StreamedAnswer | None = None  # redact: the streamed answer whose placeholders are being restored
    conversation: WsConversation | None = None  # websocket: the conversation followed over the upgraded flow


@dataclass
class Interaction:
    service: Service
    client_addr: str
    host: str
    method: str
    path: str
    user: str = ""  # who is asking: proxy-auth user, trusted SSO header, CIDR map, or "" (then client_addr)
    groups: list[str] = field(default_factory=list)
    exchange: Exchange = field(default_factory=Exchange)
    findings: list = field(default_factory=list)  # dlp.scanner.Finding objects from request (and response) scans
    decision: str = "allow"  # allow | monitor | redact | warn | block: set with `decide` only
    reasons: list[str] = field(default_factory=list)  # why: the rule behind the decision, then what came of it
    redact_entities: list[str] = field(default_factory=list)  # set by the decide stage when decision == redact
    reversible: bool = False  # restore placeholders in the answer before the client sees it
    # Set by the inspect stage; "pending" if it never ran (the audit says so); "deferred" while the scan of a request
    # that was sent before it was scanned has not ended (addons/inspect.py).
    inspection: str = "pending"
    response_inspection: str = ""  # the completion's DLP scan: "" (not asked for), inspected or errored
    error: str = ""
    status: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    audited: bool = False
    event_id: str = field(default_factory=new_event_id)  # the audit event's id, known from the start
    source: str = "http"  # http | websocket
    rule_id: str = ""  # id of the policy rule behind the decision
    justification: str = ""  # what the user typed to continue past a warning
    stages: Stages = field(default_factory=Stages, repr=False, compare=False)

    def decide(self, action: str, reason: str | None = None, rule_id: str | None = None) -> None:
        """The one way a stage sets the decision. `reason` replaces the reasons (None keeps them: the decision
        changes for the reasons already given); `rule_id` names the rule behind it (None keeps the one named)."""
        self.decision = action
        if reason is not None:
            self.reasons = [reason] if reason else []
        if rule_id is not None:
            self.rule_id = rule_id

    def note(self, reason: str) -> None:
        """Add to the reasons for the decision: how it was enforced, or what happened after."""
        self.reasons.append(reason)

    @property
    def reason(self) -> str:
        """The reasons as the audit records them."""
        return "; ".join(self.reasons)

    def to_event(self, capture: str = "redacted") -> AuditEvent:
        """The audit row. `capture` (metadata | redacted | full) decides how much text it keeps; the prompt's
        SHA-256 is always of the raw text, and findings are kept as positions, never values."""
        x = self.exchange
        if capture == "redacted" and self.inspection != "inspected" and any(p.text for p in x.request_parts()):
            # DLP did not look at it (off, timed out, failed), so nothing could be masked: keep no text rather
            # than raw secrets. The row says so (capture = metadata) and the prompt's hash still finds it.
            capture = "metadata"
        prompt, completion = captured_text(x, self.findings, capture)
        event = AuditEvent(
            event_id=self.event_id, client_addr=self.client_addr, user=self.user, host=self.host,
            method=self.method, path=redact_query(self.path)[:2000], service=self.service.id, category=self.service.category,
            sanctioned=self.service.sanctioned, operation=x.operation, model=x.model, stream=x.stream,
            prompt=prompt, completion=completion, prompt_sha256=sha256_text(x.prompt_text),
            input_tokens=x.usage.input_tokens, output_tokens=x.usage.output_tokens,
            request_bytes=self.request_bytes, response_bytes=self.response_bytes, status=self.status,
            latency_ms=round((time.monotonic() - self.started) * 1000, 3), decision=self.decision,
            reason=self.reason, inspection=self.inspection if x.read else "unparsed", parsed=x.parsed,
            warnings=x.warnings[:50], error=self.error, groups=list(self.groups), source=self.source,
            capture=capture, rule_id=self.rule_id, justification=self.justification if capture != "metadata" else "",
            finish_reason=x.finish_reason,
        )
        event.set_findings(self.findings)
        event.set_tools(x)
        # A key path can itself hold a value DLP found (a token used as a metadata key): masked like the completion
        event.coverage = [mask_echoed_values(line, x, self.findings) for line in x.coverage]
        return event


#: Query parameters that carry credentials (Gemini `?key=AIza...`, Copilot `?accessToken=...`, signed URLs).
SECRET_PARAMS = frozenset({"accesstoken", "access_token", "token", "key", "api-key", "api_key", "apikey",
                           "authorization", "sig", "signature", "x-amz-signature", "x-amz-credential",
                           "x-amz-security-token", "x-goog-signature", "code", "client_secret", "password"})


def redact_query(path: str) -> str:
    """The path with credential-bearing query values replaced, so tokens never reach the audit store."""
    route, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = [(k, "REDACTED" if k.lower() in SECRET_PARAMS else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return f"{route}?{urlencode(pairs)}"
