"""Connecting to the audit store and applying the schema.

`chdb:///path` runs the real ClickHouse engine in this process (one process per path: docs/stack.md);
`http(s)://user@host:port/db` talks to a server or cluster. The password comes from the URL, the environment
(GATEWAY_AUDIT_PASSWORD) or a file (`--audit-password-file`, preferred: not visible in `ps`). Credentials never
appear in errors, logs or reprs: `AuditUrl.redacted` is what we print, and every error message from the client
library has the password scrubbed out before it goes anywhere.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from core.audit import AuditEvent, ConnectionEvent
from storage.schema import (
    METADATA_TTL_DAYS,
    NAME,
    SINGLE_SERVER,
    TEXT_COLUMNS,
    TEXT_TTL_DAYS,
    Target,
    migrations,
    migrations_table,
    modify_ttl,
)

EVENT_COLUMNS = list(AuditEvent.__slots__)  # type: ignore[attr-defined]
CONNECTION_COLUMNS = list(ConnectionEvent.__slots__)  # type: ignore[attr-defined]
TABLE_COLUMNS = {"events": EVENT_COLUMNS, "connections": CONNECTION_COLUMNS}
PASSWORD_ENV = "GATEWAY_AUDIT_PASSWORD"


class AuditUrlError(ValueError):
    """The --audit URL is not usable; the message never contains a password."""


@dataclass(frozen=True)
class AuditUrl:
    scheme: str  # chdb | http | https
    path: str = ""  # chdb: folder of the embedded store
    host: str = ""
    port: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    database: str = "default"

    @classmethod
    def parse(cls, url: str) -> AuditUrl:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:  # urlsplit's message quotes the URL's text, which may be part of a password
            raise AuditUrlError("invalid audit URL: the port is not a number (percent-encode ':', '/', '?', '#' and "
                                "'@' in a password, or pass it in $GATEWAY_AUDIT_PASSWORD)") from None
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
            db = unquote(parts.path.strip("/")) or "default"
            if not NAME.fullmatch(db):
                raise AuditUrlError(f"audit URL path must be a database name (letters, digits, '_'), not {db!r}")
            return cls(scheme, host=parts.hostname, port=port or (8443 if scheme == "https" else 8123),
                       username=unquote(parts.username or ""), password=unquote(parts.password or ""),
                       database=db)
        raise AuditUrlError(f"unsupported audit URL scheme {parts.scheme!r}: use chdb:///path or http(s)://host")

    def with_password(self, *, password_file: str = "", environ: dict[str, str] | None = None) -> AuditUrl:
        """The password from a file (first line) or the environment when the URL has none."""
        if self.scheme == "chdb" or self.password:
            return self
        if password_file:
            try:
                secret = Path(password_file).read_text().splitlines()
            except OSError as e:
                raise AuditUrlError(f"cannot read audit password file {password_file}: {e.strerror}") from None
            return replace(self, password=secret[0] if secret else "")
        env = os.environ if environ is None else environ
        return replace(self, password=env.get(PASSWORD_ENV, ""))

    def scrub(self, message: str) -> str:
        """An error message with the password removed (also URL-encoded forms)."""
        if self.password:
            from urllib.parse import quote
            for form in {self.password, quote(self.password, safe=""), quote(self.password)}:
                message = message.replace(form, "***")
        return message

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


class StoreUnavailableError(RuntimeError):
    """The store cannot be reached now (server down, timeout): the writer spools and retries."""


class Store:
    """A connected audit store. Thread-safe: one lock around the client (chdb is one engine per process)."""

    def __init__(self, client: Any, url: AuditUrl, target: Target = SINGLE_SERVER):
        self.client = client
        self.url = url
        self.target = target
        self.lock = threading.Lock()

    @classmethod
    def open(cls, url: AuditUrl | str, *, text_ttl_days: int = TEXT_TTL_DAYS,
             metadata_ttl_days: int = METADATA_TTL_DAYS, cluster: str = "") -> Store:
        """Connect, bring the schema forward and apply the configured TTLs.

        Raises AuditUrlError for a configuration that can never work, StoreLockedError when another process
        holds the embedded store, StoreUnavailableError when a server does not answer (worth retrying)."""
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
        except Exception as e:  # noqa: BLE001 - clickhouse-connect and chdb raise many types; the message matters
            msg = url.scrub(str(e))
            if "Cannot lock file" in msg or "Another server instance" in msg:
                raise StoreLockedError(f"audit store {url.redacted} is in use by another process "
                                       "(a running gateway?)") from None
            if url.scheme == "chdb":
                raise AuditUrlError(f"cannot open audit store {url.redacted}: {msg.splitlines()[0][:300]}") from None
            raise StoreUnavailableError(f"audit store {url.redacted} unavailable: "
                                        f"{msg.splitlines()[0][:300]}") from None
        store = cls(client, url, Target(cluster=cluster, database=url.database))
        try:
            store.migrate(text_ttl_days=text_ttl_days, metadata_ttl_days=metadata_ttl_days)
            store.apply_ttl(text_ttl_days=text_ttl_days, metadata_ttl_days=metadata_ttl_days)
        except Exception as e:  # noqa: BLE001 - any DDL failure: report it scrubbed, keep nothing open
            store.close()
            raise StoreUnavailableError(f"audit store {url.redacted}: schema update failed: "
                                        f"{url.scrub(str(e)).splitlines()[0][:300]}") from None
        return store

    def migrate(self, text_ttl_days: int = TEXT_TTL_DAYS, metadata_ttl_days: int = METADATA_TTL_DAYS) -> list[int]:
        """Apply the migrations not yet recorded; returns the versions applied."""
        with self.lock:
            for stmt in migrations_table(self.target):
                self.client.command(stmt)
            done = {row[0] for row in self.client.query("SELECT version FROM schema_migrations").result_rows}
            applied = []
            for m in migrations(text_ttl_days, metadata_ttl_days, self.target):
                if m.version in done:
                    continue
                for stmt in m.statements:
                    self.client.command(stmt)
                self.client.insert("schema_migrations", [[m.version, m.description]],
                                   column_names=["version", "description"])
                applied.append(m.version)
            return applied

    def ttl_days(self) -> dict[str | None, int]:
        """The TTLs the store declares now: {None: table TTL of events, column: that column's TTL}."""
        with self.lock:
            ddl = self.client.query("SELECT create_table_query FROM system.tables "
                                    "WHERE database = currentDatabase() AND name = {t:String}",
                                    parameters={"t": self.target.local("events")}).result_rows[0][0]
        found: dict[str | None, int] = {}
        for column in TEXT_COLUMNS["events"]:
            m = re.search(rf"`{column}` [^,]*? TTL toDateTime\(ts\) \+ toIntervalDay\((\d+)\)", ddl)
            if m:
                found[column] = int(m.group(1))
        m = re.search(r"\) ENGINE = .*? TTL toDateTime\(ts\) \+ toIntervalDay\((\d+)\)", ddl, re.DOTALL)
        if m:
            found[None] = int(m.group(1))
        return found

    def apply_ttl(self, text_ttl_days: int = TEXT_TTL_DAYS, metadata_ttl_days: int = METADATA_TTL_DAYS
                  ) -> list[str]:
        """Bring declared TTLs to the configured ones (ALTER ... MODIFY TTL only where they differ, since each
        change rewrites TTL information of existing parts). Returns the statements run."""
        current = self.ttl_days()
        wanted: dict[str | None, int] = {c: int(text_ttl_days) for c in TEXT_COLUMNS["events"]}
        wanted[None] = int(metadata_ttl_days)
        run: list[str] = []
        for table in ("events", "connections"):
            if current.get(None) != wanted[None]:
                run.extend(modify_ttl(table, None, wanted[None], self.target))
        for column in TEXT_COLUMNS["events"]:
            if current.get(column) != wanted[column]:
                run.extend(modify_ttl("events", column, wanted[column], self.target))
        with self.lock:
            for stmt in run:
                self.client.command(stmt)
        return run

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert rows given as dicts of column values (as from `AuditEvent.as_row`)."""
        columns = TABLE_COLUMNS[table]
        with self.lock:
            self.client.insert(table, [[r.get(c) for c in columns] for r in rows], column_names=columns)

    def insert_events(self, events: list[AuditEvent]) -> None:
        self.insert("events", [e.as_row() for e in events])

    def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple]]:
        """Run a parameterized query (values travel as ClickHouse parameters, never spliced into SQL)."""
        with self.lock:
            result = self.client.query(sql, parameters=parameters)
        return list(result.column_names), list(result.result_rows)

    def close(self) -> None:
        with self.lock:
            self.client.close()
