"""`gateway`: the AI egress gateway's command line.

    gateway run              start the proxy (mitmproxy + the gateway addons)
    gateway ca               where the CA certificate is (clients must trust it)
    gateway audit search     query the audit log (works while the gateway runs on the embedded store)
    gateway dlp scan         run the DLP recognizers on any text
    gateway rules check      validate the rules files (file:line: message, exit status 1)
    gateway rules test       decide one request offline: decision, rule, findings, body sent upstream
    gateway rules status     the rules a running gateway has active, and its last refused edit
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import click
import orjson

from core.rulesfile import SHIPPED_RULES
from dlp.cli import scan_command  # click only: the scanner is built when the command runs

CA_FILE = "mitmproxy-ca-cert.pem"
BUNDLE_FILE = "gateway-ca-bundle.pem"
SPOOL_FILE = "audit-spool.sqlite"


def default_data_dir() -> Path:
    return Path(os.environ.get("GATEWAY_DATA_DIR") or Path.home() / ".ai-gateway")


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, no traceback: what a person running the command needs."""
    click.echo(f"gateway: error: {message}", err=True)
    sys.exit(code)


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                               default=default_data_dir, show_default="$GATEWAY_DATA_DIR or ~/.ai-gateway",
                               help="Folder for the embedded audit store and the CA.")
confdir_option = click.option("--confdir", type=click.Path(file_okay=False, path_type=Path), default=None,
                              help="mitmproxy's folder holding the CA (default: DATA_DIR/ca).")
audit_option = click.option("--audit", "audit_url", default=None, metavar="URL",
                            help="Audit store: chdb:///path (default DATA_DIR/audit) or "
                                 "http(s)://user:pass@host:port/db.")
password_file_option = click.option(
    "--audit-password-file", "password_file", default="", metavar="FILE",
    help="File whose first line is the audit store password (else $GATEWAY_AUDIT_PASSWORD).")


def _audit_url(audit_url: str | None, data_dir: Path) -> str:
    return audit_url or f"chdb://{(data_dir / 'audit').resolve()}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The AI egress gateway: recognise, inspect, decide, enforce and audit traffic to AI services."""


# --- run ---------------------------------------------------------------------------------------------------------

@cli.command()
@click.option("--listen-host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--listen-port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=SHIPPED_RULES,
              show_default="the shipped rules/", help="Folder of rules files.")
@audit_option
@password_file_option
@data_dir_option
@confdir_option
@click.option("-s", "--script", "scripts", multiple=True, type=click.Path(dir_okay=False),
              help="Extra mitmproxy addon script (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Any mitmproxy option (repeatable).")
