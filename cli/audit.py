"""`gateway audit ...`: search, show, stats, shadow-ai, tools, tail, status and schema. A query goes to the running
gateway over its admin socket, or to the store itself when no gateway serves it (`run_query`); `print_rows` writes
the result as a table, JSON lines or CSV.
"""

from __future__ import annotations

import socket
from datetime import datetime
from pathlib import Path

import click
import orjson

from cli.common import SPOOL_FILE, _audit_url, audit_option, data_dir_option, fail, password_file_option


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
                             show_default=True)
since_option = click.option("--since", default="24h", show_default=True,
                            help="From: 15m, 1h, 7d ago or an ISO time.")
until_option = click.option("--until", default="", help="Up to (exclusive): a duration ago or an ISO time.")


def store_options(f):
    return audit_option(data_dir_option(password_file_option(format_option(f))))


def filter_options(f):
    for name, text in reversed([("user", "this user"), ("group", "users of this group"),
                                ("service", "this catalog service id (e.g. openai)"),
                                ("category", "this service category (chat, api, code...)"), ("model", "this model"),
                                ("decision", "this decision (allow, monitor, redact, warn, block)"),
                                ("entity", "events with this DLP entity type (e.g. EMAIL_ADDRESS)"),
                                ("text", "prompt or completion containing this text (case-insensitive)")]):
        f = click.option(f"--{name}", default="", help=f"Only {text}.")(f)
    return since_option(until_option(f))


@click.group()
def audit() -> None:
    """Query the audit log (through the running gateway, or the store itself when none runs)."""


def run_query(audit_url: str, name: str, params: dict, password_file: str = "", data_dir: Path | None = None
              ) -> tuple[list[str], list[list]]:
    """Ask the running gateway over its admin socket; open the store directly when no gateway serves it."""
    from addons.admin import socket_path_for
    from storage.queries import QUERIES
    from storage.store import AuditUrl, AuditUrlError, Store, StoreLockedError, StoreUnavailableError

    sock_path = socket_path_for(audit_url, data_dir)
    if sock_path is not None and sock_path.exists():
        try:
            reply = _ask_socket(sock_path, {"query": name, "params": params})
        except OSError:
            reply = None  # stale socket of a gateway that is gone: fall through to the store
        if reply is not None:
            if "error" in reply:
                fail(reply["error"])
            return reply["columns"], reply["rows"]
    if name == "status":
        return _offline_status(data_dir / SPOOL_FILE if data_dir else None)
    try:
        store = Store.open(AuditUrl.parse(audit_url).with_password(password_file=password_file))
    except (AuditUrlError, StoreLockedError, StoreUnavailableError) as e:
        fail(str(e))
    try:
        columns, rows = QUERIES[name](store, **params)
    except ValueError as e:
        fail(str(e))
    finally:
        store.close()
    return columns, [list(r) for r in rows]


def _offline_status(spool: Path | None) -> tuple[list[str], list[list]]:
    from storage.writer import spool_counts

    if spool is None:
        fail("no gateway is running for this audit store")
    counts = spool_counts(spool)
    return ["gateway", "spooled", "rejected", "spool"], [["not running", counts["spooled"], counts["rejected"],
                                                          str(spool)]]


