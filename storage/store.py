"""Connecting to the audit store and applying the schema.

`chdb:///path` runs the real ClickHouse engine in this process (one process per path: stack-facts);
`http(s)://user:pass@host:port/db` talks to a server or cluster. Credentials never appear in errors or logs:
`AuditUrl.redacted` is what we print.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from core.audit import AuditEvent
from storage.schema import MIGRATIONS_TABLE, migrations

EVENT_COLUMNS = list(AuditEvent.__slots__)  # type: ignore[attr-defined]


class AuditUrlError(ValueError):
    """The --audit URL is not usable; the message never contains a password."""


@dataclass(frozen=True)
class AuditUrl:
    scheme: str  # chdb | http | https
    path: str = ""  # chdb: folder of the embedded store
    host: str = ""
    port: int = 0
    username: str = ""
    password: str = ""
    database: str = "default"

    @classmethod
    def parse(cls, url: str) -> AuditUrl:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise AuditUrlError(f"invalid audit URL: {e}") from None
        scheme = parts.scheme.lower()
        if scheme == "chdb":
            if parts.netloc:
                raise AuditUrlError("chdb audit URL must be chdb:///absolute/path (three slashes)")
            if not parts.path or parts.path == "/":
                raise AuditUrlError("chdb audit URL needs a folder: chdb:///path/to/audit")
            return cls("chdb", path=unquote(parts.path))
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise AuditUrlError(f"{scheme} audit URL needs a host: {scheme}://user:pass@host:8123/db")
            db = parts.path.strip("/") or "default"
            if "/" in db:
                raise AuditUrlError(f"audit URL path must be a database name, not {db!r}")
            return cls(scheme, host=parts.hostname, port=port or (8443 if scheme == "https" else 8123),
                       username=unquote(parts.username or ""), password=unquote(parts.password or ""),
                       database=db)
        raise AuditUrlError(f"unsupported audit URL scheme {parts.scheme!r}: use chdb:///path or http(s)://host")

    @property
    def redacted(self) -> str:
        if self.scheme == "chdb":
            return f"chdb://{self.path}"
        user = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}/{self.database}"

    def check_local(self) -> None:
        """Fail fast on a chdb folder we cannot create or write, before the proxy starts."""
        if self.scheme != "chdb":
            return
        p = Path(self.path)
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AuditUrlError(f"cannot create audit folder {p}: {e.strerror}") from None
        if not p.is_dir():
            raise AuditUrlError(f"audit path {p} is not a folder")


class StoreLockedError(RuntimeError):
    """The embedded store is open in another process (a running gateway)."""


class Store:
    """A connected audit store. Thread-safe: one lock around the client (chdb is one engine per process)."""

    def __init__(self, client: Any, url: AuditUrl):
        self.client = client
        self.url = url
        self.lock = threading.Lock()

    @classmethod
    def open(cls, url: AuditUrl | str, *, text_ttl_days: int | None = None,
             metadata_ttl_days: int | None = None) -> Store:
        import clickhouse_connect  # heavy import; only when a store is opened

        url = AuditUrl.parse(url) if isinstance(url, str) else url
        try:
            if url.scheme == "chdb":
                url.check_local()
                client = clickhouse_connect.get_client(dsn=f"chdb://{url.path}")
            else:
                client = clickhouse_connect.get_client(
                    host=url.host, port=url.port, username=url.username or "default", password=url.password,
                    database=url.database, secure=url.scheme == "https", connect_timeout=5,
                    send_receive_timeout=30, autogenerate_session_id=False)
        except AuditUrlError:
            raise
        except Exception as e:  # clickhouse-connect and chdb raise many types; the message is what matters
            msg = str(e).replace(url.password, "***") if url.password else str(e)
            if "Cannot lock file" in msg or "Another server instance" in msg:
                raise StoreLockedError(f"audit store {url.redacted} is in use by another process "
                                       "(a running gateway?)") from None
            raise AuditUrlError(f"cannot open audit store {url.redacted}: {msg.splitlines()[0][:300]}") from None
        store = cls(client, url)
        kwargs = {k: v for k, v in (("text_ttl_days", text_ttl_days), ("metadata_ttl_days", metadata_ttl_days))
                  if v is not None}
        store.migrate(**kwargs)
        return store

    def migrate(self, **ttl: int) -> list[int]:
        """Apply the migrations not yet recorded; returns the versions applied."""
        with self.lock:
            self.client.command(MIGRATIONS_TABLE)
            done = {row[0] for row in self.client.query("SELECT version FROM schema_migrations").result_rows}
            applied = []
            for m in migrations(**ttl):
                if m.version in done:
                    continue
                for stmt in m.statements:
                    self.client.command(stmt)
                self.client.insert("schema_migrations", [[m.version, m.description]],
                                   column_names=["version", "description"])
                applied.append(m.version)
            return applied

    def insert_events(self, events: list[AuditEvent]) -> None:
        rows = [[getattr(e, c) for c in EVENT_COLUMNS] for e in events]
        with self.lock:
            self.client.insert("events", rows, column_names=EVENT_COLUMNS)

    def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        """Run a parameterized query (values travel as ClickHouse parameters, never spliced into SQL)."""
        with self.lock:
            result = self.client.query(sql, parameters=parameters)
        return list(result.column_names), list(result.result_rows)

    def close(self) -> None:
        with self.lock:
            self.client.close()
