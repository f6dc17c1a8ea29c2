"""`gateway`: the AI egress gateway's command line.

    gateway run              start the proxy (mitmproxy + the gateway addons)
    gateway ca               where the CA certificate is (clients must trust it)
    gateway audit search     query the audit log (works while the gateway runs on the embedded store)
    gateway dlp scan         run the DLP recognizers on any text
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from datetime import datetime
from pathlib import Path

import click
import orjson

SHIPPED_RULES = Path(__file__).resolve().parent / "rules"
CA_FILE = "mitmproxy-ca-cert.pem"
BUNDLE_FILE = "gateway-ca-bundle.pem"


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
@data_dir_option
@confdir_option
@click.option("-s", "--script", "scripts", multiple=True, type=click.Path(dir_okay=False),
              help="Extra mitmproxy addon script (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Any mitmproxy option (repeatable).")
def run(listen_host: str, listen_port: int, rules_dir: Path, audit_url: str | None, data_dir: Path,
        confdir: Path | None, scripts: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Start the gateway."""
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
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        confdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {e.filename}: {e.strerror}")
    asyncio.run(_serve(dict(listen_host=listen_host, listen_port=listen_port, confdir=str(confdir),
                            gateway_rules=str(rules_dir), gateway_audit=url, scripts=list(scripts)), sets))


async def _serve(values: dict, sets: tuple[str, ...]) -> None:
    from mitmproxy import options
    from mitmproxy.exceptions import OptionsError
    from mitmproxy.tools.dump import DumpMaster

    from addons import default_addons

    logging.getLogger().setLevel(logging.INFO)  # mitmproxy's termlog filters by its own verbosity option
    opts = options.Options()
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    master.addons.add(*default_addons())
    try:
        opts.update(**values)
        opts.set(*sets, defer=True)
    except OptionsError as e:
        master.addons.get("audit").done()
        fail(str(e))
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


# --- ca ----------------------------------------------------------------------------------------------------------

def ensure_ca(confdir: Path) -> Path:
    """The gateway's CA certificate, created on first use exactly as mitmproxy would."""
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, "mitmproxy", 2048)
    return confdir / CA_FILE


def write_ca_bundle(confdir: Path) -> Path:
    """System roots plus the gateway CA: what SSL_CERT_FILE must point to, since tunnelled (non-AI) hosts still
    present their real certificates."""
    import certifi

    ca = ensure_ca(confdir)
    bundle = confdir / BUNDLE_FILE
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.read_bytes())
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

@cli.group()
def audit() -> None:
    """Query the audit log."""


def run_query(audit_url: str, name: str, params: dict) -> tuple[list[str], list[list]]:
    """Ask the running gateway over its admin socket; open the store directly when no gateway serves it."""
    from addons.admin import socket_path_for
    from storage.queries import QUERIES
    from storage.store import AuditUrlError, Store, StoreLockedError

    sock_path = socket_path_for(audit_url)
    if sock_path is not None and sock_path.exists():
        try:
            reply = _ask_socket(sock_path, {"query": name, "params": params})
        except OSError:
            reply = None  # stale socket of a gateway that is gone: fall through to the store
        if reply is not None:
            if "error" in reply:
                fail(reply["error"])
            return reply["columns"], reply["rows"]
    try:
        store = Store.open(audit_url)
    except (AuditUrlError, StoreLockedError) as e:
        fail(str(e))
    try:
        columns, rows = QUERIES[name](store, **params)
    except ValueError as e:
        fail(str(e))
    finally:
        store.close()
    return columns, [list(r) for r in rows]


def _ask_socket(path: Path, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(path))
        s.sendall(orjson.dumps(request) + b"\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return orjson.loads(b"".join(chunks))


def print_rows(columns: list[str], rows: list[list], fmt: str) -> None:
    if fmt == "json":
        for row in rows:
            click.echo(orjson.dumps(dict(zip(columns, row)), default=str).decode())
        return
    shown = [c for c in TABLE_COLUMNS if c in columns]
    cells = [[_cell(row[columns.index(c)]) for c in shown] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(shown)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(shown, widths)))
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    click.echo(f"({len(rows)} events)")


TABLE_COLUMNS = ["ts", "user", "client_addr", "service", "operation", "model", "stream", "decision", "status",
                 "input_tokens", "output_tokens", "latency_ms", "inspection", "event_id"]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


@audit.command()
@click.option("--since", default="24h", show_default=True, help="How far back: 15m, 1h, 7d or an ISO time.")
@click.option("--service", default="", help="Only this catalog service id (e.g. openai).")
@click.option("--user", default="", help="Only this user.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@audit_option
@data_dir_option
def search(since: str, service: str, user: str, limit: int, fmt: str, audit_url: str | None,
           data_dir: Path) -> None:
    """Search audit events, newest first."""
    from storage.queries import parse_since

    try:
        parse_since(since)
    except ValueError as e:
        fail(str(e))
    columns, rows = run_query(_audit_url(audit_url, data_dir), "search",
                              {"since": since, "service": service, "user": user, "limit": limit})
    print_rows(columns, rows, fmt)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
