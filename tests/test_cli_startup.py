"""Start-up refuses bad configuration with one line that names the problem, before listening."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gateway(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("url, expected", [
    ("mysql://db/audit", "unsupported audit URL scheme 'mysql'"),
    ("chdb://relative/path", "chdb audit URL must be chdb:///absolute/path"),
    ("chdb:///", "chdb audit URL needs a folder"),
    ("http://:8123/x", "http audit URL needs a host"),
    ("http://user:s3cret@host:notaport/db", "invalid audit URL"),
    ("http://user:pa/s3cret@host:8123/db", "percent-encode"),
])
def test_invalid_audit_url_stops_startup_with_one_line(tmp_path, url, expected):
    r = gateway("run", "--data-dir", str(tmp_path), "--listen-port", "0", "--audit", url)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gateway: error: ") and expected in lines[0]
    assert "s3cret" not in r.stderr


def test_unreadable_rules_file_stops_startup(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    r = gateway("run", "--data-dir", str(tmp_path), "--listen-port", "0", "--rules", str(rules))
    assert r.returncode == 2
    assert r.stderr.strip() == f"gateway: error: {rules / 'endpoints.yaml'}: cannot read: No such file or directory"


def test_broken_rules_file_names_file_and_line(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "endpoints.yaml").write_text("services:\n  - id: x\n    name: X\n    category: chat\n"
                                          "    hosts: [x.example]\n    colour: red\n")
    r = gateway("run", "--data-dir", str(tmp_path), "--listen-port", "0", "--rules", str(rules))
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"gateway: error: {rules / 'endpoints.yaml'}:6: service: unknown key 'colour'")


def test_ca_prints_path_and_pem(tmp_path):
    path = gateway("ca", "--data-dir", str(tmp_path)).stdout.strip()
    assert path == str(tmp_path / "ca" / "mitmproxy-ca-cert.pem") and Path(path).is_file()
    pem = gateway("ca", "--data-dir", str(tmp_path), "--pem").stdout
    assert pem.startswith("-----BEGIN CERTIFICATE-----") and pem.strip() == Path(path).read_text().strip()
    bundle = Path(gateway("ca", "--data-dir", str(tmp_path), "--bundle").stdout.strip())
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 10 and pem.strip() in bundle.read_text()


def test_audit_search_without_gateway_opens_the_store(tmp_path):
    r = gateway("audit", "search", "--data-dir", str(tmp_path), "--format", "json")
    assert r.returncode == 0 and r.stdout == ""
    r = gateway("audit", "search", "--data-dir", str(tmp_path), "--since", "yesterday")
    assert r.returncode == 2 and "invalid time 'yesterday'" in r.stderr


def test_stored_prompts_are_owner_only_and_the_ca_certificate_is_public(tmp_path):
    """The audit store and spool hold prompts: no other local user may read them. Clients need the CA cert."""
    import os
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--data-dir", str(tmp_path), "--listen-port",
                             str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "audit.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (tmp_path / "audit.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    private = [p for p in tmp_path.rglob("*") if p.is_file() and "mitmproxy-ca-cert" not in p.name
               and p.name != "gateway-ca-bundle.pem"]
    assert private and all(mode(p) & 0o077 == 0 for p in private), {str(p): oct(mode(p)) for p in private
                                                                     if mode(p) & 0o077}
    assert mode(tmp_path / "ca" / "mitmproxy-ca-cert.pem") == 0o644
    assert mode(tmp_path / "ca" / "mitmproxy-ca.pem") & 0o077 == 0  # the CA's private key


@pytest.mark.parametrize("option", [
    "gateway_dlp_tiemout=5",  # mistyped: mitmproxy would ignore it and leave the default
    "save_stream_file=/tmp/flows",  # mitmdump's: would write decrypted prompts past the audit's capture level
    "modify_body=/~q/x/y",  # mitmdump's: would change a request after the policy decided on it
])
def test_an_option_no_addon_declares_stops_startup_with_its_name(tmp_path, option):
    r = gateway("run", "--data-dir", str(tmp_path), "--listen-port", "0", "--set", option)
    assert r.returncode == 2
    name = option.split("=")[0]
    assert r.stderr.strip().startswith(f"gateway: error: unknown option: {name} ("), r.stderr


def test_an_addon_script_that_does_not_load_stops_startup(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("def oops(:\n")
    r = gateway("run", "--data-dir", str(tmp_path), "--listen-port", "0", "-s", str(script))
    assert r.returncode == 2
    assert r.stderr.strip().endswith(f"gateway: error: addon script did not load: {script} (its error is above)")
