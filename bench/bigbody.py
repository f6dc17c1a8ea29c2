"""Do large uploads hold up everyone else? Small-request latency while other clients upload large bodies.

One client sends small chat completions back to back (1 KB, as in bench/proxy.py) while --uploads clients each
send one chat completion whose prompt is about --size MB, gzip-compressed on the wire by default (a 200 KB gzip
body that decodes to 60 MB: the shape of a compression-heavy upload, or of an attack on the proxy's event loop).
Bare mitmdump only relays the compressed bytes; the gateway must decode, parse, scan and audit all of it, which is
the point: that work must not stall the other connections (it runs in threads and worker processes, never on
the event loop for long). Reported per proxy: the small requests' latency before and during the uploads, the
uploads' own time, and the proxy process's peak memory (VmHWM). Exit status 1 if an upload failed or the gateway
did not audit every upload.

    python bench/bigbody.py
    python bench/bigbody.py --uploads 8 --size 30 --encoding identity
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository is not on the path

from bench._common import (HOST, PATH, Mitmdump, Target, Upstream, Workspace, audited, chat_body,  # noqa: E402
                           connect, exchange, machine_line, percentile, ratio, request_bytes, start_gateway)


@dataclass
class Result:
    before: list[float] = field(default_factory=list)  # small-request latencies, seconds, before the uploads
    during: list[float] = field(default_factory=list)  # ... while they were in flight
    uploads: list[float] = field(default_factory=list)  # seconds per upload
    statuses: list[int] = field(default_factory=list)
    peak_mb: float = 0.0


def upload_request(size_mb: float, encoding: str) -> bytes:
    filler = "Summarise the quarterly figures for the board in three bullet points. "
    text = filler * int(size_mb * 1_000_000 / len(filler))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()
    extra = ""
    if encoding == "gzip":
        body, extra = gzip.compress(body, 6), "Content-Encoding: gzip\r\n"
    return (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer sk-bench-not-a-key\r\n"
            f"Content-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def peak_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(target: Target, out: Result, upload: bytes, uploads: int) -> None:
    ctx = target.context()
    small = request_bytes(chat_body())
    conns = await asyncio.gather(*(connect(target, ctx) for _ in range(uploads + 1)))
    probe, uploaders = conns[0], conns[1:]
    await exchange(probe, small)
    phase: list[float] = out.before
    stop = asyncio.Event()

    async def probe_loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await exchange(probe, small)
            phase.append(time.perf_counter() - t0)
            await asyncio.sleep(0.005)

    async def one_upload(conn) -> None:
        t0 = time.perf_counter()
        try:
            out.statuses.append(await exchange(conn, upload))
        except (OSError, EOFError, ValueError) as e:
            print(f"  {target.name}: upload failed: {type(e).__name__}: {e}")
            out.statuses.append(0)
        out.uploads.append(time.perf_counter() - t0)

    prober = asyncio.create_task(probe_loop())
    await asyncio.sleep(1.0)
    phase = out.during
    await asyncio.gather(*(one_upload(c) for c in uploaders))
    stop.set()
    await prober
    for c in conns:
        c.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=4, help="concurrent large uploads (4)")
    parser.add_argument("--size", type=float, default=60, help="prompt size of each upload, MB (60)")
    parser.add_argument("--encoding", choices=["gzip", "identity"], default="gzip", help="on the wire (gzip)")
    args = parser.parse_args()
    upload = upload_request(args.size, args.encoding)
    print(f"bench/bigbody.py: {args.uploads} uploads of a {args.size:g} MB prompt ({len(upload) / 1e6:.1f} MB on "
          f"the wire, {args.encoding}) while one client sends 1 KB requests back to back")
    print(machine_line())
    with Workspace() as ws:
        upstream = ws.keep(Upstream(ws.dir / "upstream"))
        mitmdump = ws.keep(Mitmdump(ws.dir / "mitmdump", upstream))
        gateway = ws.keep(start_gateway(ws.dir / "gateway", upstream))
        targets = [Target("mitmdump", mitmdump.port, mitmdump.ca, via_proxy=True, pid=mitmdump.proc.pid),
                   Target("gateway", gateway.port, gateway.ca, via_proxy=True, pid=gateway.proc.pid)]
        results = {t.name: Result() for t in targets}
        for t in targets:
            asyncio.run(measure(t, results[t.name], upload, args.uploads))
            results[t.name].peak_mb = peak_mb(t.pid)
        events, problem = audited(gateway, f"request_bytes = {len(upload.partition(b'\r\n\r\n')[2])}")
    ms = lambda values, q: percentile(values, q) * 1000  # noqa: E731
    print(f"{'proxy':<9} {'small before p50/max ms':>23} {'small during p50/p99/max ms':>28} {'n':>5} "
          f"{'upload s (max)':>14} {'statuses':>10} {'peak MB':>8}")
    for t in targets:
        r = results[t.name]
        print(f"{t.name:<9} {ms(r.before, 50):>11.1f} / {max(r.before) * 1000:>7.1f} "
              f"{ms(r.during, 50):>10.1f} / {ms(r.during, 99):>6.1f} / {max(r.during) * 1000:>6.1f} "
              f"{len(r.during):>5} {max(r.uploads):>14.1f} {','.join(map(str, sorted(set(r.statuses)))):>10} "
              f"{r.peak_mb:>8.0f}")
    gw, md = results["gateway"], results["mitmdump"]
    print(f"gateway / mitmdump during the uploads: small p50 {ratio(ms(gw.during, 50), ms(md.during, 50))}, "
          f"p99 {ratio(ms(gw.during, 99), ms(md.during, 99))}, max {ratio(max(gw.during), max(md.during))}")
    ok = all(s == 200 for r in results.values() for s in r.statuses) and events == args.uploads
    print(f"gateway audit: {events} upload events for {args.uploads} uploads{f' ({problem})' if problem else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
