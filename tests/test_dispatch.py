"""The gateway's event dispatch (addons/dispatch.py) does what mitmproxy's own does, case by case.

Each scenario runs on mitmproxy's stock Master and on GatewayMaster, and the two must record the same calls and log
the same errors: the table of handlers is an optimisation, never a change of who is told what, in which order.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import pytest
from mitmproxy import exceptions, options
from mitmproxy.hooks import Hook
from mitmproxy.master import Master
from mitmproxy.test import tflow

from addons.dispatch import GatewayMaster


@dataclass
class DispatchProbeHook(Hook):
    calls: list


class Leaf:
    def __init__(self, name: str, *, fail: bool = False, halt: bool = False, children=()) -> None:
        self.name, self.fail, self.halt = name, fail, halt
        if children:
            self.addons = list(children)

    def dispatch_probe(self, calls: list) -> None:
        calls.append(self.name)
        if self.fail:
            raise ValueError(f"{self.name} broke")
        if self.halt:
            raise exceptions.AddonHalt


class AsyncLeaf(Leaf):
    async def dispatch_probe(self, calls: list) -> None:
        await asyncio.sleep(0)
        calls.append(self.name)


class Announcer(Leaf):
    """Fires the probe from its load event, when mitmproxy has not yet put it in the chain."""

    def __init__(self, name: str, calls: list) -> None:
        super().__init__(name)
        self.calls = calls

    def load(self, loader) -> None:
        from mitmproxy import ctx
        ctx.master.addons.trigger(DispatchProbeHook(self.calls))


class FlowWatcher:
    name = "watcher"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def request(self, flow) -> None:
        self.seen.append("request")

    def update(self, flows) -> None:
        self.seen.append(f"update {len(flows)}")


def scenario(master_class, build, fire) -> tuple[list, list[str]]:
    """Load `build()`'s addons on a master of `master_class`, run `fire(master)` and return what was called and
    the addon errors logged."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Addon error"):
                records.append(re.sub(r" at 0x[0-9a-f]+", "", record.getMessage()))  # two runs, two objects

    async def run():
        master = master_class(options.Options())
        master.addons.add(*build())
        try:
            return await fire(master)
        finally:
            master._legacy_log_events.uninstall()  # its log handler would outlive this event loop

    handler = Collect()
    logging.getLogger("mitmproxy.addonmanager").addHandler(handler)
    try:
        calls = asyncio.run(run())
    finally:
        logging.getLogger("mitmproxy.addonmanager").removeHandler(handler)
    return calls, records


async def fire_both(master) -> list:
    calls: list = []
    await master.addons.trigger_event(DispatchProbeHook(calls))
    calls.append("|")
    master.addons.trigger(DispatchProbeHook(calls))
    return calls


async def fire_after_changes(master) -> list:
    calls: list = []
    await master.addons.trigger_event(DispatchProbeHook(calls))  # the table is built here
    master.addons.add(Announcer("late", calls))
    master.addons.trigger(DispatchProbeHook(calls))  # the table the load event built lacks "late"
    master.addons.remove(master.addons.get("b"))
    parent = master.addons.get("parent")
    child = Leaf("registered")
    parent.addons.append(child)  # as the script loader adds a script
    master.addons.register(child)
    calls.append("|")
    await master.addons.trigger_event(DispatchProbeHook(calls))
    calls.append("|")
    master.options.update(listen_port=8099)  # a configure: the script loader may have reordered its scripts
    parent.addons.reverse()
    await master.addons.trigger_event(DispatchProbeHook(calls))
    return calls


async def fire_flow(master) -> list:
    watcher = master.addons.get("watcher")
    from mitmproxy.proxy.layers.http import HttpRequestHook
    await master.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
    return watcher.seen


CASES = {
    "order, children after their parent, sync and async handlers": (
        lambda: [Leaf("a"), Leaf("parent", children=[Leaf("child1"), AsyncLeaf("child2")]), Leaf("c")], fire_both),
    "an error is logged and the event goes on to the next addon, not to the failing addon's children": (
        lambda: [Leaf("a", fail=True, children=[Leaf("a-child")]), Leaf("b")], fire_both),
    "AddonHalt ends the event": (lambda: [Leaf("a"), Leaf("b", halt=True), Leaf("c")], fire_both),
    "an async handler fired synchronously is an error, as it is in mitmproxy": (
        lambda: [AsyncLeaf("a"), Leaf("b")], fire_both),
    "added, removed and registered addons, and a configure": (
        lambda: [Leaf("a"), Leaf("b"), Leaf("parent", children=[Leaf("p1"), Leaf("p2")])], fire_after_changes),
    "a flow event, then its update event": (lambda: [Leaf("a"), FlowWatcher()], fire_flow),
}


@pytest.mark.parametrize("case", CASES)
def test_dispatch_matches_mitmproxy(case):
    build, fire = CASES[case]
    stock = scenario(Master, build, fire)
    ours = scenario(GatewayMaster, build, fire)
    assert ours == stock
    assert stock[0], "the scenario called nothing: it tests nothing"


def test_the_table_is_what_answers():
    """The cases above would pass if GatewayMaster fell back to mitmproxy's path: show that it does not walk the
    chain per event (the handlers come from the table, built once per event name)."""
    walked = []

    async def run():
        master = GatewayMaster(options.Options())
        master.addons.add(Leaf("a"), Leaf("b"))
        original = master.addons._iter_hooks

        def counting(addon, event):
            walked.append(addon)
            return original(addon, event)

        master.addons._iter_hooks = counting
        for _ in range(5):
            await master.addons.trigger_event(DispatchProbeHook([]))
        master.addons.add(Leaf("c"))
        await master.addons.trigger_event(DispatchProbeHook([]))

    asyncio.run(run())
    # six events: "a" looked up once at the first, once after the add; mitmproxy's path would walk it six times
    assert [getattr(a, "name", "") for a in walked].count("a") == 2
