"""Inspect what is sent: DLP on every text part of the exchange, in a process pool, never on the event loop.

mitmproxy runs every flow of the process on one event loop: a scan that takes 40 ms there stalls every other
request by 40 ms (docs/stack.md). So the `request` hook is async and awaits the scan in `dlp.pool.DlpPool` (worker
processes): this flow waits, the others go on. Prompts over BULK_CHARS (a pasted document, seconds to scan) go to
workers of their own, so ordinary prompts never queue behind them. Most prompts hold nothing sensitive: one
prefilter pass in this process (`Scanner.could_find`, a hyperscan scan of about 16 us per KB, up to
`gateway_dlp_prefilter_chars`) proves that for them exactly, and they skip the round trip to the workers, which
costs milliseconds when the proxy is busy. The findings land in `Interaction.findings`, one per span, with
`Finding.part` indexing `Exchange.request_parts()`, which is what the decide stage judges, the redact stage
rewrites and the audit records (as types and positions, never values).

The same pass names the entity types the scan could report at all (`Scanner.could_find`). When no rule in
force looks at any of them (the shipped policy enforces only its secrets rule, so an e-mail address in a prompt
changes nothing it enforces; `policy.engine.findings_matter`), the request is decided and sent at once, and scanned
once the upstream answers (`responseheaders`), for the audit and the monitored rules: the time to the first
token stays as without the gateway's DLP. The audit waits for that scan (`settle`), and the decide stage judges
its findings then.

`Interaction.inspection` tells the truth about the scan, because the policy's fail modes depend on it (it is
`pending` until this stage sets it):
`inspected` (every text part scanned), `skipped` (DLP off, or nothing textual to scan), `errored` (the scan
timed out, waited too long for a worker, or a worker died; the findings are then not the whole truth and the
reason is in the warnings), or `deferred` while a scan runs after its request was sent.

Completions are scanned when a policy rule asks for it (`findings: {in: response}`, and the rule's other conditions
hold for this exchange): in `response` (or `error`, when the client hung up first), after Extract has reassembled
the completion and before Decide judges the answer and Audit writes the event, which therefore includes the
response-side findings (`Finding.part == RESPONSE_PART`). The scan is awaited in the pool like the request's;
`Interaction.response_inspection` says how it went.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from addons.hooks import DlpReadyHook
from core.exchange import RESPONSE_PART
from core.interaction import KEY, Interaction
from core.offload import Deferred
from core.rulesfile import SHIPPED_RULES
from policy.engine import Request, answer_request, findings_matter, subject_of, wants_response_scan
from policy.language import Policy
from policy.ruleset import ENDPOINTS, FILES, IDENTITY, INJECTION, POLICY, RECOGNIZERS, RuleSet, digests

if TYPE_CHECKING:
    from dlp.pool import DlpPool


log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = "10"
DEFAULT_WAIT = "30"
#: Prompts longer than this (all text parts together) are scanned by the bulk workers: a pasted document takes
#: seconds to scan, and the pool spreads one text over all its workers, so it would hold up every prompt behind it.
BULK_CHARS = 100_000
#: Longest prompt (all text parts together) the proxy process checks with the prefilter before using the workers:
#: at about 16 us per KB that is at most ~0.25 ms of the event loop, a sixth of what mitmproxy spends on a request.
PREFILTER_CHARS = 16_000


def _seconds(name: str) -> float:
    value = getattr(ctx.options, name)
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise OptionsError(f"{name} must be a number of seconds > 0, not {value!r}")
    return seconds


OTHER_FILES = {ENDPOINTS, POLICY, IDENTITY}  # rules files the DLP workers do not read


def _dlp_digest(digests: dict[str, str]) -> tuple:
    """What the DLP workers run of a rules folder: its recognizers and injection files, and the files the
    injection rules may include (policy.ruleset.digests: the folder's other YAML files)."""
    return tuple(sorted((name, d) for name, d in digests.items() if name not in OTHER_FILES))


def recognizers_file(folder: Path) -> Path:
    """The folder's recognizers.yaml; the shipped one when the folder has none (a missing rules file means its
    defaults, as for the policy)."""
    own = folder / RECOGNIZERS
    return own if own.exists() else SHIPPED_RULES / RECOGNIZERS


class Inspect:
    def __init__(self) -> None:
        self.pool = None  # dlp.pool.DlpPool while DLP is on
        self.bulk = None  # the pool for prompts over BULK_CHARS, when gateway_dlp_bulk_workers > 0
        self.gate = None  # dlp.scanner.Scanner of the same rules, for its prefilter (Scanner.could_find)
        # dlp.injection.InjectionRules the workers run, while DLP is on: a future, read in a thread (with rule sets
        # included, ATR, reading them takes seconds) that a scan ending before it is read waits for
        self.threat_rules: asyncio.Future | None = None
        self.timeout = float(DEFAULT_TIMEOUT)
        self.wait = float(DEFAULT_WAIT)
        self.running_ = False  # workers are started once every option is set, then restarted on change
        self.digest: tuple | None = None  # of the recognizers and injection files the workers run
        self.warming: list[asyncio.Task] = []
        self.retiring: list[tuple[asyncio.TimerHandle, list]] = []  # pools replaced, closed once their scans end
        self.snapshots: Path | None = None  # the folder of the recognizers files the workers and the gate read
        self.frozen = False  # the startup objects were frozen out of the garbage collector's reach (_warm)
        self.folder = SHIPPED_RULES  # the rules folder in force (rules_loaded), for its recognizers file
        # The policy in force, which says which findings could change what it enforces; until the rules stage has
        # handed one over, every request is scanned before it is sent and no answer is.
        self.policy: Policy | None = None

    def load(self, loader) -> None:
        loader.add_option("gateway_dlp", bool, True,
                          "Scan every prompt with the DLP recognizers (rules/recognizers.yaml). Off: requests are "
                          "audited with inspection 'skipped'.")
        loader.add_option("gateway_dlp_workers", int, 0,
                          "DLP worker processes (0: one per CPU, at most 4).")
        loader.add_option("gateway_dlp_bulk_workers", int, 1,
                          f"DLP worker processes reserved for prompts over {BULK_CHARS} characters, so a pasted "
                          f"document never queues the scans of ordinary prompts behind it (0: one shared pool).")
        loader.add_option("gateway_dlp_prefilter_chars", int, PREFILTER_CHARS,
                          "Prompts up to this many characters are first checked in the proxy process by the DLP "
                          "prefilter alone (one hyperscan pass, about 16 us per KB); when no recognizer could match "
                          "anywhere, the round trip to the workers is skipped (the result is the same). 0: every "
                          "scan goes to the workers.")
        loader.add_option("gateway_dlp_timeout", str, DEFAULT_TIMEOUT,
                          "Seconds a DLP job may run in a worker before the scan's inspection is 'errored' (that "
                          "worker alone is replaced). Time spent waiting for a worker does not count.")
        loader.add_option("gateway_dlp_wait", str, DEFAULT_WAIT,
                          "Seconds a scan may wait for a free DLP worker before its inspection is 'errored' with "
                          "the reason 'overloaded' (more prompts than the workers can scan).")

    def configure(self, updated: set[str]) -> None:
        for name, attr in (("gateway_dlp_timeout", "timeout"), ("gateway_dlp_wait", "wait")):
            if name in updated:
                setattr(self, attr, _seconds(name))
        for name in ("gateway_dlp_workers", "gateway_dlp_bulk_workers", "gateway_dlp_prefilter_chars"):
            if name in updated and getattr(ctx.options, name) < 0:
                raise OptionsError(f"{name} must be 0 or more, not {getattr(ctx.options, name)}")
        if self.running_ and updated & {"gateway_dlp", "gateway_dlp_workers", "gateway_dlp_bulk_workers"}:
            self._start()

    def running(self) -> None:
        self.running_ = True
        self._start()

    def rules_loaded(self, rules: RuleSet) -> None:
        """A new rule set (its recognizers.yaml and injection.yaml checked with it): new workers if they changed."""
        self.folder, self.policy = rules.folder, rules.policy
        if self.running_ and _dlp_digest(rules.digests) != self.digest and ctx.options.gateway_dlp:
            self._start()

    def _start(self) -> None:
        """Workers for the rules and options in force. At start the scans wait for them (as long as
        `gateway_dlp_wait` allows) and /ready says so; after that the pools in use keep scanning until the new ones
        are warm and take over (`_warm`), so an edit of the recognizers never makes prompts wait or fail closed."""
        from dlp.injection import rules_near
        from dlp.pool import DlpPool

        if not ctx.options.gateway_dlp:
            self._close()
            ctx.master.addons.trigger(DlpReadyHook(""))  # nothing to wait for: inspection says 'skipped'
            return
        source = recognizers_file(self.folder)
        self.digest = _dlp_digest(digests(self.folder))
        rules = self._snapshot(source)
        workers = ctx.options.gateway_dlp_workers or min(4, os.cpu_count() or 1)
        bulk = ctx.options.gateway_dlp_bulk_workers
        pool = DlpPool(rules, workers)
        pools = (pool, DlpPool(rules, bulk, pool.known) if bulk else None)  # a conversation that grows long
        # The bulk workers start with the first long prompt: many gateways never see one.
        for task in self.warming:  # a warm-up of an older rule set: superseded (it closes its pools)
            task.cancel()
        loop = asyncio.get_running_loop()
        threat_rules = loop.run_in_executor(None, rules_near, str(rules))
        first = self.pool is None
        if first:  # nothing scans yet: these pools from now on, the scans waiting for the workers and the rules
            self._use(pools, threat_rules, gate=None)
            ctx.master.addons.trigger(DlpReadyHook("dlp: the workers are starting"))
        self.warming = [loop.create_task(self._warm(pools, rules, threat_rules, swap=not first))]
        log.info("DLP: %d worker process(es) + %d for prompts over %d characters, recognizers from %s",
                 workers, bulk, BULK_CHARS, source)

    def _use(self, pools: tuple, threat_rules, gate) -> None:
        """Scan with these pools from now on (`threat_rules`: the injection rules they run, whose weights score
        their findings by source); the ones in use until now finish what they have begun (as long as a job may
        run) and are closed."""
        retired = [p for p in (self.pool, self.bulk) if p is not None and p not in pools]
        self.pool, self.bulk = pools
        self.gate = gate
        self.threat_rules = threat_rules
        if retired:
            loop = asyncio.get_running_loop()
            self.retiring = [(h, r) for h, r in self.retiring if h.when() > loop.time()]  # those closed already
            self.retiring.append((loop.call_later(self.timeout + self.wait, _close_pools, retired), retired))

    def _snapshot(self, source: Path) -> Path:
        """A private copy of the recognizers file, with the injection rules beside it (the folder's, else the
        shipped ones: dlp.injection.rules_near), which every worker (those started later to replace one too) and
        the prefilter gate read: a prompt is sent before its scan on the gate's word alone, so they must all run
        the same rules, whatever is saved to the rules folder until the reloader restarts them."""
        if self.snapshots is None:
            self.snapshots = Path(tempfile.mkdtemp(prefix="ai-gateway-dlp-"))
        content = source.read_bytes()
        own = self.folder / INJECTION
        threats = (own if own.exists() else SHIPPED_RULES / INJECTION).read_bytes()
        # the files the folder's injection rules may include, beside them (else the shipped ones are read)
        included = {f.name: f.read_bytes() for f in sorted(self.folder.glob("*.yaml"))
                    if f.name not in FILES} if own.exists() else {}
        key = b"\0".join([content, threats, *(n.encode() + b"\0" + b for n, b in included.items())])
        folder = self.snapshots / hashlib.sha256(key).hexdigest()[:16]
        folder.mkdir(exist_ok=True)
        (folder / INJECTION).write_bytes(threats)
        for name, data in included.items():
            (folder / name).write_bytes(data)
        snapshot = folder / RECOGNIZERS
        snapshot.write_bytes(content)
        return snapshot

    async def _warm(self, pools: tuple, rules: Path, threat_rules: asyncio.Future, swap: bool) -> None:
        """Build the scanners now, not on the first request; a worker that cannot is reported at once. Then the
        prefilter gate (`_gate`). With `swap`, these pools replace the ones in use once they are warm (a newer
        rule set cancels this first: the pools are closed unused). Then, once per process, what it has built by
        now (mitmproxy, the recognizers, the audit client: some 180k objects, alive as long as it is) is frozen
        out of the cyclic garbage collector's reach: a full collection then walks what requests create, instead
        of stalling the event loop for 70 ms."""
        pool = pools[0]
        try:
            try:
                await pool.start()
                await threat_rules  # read before a swap: the new pools' scans never wait for it
            except Exception as e:  # the same error then marks every scan 'errored': say it once, loudly, here
                if swap:
                    log.error("DLP workers cannot scan with the new rules, the previous ones stay in force: %s", e)
                    _close_pools(pools)
                else:
                    log.error("DLP workers cannot scan: %s", e)
                    ctx.master.addons.trigger(DlpReadyHook(f"dlp: the workers cannot scan: {str(e)[:200]}"))
                return
            gate = await self._gate(rules)
        except asyncio.CancelledError:
            if swap:
                _close_pools(pools)
            raise
        if swap:
            self._use(pools, threat_rules, gate)
            log.info("DLP: the new rules' workers are warm and scan from now on")
        else:
            self.gate = gate
        if not self.frozen:
            gc.collect()
            gc.freeze()
            self.frozen = True
        if self.gate is not None:
            log.info("DLP: prefilter gate ready (prompts up to %d characters that no recognizer could match skip "
                     "the workers)", ctx.options.gateway_dlp_prefilter_chars)
        ctx.master.addons.trigger(DlpReadyHook(""))  # last: what the log says of the warm-up is said by then

    @staticmethod
    async def _gate(rules: Path):
        """The prefilter gate, from the compiled database the workers have just cached (until it is ready every
        scan goes to the workers: the gate only saves time). None when it cannot be built or could never answer."""
        from dlp.rules import load_rules
        from dlp.scanner import Scanner

        try:
            loaded = await asyncio.to_thread(load_rules, rules)
            if loaded.ner:  # NER must run on every text, so the gate could never answer: not worth a spaCy model
                log.info("DLP: no prefilter gate (NER runs on every prompt)")
                return None
            return await asyncio.to_thread(Scanner, loaded)
        except Exception as e:  # the workers scan, so every scan stays correct; it is only slower
            log.warning("DLP prefilter gate unavailable, every scan goes to the workers: %s", e)
            return None

    async def request(self, flow: http.HTTPFlow) -> None:
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or flow.response is not None:
            return
        await self.scan(it, flow)

    async def ai_turn(self, it: Interaction, headers: dict[str, str]) -> None:
        """A WebSocket turn (addons.hooks.AiTurnHook), already relayed: scanned for the audit."""
        await self.scan(it)

    async def scan(self, it: Interaction, flow: http.HTTPFlow | None = None) -> None:
        """Scan the request parts of an interaction: fills `it.findings` and `it.inspection`, never raises. Public
        for stages that build exchanges outside the request hook (WebSocket turns).

        With the flow of a request: when the prefilter shows that no rule in force could act on what the scan
        might find (`policy.engine.findings_matter`), the scan runs while the request goes upstream: `inspection` is
        `deferred` until the scan ends, and `settle` waits for that before the answer is judged and audited."""
        from dlp.scanner import scan_texts

        if self.pool is None:
            it.inspection = "skipped"
            return
        parts = it.exchange.request_parts()
        if not any(p.text for p in parts):
            it.inspection = "skipped"
            return
        texts = scan_texts(parts)
        try:
            possible = self._possible(texts)
            if flow is not None and possible and not self._findings_matter(flow, it, possible):
                it.stages.sent_under = self.policy  # the request is decided by this policy (addons/decide.py)
                it.inspection = "deferred"
                it.stages.deferred_scan = Deferred(functools.partial(self._scan_parts, it, texts, parts, self.pool))
                return
        except Exception:  # a bug in the gate must cost time, never the scan: the workers decide
            log.exception("DLP prefilter gate failed; scanning in the workers")
            possible = None
        if possible == frozenset():
            it.inspection = "inspected"
            return
        await self._scan_parts(it, texts, parts)

    async def _scan_parts(self, it: Interaction, texts: list[str], parts: list, pool: DlpPool | None = None) -> None:
        """Scan the request's texts and record the outcome on the interaction. `pool`: the one the prefilter gate
        belonged to, for a scan that starts later (after a reload it is closed, and the scan says so)."""
        from dlp.scanner import in_parts

        from dlp.injection import by_source

        threat_rules = self.threat_rules  # of the pools this scan runs in: the pools in use may change meanwhile
        findings = await self._scan_texts(it, texts, "DLP scan", pool)
        if findings:
            # each finding says where its text came from, and prompt injection is scored for it (dlp.injection)
            try:
                findings = by_source(in_parts(findings, parts), it.exchange.request_sources(), await threat_rules)
            except Exception as e:  # unreadable injection rules (_warm says so once): a scan that did not complete
                it.exchange.warn(f"DLP scan failed: {type(e).__name__}: {str(e)[:200]}")
                findings = None
        it.inspection = "errored" if findings is None else "inspected"
        it.findings = findings or []

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The scan of a request sent before it was scanned starts once the upstream answers: not while the
        request is on its way, where its CPU (on a small machine) would delay the answer's first token."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is not None and it.stages.deferred_scan is not None:
            it.stages.deferred_scan.start()

    @staticmethod
    async def settle(flow: http.HTTPFlow) -> None:
        """Wait for the scan of a request that was sent before it was scanned (it records its result on the
        interaction; started now if the upstream never answered): before the decide stage judges the findings
        for the audit and the audit event is written."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or it.stages.deferred_scan is None:
            return
        try:
            await it.stages.deferred_scan.start()
        except Exception as e:  # the answer's rules and the audit still run; the inspection says what happened
            log.exception("DLP scan after sending failed")
            it.inspection = "errored"
            it.exchange.warn(f"DLP scan failed: {type(e).__name__}: {str(e)[:200]}")

    async def response(self, flow: http.HTTPFlow) -> None:
        await self.settle(flow)
        await self._scan_response(flow)

    error = response  # a flow that ends without an answer (or the client hung up first) is settled the same way

    async def _scan_response(self, flow: http.HTTPFlow) -> None:
        """Scan the completion once, whichever of `response` and `error` comes first; the other awaits the same
        scan, so the audit event (written by the first of them to finish) never misses it."""
        it: Interaction | None = flow.metadata.get(KEY)
        if it is None or it.audited or self.pool is None or not it.exchange.completion:
            return
        task = it.stages.response_scan
        if task is None:
            if self.policy is None or not self.policy.response_rules or not wants_response_scan(
                    self.policy, subject_of(it), answer_request(it, it.inspection, flow.request.headers)):
                return
            task = it.stages.response_scan = asyncio.get_running_loop().create_task(self.scan_response(it))
        await task

    async def scan_response(self, it: Interaction) -> None:
        """Scan the completion: its findings are added to `it.findings` with part RESPONSE_PART, and
        `it.response_inspection` says whether the scan completed."""
        texts = [it.exchange.completion]
        findings = [] if self._possible(texts) == frozenset() else \
            await self._scan_texts(it, texts, "DLP scan of the answer")
        it.response_inspection = "errored" if findings is None else "inspected"
        # an MCP server's answer is a tool's result: a rule on `sources: [mcp_result]` must see it as one
        source = "mcp_result" if it.exchange.operation.startswith("mcp.") else "answer"
        it.findings = [*it.findings, *(dataclasses.replace(f, part=RESPONSE_PART, source=source)
                                       for f in findings or ())]

    def _findings_matter(self, flow: http.HTTPFlow, it: Interaction, entities: frozenset[str]) -> bool:
        """Could findings of these entity types change what the policy enforces on this request
        (policy.engine.findings_matter)? If not, the request goes before its scan ends."""
        if self.policy is None:
            return True
        request = Request(it.service, it.exchange, (), headers=flow.request.headers)
        return findings_matter(self.policy, subject_of(it), request, entities)

    def _possible(self, texts: list[str]) -> frozenset[str] | None:
        """The entity types the scan of these texts could report (with values split across consecutive texts), by
        the prefilter gate in this process (empty: nothing to find, no need for the workers); None when the gate
        cannot say (not ready, NER, long prompt)."""
        if self.gate is None or sum(map(len, texts)) > ctx.options.gateway_dlp_prefilter_chars:
            return None
        return self.gate.could_find_parts(texts)

    async def _scan_texts(self, it: Interaction, texts: list[str], what: str,
                          pool: DlpPool | None = None) -> list | None:
        """Findings of the texts (part = index), in the bulk pool when they are long; None when the scan failed,
        with the reason in the exchange's warnings: a failed scan is never passed off as a clean one."""
        from dlp.pool import DlpOverloaded, DlpTimeout

        size = sum(map(len, texts))
        if pool is None:
            pool = self.bulk if self.bulk is not None and size > BULK_CHARS else self.pool
        try:
            return await pool.scan_parts(texts, timeout=self.timeout, wait=self.wait,
                                         scope=it.user or it.client_addr)
        except DlpTimeout:
            it.exchange.warn(f"{what} timed out after {self.timeout:g}s ({size} characters in {len(texts)} parts)")
        except DlpOverloaded as e:
            log.warning("%s not done for %s: %s", what, it.host, e)
            it.exchange.warn(f"{what} not done, the gateway's DLP is overloaded: {e}")
        except Exception as e:  # a dead worker or a scanner bug: say so, never pretend the scan happened
            log.warning("%s failed for %s: %s: %s", what, it.host, type(e).__name__, e)
            it.exchange.warn(f"{what} failed: {type(e).__name__}: {str(e)[:200]}")
        return None

    def done(self) -> None:
        self._close()
        if self.snapshots is not None:
            shutil.rmtree(self.snapshots, ignore_errors=True)
            self.snapshots = None

    def _close(self) -> None:
        for task in self.warming:
            task.cancel()
        self.warming = []
        for handle, retired in self.retiring:
            handle.cancel()
            _close_pools(retired)
        self.retiring = []
        _close_pools((self.pool, self.bulk))
        self.pool = self.bulk = self.gate = None


def _close_pools(pools) -> None:
    for pool in pools:
        if pool is not None:
            pool.close()
