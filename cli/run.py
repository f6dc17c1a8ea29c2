"""`gateway run`: start mitmproxy with the gateway's addons, after checking the rules, the audit URL, the addon
scripts and every `--set` option; and the logging the gateway sets up for it (the ConnectionChatter filter).

With `--workers N` (N > 1) this process supervises: N proxy processes serve the one listen address, and an audit
process of its own holds the audit store (which one process only may open: docs/stack.md), ships the spool the
proxy processes share (storage/writer.py), answers `gateway audit ...` and serves /metrics for all of them
(addons/metrics.py). mitmproxy binds its listen socket itself and does not share a port; every proxy process runs
on an event loop whose servers set SO_REUSEPORT, so the kernel spreads incoming connections over the processes
(Linux balances a port's SO_REUSEPORT sockets by connection) and mitmproxy's own binding code is untouched. A proxy
or audit process that dies is started again; one that fails on its first start stops the gateway with its error.
A replacement that fails before it is up (an operator's rules edit is broken: the running processes keep the last
good rules, a fresh one refuses them) is tried again after a growing pause, counted against MAX_RESTARTS, so one
broken edit does not stop a gateway that serves. Every child dies with the supervisor (Linux: PR_SET_PDEATHSIG), so
a supervisor killed outright leaves no proxy process holding the port.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path

import click

from cli.ca import CA_FILE, write_ca_bundle
from cli.common import (FIRST_SEEN_FILE, RULES_STATUS_FILE, SPOOL_FILE, _audit_url, audit_option, confdir_option,
                        data_dir_option, fail, password_file_option)
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
@click.option("--workers", type=click.IntRange(1, 256), default=os.cpu_count() or 1,
              show_default="the number of cores",
              help="Proxy processes serving the listen address (more than one: plus an audit process).")
def run(listen_host: str, listen_port: int, rules_dir: Path, audit_url: str | None, password_file: str,
        data_dir: Path, confdir: Path | None, scripts: tuple[str, ...], sets: tuple[str, ...],
        workers: int) -> None:
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
    values = dict(listen_host=listen_host, listen_port=listen_port, confdir=str(confdir), body_size_limit="64m",
                  gateway_rules=str(rules_dir), gateway_audit=url, scripts=list(scripts),
                  gateway_rules_status=str(data_dir.resolve() / RULES_STATUS_FILE),
                  gateway_audit_password_file=password_file,
                  gateway_audit_spool=str(data_dir.resolve() / SPOOL_FILE),
                  gateway_mcp_first_seen=str(data_dir.resolve() / FIRST_SEEN_FILE),
                  gateway_admin_socket=str(socket_path_for(url, data_dir.resolve())))
    if workers == 1:
        asyncio.run(_serve(values, sets))
    else:
        Supervisor(values, sets, workers, data_dir.resolve()).run()


#: What a proxy process of several may not do itself: the audit process ships, answers queries and serves metrics.
PROXY_PROCESS = {"gateway_audit_role": "spool", "gateway_metrics": ""}
AUDIT_PROCESS = {"gateway_audit_role": "ship", "gateway_rules_recognizers": False}
#: Restarts of one process within RESTART_WINDOW seconds after which the supervisor gives up.
MAX_RESTARTS, RESTART_WINDOW = 5, 60.0
#: The pause before trying again a replacement that failed before it was up, doubled each time up to the last:
#: with MAX_RESTARTS, a replacement that keeps failing (a broken rules edit) is tried for about 30s.
RETRY_PAUSE, MAX_RETRY_PAUSE = 1.0, 16.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Supervisor:
    """`gateway run --workers N`: start the audit process and N proxy processes, start again any that dies."""

    def __init__(self, values: dict, sets: tuple[str, ...], workers: int, data_dir: Path):
        self.sets = sets
        self.workers = workers
        # counters of every process, summed by the audit process's /metrics (addons/metrics.py); a fresh folder
        # per start, as prometheus-client's multiprocess mode requires
        metrics_dir = data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        # Held (bound, never listening: it receives no connections) for the supervisor's life: port 0 becomes one
        # port for all, and no other program takes it while a proxy process is being replaced.
        self.reservation = shared_port_socket(values["listen_host"], values["listen_port"])
        self.values = dict(values, listen_port=self.reservation.getsockname()[1])
        self.context = multiprocessing.get_context("spawn")  # fresh interpreters: no event loop or threads copied
        self.processes: dict[str, multiprocessing.Process] = {}
        self.ready: dict[str, object] = {}
        self.restarts: dict[str, list[float]] = {}
        self.up: set[str] = set()  # the names whose process was once up: a failed start is no longer fatal
        self.failed: dict[str, int] = {}  # replacements that failed in a row, for the pause before the next
        self.pending: dict[str, float] = {}  # a name whose next start waits, and when it is due (monotonic)
        self.stopping = False

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        try:
            self._start("proxy 1")
            # the others, the audit process too, once the first is past its checks: a bad option, script or rules
            # file is then reported once (the proxy processes spool meanwhile; the audit process ships later)
            while not self.ready["proxy 1"].wait(0.1) and not self.stopping:
                self._tend()
            if not self.stopping:
                self._start("audit")
            for i in range(2, self.workers + 1 if not self.stopping else 2):
                self._start(f"proxy {i}")
            _banner(self.values, f"{self.workers} proxy processes and an audit process")
            while not self.stopping:
                wait([p.sentinel for p in self.processes.values()], timeout=0.5)
                self._tend()
        finally:
            self._shutdown()

    def _start(self, name: str) -> None:
        ready = self.context.Event()
        if name == "audit":  # its /ready waits for every proxy process's DLP workers
            target, args = audit_process, (dict(self.values, gateway_proxy_processes=self.workers), self.sets, ready)
        else:
            target, args = proxy_process, (name, self.values, self.sets, ready)
        process = self.context.Process(target=target, args=args, name=name, daemon=False)
        process.start()
        self.processes[name], self.ready[name] = process, ready

    def _tend(self) -> None:
        """Start again each process that died, and each replacement whose pause is over."""
        now = time.monotonic()
        for name, due in list(self.pending.items()):
            if now >= due and not self.stopping:
                del self.pending[name]
                self._start(name)
        for name, process in list(self.processes.items()):
            if not process.is_alive() and not self.stopping:
                self._replace(name, process)

    def _replace(self, name: str, process: multiprocessing.Process) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process.pid)  # its live gauges (DLP ready) no longer count in /ready
        now = time.monotonic()
        recent = [t for t in self.restarts.get(name, []) if now - t < RESTART_WINDOW] + [now]
        self.restarts[name] = recent
        if self.ready[name].is_set():
            self.up.add(name)
            self.failed[name] = 0
        elif name not in self.up:  # its first start: its own error is above
            self._shutdown()
            if process.exitcode and process.exitcode > 0:
                raise SystemExit(process.exitcode)
            fail(f"{name} process failed to start (exit code {process.exitcode})")
        if len(recent) > MAX_RESTARTS:
            self._shutdown()
            fail(f"{name} process exited {len(recent)} times in {RESTART_WINDOW:.0f}s: giving up")
        if self.ready[name].is_set():
            click.echo(f"{name} process {process.pid} exited with code {process.exitcode}: starting another",
                       err=True)
            self._start(name)
            return
        # a replacement that failed before it was up (its error is above): the others serve meanwhile
        self.failed[name] = self.failed.get(name, 0) + 1
        pause = min(MAX_RETRY_PAUSE, RETRY_PAUSE * 2 ** (self.failed[name] - 1))
        click.echo(f"{name} process {process.pid} failed to start (exit code {process.exitcode}): trying again "
                   f"in {pause:.1f}s", err=True)
        del self.processes[name]
        self.pending[name] = now + pause

    def _stop(self, *_) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        """Proxy processes first (each spools what it has queued), then the audit process (ships what it can)."""
        self.stopping = True
        proxies = [p for name, p in self.processes.items() if name != "audit"]
        for group in (proxies, [self.processes["audit"]] if "audit" in self.processes else []):
            for process in group:
                if process.is_alive():
                    process.terminate()
            for process in group:
                process.join(20)
                if process.is_alive():
                    process.kill()
                    process.join()
        self.processes.clear()
        self.reservation.close()


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT to (host, port), port 0 choosing one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError as e:
        sock.close()
        fail(f"cannot listen on {host or '*'}:{port}: {e.strerror}")
    return sock


class SharedPortLoop(asyncio.SelectorEventLoop):
    """An event loop whose TCP servers set SO_REUSEPORT unless told otherwise, so that the proxy processes of one
    gateway can each bind the listen address (mitmproxy's listen code calls asyncio.start_server itself)."""

    async def create_server(self, *args, reuse_port: bool | None = None, **kwargs):
        return await super().create_server(*args, reuse_port=True if reuse_port is None else reuse_port, **kwargs)


def die_with_parent() -> None:
    """A child of the supervisor is sent SIGTERM (the supervisor's own way to stop it) when the supervisor dies,
    even by SIGKILL, so that no proxy process is left holding the listen port. Linux only (prctl)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def proxy_process(name: str, values: dict, sets: tuple[str, ...], ready) -> None:
    """One proxy process of several (spawned by Supervisor)."""
    die_with_parent()
    asyncio.run(_serve(values, sets, name=name, forced=PROXY_PROCESS, ready=ready), loop_factory=SharedPortLoop)


def audit_process(values: dict, sets: tuple[str, ...], ready) -> None:
    """The audit process (spawned by Supervisor): the store, the shared spool's shipper, the admin socket and
    /metrics (with /ready and the PAC file), and no proxy."""
    die_with_parent()
    asyncio.run(_ship(values, sets, ready))


async def _ship(values: dict, sets: tuple[str, ...], ready) -> None:
    from mitmproxy import options
    from mitmproxy.exceptions import OptionsError
    from addons.dispatch import GatewayMaster

    from addons.admin import AdminSocket
    from addons.audit import Audit
    from addons.metrics import Metrics
    from addons.rules import Rules

    opts = options.Options()
    master = GatewayMaster(opts, with_termlog=True)
    _logging("audit")
    # the rules too (not the recognizers: it scans nothing): /metrics serves the PAC file of the catalog in force
    # and /ready says whether the rules load
    master.addons.add(Rules(), Audit(), Metrics(), AdminSocket())
    try:
        opts.update_known(**values, **AUDIT_PROCESS)
        opts.set(*sets, defer=True)  # the proxy processes' options stay deferred here: they judge them
        opts.update(**AUDIT_PROCESS)
    except OptionsError as e:
        master.addons.get("audit").done()
        fail(str(e))
    await _run(master, ready)


async def _run(master, ready) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    if ready is not None:
        ready.set()
    await master.run()


def _banner(values: dict, processes: str = "") -> None:
    confdir = Path(values["confdir"])
    bundle = write_ca_bundle(confdir)
    click.echo(
        f"AI gateway listening on http://{values['listen_host']}:{values['listen_port']}"
        f"{f' ({processes})' if processes else ''}\n"
        f"  CA certificate: {confdir / CA_FILE}   (trust it in clients; system roots + CA: {bundle})\n"
        f"  point a client at it:  export HTTPS_PROXY=http://{values['listen_host']}:{values['listen_port']} "
        f"SSL_CERT_FILE={bundle}\n"
        f"  audit: {values['gateway_audit'].split('@')[-1]}   query it with: gateway audit search --since 1h")


async def _serve(values: dict, sets: tuple[str, ...], *, name: str | None = None, forced: dict | None = None,
                 ready=None) -> None:
    """A proxy process: the only one (`name` None), or one of several (`forced`: what PROXY_PROCESS says)."""
    from mitmproxy import options
    from mitmproxy.exceptions import OptionsError
    from mitmproxy.addonmanager import traverse
    from addons.dispatch import GatewayMaster

    from addons import default_addons, proxy_addons

    opts = options.Options()
    master = GatewayMaster(opts, with_termlog=True)
    _logging(name)
    if name is not None:
        logging.getLogger("gateway").info("proxy process %d started", os.getpid())
    master.addons.add(*proxy_addons(), *default_addons())

    def refuse(message: str) -> None:
        master.addons.get("audit").done()
        fail(message)

    try:
        opts.update(**values, **(forced or {}))  # at once: a proxy process of several never opens the store
        opts.set(*sets, defer=True)  # deferred: an option of a --script addon is known once the script loads
        opts.update(**(forced or {}))
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
    if name is None:
        _banner(values)
    await _run(master, ready)


def _logging(process: str | None = None) -> None:
    """What the gateway logs, and at what cost to the event loop; `process` names one of several in each line."""
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
    if process is not None:
        for handler in root.handlers:
            handler.addFilter(ProcessName(process))


class ProcessName(logging.Filter):
    """Each line starts with the process it comes from (`[proxy 2]`), once however many handlers print it."""

    def __init__(self, process: str):
        super().__init__()
        self.prefix = f"[{process}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "gateway_process", False):
            record.msg, record.gateway_process = self.prefix + str(record.msg), True
        return True


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
