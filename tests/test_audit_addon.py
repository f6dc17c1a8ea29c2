"""The audit addon in mitmproxy's test context: options are validated, and an interaction whose data breaks the
event builder is still recorded (with what is known and why it is incomplete)."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy.exceptions import OptionsError
from mitmproxy.test import taddons, tflow

from addons.audit import Audit
from core.catalog import Service
from core.interaction import KEY, Interaction


def interaction(**kw) -> Interaction:
    return Interaction(service=Service("openai", "OpenAI", "OpenAI", "api"), client_addr="10.1.1.1",
                       host="api.openai.com", method="POST", path="/v1/chat/completions", user="erin", **kw)


@pytest.mark.parametrize("options, message", [
    ({"gateway_text_ttl_days": 0}, "at least 1"),
    ({"gateway_text_ttl_days": 500}, "cannot be longer than gateway_metadata_ttl_days"),
    ({"gateway_capture": "everything"}, "gateway_capture must be one of metadata, redacted, full"),
    ({"gateway_audit_flush_interval": "0"}, "between 0.05 and 60 seconds, not 0"),
    ({"gateway_audit_flush_interval": "600"}, "between 0.05 and 60 seconds, not 600"),
    ({"gateway_audit_flush_interval": "nan"}, "between 0.05 and 60 seconds, not nan"),
    ({"gateway_audit_flush_interval": "2s"}, "must be a number of seconds, not '2s'"),
    ({"gateway_audit": "http://u@h:8123/db", "gateway_audit_password_file": "/nonexistent/pw"},
     "cannot read audit password file"),
])
def test_bad_options_are_refused(options, message):
    with taddons.context(Audit()) as tctx, pytest.raises(OptionsError, match=message):
        tctx.options.update(**options)


def test_broken_interaction_is_still_audited(tmp_path):
    asyncio.run(broken_interaction_is_still_audited(tmp_path))


async def broken_interaction_is_still_audited(tmp_path):
    audit = Audit()
    with taddons.context(audit) as tctx:
        tctx.configure(audit, gateway_audit=f"chdb://{tmp_path / 'audit'}",
                       gateway_audit_spool=str(tmp_path / "spool.sqlite"))
        try:
            flow = tflow.tflow(resp=True)
            it = interaction(findings=[object()])  # a finding without entity/part: to_event cannot use it
            flow.metadata[KEY] = it
            await audit.response(flow)
            await audit.error(flow)  # the second end of the same flow writes nothing more
            assert audit.writer.flush(20)
            _, rows = audit.store.query(
                "SELECT user, service, capture, inspection, error FROM events FINAL WHERE event_id = {id:UUID}",
                {"id": it.event_id})
            [(user, service, capture, inspection, error)] = rows
            assert (user, service, capture, inspection) == ("erin", "openai", "metadata", "errored")
            assert error.startswith("audit event incomplete: AttributeError")
            assert audit.writer.status()["written"] == 1
        finally:
            audit.done()


@pytest.mark.parametrize("store_assets", [False, True])
def test_static_files_of_an_app_page_are_left_out_unless_asked_for_or_decided(tmp_path, store_assets):
    asyncio.run(static_files(tmp_path, store_assets))


async def static_files(tmp_path, store_assets: bool):
    audit = Audit()
    with taddons.context(audit) as tctx:
        tctx.configure(audit, gateway_audit=f"chdb://{tmp_path / 'audit'}",
                       gateway_audit_spool=str(tmp_path / "spool.sqlite"), gateway_audit_assets=store_assets)
        try:
            flows = {}
            for name, decision in (("allowed", "allow"), ("blocked", "block"), ("prompt", "allow")):
                flow = tflow.tflow(resp=True)
                it = interaction(decision=decision)
                if name != "prompt":
                    it.exchange.operation = "asset"
                flow.metadata[KEY] = it
                flows[name] = it
                await audit.response(flow)
            assert audit.writer.flush(20)
            _, rows = audit.store.query("SELECT event_id, operation FROM events FINAL", {})
            stored = {str(event_id) for event_id, _ in rows}
        finally:
            audit.done()
    assert (flows["allowed"].event_id in stored) == store_assets
    assert flows["blocked"].event_id in stored and flows["prompt"].event_id in stored


def test_a_304_counts_as_a_static_file_only_when_its_name_says_so():
    from addons.extract import _is_asset

    def it(path: str) -> Interaction:
        x = Interaction(service=Service("chatgpt", "ChatGPT", "ChatGPT", "chat"), client_addr="10.1.1.1",
                        host="chatgpt.com", method="GET", path=path)
        x.exchange.parsed, x.exchange.operation = False, "unknown"
        return x

    request = tflow.tflow().request
    assert _is_asset(it("/static/app.3f2a.js"), request, 304, "")
    assert not _is_asset(it("/backend-api/search"), request, 304, "")  # a revalidated API call may carry a prompt
    assert _is_asset(it("/backend-api/avatar"), request, 200, "image/png")


def test_store_options_set_again_to_the_same_values_keep_the_store_open(tmp_path):
    """A process of several is told its role twice at start: the store stays open (before, it was closed and opened
    again, and 'audit store: ...' logged twice); a value that changes opens it anew."""
    audit = Audit()
    with taddons.context(audit) as tctx:
        store = dict(gateway_audit=f"chdb://{tmp_path / 'audit'}", gateway_audit_spool=str(tmp_path / "spool.sqlite"))
        tctx.configure(audit, **store)
        try:
            writer = audit.writer
            tctx.configure(audit, **store, gateway_audit_role="ship")
            assert audit.writer is not writer  # another role: another writer
            assert audit.writer.flush_interval == 0.5
            tctx.options.set("gateway_audit_flush_interval=2")  # as `gateway run --set` gives it
            assert audit.writer.flush_interval == 2.0  # ships every 2 s from now on
            writer = audit.writer
            tctx.options.update(**store, gateway_audit_role="ship", gateway_audit_flush_interval="2")
            audit.configure({"gateway_audit_role", "gateway_audit"})  # as mitmproxy calls it for a repeated update
            assert audit.writer is writer
        finally:
            audit.done()
