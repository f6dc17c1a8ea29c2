"""`gateway rules test`: one request through recognise, extract, inspect and decide, offline.

The same code paths as the proxy (catalog match, provider parser, DLP scanner in-process when the dlp package is
there, the policy engine, the error a blocked client would get), so a rule can be tried before it is deployed
and a user's complaint can be replayed without any traffic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import orjson

import providers
from core.exchange import Exchange
from policy import enforcement
from policy.engine import Request, Subject, decide
from policy.language import entity_of
from policy.ruleset import RuleSet

REFERENCE = "(reference id of the audit event)"


def try_request(rules: RuleSet, user: str, groups: Sequence[str], client_addr: str, method: str, host: str,
                path: str, body: bytes, inspection: str = "inspected") -> str:
    out: list[str] = []
    match = rules.catalog.match(host)
    if match is None:
        return f"{host} is not in the AI endpoint catalog: the gateway tunnels it untouched; no policy applies.\n"
    service = match.service
    out.append(f"service:   {service.id} ({service.name}; category {service.category}; "
               f"{'sanctioned' if service.sanctioned else 'not sanctioned'})")
    if not match.decrypt:
        out.append(f"not decrypted ({match.reason}): recorded as AI use, no policy applies")
        return "\n".join(out) + "\n"
    if not service.covers_path(path.split("?")[0]):
        out.append(f"{path} is outside the service's AI paths: forwarded untouched")
        return "\n".join(out) + "\n"
    who = rules.identity.resolve(client_addr, proxy_user=user)
    subject = Subject(who.user, who.groups | frozenset(groups), client_addr)
    out.append(f"subject:   {subject.user or '(unknown: known by address)'} from {client_addr}; groups: "
               f"{', '.join(sorted(subject.groups)) or '-'}")
    req = providers.HttpRequest.from_url_parts(method, host, path, {"content-type": "application/json"}, body)
    parsed = providers.parse_request(req, service.id, service.formats)
    x = parsed.exchange
    provider = parsed.provider.name if parsed.provider is not None else None
    out.append(f"request:   {x.operation} model={x.model or '-'} stream={x.stream} parsed={x.parsed} read={x.read}"
               f"{' (' + '; '.join(x.warnings) + ')' if x.warnings else ''}")
    if parsed.ambiguous:
        out.append(f"decision:  block  (refused before any rule: {parsed.ambiguous}; the client gets a 400)")
        return "\n".join(out) + "\n"
    out.extend(f"read:      {line}" for line in x.coverage)
    findings: list = []
    scanner = _dlp_scanner(rules)
    if scanner is None:
        out.append("findings:  (DLP package not available: none scanned)")
        if inspection == "inspected" and x.request_parts():
            inspection = "skipped"
    else:
        findings = list(scanner(x))
        out.append(f"findings:  {len(findings) or 'none'}")
        parts = x.request_parts()
        for f in findings:
            text = parts[f.part].text[f.start:f.end] if 0 <= f.part < len(parts) else ""
            source = f" ({f.source})" if getattr(f, "source", "") else ""
            out.append(f"  {entity_of(f):<22} score {f.score:.2f}  part {f.part}{source} [{f.start}:{f.end}]  "
                       f"{_mask(text)}")
    if not x.read and body:
        inspection = "unparsed"
    out.append(f"inspection: {inspection}")
    d = decide(rules.policy, subject, Request(service, x, findings, inspection))
    out.append(f"decision:  {d.action}  (rule: {d.rule}{', mode: monitor' if d.mode == 'monitor' else ''}"
               f"{', fail ' + d.fail if d.fail else ''})")
    out.append(f"reason:    {d.reason}")
    if d.shadow_ai:
        out.append("shadow AI: the service is not sanctioned and no rule names it")
    if d.action == "redact":
        out.append(f"redact:    {', '.join(d.redact_entities)}{' (reversible)' if d.reversible else ''}")
    if d.action == "strip":
        out.append(f"strip:     the model is not offered {', '.join(d.strip_tools)}")
    if d.action == "block":
        reply = enforcement.api_error(enforcement.dialect(provider, service),
                                      enforcement.user_message("block", d.rule, d.message, REFERENCE), REFERENCE)
        out.append("upstream:  nothing is sent; the client gets "
                   f"{reply.status} {reply.body.decode()}")
    elif d.action == "redact":
        out.append("upstream:  " + _redacted(x, findings, d.redact_entities, body))
    elif d.action == "strip":
        out.append(f"upstream:  the body without the definitions of {', '.join(d.strip_tools)}")
    elif d.action == "warn":
        out.append(f"warning:   browsers first get a page with Continue; API clients get the header "
                   f"{enforcement.WARNING_HEADER}: {enforcement.user_message('warn', d.rule, d.message, REFERENCE)}")
        out.append("upstream:  once continued (or for API clients) the body unchanged:")
        out.append(body.decode("utf-8", "replace"))
    else:
        out.append("upstream:  the body unchanged:")
        out.append(body.decode("utf-8", "replace"))
    return "\n".join(out) + "\n"


def _mask(text: str) -> str:
    """Enough of a value to recognise it, never the whole of a secret on a terminal."""
    return text[:3] + "…" if len(text) > 6 else "…"


def _dlp_scanner(rules: RuleSet) -> Callable[[Exchange], Sequence[Any]] | None:
    """The DLP package's scanner, in-process, over the same parts the proxy scans (None: no DLP here)."""
    if rules.recognizers is None:
        return None
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # never fetch the suffix list (docs/stack.md)
    try:
        from dlp.injection import by_source, rules_near
        from dlp.scanner import Scanner, in_parts, scan_texts
    except ImportError:
        return None
    scanner = Scanner(rules.recognizers)
    threats = rules_near(str(rules.recognizers.file))  # findings get their part's source, as in the proxy
    return lambda x: by_source(in_parts(scanner.scan_parts(scan_texts(x.request_parts())), x.request_parts()),
                               x.request_sources(), threats)


def _redacted(x: Exchange, findings: list, entities: list[str], body: bytes) -> str:
    """The request body as the redact stage would rewrite it."""
    try:
        from dlp.redact import Placeholders, redact_json
    except ImportError:
        return f"(DLP redaction not available here: {', '.join(entities)} would be replaced by placeholders)"
    wanted = set(entities)
    try:
        rewritten = redact_json(orjson.loads(body), x.request_parts(),
                                [f for f in findings if entity_of(f) in wanted], Placeholders())
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return f"nothing: the body cannot be rewritten ({type(e).__name__}: {e}), so the request is blocked " \
               f"rather than sent unredacted"
    return "the redacted body:\n" + orjson.dumps(rewritten, option=orjson.OPT_INDENT_2).decode()
