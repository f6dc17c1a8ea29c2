"""Does the gateway stream? Time to first and to last chunk of an SSE answer, direct and through each proxy.

The fake upstream sends an OpenAI chat completion stream of --chunks SSE frames, --interval apart (50 x 10 ms
by default: about half a second from first to last). A proxy that passes the stream through delivers the first
chunk within milliseconds and every chunk on its own; a buffering proxy delivers everything at the end. Bare
mitmdump buffers by default (docs/stack.md), so it is measured twice: as shipped, which shows what buffering looks
like, and with `stream_large_bodies=1`, the streaming floor the gateway is compared with. Targets take turns in
rounds. Exit status 1 if the gateway's first chunk did not arrive before half the stream had been sent.

    python bench/stream.py
    python bench/stream.py --clients 10 --chunks 100 --interval 0.005
    python bench/stream.py --prompt pii     # the DLP workers scan it while it is sent (a monitored entity)
    python bench/stream.py --prompt token   # the prompt waits for the workers (the enforced secrets rule)
    python bench/stream.py --tools          # the answer calls a tool after its text, under a tool rule
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository is not on the path

from bench._common import (PROMPT_TAILS, Mitmdump, Target, Upstream, Workspace, audited, chat_body,  # noqa: E402
                           connect, exchange, interleaved, machine_line, median, median_difference, percentile, ratio,
                           checkout, request_bytes, start_gateway)


@dataclass
class Streams:
    """Per stream: seconds from sending the request to the first and to the last chunk, pieces received, gaps."""
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    pieces: list[int] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def measure(target: Target, out: Streams, *, clients: int, per_client: int, prompt: str, tools: bool
                  ) -> None:
    ctx = target.context()
    warm_request = request_bytes(chat_body())
    nonces = itertools.count()
    conns = await asyncio.gather(*(connect(target, ctx) for _ in range(clients)))
    await asyncio.gather(*(exchange(c, warm_request) for c in conns))  # opens the proxies' upstream connections

    async def client(conn) -> None:
        for _ in range(per_client):
            stream_request = request_bytes(chat_body(stream=True, prompt=prompt, nonce=next(nonces), tools=tools))
            arrivals: list[float] = []
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(30):
                    status = await exchange(conn, stream_request, lambda _: arrivals.append(time.perf_counter()))
            except (OSError, EOFError, TimeoutError, ValueError) as e:
                out.errors.append(f"{type(e).__name__}: {e}")
                break
            if status != 200 or not arrivals:
                out.errors.append(f"HTTP {status}, {len(arrivals)} chunks")
                continue
            out.first.append(arrivals[0] - t0)
            out.last.append(arrivals[-1] - t0)
            out.pieces.append(len(arrivals))
            out.gaps.extend(b - a for a, b in zip(arrivals, arrivals[1:]))
        conn.close()

    await asyncio.gather(*(client(c) for c in conns))


async def run_rounds(targets: list[Target], results: dict[str, Streams], rounds: int, **load) -> None:
    for target in interleaved(targets, rounds):
        await measure(target, results[target.name], **load)


def report(targets: list[Target], results: dict[str, Streams], chunks: int, baseline: str | None = None) -> bool:
    print(f"{'target':<31} {'streams':>7} {'first chunk p50/p99 ms':>22} {'last chunk p50/p99 ms':>21} "
          f"{'pieces p50':>10} {'gap p50 ms':>10}")
    for t in targets:
        s = results[t.name]
        ms = lambda values, q: percentile(values, q) * 1000  # noqa: E731
        print(f"{t.name:<31} {len(s.first):>7} {ms(s.first, 50):>12.1f} / {ms(s.first, 99):>6.1f} "
              f"{ms(s.last, 50):>11.1f} / {ms(s.last, 99):>6.1f} {median(s.pieces):>10.0f} "
              f"{median(s.gaps) * 1000 if s.gaps else 0:>10.1f}")
        for e in sorted(set(s.errors)):
            print(f"  error ({s.errors.count(e)}x): {e}")
    gw, md = results["gateway"], results["mitmdump stream_large_bodies=1"]
    first, last = median(gw.first), median(gw.last)
    if gw.first and md.first:
        print(f"gateway - mitmdump stream_large_bodies=1, p50: first chunk {difference(gw.first, md.first)}, "
              f"last chunk {difference(gw.last, md.last)}")
    for name in (f"gateway at {baseline}", UNGUARDED):
        base = results.get(name)
        if base is not None and gw.first and base.first:
            print(f"gateway - {name}, p50: first chunk {difference(gw.first, base.first)}, last chunk "
                  f"{difference(gw.last, base.last)}")
    streams = bool(gw.first) and first < last / 2 and median(gw.pieces) >= chunks * 0.8
    verdict = "does not buffer" if streams else "BUFFERS"
    print(f"gateway {verdict}: first chunk after {first * 1000:.1f} ms of a {last * 1000:.0f} ms answer, "
          f"{median(gw.pieces):.0f} of {chunks} chunks arrived separately")
    return streams


#: With --tools: a rule on the tool the bench offers, whose condition the call in the answer is checked against
#: (and passes: `ls`), so the gateway holds the call's events until it is complete and lets them go unchanged.
TOOL_RULE = """
  - id: bench-no-destructive-commands
    when: {tools: {names: [run_command], args: {command: "re:rm\\\\s+-rf"}}}
    action: block
