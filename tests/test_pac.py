"""The PAC file (`gateway pac`, and /proxy.pac and /wpad.dat on the metrics port), run by a real PAC engine
(pypac's, JavaScript in duktape) on a table of URLs: only the catalog's AI hosts go through the gateways."""

from __future__ import annotations

import http.client
import shutil
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from pypac.parser import PACFile

from cli import cli
from core.catalog import Catalog
from core.pac import PacError, render
from core.rulesfile import SHIPPED_RULES
from tests.conftest import own_gateway
from tests.support.gateway import free_port

CATALOG = Catalog.load(SHIPPED_RULES / "endpoints.yaml")
GATEWAYS = "PROXY gw-a.corp:8080; PROXY gw-b.corp:8080"

#: url -> where the PAC file must send it (True: the gateways)
URLS = {
    "https://api.openai.com/v1/chat/completions": True,  # exact host
    "https://API.OpenAI.com./v1/models": True,  # case and a trailing dot, as the catalog compares
    "https://api.openai.com:8443/v1/models": True,  # a port changes nothing
    "https://us.api.openai.com/v1/responses": True,  # *.api.openai.com: one label deep
    "https://a.b.api.openai.com/": True,  # ... or several
    "https://myres.openai.azure.com/openai/deployments": True,  # *.openai.azure.com
    "https://openai.azure.com/": False,  # a leading *. never matches the apex
    "https://us-central1-aiplatform.googleapis.com/v1/projects": True,  # *-aiplatform: within one label
    "https://a.b-aiplatform.googleapis.com/": False,  # ... not across a dot
    "https://bedrock-runtime.eu-west-1.amazonaws.com/model": True,  # a * in the middle
    "https://bedrock-runtime.a.b.amazonaws.com/": False,
    "https://x.cursor.sh/": True,  # do-not-decrypt hosts are AI use too (tunnelled, audited, decided)
    "wss://api.openai.com/v1/realtime": True,
    "http://chatgpt.com/": True,  # plain HTTP to an AI host
    "https://example.com/": False,
    "https://openai.com.evil.example/": False,  # an AI name as a prefix
    "https://api.openai.com.example.net/": False,  # ... or inside a longer name
    "https://notapi.openai.com/": False,
    "https://s3.amazonaws.com/": False,
    "https://www.googleapis.com/": False,
    "http://intranet.example:8080/": False,
    "http://10.1.2.3:11434/api/chat": False,  # IP addresses: the catalog names hosts, never addresses
    "http://127.0.0.1:1234/v1/chat/completions": False,
    "http://[::1]:8080/": False,
    "https://162.159.140.245/": False,
}


@pytest.fixture(scope="module")
def engine() -> PACFile:
    return PACFile(render(CATALOG, ["gw-a.corp:8080", "gw-b.corp:8080"]))


@pytest.mark.parametrize("url", URLS)
def test_only_ai_hosts_go_through_the_gateways(engine, url):
    answer = engine.find_proxy_for_url(url, urlsplit(url).hostname)
    assert answer == (GATEWAYS if URLS[url] else "DIRECT")


def test_the_pac_file_agrees_with_the_catalog_on_every_host_it_lists(engine):
    """Each catalog entry, with its `*` filled in one label, goes where Catalog.match says."""
    hosts = {h.replace("*", "x1") for s in CATALOG.services.values() for h in s.hosts}
    hosts |= {h.replace("*.", "a.b.") for h in hosts}
    wrong = [h for h in sorted(hosts)
             if (engine.find_proxy_for_url(f"https://{h}/", h) != "DIRECT") != (CATALOG.match(h) is not None)]
    assert not wrong


def test_direct_after_the_gateways_only_when_asked():
    fail_open = PACFile(render(CATALOG, ["gw-a.corp:8080"], direct_fallback=True))
    assert fail_open.find_proxy_for_url("https://api.anthropic.com/", "api.anthropic.com") == \
        "PROXY gw-a.corp:8080; DIRECT"
    for bad in ([], ["gw-a.corp"], ["gw a:8080"], ["gw:99999"], ["gw:8080; DIRECT"]):
        with pytest.raises(PacError):
            render(CATALOG, bad)


