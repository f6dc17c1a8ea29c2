"""The helm chart (helm/): `helm lint --strict`, `helm template` with the default and production-like values, every
rendered manifest against the Kubernetes schemas (kubernetes-validate, offline), bad values refused with their
reason; and the rendered pieces run for real: the gateway command line the StatefulSet gives, the CA the chart
generates, the drain script, the rules ConfigMap as a rules folder, and a ConfigMap update written the way the
kubelet writes it, which the running gateway must pick up."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.support.gateway import free_port, http_get, wait_listening

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm"
PRODUCTION = CHART / "ci" / "production-values.yaml"
HELM = shutil.which("helm") or next((str(p) for p in [Path(sys.executable).parent / "helm"] if p.exists()), None)
#: the oldest and the newest Kubernetes the bundled schemas cover that the chart is meant for
KUBERNETES = ("1.29.0", "1.37.0")
#: kinds from CRDs (cert-manager, prometheus-operator): kubernetes-validate has no schema for them
CRD_KINDS = {"Certificate", "ServiceMonitor", "PrometheusRule"}

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary: scripts/get_helm.py puts one in .venv/bin")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def render(*args: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(helm("template", "gw", str(CHART), *args).stdout) if doc]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


@pytest.fixture(scope="module")
def default_docs() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def production_docs() -> list[dict]:
    return render("-f", str(PRODUCTION))


@pytest.mark.parametrize("values", [[], ["-f", str(PRODUCTION)]], ids=["default", "production"])
def test_the_chart_passes_helm_lint_strict(values):
    result = helm("lint", "--strict", str(CHART), *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def validate(docs: list[dict]) -> set[str]:
    import kubernetes_validate

    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBERNETES:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on an unknown or wrong field
    return {doc["kind"] for doc in docs}


def test_the_default_render_is_valid_kubernetes(default_docs):
    assert validate(default_docs) == {"StatefulSet", "Service", "ServiceAccount", "Secret", "ConfigMap",
                                      "PodDisruptionBudget", "Pod"}


def test_the_production_render_is_valid_kubernetes(production_docs):
    assert validate(production_docs) == {"StatefulSet", "Service", "ServiceAccount", "ConfigMap", "Certificate",
                                         "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
                                         "ServiceMonitor", "PrometheusRule", "Pod"}
    certificate = one(production_docs, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1" and certificate["spec"]["isCA"] is True
    assert certificate["spec"]["secretName"] == \
        one(production_docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert certificate["spec"]["issuerRef"] == {"name": "corp-intermediate-ca", "kind": "ClusterIssuer",
                                                "group": "cert-manager.io"}
    selects = one(production_docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"].items()
    # each pod scraped once: through the headless Service only, not the load-balanced one too
    assert selects <= one(production_docs, "Service", "-pods")["metadata"]["labels"].items()
    assert not selects <= one(production_docs, "Service", "gateway")["metadata"]["labels"].items()
    monitor = one(production_docs, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    hpa = one(production_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet" and hpa["spec"]["minReplicas"] == 3
    assert "replicas" not in one(production_docs, "StatefulSet")["spec"]  # the HPA owns it


@pytest.mark.parametrize("values", [
    ["--set", "service.type=ClusterIP", "--set", "persistence.enabled=false"],
    ["--set", "ca.existingSecret=corp-ca", "--set", "rules.existingConfigMap=corp-rules", "--set",
     "serviceAccount.create=false", "--set", "podDisruptionBudget.enabled=false"],
], ids=["cluster-ip-no-volume", "existing-ca-and-rules"])
def test_other_shapes_render_valid_kubernetes(values):
    docs = render(*values)
    validate(docs)
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    if "persistence.enabled=false" in values:
        assert "externalTrafficPolicy" not in one(docs, "Service", "gateway")["spec"]  # only for external types
        assert {"name": "data", "emptyDir": {}} in pod["volumes"]
        assert "volumeClaimTemplates" not in one(docs, "StatefulSet")["spec"]
    else:
        assert {d["kind"] for d in docs} == {"StatefulSet", "Service", "Pod"}  # nothing generated for them
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["ca-secret"]["secret"]["secretName"] == "corp-ca"
        assert volumes["rules"]["configMap"]["name"] == "corp-rules"


def test_the_pod_is_locked_down_and_keeps_its_spool(default_docs):
    sts = one(default_docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    gateway = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["requests"]["memory"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert gateway["lifecycle"]["preStop"]["exec"]["command"][0] == "python3"
    # the spool (under --data-dir) is on the pod's own claim, kept when pods are scaled away
    assert "--data-dir=/var/lib/ai-gateway" in gateway["args"]
    # DLP workers as the chart says, not as many as the host has cores
    assert "--set=gateway_dlp_workers=2" in gateway["args"] and "--workers=2" in gateway["args"]
    assert {"name": "data", "mountPath": "/var/lib/ai-gateway"} in gateway["volumeMounts"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    # everything written is on a volume: the data claim, the CA's memory volume, /tmp
    writable = {m["mountPath"] for m in gateway["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/ai-gateway", "/run/ai-gateway", "/tmp"}
    service = one(default_docs, "Service", "gateway")
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert {p["name"] for p in service["spec"]["ports"]} == {"proxy", "metrics"}


def test_the_audit_goes_to_the_clickhouse_cluster_with_the_password_from_a_secret(production_docs):
    pod = one(production_docs, "StatefulSet")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--audit=https://gateway@clickhouse.audit.svc:8443/ai_audit" in args
    assert "--audit-password-file=/etc/ai-gateway/audit/password" in args
    assert "--set=gateway_audit_cluster=audit_cluster" in args
    assert "--set=gateway_pac_proxies=ai-gw-a.corp.example:8080,ai-gw-b.corp.example:8080" in args
    secret = next(v for v in pod["volumes"] if v["name"] == "audit-password")["secret"]
    assert secret["secretName"] == "ai-gateway-clickhouse" and secret["items"] == [{"key": "password",
                                                                                     "path": "password"}]
    policy = one(production_docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = [sorted(p["port"] for p in rule["ports"]) for rule in policy["egress"]]
    assert egress_ports == [[80, 443], [53, 53], [8443]]


def exported_metric_names() -> set[str]:
    """The series names the gateway exports (addons/metrics.py), as Prometheus sees them."""
    from addons.metrics import AUDIT_STATE, Metrics

    names = {name + ("_total" if grows else "") for name, _, grows in AUDIT_STATE.values()}
    names |= {family.name + "_total" for family in Metrics().registry.collect() if family.type == "counter"}
    return names | {"up"}


def test_the_alerts_parse_and_use_the_gateways_own_metric_names(production_docs):
    import promql_parser

    rules = one(production_docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {"AIGatewayAuditLagging", "AIGatewayDLPOverloaded",
                                           "AIGatewayBlockRateSpike", "AIGatewayAuditRecordsLost"}
    exported = exported_metric_names()
    assert "ai_gateway_interactions_total" in exported and "ai_gateway_audit_spooled" in exported
    for rule in rules:
        promql_parser.parse(rule["expr"])  # ValueError on a syntax error
        used = set(re.findall(r"\b(?:ai_gateway_\w+|up)(?=\{)", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)
        assert 'namespace="default"' in rule["expr"] and 'service="gw-ai-egress-gateway-pods"' in rule["expr"]


def test_the_dashboard_configmap_is_the_repositorys_dashboard():
    docs = render("--set", "metrics.grafanaDashboard.enabled=true")
    dashboard = one(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((ROOT / "deploy" / "grafana" / "ai-gateway-audit.json").read_text())
    assert json.loads(dashboard["data"]["ai-gateway-audit.json"]) == shipped


def rules_folder(docs: list[dict], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in one(docs, "ConfigMap", "-rules")["data"].items():
        (folder / name).write_text(text + "\n")
    return folder


@pytest.mark.parametrize("values", [[], ["-f", str(PRODUCTION)]], ids=["default", "production"])
def test_the_rules_configmap_is_a_rules_folder_the_gateway_loads(values, tmp_path):
    from policy import ruleset

    docs = render(*values)
    data = one(docs, "ConfigMap", "-rules")["data"]
    shipped = {p.name for p in (ROOT / "rules").glob("*.yaml")}
    assert set(data) == shipped
    rules = ruleset.load(rules_folder(docs, tmp_path))
    assert rules.catalog.match("api.openai.com") is not None
    if values:  # the production values replace identity.yaml
        assert [n.user for n in rules.identity.networks if n.user] == ["build-server"]
    else:
        assert all(data[name].rstrip("\n") == (ROOT / "rules" / name).read_text().rstrip("\n") for name in data)


BAD_VALUES = [
    (["--set", "workers=0"], "at '/workers': minimum: got 0, want 1"),
    (["--set", "dlpWorkers=64"], "at '/dlpWorkers': maximum: got 64, want 16"),
    (["--set", "replicaCount=3"], "additional properties 'replicaCount' not allowed"),
    (["--set", "service.type=ExternalName"], "at '/service/type': value must be one of"),
    (["--set", "audit.capture=everything"], "at '/audit/capture': value must be one of 'metadata', 'redacted'"),
    (["--set", "audit.clickhouse.url=https://gw:secret@ch:8443/audit", "--set",
      "audit.clickhouse.passwordSecret.name=ch"], "at '/audit/clickhouse/url': 'https://gw:secret@ch:8443/audit' "
                                                  "does not match pattern"),
    (["--set", "audit.clickhouse.url=https://gw@ch:8443/audit"],
     "at '/audit/clickhouse/passwordSecret/name': minLength: got 0, want 1"),
    (["--set", "ca.certManager.enabled=true"], "at '/ca/certManager/issuerRef/name': minLength: got 0, want 1"),
    (["--set", "pac.proxies={gw-a.corp}"], "at '/pac/proxies/0': 'gw-a.corp' does not match pattern"),
    (["--set", "securityContext.readOnlyRootFilesystem=false"], "at '/securityContext/readOnlyRootFilesystem'"),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "at '/podSecurityContext/runAsNonRoot'"),
    (["--set", "ports.proxy=70000"], "at '/ports/proxy': maximum: got 70,000, want 65,535"),
    (["--set", "resources.requests=null"], "missing property 'requests'"),
    (["--set", "extraSets={not an option}"], "at '/extraSets/0': 'not an option' does not match pattern"),
    (["--set", "ca.existingSecret=corp-ca", "--set", "ca.certManager.enabled=true", "--set",
      "ca.certManager.issuerRef.name=corp"], "set either ca.existingSecret or ca.certManager.enabled, not both"),
    (["--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=5", "--set", "autoscaling.maxReplicas=2"],
     "autoscaling: minReplicas (5) is more than maxReplicas (2)"),
    (["--set", "drainSeconds=600"], "terminationGracePeriodSeconds (100) must be at least drainSeconds (600) + 30"),
    (["--set", "audit.textTtlDays=400"], "audit: textTtlDays (400) cannot be longer than metadataTtlDays (365)"),
    (["--set", "networkPolicy.enabled=true", "--set", "audit.clickhouse.url=https://gw@ch:8443/audit", "--set",
      "audit.clickhouse.passwordSecret.name=ch"], "networkPolicy.auditStore.peers is empty"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m[:40] for _, m in BAD_VALUES])
def test_bad_values_are_refused_with_the_reason(values, message):
    result = helm("template", "gw", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def init_container(docs: list[dict], folder: Path) -> Path:
    """Run the StatefulSet's init container script on the chart's CA Secret, mounted under `folder` as the pod
    mounts it; the confdir it leaves for the gateway."""
    import base64

    secret = one(docs, "Secret", "-ca")
    mounted = folder / "secret"
    mounted.mkdir(parents=True)
    for key in ("tls.crt", "tls.key"):
        (mounted / key).write_bytes(base64.b64decode(secret["data"][key]))
    init = one(docs, "StatefulSet")["spec"]["template"]["spec"]["initContainers"][0]
    script = init["command"][-1].replace("/etc/ai-gateway/ca", str(mounted)).replace("/run/ai-gateway",
                                                                                   str(folder / "run"))
    subprocess.run(["/bin/sh", "-ec", script], check=True, timeout=30)
    return folder / "run" / "ca"


def test_the_generated_ca_is_kept_and_the_init_container_makes_mitmproxys_ca_of_it(default_docs, tmp_path):
    """The init container's script, run on the Secret the chart generated: mitmproxy loads the result as its CA."""
    from cryptography import x509
    from mitmproxy.certs import CertStore

    secret = one(default_docs, "Secret", "-ca")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    confdir = init_container(default_docs, tmp_path)
    assert oct((confdir / "mitmproxy-ca.pem").stat().st_mode & 0o777) == "0o600"
    store = CertStore.from_store(confdir, "mitmproxy", 2048)
    assert store.default_ca.cn == "AI egress gateway CA"
    leaf = store.get_cert("api.openai.com", [x509.DNSName("api.openai.com")])
    assert leaf.cert.issuer == store.default_ca.subject


