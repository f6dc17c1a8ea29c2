"""Run the real gateway (`python -m gateway run`) as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROUTE_ADDON = Path(__file__).with_name("route_upstream.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, an error status included (the /ready and PAC endpoints answer 503 with a reason)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_listening(name: str, proc: subprocess.Popen, port: int, ready: Path, output, timeout: float) -> None:
    """Until `ready` exists and the proxy accepts connections on `port`; RuntimeError with its output if the
    process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{output()}")
        if ready.exists():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready after {timeout}s:\n{output()}")


class GatewayProcess:
    def __init__(self, data_dir: Path, routes: dict[str, int], upstream_ca: Path, *, rules: Path | None = None,
                 sets: list[str] | None = None, extra_args: list[str] | None = None, source: Path | None = None,
                 workers: int = 1):
        """`source`: the tree whose gateway to run (another commit's, for a benchmark); default this one.
        `workers`: proxy processes (`gateway run --workers`); one unless a test is about several."""
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = data_dir / "gateway.log"
        self.audit_url = f"chdb://{data_dir / 'audit'}"
        args = [sys.executable, "-m", "gateway", "run", "--listen-port", str(self.port), "--data-dir",
                str(data_dir), "-s", str(ROUTE_ADDON),
                "--set", f"test_upstream={','.join(f'{h}={p}' for h, p in routes.items())}",
                "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
        # an earlier commit's gateway (a bench's baseline) may not know --workers; one that does must be told, or it
        # starts a process per core and the baseline row measures two processes against one
        if source is None or workers != 1 or "--workers" in (source / "cli" / "run.py").read_text(errors="replace"):
            args += ["--workers", str(workers)]
        if rules:
            args += ["--rules", str(rules)]
        for s in sets or []:
            args += ["--set", s]
        args += extra_args or []
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "wb")
        tree = source or Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(tree))  # its modules, not the installed ones
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=tree)
        self._wait_ready()

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def admin_socket(self) -> Path:
        return Path(str(self.data_dir / "audit") + ".sock")

    def _wait_ready(self, timeout: float = 180) -> None:  # a start takes ~5 s; on a busy CI machine, 60 s and more
        wait_listening("gateway", self.proc, self.port, self.admin_socket, self.output, timeout)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def gateway_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `gateway` CLI against this gateway's data folder."""
        result = subprocess.run([sys.executable, "-m", "gateway", *args, "--data-dir", str(self.data_dir)],
                                capture_output=True, text=True, timeout=120,
                                cwd=Path(__file__).resolve().parents[2])
        if check and result.returncode != 0:
            raise AssertionError(f"gateway {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
