"""mitmproxy's event dispatch, with each event's handlers looked up once instead of on every event.

mitmproxy offers every event to every loaded addon: for each addon of the chain it enters a context manager,
creates a coroutine, walks the addon's children with a generator and looks a method of the event's name up, and
each flow event is followed by an `update` event offered the same way. The gateway loads about 33 addons, most of
which handle only a few events, so a small request cost about 260 such visits, the largest single item of a
profile of the event loop (README, "Several processes, measured").

`HookTable` keeps mitmproxy's semantics (the chain's order, children after their parent, sync and async handlers,
an error logged by mitmproxy's own `safecall` and the event going on to the next addon of the chain, `AddonHalt`
ending it) and differs only in when it looks: an event's handlers are listed on its first use and listed again
whenever the chain changes (an addon added, removed or registered, as the script loader does) and after every
`configure`, where the script loader reorders its scripts. A handler assigned to an addon's attribute at any other
time is not seen; no addon does that.
"""

from __future__ import annotations

import inspect

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall
from mitmproxy.master import Master

# one top-level addon's handlers of an event, in traversal order, or the addon itself: offered through mitmproxy's
# own path on every event, for the cases that path reports as errors (a handler name bound to something not
# callable; an async handler of an event fired synchronously)
type _Group = tuple | object


class HookTable(AddonManager):
    def __init__(self, master) -> None:
        super().__init__(master)
        self._tables: dict[bool, dict[str, tuple[_Group, ...]]] = {False: {}, True: {}}

    def _changed(self) -> None:
        for table in self._tables.values():
            table.clear()

    def register(self, addon):
        self._changed()
        return super().register(addon)

    def add(self, *addons) -> None:
        super().add(*addons)
        self._changed()  # after: register's load events may fire events before the chain holds the addon

    def remove(self, addon) -> None:
        super().remove(addon)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def _configure_all(self, updated) -> None:
        super()._configure_all(updated)
        self._changed()

    def _groups(self, event: hooks.Hook, sync: bool) -> tuple[_Group, ...]:
        table = self._tables[sync]
        groups = table.get(event.name)
        if groups is None:
            groups = table[event.name] = tuple(g for g in (self._group(a, event, sync) for a in self.chain) if g)
        return groups

    def _group(self, addon, event: hooks.Hook, sync: bool) -> _Group:
        try:
            funcs = tuple(func for _, func in self._iter_hooks(addon, event))
        except exceptions.AddonManagerError:
            return addon
        if sync and any(inspect.iscoroutinefunction(f) for f in funcs):
            return addon
        return funcs

    async def trigger_event(self, event: hooks.Hook) -> None:
        args = event.args()
        for group in self._groups(event, sync=False):
            try:
                if type(group) is not tuple:
                    await self.invoke_addon(group, event)
                    continue
                for func in group:
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
            except exceptions.AddonHalt:
                return
            except Exception:
                with safecall():  # logs it as mitmproxy does; OptionsError goes on up, as it does there
                    raise

    def trigger(self, event: hooks.Hook) -> None:
        args = event.args()
        for group in self._groups(event, sync=True):
            try:
                if type(group) is not tuple:
                    self.invoke_addon_sync(group, event)
                    continue
                for func in group:
                    func(*args)
            except exceptions.AddonHalt:
                return
            except Exception:
                with safecall():
                    raise


class GatewayMaster(Master):
    """mitmproxy's Master dispatching through a HookTable."""

    def __init__(self, opts, **kwargs) -> None:
        super().__init__(opts, **kwargs)
        stock, self.addons = self.addons, HookTable(self)
        self.options.changed.disconnect(stock._configure_all)
        self.addons.chain, self.addons.lookup = stock.chain, stock.lookup
