"""Admission on real mitmproxy flows: a bound on the AI request bodies held at once, ordinary prompts always in."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from mitmproxy.exceptions import OptionsError
from mitmproxy.test import taddons, tflow

from addons.admission import SMALL_BYTES, Admission
from core.catalog import Service
from core.interaction import KEY, Interaction
from tests.conftest import own_gateway, wait_for_events

MIB = 1 << 20


def ai_flow(size: int | None, client=None):
    """An AI request whose body is `size` bytes, announced by Content-Length (None: chunked, length unknown)."""
    f = tflow.tflow(client_conn=client) if client is not None else tflow.tflow()
    f.request.content = b"x" * (3 * MIB if size is None else size)  # (sets Content-Length)
    if size is None:
        del f.request.headers["content-length"]
    f.metadata[KEY] = Interaction(service=Service("openai", "OpenAI API", "OpenAI", "api"), client_addr="10.0.0.1",
                                  host="api.openai.com", method="POST", path="/v1/files")
    return f


def test_large_requests_wait_their_turn_and_ordinary_prompts_always_pass():
    admission = Admission()
    with taddons.context(admission) as tctx:
        tctx.configure(admission, gateway_request_budget="5m")
        first, second, prompt = ai_flow(3 * MIB), ai_flow(3 * MIB), ai_flow(SMALL_BYTES - 1)
        for f in (first, second, prompt):
            admission.requestheaders(f)
        assert first.response is None and prompt.response is None  # a prompt is let in over the budget
        refused = second.response
        assert refused is not None and refused.status_code == 503 and refused.headers["retry-after"] == "5"
        it = second.metadata[KEY]
        assert json.loads(refused.content)["error"]["code"] == "gateway_busy"
        assert it.event_id in refused.content.decode() and refused.headers["x-ai-gateway-reference"] == it.event_id
        assert it.decision == "block" and it.reason.startswith("refused: the gateway already holds 3 MiB")
        assert it.request_bytes == 3 * MIB
        # mitmproxy still reads a refused body: it is held, and counted, until its flow ends
        assert admission.total == 7 * MIB - 1
        for f in (first, second):
            admission.response(f)
        again = ai_flow(4 * MIB)
        admission.requestheaders(again)
        assert again.response is None and admission.total == 5 * MIB - 1


def test_past_twice_the_budget_a_large_request_is_cut_off_at_its_headers():
    admission = Admission()
    with taddons.context(admission) as tctx:
        tctx.configure(admission, gateway_request_budget="5m")
        flows = [ai_flow(4 * MIB) for _ in range(3)]
        for f in flows:
            admission.requestheaders(f)
        admitted, refused, cut = flows
        assert admitted.response is None and refused.response.status_code == 503
        assert cut.error is not None and cut.response is None  # killed: its body is never read
        assert "cut off at its headers" in cut.metadata[KEY].reason
        admission.error(cut)
        assert admission.total == 8 * MIB


def test_a_body_of_unknown_length_is_judged_once_read():
    admission = Admission()
    with taddons.context(admission) as tctx:
        tctx.configure(admission, gateway_request_budget="5m")
        held, chunked = ai_flow(3 * MIB), ai_flow(None)
        admission.requestheaders(held)
        admission.requestheaders(chunked)
        assert chunked.response is None  # nothing known yet
        admission.request(chunked)
        assert chunked.response is not None and chunked.response.status_code == 503  # read already: answered
        admission.request(held)  # already admitted by its Content-Length: not counted twice
        assert admission.total == 6 * MIB


def test_a_closed_connection_gives_back_what_its_flows_held_and_zero_means_no_bound():
    admission = Admission()
    with taddons.context(admission) as tctx:
        tctx.configure(admission, gateway_request_budget="5m")
        f = ai_flow(4 * MIB)
        admission.requestheaders(f)
        assert admission.total == 4 * MIB
        admission.client_disconnected(f.client_conn)  # no response and no error hook ever came
        assert admission.total == 0 and admission.held == {}
        tctx.configure(admission, gateway_request_budget="0")
        flows = [ai_flow(40 * MIB) for _ in range(3)]
        for g in flows:
            admission.requestheaders(g)
        assert all(g.response is None for g in flows)


def test_a_compressed_body_is_held_at_its_decoded_size():
    admission = Admission()
    with taddons.context(admission) as tctx:
        tctx.configure(admission, gateway_request_budget="5m")
        first, second = ai_flow(100_000), ai_flow(100_000)
        for f in (first, second):
            admission.requestheaders(f)
        assert admission.decoded(first, first.metadata[KEY], 4 * MIB) and admission.total == 4 * MIB + 100_000
        assert admission.decoded(first, first.metadata[KEY], 1000)  # never less than what is held
        assert not admission.decoded(second, second.metadata[KEY], 4 * MIB)
        assert second.response.status_code == 503 and admission.total == 8 * MIB
        admission.response(first)
        admission.response(second)
        assert admission.total == 0


def test_the_budget_must_be_a_size():
    admission = Admission()
    with taddons.context(admission) as tctx:
        with pytest.raises(OptionsError, match="gateway_request_budget must be a size"):
            tctx.configure(admission, gateway_request_budget="lots")


# --- through the gateway ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def budget_gateway(tmp_path_factory, upstream, test_ca):
    """The shipped rules, and room for 3 MiB of AI request bodies at once."""
    with own_gateway(tmp_path_factory, upstream, test_ca, "budget-gateway", "gateway_request_budget=3m") as gw:
        yield gw


def test_an_upload_over_the_budget_is_refused_with_a_retry_and_audited_while_prompts_go_on(
        budget_gateway, upstream, marker):
    """One 2 MiB embedding request is held upstream; a second one does not fit and gets 503 with Retry-After
    through the openai SDK, audited as refused; a small prompt passes meanwhile; once the first has ended, a large
    request fits again."""
    import threading

    import openai

    from tests.test_e2e_dlp import _http, openai_client
    from tests.support.upstream import Reply

    release = threading.Event()

    def embeddings(rec) -> Reply:
        if f"{marker}-held".encode() in rec.body:
            release.wait(30)
        return Reply(body=json.dumps({"object": "list", "model": "text-embedding-3-small", "usage": {
            "prompt_tokens": 1, "total_tokens": 1}, "data": [{"object": "embedding", "index": 0,
                                                              "embedding": [0.1, 0.2]}]}).encode())

    upstream.route("/v1/embeddings", embeddings)
    client = openai_client(budget_gateway)
    document = "The quarterly figures were reviewed by the board in detail. " * (2 * MIB // 60)

    held = threading.Thread(target=lambda: client.embeddings.create(model="text-embedding-3-small",
                                                                     input=f"{marker}-held {document}"))
    held.start()
    try:
        deadline = time.monotonic() + 60
        while not [r for r in upstream.requests if f"{marker}-held".encode() in r.body]:
            assert time.monotonic() < deadline, budget_gateway.output()[-3000:]
            time.sleep(0.1)
        with pytest.raises(openai.InternalServerError) as e:
            client.embeddings.create(model="text-embedding-3-small", input=f"{marker}-refused {document}")
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "5"
        assert "too many large requests" in str(e.value)
        assert client.embeddings.create(model="text-embedding-3-small", input=f"{marker}-small").data
        # small on the wire, 2 MiB decoded: held at what it costs once decoded, so refused too
        packed = gzip.compress(json.dumps({"model": "text-embedding-3-small",
                                           "input": f"{marker}-packed {document}"}).encode())
        assert len(packed) < SMALL_BYTES
        answer = _http(budget_gateway).post("https://api.openai.com/v1/embeddings", content=packed, headers={
            "content-type": "application/json", "content-encoding": "gzip", "authorization": "Bearer sk-test"})
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "gateway_busy"
    finally:
        release.set()
        held.join(60)
    assert client.embeddings.create(model="text-embedding-3-small", input=f"{marker}-after {document}").data
    assert not [r for r in upstream.requests if f"{marker}-refused".encode() in r.body]
    refused = wait_for_events(budget_gateway, lambda ev: ev["status"] == 503, count=2)
    assert all(ev["decision"] == "block" and "refused: the gateway already holds 2 MiB" in ev["reason"]
               for ev in refused)
    wait_for_events(budget_gateway, lambda ev: ev["status"] == 200, count=3)
