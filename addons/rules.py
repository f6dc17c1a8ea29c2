"""The rules stage: the one owner of the rules folder, at start and on every edit (hot reload).

It loads every rules file together (policy/ruleset.py) and hands the stages the complete, validated `RuleSet` as
one event, `rules_loaded` (addons/hooks.py: recognise takes the catalog, identify the identity sources, inspect the
recognizers, decide and tunnel the policy). Nothing else reads the rules folder. At start a broken file stops the
gateway with its `file:line`; afterwards, a change anywhere in the folder reloads it in a thread, and only a rule
set that loads completely is applied, all at once. A broken edit is refused: the last good rules stay active, the
error is logged and written to the status file that `gateway rules status` prints. In-flight flows keep the
rules they started with; new requests, on old or new connections, see the new ones.

Load it before the other stages (addons.default_addons does): their configure then runs with the rules in place.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
import watchfiles
from mitmproxy import ctx
from mitmproxy.exceptions import OptionsError

from addons.hooks import RulesLoadedHook
from core.rulesfile import SHIPPED_RULES, RulesError
from policy import ruleset

log = logging.getLogger(__name__)


class Rules:
    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.stop: asyncio.Event | None = None
        self.active: dict = {}
        self.refused: dict | None = None  # not `error`: that is the name of mitmproxy's HTTP error event
        self.reloads = 0
        self.started = False  # the event loop runs: the watcher can be (re)started

    def load(self, loader) -> None:
        loader.add_option("gateway_rules", str, str(SHIPPED_RULES),
                          "Folder of the gateway's rules files (endpoints.yaml, policy, identity, recognizers).")
        loader.add_option("gateway_rules_reload", bool, True,
                          "Watch the rules folder and apply valid edits without a restart.")
        loader.add_option("gateway_rules_recognizers", bool, True,
                          "Load the DLP recognizers (recognizers.yaml). Off in a process that scans nothing: the "
                          "audit process of `gateway run --workers N`, which needs the catalog for the PAC file.")
        loader.add_option("gateway_rules_status", str, "",
                          "File where the active rules and the last reload error are written (JSON), read by "
                          "`gateway rules status`. Empty: not written.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_rules" in updated:
            try:
                rules = ruleset.load(Path(ctx.options.gateway_rules), ctx.options.gateway_rules_recognizers)
            except RulesError as e:
                raise OptionsError(str(e)) from None
            ctx.master.addons.trigger(RulesLoadedHook(rules))
            self.active = {"since": _now(), "files": rules.digests}
            self.refused = None
            self._write_status()
        elif "gateway_rules_status" in updated:
            self._write_status()
        if self.started and updated & {"gateway_rules", "gateway_rules_reload"}:
            self._restart()  # watch the new folder, or start or stop watching

    def running(self) -> None:
        self.started = True
        self._restart()

    def _restart(self) -> None:
        self._stop_watching()
        if not ctx.options.gateway_rules_reload:
            return
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._watch(Path(ctx.options.gateway_rules), self.stop))

    def _stop_watching(self) -> None:
        if self.stop is not None:
            self.stop.set()
        self.task = self.stop = None

    async def _watch(self, folder: Path, stop: asyncio.Event) -> None:
        log.info("watching %s for rules changes", folder)
        polling = False
        while not stop.is_set():
            try:
                async for _changes in watchfiles.awatch(folder, stop_event=stop, debounce=300, step=50,
                                                        recursive=False, force_polling=polling):
                    await self.reload(folder)
                return
            except Exception as e:  # inotify unavailable or exhausted: poll instead; if that fails too, say so
                if not polling:
                    log.warning("rules watcher for %s failed (%s): polling instead", folder, e)
                    polling = True
                    continue
                log.error("rules watcher for %s stopped: %s", folder, e)
                self.refused = {"file": str(folder), "line": None, "message": f"watcher stopped: {e}", "at": _now()}
                self._write_status()
                return

    async def reload(self, folder: Path) -> bool:
        """Load the whole folder off the event loop; apply it only if every file is valid."""
        previous_error, self.refused = self.refused, None
        try:
            rules = await asyncio.to_thread(ruleset.load, folder, ctx.options.gateway_rules_recognizers)
        except RulesError as e:
            return self._refuse(e)
        gone = sorted(set(self.active.get("files", {})) - set(rules.digests))
        if gone:  # deleting the policy must not quietly turn enforcement off (nor an editor's save-by-rename)
            return self._refuse(RulesError(folder / gone[0], None, "file removed: restore it (an empty policy is "
                                                                   "'version: 1'), or restart the gateway without it"))
        if rules.digests == self.active.get("files"):  # touched, or a refused edit undone
            if previous_error is not None:
                self._write_status()
            return True
        ctx.master.addons.trigger(RulesLoadedHook(rules))
        self.reloads += 1
        self.active = {"since": _now(), "files": rules.digests}
        log.info("rules reloaded from %s: %d policy rules, %d services", folder, len(rules.policy.rules),
                 len(rules.catalog.services))
        self._write_status()
        return True

    def _refuse(self, e: RulesError) -> bool:
        log.error("rules change refused, the last good rules stay active: %s", e)
        self.refused = {"file": e.file, "line": e.line, "message": e.message, "at": _now()}
        self._write_status()
        return False

    def _write_status(self) -> None:
        path = ctx.options.gateway_rules_status
        if not path:
            return
        status = {"rules": str(Path(ctx.options.gateway_rules).resolve()), "active": self.active,
                  "reloads": self.reloads, "error": self.refused, "pid": os.getpid()}
        tmp = Path(path).with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps(status, option=orjson.OPT_INDENT_2))
            tmp.replace(path)
        except OSError as e:
            log.warning("cannot write the rules status file %s: %s", path, e.strerror)

    def done(self) -> None:
        self._stop_watching()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