def test_the_drain_script_runs_and_ends_when_no_client_is_connected():
    docs = render("--set", "drainSeconds=1", "--set", "terminationGracePeriodSeconds=40",
                  "--set", f"ports.proxy={free_port()}")
    command = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]
    result = subprocess.run([sys.executable, *command["command"][1:]], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def kubelet_write(folder: Path, files: dict[str, str]) -> None:
    """Update a ConfigMap volume as the kubelet does (pkg/volume/util/atomic_writer.go): the files go into a new
    timestamped folder, a `..data_tmp` symlink to it is renamed onto `..data`, each file is a symlink through
    `..data`, and the old folder is removed."""
    folder.mkdir(exist_ok=True)
    data = folder / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    stamp = folder / datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
    (folder / "..data_tmp").symlink_to(stamp.name)
    os.rename(folder / "..data_tmp", data)
    for name in files:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    if old:
        shutil.rmtree(folder / old)


@pytest.fixture(scope="module")
def chart_gateway(tmp_path_factory):
    """The gateway run with exactly the arguments the chart's StatefulSet gives it (paths under a temporary folder,
    the listen address on loopback), its rules a ConfigMap volume laid out as the kubelet lays it out."""
    base = tmp_path_factory.mktemp("chart-gateway")
    proxy_port, metrics_port = free_port(), free_port()
    docs = render("--set", "workers=1", "--set", f"ports.proxy={proxy_port}", "--set",
                  f"ports.metrics={metrics_port}")
    files = {name: text + "\n" for name, text in one(docs, "ConfigMap", "-rules")["data"].items()}
    kubelet_write(base / "rules", files)
    confdir = init_container(docs, base / "pod")
    ca = (confdir / "mitmproxy-ca-cert.pem").read_bytes()  # the Secret's certificate, before the gateway starts
    container = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    places = {"/etc/ai-gateway/rules": str(base / "rules"), "/var/lib/ai-gateway": str(base / "data"),
              "/run/ai-gateway/ca": str(confdir), "0.0.0.0": "127.0.0.1"}
    args = [re.sub("|".join(map(re.escape, places)), lambda m: places[m.group(0)], a) for a in container["args"]]
    env = dict(os.environ, **{e["name"]: e["value"] for e in container["env"] if e["name"] != "HOME"})
    log = open(base / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT)
    gw = type("ChartGateway", (), {})()
    gw.rules, gw.files, gw.metrics = base / "rules", files, f"http://127.0.0.1:{metrics_port}"
    gw.confdir, gw.ca = confdir, ca
    gw.output = lambda: (base / "gateway.log").read_text(errors="replace")
    try:
        wait_listening("gateway", proc, proxy_port, base / "data" / "audit.sock", gw.output, 90)
        yield gw
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_the_charts_command_line_starts_a_gateway_that_says_it_is_ready(chart_gateway):
    deadline = time.monotonic() + 90  # the store connects slowly on a busy machine
    while (answer := http_get(chart_gateway.metrics + "/ready")) != (200, "ready\n"):
        assert time.monotonic() < deadline, (answer, chart_gateway.output())
        time.sleep(0.3)
    status, pac = http_get(chart_gateway.metrics + "/proxy.pac")
    assert status == 200 and "FindProxyForURL" in pac
    # it signs with the chart's CA, as the init container left it, and wrote its client bundle beside it
    assert (chart_gateway.confdir / "mitmproxy-ca-cert.pem").read_bytes() == chart_gateway.ca
    assert (chart_gateway.confdir / "gateway-ca-bundle.pem").read_bytes().endswith(chart_gateway.ca)


def test_a_configmap_update_as_the_kubelet_writes_it_reaches_the_running_gateway(chart_gateway):
    """The files are symlinks through `..data`, whose rename is the only change the folder sees."""
    assert "house-llm.corp.example" not in http_get(chart_gateway.metrics + "/proxy.pac")[1]
    files = dict(chart_gateway.files)
    files["endpoints.yaml"] = files["endpoints.yaml"].replace(
        "services:\n", "services:\n  - {id: house-llm, name: House LLM, category: api, "
                       "hosts: [house-llm.corp.example]}\n", 1)
    kubelet_write(chart_gateway.rules, files)
    deadline = time.monotonic() + 90  # a busy machine: a reload recompiles the rules
    while "house-llm.corp.example" not in http_get(chart_gateway.metrics + "/proxy.pac")[1]:
        assert time.monotonic() < deadline, chart_gateway.output()
        time.sleep(0.3)
    assert "rules reloaded from" in chart_gateway.output()
    status = json.loads((chart_gateway.rules.parent / "data" / "rules-status.json").read_text())
    assert status["reloads"] == 1 and status["error"] is None