"""


UNGUARDED = "gateway, no tool rule"  # --tools: the same gateway on the shipped rules, so no answer is checked


def tool_rules(into: Path, tree: Path = Path(__file__).resolve().parents[1]) -> Path:
    """The rules folder shipped in `tree` (this one, or a baseline's) with TOOL_RULE at the end of its policy."""
    shutil.copytree(tree / "rules", into)
    with open(into / "policy.yaml", "a") as f:
        f.write(TOOL_RULE)
    return into


def difference(gateway: list[float], mitmdump: list[float]) -> str:
    """The gateway's median minus mitmdump's, its ratio, its 95% interval, and whether it is more than noise."""
    diff, lo, hi = median_difference(gateway, mitmdump)
    verdict = "later" if lo > 0 else "sooner" if hi < 0 else "not told apart from noise"
    return (f"{diff * 1000:+.2f} ms ({ratio(median(gateway), median(mitmdump))}; 95% interval {lo * 1000:+.2f} to "
            f"{hi * 1000:+.2f} ms: {verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=50, help="SSE frames per answer, at least 3 (50)")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between frames (0.01)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent streams (4)")
    parser.add_argument("--per-client", type=int, default=3, help="streams per client per round (3)")
    parser.add_argument("--prompt", choices=sorted(PROMPT_TAILS), default="clean",
                        help="clean: nothing for DLP to find (the common case); pii: an e-mail address, which the "
                             "DLP workers scan while the prompt is sent (only a monitored rule looks at it); token: a "
                             "word the enforced secrets rule must rule out, so the prompt waits for the scan (clean)")
    parser.add_argument("--tools", action="store_true",
                        help="the request offers a tool and the answer calls it after its text (the last two word "
                             "chunks become the call's pieces); the gateway runs with a rule on that tool, and the "
                             f"row '{UNGUARDED}' is the same gateway without it (no answer checked)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each measures every target once (2)")
    parser.add_argument("--gateway-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a gateway option, e.g. gateway_dlp=false to see what DLP costs (repeatable)")
    parser.add_argument("--baseline", metavar="REV", help="also measure the gateway of this commit (e.g. HEAD~3)")
    args = parser.parse_args()
    if args.chunks < (5 if args.tools else 3):
        parser.error(f"--chunks must be at least {5 if args.tools else 3}")
    print(f"bench/stream.py: {args.clients} concurrent streams x {args.per_client} x {args.rounds} rounds per target, "
          f"{args.chunks} SSE chunks {args.interval * 1000:g} ms apart, {args.prompt} prompt"
          f"{', a tool call after the text, under a tool rule' if args.tools else ''}"
          f"{''.join(f', --set {o}' for o in args.gateway_set)}")
    print(machine_line())
    with Workspace() as ws:
        upstream = ws.keep(Upstream(ws.dir / "upstream", chunks=args.chunks, interval=args.interval))
        buffering = ws.keep(Mitmdump(ws.dir / "mitmdump-default", upstream))
        streaming = ws.keep(Mitmdump(ws.dir / "mitmdump-stream", upstream, sets=["stream_large_bodies=1"]))
        rules = tool_rules(ws.dir / "rules") if args.tools else None
        gateway = ws.keep(start_gateway(ws.dir / "gateway", upstream, args.gateway_set, rules=rules))
        targets = [Target("direct", upstream.port, upstream.ca, via_proxy=False),
                   Target("mitmdump (default: buffers)", buffering.port, buffering.ca, via_proxy=True),
                   Target("mitmdump stream_large_bodies=1", streaming.port, streaming.ca, via_proxy=True),
                   Target("gateway", gateway.port, gateway.ca, via_proxy=True)]
        unguarded = None
        if args.tools:
            unguarded = ws.keep(start_gateway(ws.dir / "unguarded", upstream, args.gateway_set))
            targets.append(Target(UNGUARDED, unguarded.port, unguarded.ca, via_proxy=True))
        base = None
        if args.baseline:
            tree = checkout(args.baseline, ws.dir / "baseline-tree")
            base = ws.keep(start_gateway(ws.dir / "baseline", upstream, args.gateway_set, source=tree,
                                         rules=tool_rules(ws.dir / "baseline-rules", tree) if args.tools else None))
            targets.append(Target(f"gateway at {args.baseline}", base.port, base.ca, via_proxy=True))
        results = {t.name: Streams() for t in targets}
        asyncio.run(run_rounds(targets, results, args.rounds, clients=args.clients, per_client=args.per_client,
                               prompt=args.prompt, tools=args.tools))
        # the usage block comes in the next-to-last frame: counted only if the whole stream was reassembled
        events, problem = audited(gateway, f"stream AND output_tokens = {args.chunks - 3}")
        for other in (base, unguarded):
            if other is not None:
                audited(other)
    ok = report(targets, results, args.chunks, args.baseline)
    sent = len(results["gateway"].first)
    ok = ok and events == sent
    print(f"gateway audit: {events} streamed events with their usage reassembled for {sent} streams"
          f"{'' if events == sent else '  <- MISMATCH'}{f' ({problem})' if problem else ''}")
    print(machine_line().replace("machine", "after"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
