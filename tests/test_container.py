"""The gateway's container image (Containerfile), built and run for real with podman (or docker): as built, with its
default command, and as the helm chart's StatefulSet runs it (the rendered args, user, security context, mounts,
init container and drain script), an openai SDK request through it intercepted and audited, other TLS tunnelled.

Opt-in: building the image takes minutes (a debootstrap base the first time, then pip), too long for `make test`.
    scripts/container_test.sh                        build (the base too, if missing) and run this module
    GATEWAY_CONTAINER_TEST=1 .venv/bin/pytest -p no:xdist tests/test_container.py
                                                     the same from pytest: it calls the script to build
GATEWAY_CONTAINER_IMAGE names an image built already (GATEWAY_CONTAINER_ENGINE and GATEWAY_CONTAINER_RUN_FLAGS how to
run it here: scripts/container_test.sh --build-only prints all three). Needs root (rootful podman, and the folders
the containers mount are given to uid 10001).

The chart's container runs in the host's network namespace, so that the route_upstream test addon (mounted into the
container) can send api.openai.com and intranet.example to the fake upstream on the host's 127.0.0.1, as the rest of
the suite does; the default command runs in a network of its own with its ports published.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import AI_HOSTS, PLAIN_HOSTS
from tests.support.gateway import ROUTE_ADDON, free_port, http_get

ROOT = Path(__file__).resolve().parents[1]
LABEL = "ai-egress-gateway.container-test"
UID = 10001  # the Containerfile's USER and helm/values.yaml's runAsUser
DATA = "/var/lib/ai-gateway"

pytestmark = [
    pytest.mark.skipif(os.environ.get("GATEWAY_CONTAINER_TEST") != "1",
                       reason="opt-in, takes minutes: scripts/container_test.sh, or GATEWAY_CONTAINER_TEST=1 .venv/bin/"
                              "pytest -p no:xdist tests/test_container.py"),
    pytest.mark.timeout(1800),  # the first build includes debootstrap and pip
]


class Engine:
    def __init__(self, command: list[str], run_flags: list[str], image: str):
        self.command, self.run_flags, self.image = command, run_flags, image

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(self.command + list(args))} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def run(self, name: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self("run", "--name", name, "--label", f"{LABEL}=1", *self.run_flags, *args, check=check,
                    timeout=timeout)

    def volume(self) -> str:
        name = f"gw-ct-{uuid.uuid4().hex[:8]}"
        self("volume", "create", "--label", f"{LABEL}=1", name)
        return name

    def remove(self, container: str | None = None, volume: str | None = None) -> None:
        if container:
            self("rm", "-f", "-t", "5", container, check=False, timeout=60)
        if volume:
            self("volume", "rm", "-f", volume, check=False)


@pytest.fixture(scope="module")
def engine() -> Engine:
    settings = {k: os.environ[k] for k in ("GATEWAY_CONTAINER_IMAGE", "GATEWAY_CONTAINER_ENGINE",
                                           "GATEWAY_CONTAINER_RUN_FLAGS") if k in os.environ}
    if "GATEWAY_CONTAINER_IMAGE" not in settings:
        build = subprocess.run([str(ROOT / "scripts" / "container_test.sh"), "--build-only"], stdout=subprocess.PIPE,
                               text=True, timeout=1700, cwd=ROOT)  # its progress goes to stderr, shown as it runs
        assert build.returncode == 0, "scripts/container_test.sh --build-only failed"
        settings = dict(line.split("=", 1) for line in build.stdout.splitlines() if line.startswith("GATEWAY_"))
    return Engine(shlex.split(settings.get("GATEWAY_CONTAINER_ENGINE", "podman")),
                  shlex.split(settings.get("GATEWAY_CONTAINER_RUN_FLAGS", "")), settings["GATEWAY_CONTAINER_IMAGE"])


def wait_ready(engine: Engine, name: str, metrics_url: str, timeout: float = 240) -> float:
    """Seconds until /ready answers 200 (rules loaded, audit store writing, DLP workers warm, proxy accepting);
    AssertionError with the container's log if it stops or the time runs out."""
    start = time.monotonic()
    answer = None
    while time.monotonic() - start < timeout:
        state = engine("inspect", name, "--format", "{{.State.Running}}", check=False).stdout.strip()
        if state != "true":
            raise AssertionError(f"container {name} stopped:\n{logs(engine, name)}")
        try:
            answer = http_get(metrics_url + "/ready")
            if answer == (200, "ready\n"):
                return time.monotonic() - start
        except OSError as e:
            answer = e
        time.sleep(0.5)
    raise AssertionError(f"{name} not ready after {timeout}s (last: {answer}):\n{logs(engine, name)}")