def test_gateway_pac_writes_the_file(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(SHIPPED_RULES, rules)
    out = tmp_path / "proxy.pac"
    result = CliRunner().invoke(cli, ["pac", "--proxy", "gw-a.corp:8080", "--proxy", "[fd00::1]:3128",
                                      "--rules", str(rules), "-o", str(out)])
    assert result.exit_code == 0, result.output
    answer = PACFile(out.read_text()).find_proxy_for_url("https://claude.ai/", "claude.ai")
    assert answer == "PROXY gw-a.corp:8080; PROXY [fd00::1]:3128"
    result = CliRunner().invoke(cli, ["pac", "--proxy", "gw-a.corp"])
    assert result.exit_code == 2 and "gateway address must be host:port" in result.output
    (rules / "endpoints.yaml").write_text("version: 1\nservices: {}\n")
    result = CliRunner().invoke(cli, ["pac", "--proxy", "gw:8080", "--rules", str(rules)])
    assert result.exit_code == 2 and "endpoints.yaml" in result.output and "'services' must be a list" in result.output


def fetch(url: str, host: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


@pytest.fixture(scope="module")
def pac_gateway(tmp_path_factory, upstream, test_ca):
    port = free_port()
    with own_gateway(tmp_path_factory, upstream, test_ca, "pac-gateway", f"gateway_metrics=127.0.0.1:{port}") as gw:
        gw.admin_url = f"http://127.0.0.1:{port}"
        yield gw


def test_the_gateway_serves_the_pac_file_naming_itself(pac_gateway):
    for path in ("/proxy.pac", "/wpad.dat"):
        status, kind, body = fetch(pac_gateway.admin_url + path, host="gateway.corp.example:9464")
        assert status == 200 and kind == "application/x-ns-proxy-autoconfig"
        pacfile = PACFile(body)
        assert pacfile.find_proxy_for_url("https://api.openai.com/", "api.openai.com") == \
            f"PROXY gateway.corp.example:{pac_gateway.port}"
        assert pacfile.find_proxy_for_url("https://example.com/", "example.com") == "DIRECT"
    connection = http.client.HTTPConnection("127.0.0.1", int(pac_gateway.admin_url.rsplit(":", 1)[1]), timeout=10)
    connection.putrequest("GET", "/proxy.pac", skip_host=True)  # no Host: the file cannot name the gateway
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400 and "gateway_pac_proxies" in response.read().decode()
    connection.close()


def test_the_served_pac_file_follows_a_catalog_edit(tmp_path, upstream, test_ca):
    """Served from the audit process with several proxy processes, which holds the rules too; addresses named."""
    from tests.support.gateway import GatewayProcess

    rules = tmp_path / "rules"
    shutil.copytree(SHIPPED_RULES, rules)
    port = free_port()
    gw = GatewayProcess(tmp_path / "gw", {"api.openai.com": upstream.port}, test_ca.ca_pem, rules=rules, workers=2,
                        sets=[f"gateway_metrics=127.0.0.1:{port}", "gateway_pac_proxies=gw-a:8080,gw-b:8080"])
    try:
        url = f"http://127.0.0.1:{port}/proxy.pac"
        deadline = time.monotonic() + 90  # the audit process starts slowly on a busy machine
        while (answer := fetch(url))[0] != 200:  # the audit process may start after the proxies
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        assert PACFile(answer[2]).find_proxy_for_url("https://llm.intranet.example/", "llm.intranet.example") == \
            "DIRECT"
        endpoints = rules / "endpoints.yaml"
        endpoints.write_text(endpoints.read_text().replace(
            "services:\n", "services:\n  - {id: house-llm, name: House LLM, category: api, "
                            "hosts: [llm.intranet.example]}\n", 1))
        deadline = time.monotonic() + 90  # a busy machine: a reload recompiles the rules
        while "llm.intranet.example" not in (body := fetch(url)[2]):
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.2)
        assert PACFile(body).find_proxy_for_url("https://llm.intranet.example/", "llm.intranet.example") == \
            "PROXY gw-a:8080; PROXY gw-b:8080"
    finally:
        gw.stop()