def run(listen_host: str, listen_port: int, rules_dir: Path, audit_url: str | None, password_file: str,
        data_dir: Path, confdir: Path | None, scripts: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Start the gateway."""
    from addons.admin import socket_path_for
    from core.catalog import Catalog
    from core.rulesfile import RulesError
    from storage.store import AuditUrl, AuditUrlError

    try:
        Catalog.load(rules_dir / "endpoints.yaml")
    except RulesError as e:
        fail(str(e))
    url = _audit_url(audit_url, data_dir)
    try:
        AuditUrl.parse(url).check_local()
    except AuditUrlError as e:
        fail(str(e))
    for script in scripts:
        if not Path(script).is_file():
            fail(f"addon script not found: {script}")
    confdir = confdir or data_dir / "ca"
    # Everything the gateway writes (audit store, spool, rules status) holds prompts: owner-only. The CA
    # certificates clients must trust are made readable again in ensure_ca.
    os.umask(0o077)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        confdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {e.filename}: {e.strerror}")
    # body_size_limit applies to decrypted (AI) traffic only: bodies are buffered for inspection, so bound them.
    asyncio.run(_serve(dict(listen_host=listen_host, listen_port=listen_port, confdir=str(confdir),
                            body_size_limit="64m",
                            gateway_rules=str(rules_dir), gateway_audit=url, scripts=list(scripts),
                            gateway_rules_status=str(data_dir.resolve() / RULES_STATUS_FILE),
                            gateway_audit_password_file=password_file,
                            gateway_audit_spool=str(data_dir.resolve() / SPOOL_FILE),
                            gateway_admin_socket=str(socket_path_for(url, data_dir.resolve()))), sets))


async def _serve(values: dict, sets: tuple[str, ...]) -> None:
    from mitmproxy import options
    from mitmproxy.exceptions import OptionsError
    from mitmproxy.addonmanager import traverse
    from mitmproxy.master import Master

    from addons import default_addons, proxy_addons

    opts = options.Options()
    master = Master(opts, with_termlog=True)
    _logging()
    master.addons.add(*proxy_addons(), *default_addons())

    def refuse(message: str) -> None:
        master.addons.get("audit").done()
        fail(message)

    try:
        opts.update(**values)
        opts.set(*sets, defer=True)  # deferred: an option of a --script addon is known once the script loads
    except OptionsError as e:
        refuse(str(e))
    if unloaded := await _scripts_loaded(master):
        refuse(f"addon script did not load: {unloaded[0]} (its error is above)")
    if opts.deferred:  # mitmproxy would ignore them; a mistyped option must not silently leave a default in place
        refuse(f"unknown option{'s' if len(opts.deferred) > 1 else ''}: {', '.join(sorted(opts.deferred))} "
               "(the gateway's own are in the README; mitmproxy's addons that change, replay or save decrypted "
               "traffic are not loaded, so their options do not exist here)")
    if any(hasattr(addon, "add_log") for addon in traverse(master.addons.chain)):
        logging.getLogger("gateway").warning("an addon has an add_log hook, which mitmproxy has deprecated and the "
                                             "gateway does not call: use Python's logging")
    confdir = Path(values["confdir"])
    bundle = write_ca_bundle(confdir)
    click.echo(
        f"AI gateway listening on http://{values['listen_host']}:{values['listen_port']}\n"
        f"  CA certificate: {confdir / CA_FILE}   (trust it in clients; system roots + CA: {bundle})\n"
        f"  point a client at it:  export HTTPS_PROXY=http://{values['listen_host']}:{values['listen_port']} "
        f"SSL_CERT_FILE={bundle}\n"
        f"  audit: {values['gateway_audit'].split('@')[-1]}   query it with: gateway audit search --since 1h")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def _logging() -> None:
    """What the gateway logs, and at what cost to the event loop."""
    from mitmproxy.log import LegacyLogEvents

    root = logging.getLogger()
    root.setLevel(logging.INFO)  # mitmproxy's termlog filters by its own verbosity option
    for handler in list(root.handlers):
        # mitmproxy's deprecated `add_log` hook (_serve warns if a loaded addon has one): every record formatted,
        # a wake-up of the event loop and a call offered to every addon, for each line logged
        if isinstance(handler, LegacyLogEvents):
            root.removeHandler(handler)
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)  # one line per recognizer otherwise
    logging.getLogger("mitmproxy.proxy.server").addFilter(ConnectionChatter())


class ConnectionChatter(logging.Filter):
    """mitmproxy's INFO lines for each connection opening and closing, and for each streamed body, become DEBUG.

    At INFO they are four lines for every connection the company makes through the proxy, tunnelled or not, and a
    terminal write between a streamed answer's headers and its first chunk. The gateway's INFO is what it decided
    (`AI ...`, `AI tunnel ...`, rules and DLP state); `--set termlog_verbosity=debug` shows the chatter again.
    """

    CHATTER = re.compile(r"(client|server) (connect|disconnect)\b|Streaming (request to|response from) ")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and isinstance(record.msg, str) and self.CHATTER.match(record.msg):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


async def _scripts_loaded(master, timeout: float = 10.0) -> list[str]:
    """Wait for the --script addons; the paths of those that did not load.

    mitmproxy loads each script from a task of its own, a loop turn after the option is set, and only then knows
    the script's options: unknown options can be judged once every script has loaded. A script that fails logs
    an error, which ends the wait.
    """
    scripts, errors = master.addons.get("scriptloader").addons, master.addons.get("errorcheck").logger.has_errored
    deadline = time.monotonic() + timeout
    while any(s.ns is None for s in scripts) and not errors and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return [s.path for s in scripts if s.ns is None]


# --- ca ----------------------------------------------------------------------------------------------------------

def ensure_ca(confdir: Path) -> Path:
    """The gateway's CA certificate, created on first use exactly as mitmproxy would."""
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, "mitmproxy", 2048)  # the private key file stays owner-only (mitmproxy's umask)
    confdir.chmod(0o755)
    for public in confdir.glob("mitmproxy-ca-cert.*"):
        public.chmod(0o644)
    return confdir / CA_FILE


def write_ca_bundle(confdir: Path) -> Path:
    """System roots plus the gateway CA: what SSL_CERT_FILE must point to, since tunnelled (non-AI) hosts still
    present their real certificates."""
    import certifi

    ca = ensure_ca(confdir)
    bundle = confdir / BUNDLE_FILE
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.read_bytes())
    bundle.chmod(0o644)
    return bundle