def _ask_socket(path: Path, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(path))
        s.sendall(orjson.dumps(request) + b"\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return orjson.loads(b"".join(chunks))


def print_rows(columns: list[str], rows: list[list], fmt: str, noun: str = "rows", header: bool = True) -> None:
    """json: one object per line; csv: every column; table: the columns that fit a terminal."""
    if fmt == "json":
        for row in rows:
            click.echo(orjson.dumps(dict(zip(columns, row)), default=str).decode())
        return
    if fmt == "csv":
        import csv
        import io

        if not columns:  # an empty result from the embedded engine has no column names
            return

        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        if header:
            out.writerow(columns)
        out.writerows([[_csv_cell(v) for v in row] for row in rows])
        click.echo(buf.getvalue(), nl=False)
        return
    shown = [c for c in TABLE_COLUMNS if c in columns] if "event_id" in columns and len(rows) != 1 else columns
    cells = [[_cell(row[columns.index(c)]) for c in shown] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(shown)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(shown, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    click.echo(f"({len(rows)} {noun})")


TABLE_COLUMNS = ["ts", "user", "client_addr", "service", "operation", "model", "stream", "decision", "status",
                 "input_tokens", "output_tokens", "latency_ms", "entity_types", "inspection", "event_id"]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        value = ",".join(map(str, value))
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _csv_cell(value: object) -> object:
    if isinstance(value, list | dict):
        return orjson.dumps(value, default=str).decode()
    return "" if value is None else value


def _check_times(*values: str) -> None:
    from storage.queries import parse_since

    for v in values:
        if v:
            try:
                parse_since(v)
            except ValueError as e:
                fail(str(e))


@audit.command()
@filter_options
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@store_options
def search(limit: int, fmt: str, audit_url: str | None, data_dir: Path, password_file: str, **filters: str
           ) -> None:
    """Search audit events, newest first."""
    _check_times(filters["since"], filters["until"])
    columns, rows = run_query(_audit_url(audit_url, data_dir), "search", {"limit": limit, **filters},
                              password_file, data_dir)
    print_rows(columns, rows, fmt, "events")


@audit.command()
@click.argument("event_id")
@store_options
def show(event_id: str, fmt: str, audit_url: str | None, data_dir: Path, password_file: str) -> None:
    """Every recorded field of one event."""
    columns, rows = run_query(_audit_url(audit_url, data_dir), "show", {"event_id": event_id}, password_file,
                              data_dir)
    if not rows:
        fail(f"no event {event_id}", code=1)
    if fmt == "table":
        for c, v in zip(columns, rows[0]):
            click.echo(f"{c:>18}  {'-' if v is None else v}")
        return
    print_rows(columns, rows, fmt, "events")


@audit.command()
@click.option("--by", type=click.Choice(["user", "service", "decision", "category", "model", "entity"]),
              default="service", show_default=True, help="What to count by (entity: DLP findings).")
@click.option("--bucket", type=click.Choice(["minute", "hour", "day", "week"]), default="day", show_default=True)
@filter_options
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@store_options
def stats(by: str, bucket: str, limit: int, fmt: str, audit_url: str | None, data_dir: Path, password_file: str,
          **filters: str) -> None:
    """Counts over time buckets, by user, service, decision, category, model or DLP entity."""
    _check_times(filters["since"], filters["until"])
    columns, rows = run_query(_audit_url(audit_url, data_dir), "stats",
                              {"by": by, "bucket": bucket, "limit": limit, **filters}, password_file, data_dir)
    print_rows(columns, rows, fmt)


@audit.command("shadow-ai")
@click.option("--since", default="30d", show_default=True, help="From: 15m, 1h, 7d ago or an ISO time.")
@until_option
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@store_options
def shadow_ai(since: str, until: str, limit: int, fmt: str, audit_url: str | None, data_dir: Path,
              password_file: str) -> None:
    """Unsanctioned AI services in use: users, requests, tunnelled connections, bytes, first and last seen."""
    _check_times(since, until)
    columns, rows = run_query(_audit_url(audit_url, data_dir), "shadow-ai",
                              {"since": since, "until": until, "limit": limit}, password_file, data_dir)
    print_rows(columns, rows, fmt, "services")


@audit.command()
@click.option("--since", default="30d", show_default=True, help="From: 15m, 1h, 7d ago or an ISO time.")
@until_option
@click.option("--user", default="", help="Only this user (or client address).")
@click.option("--server", default="", help="Only this MCP server (its host); '' is the clients' own tools.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@store_options
def tools(since: str, until: str, user: str, server: str, limit: int, fmt: str, audit_url: str | None,
          data_dir: Path, password_file: str) -> None:
    """The tool inventory: which users and agents use which tools of which servers; tools whose definition
    changed (definitions > 1) and tool names offered by several servers (also_on)."""
    _check_times(since, until)
    columns, rows = run_query(_audit_url(audit_url, data_dir), "tools",
                              {"since": since, "until": until, "user": user, "server": server, "limit": limit},
                              password_file, data_dir)
    print_rows(columns, rows, fmt, "tools")


@audit.command()
@click.option("--since", default="1m", show_default=True, help="Start with events inserted since then.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds between polls.")
@click.option("--count", default=0, type=click.IntRange(0), help="Stop after this many events (0: never).")
@store_options
def tail(since: str, interval: float, count: int, fmt: str, audit_url: str | None, data_dir: Path,
         password_file: str) -> None:
    """Follow new events as they are written (Ctrl-C to stop)."""
    import collections
    import time

    _check_times(since)
    url = _audit_url(audit_url, data_dir)
    seen: collections.OrderedDict[str, None] = collections.OrderedDict()  # replays of shown events are skipped
    cursor, shown = since, 0
    try:
        while True:
            columns, rows = run_query(url, "tail", {"after": cursor, "limit": 1000}, password_file, data_dir)
            fresh = [r for r in rows if str(r[columns.index("event_id")]) not in seen]
            for r in fresh:
                seen[str(r[columns.index("event_id")])] = None
                if len(seen) > 100_000:
                    seen.popitem(last=False)
            if count:
                fresh = fresh[:count - shown]
            if fresh:
                if fmt != "table":
                    print_rows(columns, fresh, fmt, header=not shown)
                else:
                    for r in fresh:
                        e = dict(zip(columns, r))
                        click.echo(f"{_cell(e['ts'])}  {e['user'] or e['client_addr']}  {e['service']}  "
                                   f"{e['operation']}  {e['model'] or '-'}  {e['decision']}  {e['status']}  "
                                   f"{e['event_id']}")
                shown += len(fresh)
            if rows:
                last = rows[-1][columns.index("inserted_at")]
                cursor = last.isoformat() if isinstance(last, datetime) else str(last)
            if count and shown >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


@audit.command()
@store_options
def status(fmt: str, audit_url: str | None, data_dir: Path, password_file: str) -> None:
    """The audit writer's health: queue depth, spool size, records written, failures."""
    columns, rows = run_query(_audit_url(audit_url, data_dir), "status", {}, password_file, data_dir)
    if fmt == "table":
        for c, v in zip(columns, rows[0]):
            click.echo(f"{c:>12}  {v}")
        return
    print_rows(columns, rows, fmt)


@audit.command()
@click.option("--cluster", default="", help="Render ON CLUSTER DDL (Replicated tables behind Distributed ones).")
@click.option("--database", default="default", show_default=True)
@click.option("--text-ttl-days", default=30, show_default=True, type=click.IntRange(1))
@click.option("--metadata-ttl-days", default=400, show_default=True, type=click.IntRange(1))
def schema(cluster: str, database: str, text_ttl_days: int, metadata_ttl_days: int) -> None:
    """Print the audit schema DDL, for a DBA to review or apply by hand."""
    from storage.schema import Target, render

    try:
        target = Target(cluster=cluster, database=database)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    click.echo(render(target, text_ttl_days, metadata_ttl_days), nl=False)
