"""The shipped AI endpoint catalog (rules/endpoints.yaml), and what the loader says about broken catalogs.

The shipped file is what decides, at every TLS handshake, whether a connection is decrypted: these tests pin
representative hosts of each section of the catalog (API providers, consumer apps, shadow-AI list), the hosts
that must stay untouched, and the error an admin gets for a mistake in a hand-edited catalog.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.catalog import CATEGORIES, Catalog
from core.rulesfile import RulesError

SHIPPED = Path(__file__).resolve().parent.parent / "rules" / "endpoints.yaml"

# The category codes of the shadow-AI survey that section 3 of the catalog comes from: each must be a known
# category and be used. `mcp` is the gateway's own (the survey lists no MCP servers).
REFERENCE_CATEGORIES = {"chat", "code", "write", "img", "vid", "aud", "meet", "srch", "api", "gw", "comp", "doc"}

# The format hints the parsers know by name (a typo here would silently lose the hint).
KNOWN_FORMATS = {
    "openai", "azure-openai", "anthropic", "gemini", "vertex", "bedrock", "cohere", "mistral", "ollama",
    "huggingface", "chatgpt-web", "claude-web", "gemini-web", "copilot-web", "perplexity-web", "deepseek-web",
    "mistral-web", "grok-web", "poe-web", "character-ai-web", "connect-rpc", "mcp",
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(SHIPPED)


# --- the shipped catalog ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host, service", [
    # section 1, API providers: exact hosts
    ("api.openai.com", "openai"),
    ("eu.api.openai.com", "openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("api.cohere.com", "cohere"),
    ("api.mistral.ai", "mistral"),
    ("api.deepseek.com", "deepseek"),
    ("api.groq.com", "groq"),
    ("api.together.xyz", "together"),
    ("api.fireworks.ai", "fireworks"),
    ("api.x.ai", "xai"),
    ("api.perplexity.ai", "perplexity"),
    ("openrouter.ai", "openrouter"),
    ("api.cerebras.ai", "cerebras"),
    ("router.huggingface.co", "huggingface"),
    ("ollama.com", "ollama"),
    ("api.cloudflare.com", "cloudflare-workers-ai"),
    # section 1, API providers: subdomain and in-label wildcards
    ("myres.openai.azure.com", "azure-openai"),
    ("myres.services.ai.azure.com", "azure-ai-foundry"),
    ("us-central1-aiplatform.googleapis.com", "vertex-ai"),
    ("aiplatform.googleapis.com", "vertex-ai"),
    ("aiplatform.eu.rep.googleapis.com", "vertex-ai"),
    ("bedrock-runtime.eu-west-1.amazonaws.com", "bedrock"),
    ("bedrock-runtime-fips.us-east-1.amazonaws.com", "bedrock"),
    ("bedrock-runtime.cn-north-1.amazonaws.com.cn", "bedrock"),
    ("bedrock-mantle.us-east-1.api.aws", "bedrock"),
    ("aws-external-anthropic.us-west-2.api.aws", "anthropic-aws"),
    ("my-endpoint.us-east-1.aws.endpoints.huggingface.cloud", "huggingface-endpoints"),
    ("ark.cn-beijing.volces.com", "volcengine-ark"),
    # section 4, vendor-hosted MCP servers
    ("mcp.linear.app", "linear-mcp"),
    ("mcp.atlassian.com", "atlassian-mcp"),
    ("docs.mcp.cloudflare.com", "cloudflare-mcp"),
    # section 2, consumer apps and assistants
    ("chatgpt.com", "chatgpt"),
    ("chat.openai.com", "chatgpt"),
    ("files.oaiusercontent.com", "chatgpt"),
    ("claude.ai", "claude"),
    ("gemini.google.com", "gemini-web"),
    ("copilot.microsoft.com", "copilot"),
    ("substrate.office.com", "m365-copilot"),
    ("www.perplexity.ai", "perplexity-web"),
    ("chat.deepseek.com", "deepseek-web"),
    ("chat.mistral.ai", "mistral-chat"),
    ("poe.com", "poe"),
    ("neo.character.ai", "character-ai"),
    ("grok.com", "grok"),
    ("api.githubcopilot.com", "github-copilot"),
    ("api.business.githubcopilot.com", "github-copilot"),
    ("copilot-proxy.githubusercontent.com", "github-copilot"),
    ("api2.cursor.sh", "cursor"),
    ("server.codeium.com", "windsurf"),
    ("cloudcode-pa.googleapis.com", "gemini-code-assist"),
    ("q.us-east-1.amazonaws.com", "amazon-q"),
    ("huggingface.co", "huggingchat"),
    # section 3, shadow-AI list: registrable domains match apex and subdomains, full hosts match themselves
    ("midjourney.com", "midjourney"),
    ("www.midjourney.com", "midjourney"),
    ("otter.ai", "otter"),
    ("api.elevenlabs.io", "elevenlabs"),
    ("gamma.app", "gamma"),
    ("firefly.adobe.com", "adobe-firefly"),
    ("notebooklm.google.com", "notebooklm"),
    ("labs.google", "google-labs"),
    ("sora.com", "sora"),
    ("www.notion.so", "notion-ai"),
    ("gateway.ai.cloudflare.com", "cloudflare-ai-gateway"),
    ("fal.run", "fal"),
    ("chat.qwen.ai", "qwen-chat"),
    # host names are case-insensitive and may carry the root dot
    ("API.OpenAI.com.", "openai"),
])
def test_ai_hosts_match_their_service(catalog: Catalog, host: str, service: str) -> None:
    match = catalog.match(host)
    assert match is not None, host
    assert match.service.id == service


@pytest.mark.parametrize("host", [
    "example.com", "www.google.com", "google.com", "s3.amazonaws.com", "amazonaws.com",
    "ec2.us-east-1.amazonaws.com", "github.com", "api.github.com", "www.bing.com", "outlook.office.com",
    "www.adobe.com", "chatgpt.com.example.net", "notopenai.com", "openai.azure.com",
    # local model servers are not host patterns: loopback is never intercepted by default
    "127.0.0.1", "localhost", "", None,
])
def test_non_ai_hosts_are_not_matched(catalog: Catalog, host: str | None) -> None:
    assert catalog.match(host) is None


@pytest.mark.parametrize("host, service", [
    ("api2.cursor.sh", "cursor"),
    ("agent.api5.cursor.sh", "cursor"),
    ("repo42.cursor.sh", "cursor"),
    ("server.codeium.com", "windsurf"),
    ("web-backend.codeium.com", "windsurf"),
    ("inference.codeium.com", "windsurf"),
    ("server.self-serve.windsurf.com", "windsurf"),
])
def test_do_not_decrypt_hosts_are_ai_but_tunnelled(catalog: Catalog, host: str, service: str) -> None:
    match = catalog.match(host)
    assert match is not None
    assert (match.service.id, match.decrypt) == (service, False)
    assert "TLS inspection" in match.reason


@pytest.mark.parametrize("host", ["cursor.com", "api.cursor.com", "windsurf.com", "codeium.com", "api.openai.com"])
def test_other_hosts_of_the_same_services_are_decrypted(catalog: Catalog, host: str) -> None:
    match = catalog.match(host)
    assert match is not None
    assert match.decrypt and match.reason == ""


@pytest.mark.parametrize("service, path, covered", [
    ("m365-copilot", "/m365Copilot/Chathub/abc?clientRequestId=1", True),
    ("m365-copilot", "/chat", True),
    ("m365-copilot", "/owa/service.svc?action=GetItem", False),
    ("huggingchat", "/chat/conversation/66f0", True),
    ("huggingchat", "/meta-llama/Llama-3.1-8B/resolve/main/config.json", False),
    ("huggingchat", "/api/models", False),
    ("cloudflare-workers-ai", "/client/v4/accounts/0123abcd/ai/v1/chat/completions", True),
    ("cloudflare-workers-ai", "/client/v4/accounts/0123abcd/ai/run/@cf/meta/llama-3-8b-instruct", True),
    ("cloudflare-workers-ai", "/client/v4/accounts/0123abcd/dns_records", False),
    ("cloudflare-workers-ai", "/client/v4/accounts/0123abcd/extra/ai/", False),  # `*` is one segment
    ("cloudflare-workers-ai", "/client/v4/zones", False),
    ("notion-ai", "/api/v3/runInferenceTranscript", True),
    ("notion-ai", "/api/v3/loadPageChunk", False),
    ("sourcegraph-cody", "/.api/completions/stream", True),
    ("sourcegraph-cody", "/.api/llm/chat/completions", True),
    ("sourcegraph-cody", "/search?q=repo:foo", False),
    ("openai", "/v1/chat/completions", True),  # no paths: every path is AI
    ("openai", "/anything", True),
])
def test_path_scoped_services(catalog: Catalog, service: str, path: str, covered: bool) -> None:
    assert catalog.services[service].covers_path(path) is covered


@pytest.mark.parametrize("host, service", [
    ("sora.chatgpt.com", "sora"), ("ab.chatgpt.com", "chatgpt"),
    ("api.perplexity.ai", "perplexity"), ("www.perplexity.ai", "perplexity-web"),
    ("api.z.ai", "zhipu"), ("chat.z.ai", "zai-chat"),
    ("cli-chat-proxy.grok.com", "xai"), ("accounts.grok.com", "grok"),
    ("api.kimi.com", "moonshot"), ("www.kimi.com", "kimi"),
    ("api.poe.com", "poe-api"), ("www.poe.com", "poe"),
])
def test_shipped_specific_hosts_win_over_their_domain(catalog: Catalog, host: str, service: str) -> None:
    assert catalog.match(host).service.id == service


def test_more_specific_pattern_wins(tmp_path: Path) -> None:
    path = write(tmp_path, """
        services:
          - {id: general, name: General, category: chat, hosts: ["*.example.com"]}
          - {id: specific, name: Specific, category: api, hosts: ["*.ai.example.com", "*-ml.example.com"]}
          - {id: exact, name: Exact, category: code, hosts: [code.ai.example.com]}
    """)
    catalog = Catalog.load(path)
    assert {h: catalog.match(h).service.id for h in [
        "www.example.com", "a.b.example.com", "x.ai.example.com", "a.b.ai.example.com", "eu-ml.example.com",
        "code.ai.example.com",
    ]} == {
        "www.example.com": "general", "a.b.example.com": "general", "x.ai.example.com": "specific",
        "a.b.ai.example.com": "specific", "eu-ml.example.com": "specific", "code.ai.example.com": "exact",
    }
    assert catalog.match("example.com") is None  # `*.` never matches the apex


def test_catalog_size_and_categories(catalog: Catalog) -> None:
    assert len(catalog.services) >= 150
    assert REFERENCE_CATEGORIES <= set(CATEGORIES)
    assert REFERENCE_CATEGORIES <= {s.category for s in catalog.services.values()}


def test_every_service_is_described_and_unsanctioned(catalog: Catalog) -> None:
    """Shipped services are all unsanctioned: approving one is the admin's decision, not ours."""
    for s in catalog.services.values():
        assert s.name and s.vendor, s.id
        assert s.sanctioned is False, s.id
        assert set(s.formats) <= KNOWN_FORMATS, (s.id, s.formats)


