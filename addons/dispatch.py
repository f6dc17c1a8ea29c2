"""mitmproxy's event dispatch, with each event's handlers looked up once instead of on every event.

mitmproxy offers every event to every loaded addon: for each addon of the chain it enters a context manager,
creates a coroutine, walks the addon's children with a generator and looks a method of the event's name up, and
each flow event is followed by an `update` event offered the same way. The gateway loads about 33 addons, most of
which handle only a few events, so a small request cost about 260 such visits, the largest single item of a
profile of the event loop (README, "Several processes, measured").

`HookTable` keeps mitmproxy's semantics (the chain's order, children after their parent, sync and async handlers,
an error logged as mitmproxy's `safecall` logs it, traceback included, and the event going on to the next addon of
the chain, `AddonHalt` ending it, an addon added by a handler offered the event in progress) and differs only in
when it looks: an event's handlers are listed on its first use and listed again whenever the chain changes (an
addon added, removed or registered) and after every `configure`. An addon whose handlers may change without that has
them looked up on every event, as mitmproxy's path does (`_Dynamic`): one with children (the script loader, whose
scripts are loaded, reloaded and removed at run time; a script's module may rebind its handlers), one with a
`__getattr__`, a module. An event no addon handles costs about 1.7 us with the gateway's chain, 56-60 us
mitmproxy's way. Any other addon's attribute of an event's name (or `addons`) assigned after it is
loaded, other than from `configure`, is not seen until the next change. No handler is assigned so, and no stage has
an attribute of an event's name that is not its handler (mitmproxy's path would report it as a handler not
callable on each such event; the table, only if it was set when the table was listed).
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, cut_traceback, logger, safecall
from mitmproxy.master import Master

# one top-level addon's handlers of an event, in traversal order, or the addon itself: offered through mitmproxy's
# own path on every event, for the addons whose handlers may change (above), for those its path reports errors of
# (a handler name bound to something not callable, or an attribute that fails to be read; an async handler of an
# event fired synchronously), and for those added while an event is in progress
type _Group = tuple | _Dynamic | object


@dataclass(frozen=True, slots=True)
class _Dynamic:
    """An addon whose handlers may change unannounced (children, a __getattr__, a module): looked up on every event,
    as mitmproxy's path does, without its coroutine and context manager per addon."""

    addon: object


def _logged(e: Exception, cuts: tuple[str, ...]) -> None:
    """A handler's error, logged as safecall logs it: its traceback from the handler on, cut as safecall cuts it."""
    tb = e.__traceback__.tb_next  # this module's frame
    for name in cuts:
        tb = cut_traceback(tb, name)
    logger.error(f"Addon error: {e}", exc_info=(type(e), e, tb))


class HookTable(AddonManager):
    def __init__(self, master) -> None:
        super().__init__(master)
        self._tables: dict[bool, dict[str, tuple[_Group, ...]]] = {False: {}, True: {}}

    def _changed(self) -> None:
        for table in self._tables.values():
            table.clear()

    def register(self, addon):
        try:
            return super().register(addon)
        finally:
            self._changed()

    def add(self, *addons) -> None:
        super().add(*addons)
        self._changed()  # register's did not see the chain hold the addon

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
            groups = table[event.name] = tuple(
                g for g in (self._group(a, event, sync) for a in self.chain) if g is not None)
        return groups

    def _group(self, addon, event: hooks.Hook, sync: bool) -> _Group | None:
        try:
            if hasattr(addon, "addons") or hasattr(type(addon), "__getattr__") or isinstance(addon, types.ModuleType):
                return _Dynamic(addon)
            funcs = tuple(func for _, func in self._iter_hooks(addon, event))
        except Exception:
            return addon
        if sync and any(inspect.iscoroutinefunction(f) for f in funcs):
            return addon
        return funcs or None

    def _live(self, addon, event: hooks.Hook):
        """The addon's handlers as mitmproxy's `invoke_addon` finds them, looked up now (a generator: a child added
        by a handler before the walk reaches it is offered the event, as there)."""
        for _, func in self._iter_hooks(addon, event):
            yield func

    async def trigger_event(self, event: hooks.Hook) -> None:
        args, chain = event.args(), self.chain
        groups, seen = self._groups(event, sync=False), len(chain)
        while True:
            for group in groups:
                try:
                    if type(group) is _Dynamic:
                        group = self._live(group.addon, event)
                    elif type(group) is not tuple:
                        with safecall():
                            await self.invoke_addon(group, event)
                        continue
                    for func in group:
                        res = func(*args)
                        if res is not None and inspect.isawaitable(res):
                            await res
                except exceptions.AddonHalt:
                    return
                except exceptions.OptionsError:
                    raise
                except Exception as e:
                    _logged(e, ("invoke_addon_sync", "invoke_addon", "_live"))
            if len(chain) == seen:
                return
            groups, seen = chain[seen:], len(chain)  # added by a handler: mitmproxy's loop over the chain goes on

    def trigger(self, event: hooks.Hook) -> None:
        args, chain = event.args(), self.chain
        groups, seen = self._groups(event, sync=True), len(chain)
        while True:
            for group in groups:
                try:
                    if type(group) is not tuple:  # synchronous events are few (configure, one per audit event)
                        with safecall():
                            self.invoke_addon_sync(group.addon if type(group) is _Dynamic else group, event)
                        continue
                    for func in group:
                        func(*args)
                except exceptions.AddonHalt:
                    return
                except exceptions.OptionsError:
                    raise
                except Exception as e:
                    _logged(e, ("invoke_addon",))
            if len(chain) == seen:
                return
            groups, seen = chain[seen:], len(chain)


class GatewayMaster(Master):
    """mitmproxy's Master dispatching through a HookTable."""

    def __init__(self, opts, **kwargs) -> None:
        super().__init__(opts, **kwargs)
        stock, self.addons = self.addons, HookTable(self)
        self.options.changed.disconnect(stock._configure_all)
        self.addons.chain, self.addons.lookup = stock.chain, stock.lookup