def logs(engine: Engine, name: str, tail: int | None = 5000) -> str:
    r = engine("logs", name, check=False)
    return (r.stdout + r.stderr)[-tail if tail else 0:]


def audit_events(engine: Engine, name: str) -> list[dict]:
    """`gateway audit search` inside the container (the CLI asks the running gateway over its admin socket)."""
    out = engine("exec", name, "gateway", "audit", "search", "--format", "json", "--limit", "1000").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_event(engine: Engine, name: str, predicate, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = [e for e in audit_events(engine, name) if predicate(e)]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no matching audit event in {name}:\n{logs(engine, name)}")


# --- the image as built, its default command ------------------------------------------------------------------------

def test_the_image_is_non_root_with_the_ports_and_volume_the_chart_uses(engine):
    [config] = json.loads(engine("image", "inspect", engine.image).stdout)
    config = config.get("Config") or config["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert {"8080/tcp", "9464/tcp"} <= set(config["ExposedPorts"])
    assert DATA in config["Volumes"]
    assert config["Entrypoint"] == ["gateway"]
    assert config["Cmd"] == ["run", "--listen-host", "0.0.0.0", "--set", "gateway_metrics=0.0.0.0:9464"]


def test_the_default_command_runs_read_only_as_uid_10001_and_gets_ready(engine):
    name, volume = f"gw-ct-default-{uuid.uuid4().hex[:6]}", engine.volume()
    try:
        engine.run(name, "-d", "--read-only", "--tmpfs", "/tmp", "-v", f"{volume}:{DATA}",
                   "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9464", engine.image)
        ports = {p: engine("port", name, f"{p}/tcp").stdout.split()[0].rpartition(":")[2] for p in (8080, 9464)}
        seconds = wait_ready(engine, name, f"http://127.0.0.1:{ports[9464]}")
        print(f"default command ready in {seconds:.1f} s")
        socket.create_connection(("127.0.0.1", int(ports[8080])), timeout=5).close()  # the proxy port, published
        status, pac = http_get(f"http://127.0.0.1:{ports[9464]}/proxy.pac")
        assert status == 200 and "FindProxyForURL" in pac
        assert "ai_gateway" in http_get(f"http://127.0.0.1:{ports[9464]}/metrics")[1]

        probe = engine("exec", name, "sh", "-c", "id -u; id -g; touch /opt/ai-gateway/app/x 2>&1; "
                       f"stat -c '%u %a' {DATA} {DATA}/ca/mitmproxy-ca.pem; ls {DATA}", check=False).stdout
        lines = probe.splitlines()
        assert lines[:2] == [str(UID), str(UID)]
        assert "Read-only file system" in lines[2]
        assert lines[3].split()[0] == str(UID) and lines[4] == f"{UID} 600"  # the CA key: owner only
        assert {"audit", "audit-spool.sqlite", "audit.sock", "ca", "rules-status.json"} <= set(lines[5:])
        processes = engine("exec", name, "sh", "-c", "cat /proc/[0-9]*/status | grep ^Uid:").stdout
        assert {line.split()[1] for line in processes.splitlines()} == {str(UID)}  # no process runs as root
    finally:
        engine.remove(name, volume)


# --- the image as the helm chart runs it ----------------------------------------------------------------------------

def render_chart(*values: str) -> list[dict]:
    import yaml

    from tests.test_helm import HELM
    if HELM is None:
        pytest.skip("no helm binary: scripts/get_helm.py puts one in .venv/bin")
    out = subprocess.run([HELM, "template", "gw", str(ROOT / "helm"), *values], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict], kind: str, suffix: str = "") -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return doc


def security_flags(pod: dict, container: dict) -> list[str]:
    """The pod's and the container's securityContext as `run` flags; AssertionError for a setting not mapped."""
    psc, sc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] and psc["seccompProfile"]["type"] == "RuntimeDefault"  # the engine's default profile
    flags = ["--user", f"{psc['runAsUser']}:{psc['runAsGroup']}", "--group-add", str(psc["fsGroup"])]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}}, sc
    return flags + ["--security-opt", "no-new-privileges", "--read-only", "--cap-drop", "ALL"]


