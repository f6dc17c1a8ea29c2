"""Record every AI exchange, and every tunnelled AI connection, as an audit record that is never lost.

A flow can end in `response` or in `error` (clients close a stream as soon as they read its end marker): both
hooks write the event, once. The event goes to the `AuditWriter` (with the others of the same turn of the event
loop: storage.writer.Handover), and the hook then waits (asynchronously: the event loop keeps serving other flows)
until the writer says it is durable in the local spool, so a client never receives an answer whose audit record a
crash could still lose. If the spool does not confirm within
`SPOOL_WAIT` the client is answered anyway and the delay is logged: auditing never takes the proxy down.

Connections that are tunnelled instead of decrypted (do-not-decrypt AI hosts, shadow-AI domains in the catalog)
are recorded when the client disconnects, with what mitmproxy knows of an ignored connection: client, host,
server address, start and duration (it does not count the bytes of a connection it does not intercept).

The embedded store is opened in `configure`, before the proxy accepts traffic, so a bad `--audit` URL or a
store held by another process stops start-up with a clear error. A ClickHouse server is connected by the writer
in the background: a server that is down at start-up does not stop the proxy, its events wait in the spool.

`gateway_audit_role` splits this between processes (`gateway run --workers N`, storage/writer.py): a proxy
process only spools (`spool`: it never opens the store), the audit process ships the shared spool to the store
and sees no traffic (`ship`); one process alone does both (`all`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from mitmproxy import connection, ctx, http
from mitmproxy.exceptions import OptionsError

from addons.hooks import AuditOpenedHook, AuditRecordedHook
from core.audit import CAPTURE_LEVELS, AuditEvent, ConnectionEvent
from core.interaction import KEY, Interaction
from addons.extract import ASSET
from core.offload import off_loop
from storage.schema import METADATA_TTL_DAYS, NAME, TEXT_TTL_DAYS
from storage.store import (
    AuditUrl,
    AuditUrlError,
    Store,
    StoreLockedError,
    StoreUnavailableError,
)
from storage.writer import AuditWriter, Handover

log = logging.getLogger(__name__)

SPOOL_WAIT = 5.0  # seconds a response waits for its audit record to be durable before going out anyway
ROLES = ("all", "spool", "ship")
STORE_OPTIONS = {"gateway_audit", "gateway_audit_role", "gateway_audit_password_file", "gateway_audit_cluster", "gateway_audit_spool",
                 "gateway_audit_flush_interval", "gateway_text_ttl_days", "gateway_metadata_ttl_days"}


def default_spool(url: AuditUrl) -> Path:
    """Beside the embedded store's folder; in mitmproxy's confdir for a server."""
    if url.scheme == "chdb":
        return Path(url.path.rstrip("/") + "-spool.sqlite")
    return Path(os.path.expanduser(ctx.options.confdir)) / f"audit-spool-{url.host}-{url.port}.sqlite"


def flush_interval_seconds(value: str) -> float:
    """`gateway_audit_flush_interval` as seconds, or the reason it is not."""
    try:
        interval = float(value)
    except ValueError:
        raise OptionsError(f"gateway_audit_flush_interval must be a number of seconds, not {value!r}") from None
    if not 0.05 <= interval <= 60:  # NaN too
        raise OptionsError(f"gateway_audit_flush_interval must be between 0.05 and 60 seconds, not {value}")
    return interval


class Audit:
    def __init__(self) -> None:
        self.writer: AuditWriter | None = None
        self.handover: Handover | None = None  # the writer's event-loop side
        self._opened: tuple | None = None  # the store options the writer was opened with
        self._tunnels: dict[str, ConnectionEvent] = {}  # client connection id -> record being built

    @property
    def store(self) -> Store | None:
        return self.writer.store if self.writer else None

    def load(self, loader) -> None:
        loader.add_option("gateway_audit", str, "",
                          "Audit store: chdb:///path (embedded ClickHouse) or http(s)://user@host:port/db. "
                          "Empty: audit disabled (events are only logged).")
        loader.add_option("gateway_audit_password_file", str, "",
                          "File whose first line is the audit store password (else $GATEWAY_AUDIT_PASSWORD).")
        loader.add_option("gateway_audit_cluster", str, "",
                          "ClickHouse cluster name: create the schema ON CLUSTER, Replicated tables behind "
                          "Distributed ones.")
        loader.add_option("gateway_audit_spool", str, "",
                          "Local spool file (SQLite) every audit record passes through before ClickHouse. "
                          "Default: beside the embedded store, or in the confdir.")
        loader.add_option("gateway_audit_role", str, "all",
                          "all: this process spools and ships to the store; spool: a proxy process of several "
                          "(the audit process ships); ship: the audit process (`gateway run --workers N`).",
                          choices=list(ROLES))
        loader.add_option("gateway_audit_flush_interval", str, "0.5",  # str: `--set` cannot parse a float
                          "Seconds between shipments of the spool to the store (a full batch goes sooner). "
                          "Longer: fewer, larger inserts, so less CPU per event for the store's merges "
                          "(bench/store.py: 0.35 ms per row at 0.5 s, 0.24 at 1 s, 0.20 at 2 s), and events "
                          "reach `audit tail` and dashboards that much later. Between 0.05 and 60.")
        loader.add_option("gateway_capture", str, "redacted",
                          "How much text audit events keep: metadata (none), redacted (DLP findings masked), "
                          "full (raw).", choices=list(CAPTURE_LEVELS))
        loader.add_option("gateway_audit_assets", bool, False,
                          "Also store an event for each static file (script, style, image, font) a consumer AI "
                          "app's page loads from the app's host. Off: those carry no prompt and are left out, "
                          "unless the policy did something to them (a block is always stored).")
        loader.add_option("gateway_text_ttl_days", int, TEXT_TTL_DAYS,
                          "Days prompt and completion text are kept in the audit store.")
        loader.add_option("gateway_metadata_ttl_days", int, METADATA_TTL_DAYS,
                          "Days audit metadata (who, what service, decision, findings) is kept.")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "gateway_capture" in updated and o.gateway_capture not in CAPTURE_LEVELS:
            raise OptionsError(f"gateway_capture must be one of {', '.join(CAPTURE_LEVELS)}, "
                               f"not {o.gateway_capture!r}")
        if not updated & STORE_OPTIONS:
            return
        flush_interval = flush_interval_seconds(o.gateway_audit_flush_interval)
        if o.gateway_text_ttl_days < 1 or o.gateway_metadata_ttl_days < 1:
            raise OptionsError("gateway_text_ttl_days and gateway_metadata_ttl_days must be at least 1")
        if o.gateway_text_ttl_days > o.gateway_metadata_ttl_days:
            raise OptionsError(f"gateway_text_ttl_days ({o.gateway_text_ttl_days}) cannot be longer than "
                               f"gateway_metadata_ttl_days ({o.gateway_metadata_ttl_days})")
        if o.gateway_audit_cluster and not NAME.fullmatch(o.gateway_audit_cluster):
            raise OptionsError(f"gateway_audit_cluster must be a ClickHouse cluster name (letters, digits, '_'), "
                               f"not {o.gateway_audit_cluster!r}")
        opened = tuple(getattr(o, name) for name in sorted(STORE_OPTIONS))
        if self.writer is not None and opened == self._opened:
            return  # set again to the same values (a process of several gets its role twice at start): kept open
        self._close()
        if not o.gateway_audit:
            return
        try:
            url = AuditUrl.parse(o.gateway_audit).with_password(password_file=o.gateway_audit_password_file)
            spool = Path(o.gateway_audit_spool) if o.gateway_audit_spool else default_spool(url)
            settings = {"text_ttl_days": o.gateway_text_ttl_days, "cluster": o.gateway_audit_cluster,
                        "metadata_ttl_days": o.gateway_metadata_ttl_days}  # as of now: it may connect much later

            def open_store() -> Store:
                return Store.open(url, **settings)

            shipping = {"shared": o.gateway_audit_role == "ship", "flush_interval": flush_interval}
            if o.gateway_audit_role == "spool":
                self.writer = AuditWriter(spool, ship=False)
            elif url.scheme == "chdb":
                self.writer = AuditWriter(spool, store=open_store(), **shipping)
            else:
                self.writer = AuditWriter(spool, open_store=open_store, **shipping)
        except (AuditUrlError, StoreLockedError, StoreUnavailableError) as e:  # the latter: chdb schema errors
            raise OptionsError(str(e)) from None
        except (OSError, sqlite3.Error) as e:
            raise OptionsError(f"cannot open the audit spool: {e}") from None
        self.handover = Handover(self.writer, SPOOL_WAIT)
        self._opened = opened
        if o.gateway_audit_role == "spool":
            log.info("audit spool: %s (the audit process ships it to %s)", spool, url.redacted)
        else:
            log.info("audit store: %s (capture: %s, text kept %d days, metadata %d days, spool %s)", url.redacted,
                     o.gateway_capture, o.gateway_text_ttl_days, o.gateway_metadata_ttl_days, spool)
        ctx.master.addons.trigger(AuditOpenedHook(self.writer))

    # --- AI exchanges ------------------------------------------------------------------------------------------

    async def response(self, flow: http.HTTPFlow) -> None:
        await self._record(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        await self._record(flow)

    async def _record(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or it.audited:
            return
        it.audited = True  # before any await: the other of response and error must not record it again
        if it.exchange.operation == ASSET and it.decision == "allow" and not ctx.options.gateway_audit_assets:
            return
        # Masking and hashing a 60 MB prompt takes a quarter of a second: large interactions are built in a thread.
        size = sum(len(p.text) for p in it.exchange.request_parts()) + len(it.exchange.completion)
        event = await off_loop(size, self._event, it, ctx.options.gateway_capture)
        durable = self._submit(event)
        if durable is not None:
            await durable

    def record(self, it: Interaction) -> asyncio.Future[bool] | None:
        """Submit one interaction's audit event without waiting; the future says when it is durable. For stages
        that cannot wait themselves (WebSocket turns, whose messages are already on their way)."""
        it.audited = True
        return self._submit(self._event(it, ctx.options.gateway_capture))

    def ai_turn(self, it: Interaction, headers: dict[str, str]) -> None:
        """A WebSocket turn (addons.hooks.AiTurnHook), scanned and judged by now."""
        self.record(it)

    @staticmethod
    def _event(it: Interaction, capture: str) -> AuditEvent:
        """The interaction's event; a metadata-only one that says so if it cannot be built in full."""
        try:
            return it.to_event(capture)
        except Exception as e:
            log.exception("audit event %s could not be built in full", it.event_id)
            return AuditEvent(event_id=it.event_id, client_addr=it.client_addr, user=it.user, host=it.host,
                              method=it.method, service=it.service.id, category=it.service.category,
                              sanctioned=it.service.sanctioned, status=it.status, decision=it.decision,
                              reason=it.reason, capture="metadata", inspection="errored",
                              error=f"audit event incomplete: {type(e).__name__}: {str(e)[:200]}")

    def _submit(self, event: AuditEvent) -> asyncio.Future[bool] | None:
        log.info("AI %s %s %s model=%s decision=%s status=%s", event.service, event.operation, event.user or
                 event.client_addr, event.model or "-", event.decision, event.status)
        durable = self.handover.submit(event) if self.handover is not None else None
        _announce(event)
        return durable

    # --- tunnelled AI connections ------------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is not None and not it.audited:
            # A CONNECT to a tunnelled AI host: the policy's decision on it is an event when it did something
            # (blocked, or a monitored rule matched); a tunnel that simply opens is in `connections` when it ends.
            if it.decision == "allow":
                it.audited = True
            else:
                self.record(it)

    def ai_tunnel(self, data, it: Interaction, host: str, match) -> None:
        """A connection to an AI host at its handshake (addons.hooks.AiTunnelHook), after the policy: still to be
        tunnelled, it is AI use we cannot see into, recorded when it ends; blocked (decrypted instead), the
        decision is an event of its own."""
        if not data.ignore_connection:
            if it.decision == "block":
                self.record(it)
            return
        if self.writer is None:
            return
        server = data.context.server.address
        client = data.context.client
        self._tunnels[client.id] = ConnectionEvent(
            client_addr=it.client_addr, user=it.user, host=host, server_addr=f"{server[0]}:{server[1]}" if server
            else "", service=match.service.id, category=match.service.category, sanctioned=match.service.sanctioned,
            reason=match.reason or "do not decrypt")

    def client_disconnected(self, client: connection.Client) -> None:
        record = self._tunnels.pop(client.id, None)
        if record is None or self.writer is None:
            return
        start = client.timestamp_start or time.time()
        record.ts = datetime.fromtimestamp(start, UTC)
        record.duration_ms = round(((client.timestamp_end or time.time()) - start) * 1000, 3)
        record.error = str(client.error or "")
        log.info("AI tunnel %s %s %s %.0fms", record.service, record.host, record.user or record.client_addr,
                 record.duration_ms)
        self.handover.submit(record)
        _announce(record)

    def done(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.handover.hand_over()  # what this turn of the loop submitted
            store = self.writer.store
            self.writer.close()
            self.writer, self.handover = None, None
            if store is not None:
                store.close()
            ctx.master.addons.trigger(AuditOpenedHook(None))


def _announce(event: AuditEvent | ConnectionEvent) -> None:
    """Tell the stages that count what is recorded (metrics); mitmproxy logs a handler's failure and goes on, so
    a counting bug never costs a record."""
    ctx.master.addons.trigger(AuditRecordedHook(event))
