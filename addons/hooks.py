"""The gateway's own mitmproxy events: how a stage tells the others a fact without looking them up.

mitmproxy's addons pass facts through the flow and announce what happened as events (`Hook` subclasses, offered to
every addon that has a method of the event's name, in the order the addons were loaded). The gateway's stages do
the same: a stage that learns something the others need fires one of these, and never calls another addon
(docs/architecture.md draws who fires and who handles which).

A handler that raises is logged by mitmproxy and the event goes on to the next addon, so a fact always reaches
every stage; where a failure must stop something (a broken rules file), it is found before the event is fired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mitmproxy import http, tls
from mitmproxy.hooks import Hook

if TYPE_CHECKING:
    from core.audit import AuditEvent, ConnectionEvent
    from core.catalog import Match
    from core.interaction import Interaction
    from policy.ruleset import RuleSet
    from storage.writer import AuditWriter


@dataclass
class RulesLoadedHook(Hook):
    """A complete rule set is in force (every file of the rules folder, checked together): at start and after each
    valid edit. Fired once by the rules stage (addons/rules.py), so every stage gets the same set in one pass and
    none ever runs on a mix of old and new files."""

    rules: RuleSet


@dataclass
class RequestDecodedHook(Hook):
    """A compressed request body decoded to `size` bytes (Extract, before parsing it): a stage that bounds what the
    gateway holds counts it at that size, and refuses the flow by answering it."""

    flow: http.HTTPFlow
    size: int


@dataclass
class AiTunnelHook(Hook):
    """A connection to an AI host is about to be tunnelled without decryption (a do-not-decrypt host, seen at its
    TLS handshake, where transparent clients and SNI-only clients are first seen): `it` is its interaction
    (operation TUNNEL). Identify says who it is, Tunnel applies the policy (a block turns the tunnel into a
    decrypted connection), Audit records the connection."""

    data: tls.ClientHelloData
    it: Interaction
    host: str
    match: Match


@dataclass
class AiTurnHook(Hook):
    """A turn of an AI WebSocket conversation has ended; its messages were relayed as they came. Inspect scans
    it, Decide judges it (recording what a rule would have done), Audit records it, in that order."""

    it: Interaction
    headers: dict[str, str]  # of the upgrade request: what header conditions of rules see


@dataclass
class AuditRecordedHook(Hook):
    """An audit event (an interaction, or a tunnelled connection that ended) went to the audit writer."""

    event: AuditEvent | ConnectionEvent


@dataclass
class AuditOpenedHook(Hook):
    """The audit stage opened its writer (None: closed it): for the stages that report on the audit (metrics,
    the admin socket's queries)."""

    writer: AuditWriter | None


@dataclass
class DlpReadyHook(Hook):
    """Whether this process's DLP workers can scan: `problem` is "" once they have built their scanners (or DLP is
    off), else why not (warming up at start, or unable to start). Fired by Inspect; Metrics puts it in /ready, so
    no client is sent to a gateway whose first prompts would wait for its workers, or fail closed."""

    problem: str