@pytest.fixture(scope="module")
def chart(engine, tmp_path_factory, upstream, test_ca):
    """The StatefulSet's init container, then its gateway container, from `helm template`: the rendered args (the
    listen address on loopback, ports free on this host), env, user and security context; the Secret, rules
    ConfigMap and volumes mounted where the pod mounts them. The test addon routes the AI host and intranet.example
    to the fake upstream, whose CA the gateway trusts upstream."""
    base = tmp_path_factory.mktemp("container-chart")
    proxy_port, metrics_port = free_port(), free_port()
    docs = render_chart("--set", f"ports.proxy={proxy_port}", "--set", f"ports.metrics={metrics_port}",
                        "--set", "drainSeconds=1", "--set", "terminationGracePeriodSeconds=40")
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    [init], [container] = pod["initContainers"], pod["containers"]
    secret = one(docs, "Secret", "-ca")
    flags = security_flags(pod, container)
    assert init["securityContext"] == container["securityContext"]  # the same flags serve both
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"data": DATA, "rules": "/etc/ai-gateway/rules", "run": "/run/ai-gateway", "tmp": "/tmp"}
    assert {v["name"]: next(iter(set(v) - {"name"})) for v in pod["volumes"]} == {
        "ca-secret": "secret", "rules": "configMap", "run": "emptyDir", "tmp": "emptyDir"}

    # the volumes: Secret and ConfigMap as files (read-only mounts), the run emptyDir as a folder uid 10001 owns
    # (both containers mount it, as the pod's emptyDir), data as a named volume (the image's folder copied up)
    for folder in ("secret", "rules", "run", "test"):
        (base / folder).mkdir()
    for key in ("tls.crt", "tls.key"):
        (base / "secret" / key).write_bytes(base64.b64decode(secret["data"][key]))
        os.chown(base / "secret" / key, UID, UID)
        os.chmod(base / "secret" / key, 0o400)  # the Secret's defaultMode
    for file, text in one(docs, "ConfigMap", "-rules")["data"].items():
        (base / "rules" / file).write_text(text + "\n")
    os.chown(base / "run", UID, UID)
    shutil.copy(ROUTE_ADDON, base / "test" / "route_upstream.py")
    shutil.copy(test_ca.ca_pem, base / "test" / "upstream-ca.pem")
    for f in (base / "test").iterdir():
        f.chmod(0o644)
    volume = engine.volume()
    init_name, name = f"gw-ct-init-{uuid.uuid4().hex[:6]}", f"gw-ct-chart-{uuid.uuid4().hex[:6]}"
    common = ["--network", "host", "-v", f"{base / 'run'}:/run/ai-gateway"]
    try:
        engine.run(init_name, "--rm", *flags, *common, "-v", f"{base / 'secret'}:/etc/ai-gateway/ca:ro",
                   "--entrypoint", init["command"][0], engine.image, *init["command"][1:])
        args = [a.replace("--listen-host=0.0.0.0", "--listen-host=127.0.0.1")
                .replace("gateway_metrics=0.0.0.0:", "gateway_metrics=127.0.0.1:") for a in container["args"]]
        routes = ",".join(f"{h}={upstream.port}" for h in AI_HOSTS + PLAIN_HOSTS)
        args += ["-s", "/opt/container-test/route_upstream.py", "--set", f"test_upstream={routes}",
                 "--set", "ssl_verify_upstream_trusted_ca=/opt/container-test/upstream-ca.pem"]
        env = [f"--env={e['name']}={e['value']}" for e in container["env"]]
        engine.run(name, "-d", *flags, *common, *env, "-v", f"{volume}:{DATA}",
                   "-v", f"{base / 'rules'}:/etc/ai-gateway/rules:ro", "--tmpfs", "/tmp",
                   "-v", f"{base / 'test'}:/opt/container-test:ro", engine.image, *args)
        seconds = wait_ready(engine, name, f"http://127.0.0.1:{metrics_port}")
        print(f"chart's gateway container ready in {seconds:.1f} s")
        # ready means every proxy process's DLP workers are warm: a prompt sent now is not left waiting for them
        workers = int(next(a for a in args if a.startswith("--workers=")).split("=")[1])
        assert logs(engine, name, tail=None).count("DLP: prefilter gate ready") >= workers
        chart_gw = type("ChartContainer", (), {})()
        chart_gw.name, chart_gw.proxy = name, f"http://127.0.0.1:{proxy_port}"
        chart_gw.port, chart_gw.metrics, chart_gw.container = proxy_port, f"http://127.0.0.1:{metrics_port}", container
        chart_gw.ca_pem = base64.b64decode(secret["data"]["tls.crt"])  # what clients are given to trust
        chart_gw.ca = base / "client-ca.pem"
        chart_gw.ca.write_bytes(chart_gw.ca_pem)
        chart_gw.run = base / "run"
        yield chart_gw
    finally:
        (base / "gateway.log").write_text(logs(engine, name, tail=None))  # kept with pytest's temporary folders
        print(f"the chart's gateway container's log: {base / 'gateway.log'}")
        engine.remove(init_name)
        engine.remove(name, volume)


