"""What the gateway costs: requests/s and latency direct, through bare mitmdump and through the gateway, one run.

N keep-alive clients each send OpenAI chat completion POSTs (about 1 KB of JSON) as fast as answers come back,
for a bounded time and a bounded number of requests per target. The three targets take turns in rounds (the order
rotates), so load from elsewhere on the machine hurts them alike; the ratios of the gateway to bare mitmdump (same
mitmproxy, same routing addon, same upstream trust) are the number that matters.

"proxy CPU" is the proxy's share of one core during the windows (near 100%: the proxy is the bottleneck, as it
should be) and "ms/req" its CPU time per request (its child processes included), the least noisy measure of its
cost on a shared machine. "client CPU" and "upstream CPU" show that the harness is not what limits a proxied row;
"others CPU" is what the rest of the machine took meanwhile (of 200% on two cores): a row measured while it was
high is not a clean number. With `--workers N` it also measures N bare mitmdumps on one port (row "mitmdump xN",
SO_REUSEPORT as the gateway does it) and prints, for both, the most N processes could serve on this machine (the
cores the client and the upstream left, at one process's CPU per request): on 2 cores that share the load, the
bound, not the proxy, is what a ratio near it measures, and bare mitmproxy's own ratio is the ceiling. The gateway
must have audited every request it was sent (counted in its store afterwards), or its row measures a broken gateway
and the exit status is 1.

    python bench/proxy.py                      # defaults: 20 clients, 3 rounds of 6 s per target
    python bench/proxy.py --clients 1          # unloaded latency
    python bench/proxy.py --baseline HEAD~5    # and the gateway of an earlier commit, in the same rounds
    python bench/proxy.py --workers 2          # and `gateway run --workers 2` ("gateway x2") and 2 mitmdumps
    python bench/proxy.py --workers 2 --set gateway_audit_flush_interval=2   # the same with an option set
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository is not on the path

from bench._common import (Mitmdump, Tally, Target, Upstream, Workspace, audited, chat_body,  # noqa: E402
                           connect, cpu_seconds, exchange, interleaved, machine_busy, machine_line, percentile, ratio,
                           checkout, request_bytes, start_gateway)


async def measure(target: Target, tally: Tally, upstream_pid: int, *, clients: int, seconds: float, limit: int,
                  body: bytes) -> None:
    """One round for one target: connect and warm up every client, then measure a window of closed-loop load."""
    ctx = target.context()
    request = request_bytes(body)
    conns = await asyncio.gather(*(connect(target, ctx) for _ in range(clients)))
    for _ in range(2):  # the first request through a proxy also opens its upstream connection: not measured
        await asyncio.gather(*(exchange(c, request) for c in conns))
    tally.sent += 2 * clients
    remaining = limit

    async def client(conn) -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            tally.sent += 1
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(30):
                    status = await exchange(conn, request)
            except (OSError, EOFError, TimeoutError, ValueError) as e:  # IncompleteReadError is an EOFError
                tally.error(e)
                conn.close()
                conn = await connect(target, ctx)
                continue
            if status == 200:
                tally.latencies.append(time.perf_counter() - t0)
            else:
                tally.error(RuntimeError(f"HTTP {status}"))
        conn.close()

    proxy0, upstream0, client0, busy0 = (cpu_seconds(target.pid), cpu_seconds(upstream_pid), _own_cpu(),
                                         machine_busy())
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(client(c) for c in conns))
    tally.seconds += time.perf_counter() - start
    proxy, upstream, own = (cpu_seconds(target.pid) - proxy0, cpu_seconds(upstream_pid) - upstream0,
                            _own_cpu() - client0)
    tally.cpu += proxy
    tally.upstream_cpu += upstream
    tally.client_cpu += own
    tally.others_cpu += max(machine_busy() - busy0 - proxy - upstream - own, 0.0)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def run_rounds(targets: list[Target], tallies: dict[str, Tally], upstream_pid: int, rounds: int,
                     **load) -> None:
    for target in interleaved(targets, rounds):
        await measure(target, tallies[target.name], upstream_pid, **load)


def report(targets: list[Target], tallies: dict[str, Tally], baseline: str | None = None) -> None:
    print(f"{'target':<12} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'proxy CPU':>9} {'ms/req':>6} {'client CPU':>10} {'upstream CPU':>12} {'others CPU':>10}")
    rows = {}
    for t in targets:
        tally = tallies[t.name]
        n = len(tally.latencies)
        rows[t.name] = row = dict(rps=n / tally.seconds if tally.seconds else 0.0,
                                  p50=percentile(tally.latencies, 50) * 1000,
                                  p99=percentile(tally.latencies, 99) * 1000,
                                  cpu=tally.cpu / n * 1000 if n and t.pid else float("nan"))
        cpu, per_request = (f"{tally.cpu / tally.seconds:.0%}", f"{row['cpu']:.2f}") if t.pid else ("-", "-")
        print(f"{t.name:<12} {n:>8} {tally.errors:>6} {row['rps']:>8.0f} {row['p50']:>7.1f} {row['p99']:>7.1f} "
              f"{cpu:>9} {per_request:>6} {tally.client_cpu / tally.seconds:>10.0%} "
              f"{tally.upstream_cpu / tally.seconds:>12.0%} {tally.others_cpu / tally.seconds:>10.0%}")
        if tally.first_error:
            print(f"  first error: {tally.first_error}")
    gw, md, direct = rows["gateway"], rows["mitmdump"], rows["direct"]
    print(f"gateway / mitmdump: req/s {ratio(gw['rps'], md['rps'])}, p50 {ratio(gw['p50'], md['p50'])}, "
          f"p99 {ratio(gw['p99'], md['p99'])}, proxy CPU per request {ratio(gw['cpu'], md['cpu'])}")
    for name, row in rows.items():
        proxy, several_of, _ = name.partition(" x")
        if not several_of:
            continue
        single, one = rows[proxy], tallies[proxy]
        print(f"{name} / {proxy}: req/s {ratio(row['rps'], single['rps'])}, p50 {ratio(row['p50'], single['p50'])}, "
              f"proxy CPU per request {ratio(row['cpu'], single['cpu'])}")
        # what the machine leaves them: its cores less what the client and the upstream took meanwhile, at the CPU
        # per request one process needs, against the cores that one process kept busy
        several = tallies[name]
        left = (os.cpu_count() or 1) - (several.client_cpu + several.upstream_cpu) / several.seconds
        if one.cpu and one.seconds:
            print(f"  on this machine at most {ratio(left / (single['cpu'] / 1000), single['rps'])} one process: "
                  f"{left:.2f} cores left by the client and the upstream, one process keeping "
                  f"{one.cpu / one.seconds:.2f} cores busy")
    if "baseline" in rows:
        base = rows["baseline"]
        print(f"gateway / gateway at {baseline}: req/s {ratio(gw['rps'], base['rps'])}, p50 "
              f"{ratio(gw['p50'], base['p50'])}, proxy CPU per request {ratio(gw['cpu'], base['cpu'])}")
    print(f"direct ran {ratio(direct['rps'], max(gw['rps'], md['rps']))} the faster proxy's rate: "
          f"the client and the upstream are not what limits the proxied rows")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent keep-alive connections (default 20)")
    parser.add_argument("--seconds", type=float, default=6, help="measured seconds per target per round (6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every target once (3)")
    parser.add_argument("--requests", type=int, default=120000, help="at most this many per target (120000)")
    parser.add_argument("--body-size", type=int, default=1024, help="request body bytes (1024)")
    parser.add_argument("--baseline", metavar="REV", help="also measure the gateway of this commit (e.g. HEAD~3)")
    parser.add_argument("--workers", type=int, action="append", default=[], metavar="N",
                        help="also measure the gateway with N proxy processes (repeatable); the row 'gateway' has 1")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="a gateway option for every gateway row, as `gateway run --set` takes it (repeatable), "
                             "e.g. gateway_audit_flush_interval=2: what an option costs, on one and on N processes")
    args = parser.parse_args()
    body = chat_body(size=args.body_size)
    print(f"bench/proxy.py: {args.clients} keep-alive clients, {len(body)} B chat completion POSTs, "
          f"{args.rounds} rounds x {args.seconds:g} s per target (at most {args.requests} requests per target)")
    if args.sets:
        print(f"gateway options: {' '.join(args.sets)}")
    print(machine_line())
    with Workspace() as ws:
        upstream = ws.keep(Upstream(ws.dir / "upstream"))
        mitm = ws.keep(Mitmdump(ws.dir / "mitmdump", upstream))
        gateway = ws.keep(start_gateway(ws.dir / "gateway", upstream, sets=args.sets))
        others = []
        targets = [Target("direct", upstream.port, upstream.ca, via_proxy=False),
                   Target("mitmdump", mitm.port, mitm.ca, via_proxy=True, pid=mitm.proc.pid),
                   Target("gateway", gateway.port, gateway.ca, via_proxy=True, pid=gateway.proc.pid)]
        for n in args.workers:
            bare = ws.keep(Mitmdump(ws.dir / f"mitmdump-x{n}", upstream, processes=n))
            targets.append(Target(f"mitmdump x{n}", bare.port, bare.ca, via_proxy=True, pid=bare.proc.pid))
            several = ws.keep(start_gateway(ws.dir / f"gateway-x{n}", upstream, sets=args.sets, workers=n))
            targets.append(Target(f"gateway x{n}", several.port, several.ca, via_proxy=True, pid=several.proc.pid))
            others.append(several)
        base = None
        if args.baseline:
            base = ws.keep(start_gateway(ws.dir / "baseline", upstream, sets=args.sets,
                                         source=checkout(args.baseline, ws.dir / "baseline-tree")))
            targets.append(Target("baseline", base.port, base.ca, via_proxy=True, pid=base.proc.pid))
        tallies = {t.name: Tally() for t in targets}
        asyncio.run(run_rounds(targets, tallies, upstream.proc.pid, args.rounds, clients=args.clients,
                               seconds=args.seconds, limit=args.requests // args.rounds, body=body))
        events, problem = audited(gateway)
        for n, several in zip(args.workers, others):
            got, why = audited(several)
            if got != tallies[f"gateway x{n}"].sent:
                print(f"gateway x{n} audit: {got} events for {tallies[f'gateway x{n}'].sent} requests sent  <- "
                      f"MISMATCH{f' ({why})' if why else ''}")
        if base is not None:
            audited(base)
    report(targets, tallies, args.baseline)
    sent = tallies["gateway"].sent
    print(f"gateway audit: {events} events in the store for {sent} requests sent to the gateway"
          f"{'' if events == sent else '  <- MISMATCH: the gateway row does not measure a working gateway'}"
          f"{f' ({problem})' if problem else ''}")
    print(machine_line().replace("machine", "after"))
    return 0 if events == sent and all(t.latencies for t in tallies.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