@cli.command()
@data_dir_option
@confdir_option
@click.option("--pem", is_flag=True, help="Print the certificate itself instead of its path.")
@click.option("--bundle", is_flag=True, help="Print the path of system roots + gateway CA (for SSL_CERT_FILE).")
def ca(data_dir: Path, confdir: Path | None, pem: bool, bundle: bool) -> None:
    """Print where the gateway's CA certificate is."""
    confdir = confdir or data_dir / "ca"
    try:
        path = write_ca_bundle(confdir) if bundle else ensure_ca(confdir)
    except OSError as e:
        fail(f"cannot create the CA in {confdir}: {e.strerror}")
    click.echo(path.read_text().rstrip() if pem else str(path))


# --- audit -------------------------------------------------------------------------------------------------------

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


@cli.group()
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


# --- rules -------------------------------------------------------------------------------------------------------

RULES_STATUS_FILE = "rules-status.json"  # written by the running gateway's rules reloader (addons/reload.py)


@cli.group()
def rules() -> None:
    """Check, try and inspect the rules files (endpoints, policy, identity, recognizers)."""


@rules.command()
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path), default=SHIPPED_RULES)
def check(folder: Path) -> None:
    """Validate every rules file of FOLDER (default: the shipped rules/); errors as file:line: message."""
    from policy import ruleset

    if not folder.is_dir():
        fail(f"no such rules folder: {folder}")
    errors = ruleset.check(folder)
    for e in errors:
        click.echo(str(e))
    if errors:
        sys.exit(1)
    loaded = ruleset.load(folder)
    click.echo(f"{folder}: ok ({len(loaded.catalog.services)} services, {len(loaded.policy.rules)} policy rules; "
               f"checked {', '.join(loaded.digests)})")


@rules.command("status")
@data_dir_option
def rules_status(data_dir: Path) -> None:
    """What the running gateway has active, and the last refused edit (file:line: message)."""
    path = data_dir / RULES_STATUS_FILE
    try:
        status = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        fail(f"no rules status in {data_dir} (is a gateway running with --data-dir {data_dir}?)")
    active = status.get("active") or {}
    click.echo(f"rules: {status.get('rules')}\nactive since: {active.get('since')}  reloads: {status.get('reloads')}")
    for name, digest in (active.get("files") or {}).items():
        click.echo(f"  {name}  {digest}")
    error = status.get("error")
    if error:
        where = f"{error['file']}:{error['line']}" if error.get("line") else error["file"]
        click.echo(f"last edit REFUSED at {error['at']} (the rules above stay active):\n{where}: {error['message']}")
        sys.exit(1)
    click.echo("last reload: ok")


@rules.command("test")
@click.option("--user", default="", help="Who is asking (as proxy authentication would name them).")
@click.option("--group", "groups", multiple=True, help="A group of the user, besides identity.yaml (repeatable).")
@click.option("--client-addr", default="127.0.0.1", show_default=True, help="The client's address.")
@click.option("--url", required=True, help="The request URL, e.g. https://api.openai.com/v1/chat/completions.")
@click.option("--method", default="POST", show_default=True)
@click.option("--body", "body_file", type=click.File("rb"), default=None, help="Request body file (- for stdin).")
@click.option("--inspection", default="inspected", show_default=True,
              help="Pretend the inspection ended so (e.g. errored) to see the rules' fail modes.")
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=SHIPPED_RULES,
              show_default="the shipped rules/")
def rules_test(user: str, groups: tuple[str, ...], client_addr: str, url: str, method: str, body_file,
               inspection: str, rules_dir: Path) -> None:
    """Decide one request offline: the decision, the rule, the findings and the body that would go upstream."""
    from urllib.parse import urlsplit

    from core.rulesfile import RulesError
    from policy import ruleset
    from policy.tryout import try_request

    try:
        loaded = ruleset.load(rules_dir)
    except RulesError as e:
        fail(str(e))
    parts = urlsplit(url)
    if not parts.hostname:
        fail(f"not a URL: {url}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = body_file.read() if body_file else b""
    click.echo(try_request(loaded, user, groups, client_addr, method.upper(), parts.hostname, path, body,
                           inspection), nl=False)


# --- dlp ---------------------------------------------------------------------------------------------------------

@cli.group(name="dlp")
def dlp_group() -> None:
    """Run the DLP recognizers on any text, to test your own data and tune rules/recognizers.yaml."""


dlp_group.add_command(scan_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
