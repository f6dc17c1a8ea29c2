"""The gateway's mitmproxy addons, one concern each, in the order they see a flow.

rules (loads the rules folder and hands every stage the validated rule set, at start and on each edit) ->
recognise -> identify -> admission (a bound on the request bodies held at once) -> extract -> inspect (DLP) ->
decide -> tunnel (do-not-decrypt connections) -> warn -> strip (forbidden tools) -> redact -> mcp (MCP listings
and calls) -> answer tools (forbidden tool calls in the model's answer) -> links (exfiltration links removed from
answers, when on) -> audit (counted for Prometheus by
metrics; the admin socket answers audit queries from the CLI).
The stages share one record per flow (core.interaction.Interaction) and tell each other facts as events
(addons/hooks.py), never by looking each other up: docs/architecture.md.
`gateway run` loads `proxy_addons()` and then `default_addons()`; a stage loaded on its own with `mitmdump -s`
needs the rules stage beside it (it hands the stages their rules).
"""

from __future__ import annotations


def proxy_addons() -> list:
    """The mitmproxy addons the gateway runs on, instead of all of mitmdump's.

    Left out: the ones that change or replay traffic after the gateway has inspected it (map_local, map_remote,
    modify_body, modify_headers, anticache, anticomp, sticky cookies and auth, client and server replay), the ones
    that write decrypted flows to disk past the audit's capture level (save_stream_file, hardump), the mitm.it
    onboarding app, and the interactive tools (browser, cut, export, comments, command history, flows read from a
    file). Their options are unknown to the gateway, so setting one is refused at start instead of silently
    undermining the policy. Every addon loaded also costs every hook of every flow one call (mitmproxy offers each
    event to each addon), which is time to first token.
    """
    from mitmproxy.addons import (block, blocklist, core, disable_h2c, dns_resolver, errorcheck, next_layer,
                                  proxyauth, proxyserver, script, strip_dns_https_records, tlsconfig, upstream_auth)

    return [
        core.Core(),  # options and commands
        block.Block(),  # block_global / block_private: never an open proxy by accident
        blocklist.BlockList(),  # block_list: refuse URLs outright, AI or not
        strip_dns_https_records.StripDnsHttpsRecords(),  # modes that carry DNS: no ECH, so SNI stays readable
        disable_h2c.DisableH2C(),
        proxyauth.ProxyAuth(),  # proxyauth: one of the identity sources (addons/identify.py)
        proxyserver.Proxyserver(),
        script.ScriptLoader(),  # gateway run --script
        dns_resolver.DnsResolver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        upstream_auth.UpstreamAuth(),  # chaining to a corporate upstream proxy
        errorcheck.ErrorCheck(),  # an error while starting (port in use, bad certificate) stops the gateway
    ]


def default_addons() -> list:
    from addons.admin import AdminSocket
    from addons.admission import Admission
    from addons.audit import Audit
    from addons.decide import Decide
    from addons.extract import Extract
    from addons.identify import Identify
    from addons.inspect import Inspect
    from addons.links import StripLinks
    from addons.mcp import McpGuard
    from addons.metrics import Metrics
    from addons.recognise import Recognise
    from addons.redact import Redact
    from addons.rules import Rules
    from addons.strip import Strip
    from addons.toolcalls import AnswerTools
    from addons.tunnel import Tunnel
    from addons.warn import Warn
    from addons.websocket import WebSocketAudit

    return [Rules(), Recognise(), Identify(), Admission(), Extract(), Inspect(), WebSocketAudit(), Decide(), Tunnel(),
            Warn(), Strip(), Redact(), McpGuard(), AnswerTools(), StripLinks(), Audit(), Metrics(), AdminSocket()]
