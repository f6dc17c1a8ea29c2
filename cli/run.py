"""`gateway run`: start mitmproxy with the gateway's addons, after checking the rules, the audit URL, the addon
scripts and every `--set` option; and the logging the gateway sets up for it (the ConnectionChatter filter).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from pathlib import Path

import click

from cli.ca import CA_FILE, write_ca_bundle
from cli.common import (RULES_STATUS_FILE, SPOOL_FILE, _audit_url, audit_option, confdir_option, data_dir_option,
                        fail, password_file_option)
from core.rulesfile import SHIPPED_RULES


@click.command()
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