def test_mcp_servers_are_read_as_mcp(catalog: Catalog) -> None:
    """A vendor's MCP server is read as MCP whatever the request looks like (the hint makes the MCP parser claim
    every request on the host), and only MCP servers carry that hint."""
    mcp = [s for s in catalog.services.values() if s.category == "mcp"]
    assert len(mcp) >= 20
    assert all(s.formats == ("mcp",) for s in mcp)
    assert all("mcp" not in s.formats for s in catalog.services.values() if s.category != "mcp")


# --- broken catalogs: every error names file and line ------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "endpoints.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def marked_line(path: Path) -> int:
    """The 1-based line carrying the `# <-` marker: where the error must point."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith("# <-"))


OPENAI = """
    version: 1
    services:
      - id: openai
        name: OpenAI API
        category: api
        hosts: [api.openai.com]
""".rstrip()  # the cases below append to it


@pytest.mark.parametrize("text, message", [
    pytest.param(OPENAI + """
        format: [openai]  # <-
    """, "service: unknown key 'format' (known: category, formats, hosts, id, name, notes, paths, sanctioned, "
         "vendor)", id="unknown-key"),
    pytest.param(OPENAI + """
      - id: openai  # <-
        name: OpenAI again
        category: api
        hosts: [eu.api.openai.com]
    """, "service id 'openai' already defined at line 3", id="duplicate-id"),
    pytest.param(OPENAI + """
      - id: openai-eu
        name: OpenAI EU
        category: api
        hosts: [eu.api.openai.com, API.openai.com]  # <-
    """, "service 'openai-eu': host 'API.openai.com' already belongs to 'openai'", id="duplicate-host"),
    pytest.param("""
    services:
      - id: openai
        name: OpenAI API
        category: llm  # <-
        hosts: [api.openai.com]
    """, "service 'openai': unknown category 'llm' (known: api, chat, code, ", id="bad-category"),
    pytest.param("""
    services:
      - id: openai
        name: OpenAI API
        category: [api]  # <-
        hosts: [api.openai.com]
    """, "service 'openai': unknown category ['api']", id="category-not-a-string"),
    pytest.param("""
    services:
      - id: openai
        name: OpenAI API
        category: api
        hosts: [api.openai.com, api_openai.com]  # <-
    """, "service 'openai': bad host pattern 'api_openai.com'", id="bad-host-pattern"),
    pytest.param("""
    services:
      - id: ollama
        name: Ollama
        category: api
        hosts: ["127.0.0.1:11434"]  # <-
    """, "service 'ollama': bad host pattern '127.0.0.1:11434'", id="host-with-port"),
    pytest.param("""
    services:
      - id: everything
        name: Everything
        category: api
        hosts: ["*.com"]  # <-
    """, "service 'everything': host pattern too broad (its last two labels must be literal) '*.com'",
        id="too-broad-pattern"),
    pytest.param("""
    services:
      - id: openai
        name: OpenAI: API  # <-
        category: api
        hosts: [api.openai.com]
    """, "mapping values are not allowed here", id="yaml-syntax-error"),
    pytest.param("""
    services:
      - id: openai
        name: OpenAI API
        name: OpenAI  # <-
        category: api
        hosts: [api.openai.com]
    """, "duplicate key 'name'", id="duplicate-key"),
    pytest.param("""
    services:
      - id: openai  # <-
        name: OpenAI API
        category: api
    """, "service: missing key 'hosts'", id="missing-key"),
    pytest.param("""
    services:
      - id: huggingchat
        name: HuggingChat
        category: chat
        hosts: [huggingface.co]
        paths: [chat]  # <-
    """, "service 'huggingchat': path 'chat' must start with /", id="relative-path"),
    pytest.param("""
    services:
      - id: openai
        name: OpenAI API
        category: api
        sanctioned: "no"  # <-
        hosts: [api.openai.com]
    """, "service 'openai': 'sanctioned' must be true/false", id="sanctioned-not-bool"),
    pytest.param(OPENAI + """
    do_not_decrypt:
      - host: api2.cursor.sh  # <-
        reason: pinned
    """, "do_not_decrypt: host 'api2.cursor.sh' belongs to no service", id="tunnel-host-outside-catalog"),
    pytest.param(OPENAI + """
    do_not_decrypt:
      - host: api.openai.com
      - host: API.openai.com  # <-
    """, "do_not_decrypt: host 'api.openai.com' already listed at line 8", id="tunnel-host-twice"),
    pytest.param(OPENAI + """
    do_not_decrypt:  # <-
      host: api.openai.com
    """, "'do_not_decrypt' must be a list", id="tunnel-not-a-list"),
])
def test_broken_catalog_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as e:
        Catalog.load(path)
    line = marked_line(path)
    assert (e.value.file, e.value.line) == (str(path), line)
    assert str(e.value).startswith(f"{path}:{line}: {message}")


def test_unreadable_catalog_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(RulesError) as e:
        Catalog.load(missing)
    assert str(e.value) == f"{missing}: cannot read: No such file or directory"

    with pytest.raises(RulesError) as e:
        Catalog.load(tmp_path)
    assert str(e.value) == f"{tmp_path}: cannot read: Is a directory"

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"services:\n  - id: \xff\xfe\n")
    with pytest.raises(RulesError) as e:
        Catalog.load(binary)
    assert str(e.value).startswith(f"{binary}: cannot read: 'utf-8' codec can't decode byte 0xff")


def test_empty_catalog_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(RulesError) as e:
        Catalog.load(path)
    assert str(e.value) == f"{path}: endpoints file must be a mapping"


def test_bad_host_in_a_block_list_is_reported_at_its_own_line(tmp_path):
    f = tmp_path / "endpoints.yaml"
    f.write_text("services:\n  - id: x\n    name: X\n    category: chat\n    hosts:\n      - a.example.com\n"
                 "      - b.example.com\n      - bad host.example.com\n")
    with pytest.raises(RulesError) as e:
        Catalog.load(f)
    assert e.value.line == 8
