"""The gateway's event dispatch (addons/dispatch.py) does what mitmproxy's own does, case by case.

Each scenario runs on mitmproxy's stock Master and on GatewayMaster, and the two must record the same calls and log
the same errors: the table of handlers is an optimisation, never a change of who is told what, in which order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import traceback
from dataclasses import dataclass

import pytest
from mitmproxy import ctx, exceptions, options
from mitmproxy.addons import script
from mitmproxy.hooks import Hook, UpdateHook
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
                frames = [f.name for f in traceback.extract_tb(record.exc_info[2])]  # the traceback mitmproxy shows
                records.append((re.sub(r" at 0x[0-9a-f]+", "", record.getMessage()), frames))  # two runs, two objects

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


class Adder(Leaf):
    """Adds an addon to the chain from its handler: mitmproxy offers the event in progress to it too."""

    def dispatch_probe(self, calls: list) -> None:
        super().dispatch_probe(calls)
        ctx.master.addons.add(Leaf(f"added{len(ctx.master.addons)}"))


class Swapper(Leaf):
    """Changes another addon's children from its handler, without register: mitmproxy's traversal follows."""

    def dispatch_probe(self, calls: list) -> None:
        super().dispatch_probe(calls)
        ctx.master.addons.get("parent").addons[:] = [Leaf(f"swapped{len(calls)}")]


class Delegating:
    """An addon whose handlers are its delegate's, looked up by __getattr__."""

    name = "delegating"

    def __init__(self) -> None:
        self.target = Leaf("t1")

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("addons", "target"):
            raise AttributeError(name)
        return getattr(self.target, name)


class BrokenLookup(Leaf):
    """A handler attribute that fails to be read, once armed (mitmproxy reads every attribute when it loads it)."""

    armed = False

    @property
    def dispatch_probe(self):
        if self.armed:
            raise RuntimeError("lookup broke")
        return super().dispatch_probe


class Empty(AsyncLeaf):
    """An addon that is false (a container with nothing in it): still an addon."""

    def __len__(self) -> int:
        return 0


class OptionsRefuser(Leaf):
    def dispatch_probe(self, calls: list) -> None:
        super().dispatch_probe(calls)
        raise exceptions.OptionsError(f"{self.name} refuses")


class Configured(Leaf):
    """Counts its configure events, and assigns its handler from the first: the table sees it."""

    def __init__(self, name: str, calls: list) -> None:
        super().__init__(name)
        self.calls = calls

    def configure(self, updated) -> None:
        self.calls.append(f"configure {sorted(updated)}")
        self.dispatch_probe = lambda calls: calls.append("assigned in configure")


async def fire_safely(master) -> list:
    calls: list = []
    for sync in (False, True, False):
        try:
            if sync:
                master.addons.trigger(DispatchProbeHook(calls))
            else:
                await master.addons.trigger_event(DispatchProbeHook(calls))
        except Exception as e:
            calls.append(f"raised {e!r}")
        calls.append("|")
    return calls


async def fire_children_changed(master) -> list:
    calls = await fire_safely(master)
    master.addons.get("parent").addons.append(Leaf("appended"))  # no register: mitmproxy still offers it events
    return calls + await fire_safely(master)


async def fire_configured(master) -> list:
    calls: list = []
    master.addons.add(Configured("configured", calls))
    calls += await fire_safely(master)
    master.options.update(listen_port=8099)  # one configure event, not one per manager
    return calls + await fire_safely(master)


async def fire_armed(master) -> list:
    master.addons.get("broken").armed = True
    return await fire_safely(master)


async def fire_delegate_changed(master) -> list:
    calls = await fire_safely(master)
    master.addons.get("delegating").target = Leaf("t2")
    return calls + await fire_safely(master)


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
    "an addon added by a handler is offered the event in progress": (
        lambda: [Leaf("a"), Adder("adder"), Leaf("c")], fire_safely),
    "children changed by a handler, without register, are offered the event in progress": (
        lambda: [Swapper("swapper"), Leaf("parent", children=[Leaf("p1")]), Leaf("c")], fire_safely),
    "children appended without register are offered the next events": (
        lambda: [Leaf("a"), Leaf("parent", children=[Leaf("p1")])], fire_children_changed),
    "a __getattr__ addon's handlers are looked up on each event": (lambda: [Delegating(), Leaf("b")],
                                                                   fire_delegate_changed),
    "an error looking a handler up is logged and the event goes on": (
        lambda: [BrokenLookup("broken"), Leaf("b")], fire_armed),
    "an error looking up a child's handler is logged and the event goes on to the next addon": (
        lambda: [Leaf("parent", children=[BrokenLookup("broken"), Leaf("p2")]), Leaf("b")], fire_armed),
    "an OptionsError goes up to the caller": (lambda: [OptionsRefuser("refuser"), Leaf("b")], fire_safely),
    "one configure per options change; a handler assigned in configure is seen": (lambda: [Leaf("a")],
                                                                                 fire_configured),
    "a false addon is still offered events, and its errors logged": (lambda: [Empty("empty"), Leaf("b")], fire_safely),
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


SCRIPT = """
from mitmproxy import ctx, hooks

def load(loader):
    ctx.master.addons.trigger(hooks.UpdateHook([]))  # an event while the script loads

def update(flows):
    global update
    flows.append("{version}")
    if "{version}" == "v2":
        def update(flows):  # a script may rebind its handlers
            flows.append("v2 rebound")
"""


def test_scripts_loaded_edited_and_removed(tmp_path):
    """A --script: loaded (firing an event from its load), edited (Script.loadscript removes the module and
    registers the new one, as its watcher does when the file changes), then removed from the scripts option."""
    path = tmp_path / "probe.py"

    async def fire(master) -> list:
        calls: list = []

        async def both():
            await master.addons.trigger_event(UpdateHook(calls))
            master.addons.trigger(UpdateHook(calls))
            calls.append("|")

        path.write_text(SCRIPT.format(version="v1"))
        master.options.update(scripts=[str(path)])
        loaded = master.addons.get("scriptloader").addons[0]
        while loaded.ns is None:  # its watcher task loads it
            await asyncio.sleep(0)
        await both()
        path.write_text(SCRIPT.format(version="v2"))
        os.utime(path, (1, 1))
        loaded.loadscript()
        await both()
        await both()
        master.options.update(scripts=[])
        await both()
        return calls

    build = lambda: [script.ScriptLoader(), Leaf("b")]  # noqa: E731
    stock = scenario(Master, build, fire)
    ours = scenario(GatewayMaster, build, fire)
    assert ours == stock
    assert "v2 rebound" in stock[0]
