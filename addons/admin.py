"""Answer audit queries from the CLI while the gateway runs.

The embedded store can be opened by one process only (docs/stack.md), so `gateway audit ...` cannot open it while
the gateway runs. Instead the gateway listens on a Unix socket (mode 0600: only its owner may read the audit) and
runs the same named, parameterized queries (`storage.queries.QUERIES`) for the CLI. Protocol: one JSON request
line `{"query": name, "params": {...}}`, one JSON response line `{"columns": [...], "rows": [...]}` or
`{"error": message}`. Queries run in a thread, never on the event loop. The `status` request answers with the
audit writer's health (queue depth, spool size, failures) instead of a query.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import orjson
from mitmproxy import ctx

from storage.queries import QUERIES
from storage.store import AuditUrl

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


def socket_path_for(audit_url: str, data_dir: Path | None = None) -> Path | None:
    """Where the gateway serving this audit store listens: beside the embedded store's folder, or in the data
    folder for a server store."""
    try:
        url = AuditUrl.parse(audit_url)
    except ValueError:
        return None
    if url.scheme == "chdb":
        return Path(url.path.rstrip("/") + ".sock")
    return data_dir / "audit.sock" if data_dir is not None else None


class AdminSocket:
    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.path: Path | None = None
        self.writer = None  # storage.writer.AuditWriter the audit stage opened (addons.hooks.AuditOpenedHook)

    def audit_opened(self, writer) -> None:
        self.writer = writer

    def load(self, loader) -> None:
        loader.add_option("gateway_admin_socket", str, "",
                          "Unix socket answering `gateway audit` commands. Default: beside the embedded store.")

    async def running(self) -> None:
        if ctx.options.gateway_audit_role == "spool":  # a proxy process of several: the audit process answers
            return
        path = (Path(ctx.options.gateway_admin_socket) if ctx.options.gateway_admin_socket
                else socket_path_for(ctx.options.gateway_audit))
        if path is None:
            return
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        self.path = path
        log.info("audit queries answered on %s", path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self._answer(line)
        except (ValueError, asyncio.LimitOverrunError):
            reply = {"error": "request too large"}
        try:
            writer.write(orjson.dumps(reply, default=str) + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        writer = self.writer
        try:
            request = orjson.loads(line)
            if request["query"] == "status" and writer is not None:
                status = writer.status()
                return {"columns": list(status), "rows": [list(status.values())]}
            if writer is None or writer.store is None:
                return {"error": "the gateway has no audit store open" if writer is None
                        else "the audit store is not connected yet (events wait in the spool)"}
            query = QUERIES[request["query"]]
            params = request.get("params") or {}
            if not isinstance(params, dict):
                raise TypeError("params must be an object")
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            return {"error": f"bad request: {e}"}
        try:
            columns, rows = await asyncio.to_thread(query, writer.store, **params)
        except (TypeError, ValueError) as e:
            return {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - the store's own errors: report, never crash the gateway
            log.warning("audit query %s failed: %s", request["query"], e)
            return {"error": f"query failed: {str(e).splitlines()[0][:300]}"}
        return {"columns": columns, "rows": rows}

    def done(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