def test_the_init_container_made_the_gateways_ca_of_the_secret(chart):
    confdir = chart.run / "ca"
    assert (confdir / "mitmproxy-ca-cert.pem").read_bytes() == chart.ca_pem
    assert oct((confdir / "mitmproxy-ca.pem").stat().st_mode & 0o777) == "0o600"
    assert (confdir / "mitmproxy-ca.pem").stat().st_uid == UID


def test_an_openai_request_through_the_container_is_intercepted_and_audited(engine, chart, upstream):
    import httpx2
    import openai

    from tests.test_e2e_foundation import chat_reply

    marker = f"mk-{uuid.uuid4().hex[:12]}"
    upstream.route("/v1/chat/completions", lambda rec: chat_reply(f"Paris ({marker})"))
    http = httpx2.Client(proxy=chart.proxy, verify=ssl.create_default_context(cafile=str(chart.ca)), timeout=60)
    client = openai.OpenAI(api_key="sk-test-not-a-real-key", http_client=http, max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                       "content": f"Capital of France? {marker}"}])
    assert answer.choices[0].message.content == f"Paris ({marker})"
    [sent] = [r for r in upstream.requests if marker.encode() in r.body]
    assert sent.headers["host"] == "api.openai.com"

    event = wait_for_event(engine, chart.name, lambda e: marker in e["prompt"])
    assert (event["service"], event["operation"], event["host"]) == ("openai", "chat.completions", "api.openai.com")
    assert event["completion"] == f"Paris ({marker})"
    assert event["status"] == 200 and event["decision"] == "allow"
    assert (event["input_tokens"], event["output_tokens"]) == (21, 7)


def test_a_secret_in_a_prompt_is_blocked_in_the_container(engine, chart, upstream):
    """The DLP workers run in the image: the shipped policy refuses a cloud credential before it leaves."""
    import httpx2
    import openai

    from tests.test_e2e_dlp import AWS_KEY

    marker = f"mk-{uuid.uuid4().hex[:12]}"
    http = httpx2.Client(proxy=chart.proxy, verify=ssl.create_default_context(cafile=str(chart.ca)), timeout=60)
    client = openai.OpenAI(api_key="sk-test-not-a-real-key", http_client=http, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                  "content": f"{marker} key {AWS_KEY}"}])
    assert not any(marker.encode() in r.body for r in upstream.requests)
    event = wait_for_event(engine, chart.name, lambda e: marker in e["prompt"])
    assert event["decision"] == "block"


def peer_issuer(port: int, host: str, cafile: Path, path: str | None = None) -> tuple[dict, bytes]:
    """CONNECT through the proxy, TLS to `host` trusting only `cafile`: the certificate's issuer and, with `path`,
    the answer to a GET of it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        with ssl.create_default_context(cafile=str(cafile)).wrap_socket(raw, server_hostname=host) as tls:
            issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
            response = b""
            if path:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                while data := tls.recv(4096):
                    response += data
    return issuer, response


def test_other_tls_is_tunnelled_with_the_upstreams_own_certificate(engine, chart, upstream, test_ca):
    from tests.support.upstream import Reply

    marker = f"mk-{uuid.uuid4().hex[:12]}"
    upstream.route("/plain", lambda rec: Reply(body=b"plain-ok", content_type="text/plain"))
    issuer, response = peer_issuer(chart.port, "intranet.example", test_ca.ca_pem, f"/plain?{marker}")
    assert "testca" in (issuer.get("commonName"), issuer.get("organizationName"))
    assert response.endswith(b"plain-ok")
    assert any(r.path == f"/plain?{marker}" for r in upstream.requests)
    assert not [e for e in audit_events(engine, chart.name) if marker in e["path"]]


def test_the_ai_hosts_certificate_is_forged_by_the_charts_ca(chart):
    issuer, _ = peer_issuer(chart.port, "api.openai.com", chart.ca)
    assert issuer.get("commonName") == "AI egress gateway CA"  # helm/values.yaml ca.generated.commonName


def test_the_charts_drain_script_runs_in_the_image(engine, chart):
    """The preStop hook (python3 on the image's PATH) ends once no client holds a connection to the proxy port."""
    command = chart.container["lifecycle"]["preStop"]["exec"]["command"]
    start = time.monotonic()
    engine("exec", chart.name, *command, timeout=60)
    assert time.monotonic() - start < 30


def test_the_gateway_stops_cleanly_when_the_container_is_stopped(engine, chart):
    """Last: `stop` sends SIGTERM to the entrypoint (gateway run), which stops its processes and exits 0."""
    engine("stop", "-t", "60", chart.name, timeout=120)
    assert engine("inspect", chart.name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0", \
        logs(engine, chart.name)
    assert re.search(r"Traceback", logs(engine, chart.name)) is None, logs(engine, chart.name)
