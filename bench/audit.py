"""Audit benchmark: sustained events per second into the embedded store, and the proxy's latency while the audit
writer is backlogged.

    python bench/audit.py [--events 100000] [--requests 300]

1. Throughput, side by side in one run: direct batched inserts into chdb (the ceiling) vs the gateway's writer
   (every event made durable in the SQLite spool, then shipped in batches), end to end until all are queryable.
2. Latency of real requests through the real gateway (subprocess, fake HTTPS upstream) while the audit store is
   healthy (embedded chdb), answers every insert with HTTP 500, or accepts connections and never answers: the
   last two keep the writer backlogged (spool growing) for the whole run. Ratios are to the healthy case; the
   gateway without audit is the reference for what auditing costs at all.
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.audit import AuditEvent
from storage.store import Store
from storage.writer import AuditWriter


def sample_events(n: int) -> list[AuditEvent]:
    prompt = "[system] You are terse.\n[user] " + "Summarise the quarterly numbers for the board. " * 8
    out = []
    for i in range(n):
        e = AuditEvent(user=f"user{i % 50}", groups=["eng"], client_addr=f"10.0.{i % 7}.{i % 250}",
                       host="api.openai.com", method="POST", path="/v1/chat/completions", service="openai",
                       category="api", operation="chat.completions", model="gpt-4o", prompt=prompt,
                       completion="The numbers are fine.", prompt_sha256=f"{i:064x}", input_tokens=120,
                       output_tokens=9, request_bytes=900, response_bytes=400, status=200, latency_ms=321.0)
        out.append(e)
    return out


def throughput(n: int, folder: Path) -> None:
    events = sample_events(n)
    store = Store.open(f"chdb://{folder / 'audit'}")
    try:
        t = time.perf_counter()
        for i in range(0, n, 10_000):
            store.insert_events(events[i:i + 10_000])
        direct = n / (time.perf_counter() - t)

        fresh = sample_events(n)
        writer = AuditWriter(folder / "spool.sqlite", store=store, batch_size=10_000, flush_interval=0.2)
        t = time.perf_counter()
        for i in range(0, n, 20_000):  # a producer that respects the bounded queue
            futures = [writer.submit(e) for e in fresh[i:i + 20_000]]
            futures[-1].result(60)
        accepted = n / (time.perf_counter() - t)
        assert writer.flush(600), "writer did not drain"
        end_to_end = n / (time.perf_counter() - t)
        status = writer.status()
        writer.close()
        total = store.query("SELECT count() FROM events FINAL", {})[1][0][0]
    finally:
        store.close()
    print(f"\n1. Sustained audit events into the embedded store ({n:,} events, 10k-row batches)")
    print(f"   direct Store.insert_events (no spool):     {direct:>10,.0f} events/s")
    print(f"   AuditWriter accepted (durable in spool):   {accepted:>10,.0f} events/s")
    print(f"   AuditWriter end to end (in ClickHouse):    {end_to_end:>10,.0f} events/s   "
          f"ratio to direct {end_to_end / direct:.2f}")
    print(f"   rows readable: {total:,} (expected {2 * n:,}); dropped {status['dropped']}, "
          f"failures {status['failures']}")


class Failing500(http.server.ThreadingHTTPServer):
    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _fail(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(500)
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST = _fail

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class BlackHole:
    """Accepts connections and never answers: a ClickHouse that is hung."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)


def latency(requests: int, folder: Path) -> None:
    import httpx2

    from tests.conftest import AI_HOSTS
    from tests.support.gateway import GatewayProcess
    from tests.support.upstream import FakeUpstream, Reply, TestCA

    ca = TestCA(folder / "testca")
    upstream = FakeUpstream(ca, AI_HOSTS)
    body = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
    upstream.route("/v1/chat/completions", lambda rec: Reply(body=body))
    failing, hole = Failing500(), BlackHole()
    scenarios = [("healthy (embedded chdb)", []),
                 ("audit off (reference)", ["--set", "gateway_audit="]),
                 ("store answers 500", ["--audit", f"http://default@127.0.0.1:{failing.server_address[1]}/x"]),
                 ("store hangs (no answer)", ["--audit", f"http://default@127.0.0.1:{hole.port}/x"])]
    gateways: dict[str, GatewayProcess] = {}
    results: dict[str, tuple[list[float], dict | None]] = {}
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "ping " * 50}]}
    try:
        for i, (name, args) in enumerate(scenarios):
            gateways[name] = GatewayProcess(folder / f"gateway{i}", {h: upstream.port for h in AI_HOSTS},
                                            ca.ca_pem, extra_args=args)
        clients = {name: httpx2.Client(proxy=gw.proxy_url, timeout=30,
                                       verify=ssl.create_default_context(cafile=str(gw.ca)))
                   for name, gw in gateways.items()}
        for client in clients.values():  # warm-up: TLS, certificate forging, imports
            for _ in range(20):
                client.post("https://api.openai.com/v1/chat/completions", json=payload).raise_for_status()
        times: dict[str, list[float]] = {name: [] for name in gateways}
        for _ in range(requests):  # interleaved, so load from elsewhere on the machine hits every case alike
            for name, client in clients.items():
                t = time.perf_counter()
                client.post("https://api.openai.com/v1/chat/completions", json=payload).raise_for_status()
                times[name].append((time.perf_counter() - t) * 1000)
        for name, gw in gateways.items():
            reply = gw.gateway_cli("audit", "status", "--format", "json", check=False)
            results[name] = (times[name], json.loads(reply.stdout) if reply.returncode == 0 else None)
    finally:
        for gw in gateways.values():
            gw.stop()
    upstream.close()
    failing.shutdown()
    print(f"\n2. Proxy latency while the audit writer is backlogged ({requests} sequential requests each, "
          "interleaved across the gateways)")
    base = statistics.median(results[scenarios[0][0]][0])
    print(f"   {'audit store':<26}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'p50 ratio':>11}  writer at the end")
    for name, (times, status) in results.items():
        q = statistics.quantiles(times, n=100)
        writer = (f"spooled {status['spooled']}, written {status['written']}, failures {status['failures']}"
                  if status else "-")
        print(f"   {name:<26}{q[49]:>8.1f}{q[94]:>8.1f}{q[98]:>8.1f}{q[49] / base:>11.2f}  {writer}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        throughput(args.events, Path(tmp))
        latency(args.requests, Path(tmp))


if __name__ == "__main__":
    main()
