"""What the audit store costs per request: CPU per row of the embedded ClickHouse (chdb) and the audit writer.

    python bench/store.py [--rate 450] [--seconds 15] [--rounds 2] [--variants with-ngram,shipped,flush-2s]
    python bench/store.py --baseline HEAD~1 --variants shipped@base,shipped   # an earlier commit, same run
    python bench/store.py --search 200000     # text search time without and with the ngram index

Each variant runs in a fresh process on a fresh store (a temporary folder opened as the gateway does:
`Store.open("chdb://...")`, every schema migration applied, then the variant's ALTERs), and is fed as the
gateway feeds it: `AuditWriter` (spool to SQLite, ship to chdb, default settings) receiving realistic
`AuditEvent`s (a 2 KB chat prompt, different in every row, with DLP findings masked as the default capture level
`redacted` stores it, and a 200 B completion) at a fixed rate. After a warm-up, the CPU each thread of the process
uses during the measured window is read from /proc/self/task/*/stat (utime + stime) every 0.1 s and added to the
group of the thread's name at that moment (/proc/self/task/*/comm: chdb renames its pool threads after the task
they run; the writer's Python threads are known by their native ids): chdb's `MergeMutate` (background merges),
`ThreadPool` (its query pool, `ThreadPool` and `Query*PipeEx`: the inserts' pipelines), the writer's
`audit-spool` and `audit-ship` (which also runs chdb's part of each insert that stays in the calling thread),
the rest of chdb. The feeding thread (building and submitting events: the proxy's share, not the store's) is
shown apart and not in `total`. Threads that ended within the window count as `exited` (the process's time
minus its live threads').

The table shows ms of CPU per row for each thread group, the total, the ratio of the total to the first variant,
and what the store holds afterwards (active parts, compressed bytes); every row is checked to be in the store
(FINAL count) at the end, or the variant's line says how many are missing. `--rounds N` runs the variants N times
in turn (the order rotating) and reports the median of each group, so load from elsewhere on the machine falls
on every variant alike. A short window sees the first levels of merging only: a store that runs for days merges
every row a few more times, so merge costs here are a floor.

`a+b` combines variants; `name@base` runs a variant with the storage and writer code of `--baseline REV`.
Variants (`--variants`, comma-separated; `--list` shows them):
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a file: the repository is not on the path; a child of --baseline imports the product from that checkout
CODE = Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv else ROOT
sys.path.insert(0, str(CODE))

from core.audit import AuditEvent  # noqa: E402
from storage.schema import TEXT_COLUMNS, text_ttl  # noqa: E402


def _codec(codec: str) -> list[str]:
    """Text columns with another codec, keeping their TTL."""
    return [f"ALTER TABLE events MODIFY COLUMN {c} String CODEC({codec}) {text_ttl(30)}"
            for c in TEXT_COLUMNS["events"]]


NGRAM = "ALTER TABLE events ADD INDEX IF NOT EXISTS prompt_ngram prompt TYPE ngrambf_v1(3, 65536, 2, 0) GRANULARITY 4"


def _setting(**settings: object) -> list[str]:
    return ["ALTER TABLE events MODIFY SETTING " + ", ".join(f"{k} = {v!r}" for k, v in settings.items())]


#: name -> (what it changes, ALTERs after the migrations, writer keyword arguments)
VARIANTS: dict[str, tuple[str, list[str], dict]] = {
    "shipped": ("the schema and writer as they are", [], {}),
    "with-ngram": ("with the prompt_ngram ngrambf_v1 index of schema v1-v5 (dropped by v6)", [NGRAM], {}),
    "no-ngram": ("without the prompt_ngram index (a change only for code before v6: @base)",
                 ["ALTER TABLE events DROP INDEX IF EXISTS prompt_ngram"], {}),
    "no-indexes": ("without any skip index (also entity_bf, sha_bf)",
                   [f"ALTER TABLE events DROP INDEX IF EXISTS {i}" for i in ("prompt_ngram", "entity_bf", "sha_bf")],
                   {}),
    "ngram-8k": ("with prompt_ngram as an 8 KB filter instead of 64 KB",
                 [NGRAM.replace("65536", "8192")], {}),
    "zstd1": ("text columns ZSTD(1) instead of ZSTD(3)", _codec("ZSTD(1)"), {}),
    "lz4": ("text columns LZ4 instead of ZSTD(3)", _codec("LZ4"), {}),
    "flush-1s": ("writer flush_interval 1 s instead of 0.5 s", [], {"flush_interval": 1.0}),
    "flush-2s": ("writer flush_interval 2 s instead of 0.5 s", [], {"flush_interval": 2.0}),
    "flush-5s": ("writer flush_interval 5 s instead of 0.5 s", [], {"flush_interval": 5.0}),
    "no-skipidx-merge": ("materialize_skip_indexes_on_merge = 0 (indexes built at insert only)",
                         _setting(materialize_skip_indexes_on_merge=0), {}),
    "base-20": ("merge_selector_base = 20 (merge fewer, larger batches of parts)",
                _setting(merge_selector_base=20), {}),
    "min-parts-10": ("min_parts_to_merge_at_once = 10", _setting(min_parts_to_merge_at_once=10), {}),
    "wide": ("wide parts always (min_bytes_for_wide_part = 0), for contrast",
             _setting(min_bytes_for_wide_part=0), {}),
}


def combined(spec: str) -> tuple[list[str], dict]:
    """`a+b`: the ALTERs of both, in order, and both writer settings."""
    alters: list[str] = []
    writer_kw: dict = {}
    for name in spec.split("+"):
        alters += VARIANTS[name][1]
        writer_kw.update(VARIANTS[name][2])
    return alters, writer_kw


# --- rows as the gateway makes them -------------------------------------------------------------------------------

WORDS = ("the service request customer report latency cache deploy cluster budget quarter migration review release "
         "schedule incident metrics feature invoice contract onboarding roadmap backlog sprint team dashboard "
         "pipeline storage network billing summary draft proposal policy compliance audit please explain rewrite "
         "function error timeout query index table rows cost users numbers board meeting notes action items").split()
ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "CREDIT_CARD", "IP_ADDRESS")


class _Finding:
    def __init__(self, entity: str, start: int, end: int, score: float):
        self.entity, self.part, self.start, self.end, self.score, self.source = entity, 1, start, end, score, "user"


def _text(rng: random.Random, size: int) -> tuple[str, list[_Finding]]:
    """Prose of about `size` characters with a few findings masked as `<ENTITY>` (capture level `redacted`)."""
    out, findings, length = [], [], 0
    while length < size:
        if rng.random() < 0.04:
            entity = rng.choice(ENTITIES)
            piece = f"<{entity}>"
            findings.append(_Finding(entity, length, length + rng.randint(8, 30), round(rng.uniform(0.5, 1), 2)))
        elif rng.random() < 0.1:
            piece = str(rng.randint(0, 10 ** rng.randint(1, 7)))
        else:
            piece = rng.choice(WORDS)
        out.append(piece)
        length += len(piece) + 1
    return " ".join(out)[:size], findings


def make_events(n: int, seed: int = 1) -> list[AuditEvent]:
    rng = random.Random(seed)
    users = [f"user{i}@example.com" for i in range(200)]
    events = []
    for i in range(n):
        text, findings = _text(rng, 2000)
        completion, _ = _text(rng, 200)
        prompt = "[system] You are a helpful assistant.\n[user] " + text
        e = AuditEvent(client_addr=f"10.0.{i % 7}.{i % 250}", user=rng.choice(users), host="api.openai.com",
                       method="POST", path="/v1/chat/completions", service="openai", category="api",
                       sanctioned=True, operation="chat.completions", model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
                       prompt=prompt, completion=completion, prompt_sha256=f"{rng.getrandbits(256):064x}",
                       input_tokens=500 + rng.randint(0, 100), output_tokens=40 + rng.randint(0, 20),
                       request_bytes=2300 + rng.randint(0, 200), response_bytes=600 + rng.randint(0, 100),
                       status=200, latency_ms=round(rng.uniform(200, 900), 1),
                       decision="redact" if findings else "allow", reason="pii" if findings else "",
                       groups=["eng"], capture="redacted", rule_id="pii" if findings else "",
                       finish_reason="stop", coverage=["parser /messages/*/content x2"])
        e.set_findings(findings)
        events.append(e)
    return events


# --- one variant, in its own process ------------------------------------------------------------------------------

def thread_cpu() -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) of every live thread of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{task}/comm") as f:
                name = f.read().strip()
        except OSError:  # ended meanwhile
            continue
        out[int(task)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def group_of(name: str, tid: int, named: dict[int, str]) -> str:
    if tid in named:
        return named[tid]
    if name.startswith("MergeMutate"):
        return "MergeMutate"
    if name.startswith(("ThreadPool", "Query")):  # pool threads are named after the pipeline they run
        return "ThreadPool"
    return "other chdb" if name != "python" else "other python"


SAMPLE = 0.1  # seconds between looks at the threads' names and times
BY_NAME: dict[str, float] = {}  # CPU by raw thread name (--names)


def _attribute(groups: dict[str, float], last: dict[int, tuple[str, float]], now: dict[int, tuple[str, float]],
               named: dict[int, str]) -> dict[int, tuple[str, float]]:
    """Add each thread's CPU since the last look to the group of the name it has now (a thread first seen now
    started after the last look: all its time is new)."""
    for tid, (name, cpu) in now.items():
        g, used = group_of(name, tid, named), cpu - last.get(tid, (name, 0.0))[1]
        groups[g] = groups.get(g, 0.0) + used
        BY_NAME[name] = BY_NAME.get(name, 0.0) + used
    return now


def run_variant(name: str, rate: float, seconds: float, warmup: float) -> dict:
    from storage.store import Store
    from storage.writer import AuditWriter

    alters, writer_kw = combined(name)
    events = make_events(int(rate * (warmup + seconds)) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"chdb://{Path(tmp) / 'audit'}")
        for stmt in alters:
            store.client.command(stmt)
        writer = AuditWriter(Path(tmp) / "spool.sqlite", store=store, **writer_kw)
        named = {writer._spool_thread.native_id: "audit-spool", writer._ship_thread.native_id: "audit-ship",
                 threading.get_native_id(): "feeder"}
        start = time.monotonic()
        groups: dict[str, float] = {}
        last, proc_before, sent_before, next_sample = None, 0.0, 0, 0.0
        futures = []
        for i, e in enumerate(events):
            due = start + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
                now = time.monotonic()
            if last is None and now - start >= warmup:
                last, proc_before, sent_before, window_start = thread_cpu(), process_cpu(), i, now
                next_sample = now + SAMPLE
            elif last is not None and now >= next_sample:  # chdb renames its pool threads by task: sample often
                last = _attribute(groups, last, thread_cpu(), named)
                next_sample = now + SAMPLE
            futures.append(writer.submit(e))
        last = _attribute(groups, last, thread_cpu(), named)
        proc_after = process_cpu()
        window = time.monotonic() - window_start
        rows = len(events) - sent_before
        assert all(f is not None and f.result(30) for f in futures), "writer refused rows"
        drained = writer.flush(120)
        writer.close()
        live = sum(groups.values())
        groups["exited"] = max(0.0, (proc_after - proc_before) - live)
        stored = store.query("SELECT count() FROM events FINAL", {})[1][0][0]
        parts, nbytes = store.query("SELECT count(), sum(data_compressed_bytes) FROM system.parts "
                                    "WHERE database = currentDatabase() AND table = 'events' AND active", {})[1][0]
        store.close()
    return {"variant": name, "rows": rows, "window": window, "cpu": groups, "stored": stored,
            "expected": len(events), "drained": drained, "parts": parts, "bytes": nbytes, "names": BY_NAME}


# --- what text search costs with and without the ngram index ----------------------------------------------------

def search_cost(n: int, repeat: int) -> None:
    """`gateway audit search --text` (storage.queries.search) over n rows, without the ngram index (as the schema
    now has it) and with it added back and materialized, median of `repeat` runs each; `prompt LIKE` (case-
    sensitive, the one form of text condition the index can answer) for contrast."""
    from dataclasses import replace as copy_with

    from core.audit import new_event_id
    from storage.queries import search
    from storage.store import Store

    distinct = make_events(min(n, 20_000), seed=7)
    needle = "zebracorn"  # in a few rows only: what a search for a leaked name looks like
    for e in distinct[::5000]:
        e.prompt += f" {needle} was mentioned"
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"chdb://{Path(tmp) / 'audit'}")
        t = time.perf_counter()
        for i in range(0, n, 10_000):
            store.insert_events([copy_with(distinct[j % len(distinct)], event_id=new_event_id(), user=f"u{j % 97}")
                                 for j in range(i, min(n, i + 10_000))])
        store.client.command("OPTIMIZE TABLE events")  # a store some hours old: merged parts
        print(f"text search over {n:,} rows (loaded in {time.perf_counter() - t:.0f} s), median of {repeat}:")
        like = ("SELECT count() FROM events FINAL WHERE ts >= now() - INTERVAL 1 DAY AND prompt LIKE {t:String}")
        cases = [(f"audit search --text {needle} (rare)", lambda: search(store, since="24h", text=needle)),
                 ("audit search --text migration (common)", lambda: search(store, since="24h", text="migration")),
                 ("audit search --text absentword (none)", lambda: search(store, since="24h", text="absentword")),
                 (f"prompt LIKE '%{needle}%' (not a product query)",
                  lambda: store.query(like, {"t": f"%{needle}%"}))]
        timings: dict[str, list[float]] = {}
        for state in ("without index", "with index"):
            if state == "with index":
                store.client.command(NGRAM)
                store.client.command("ALTER TABLE events MATERIALIZE INDEX prompt_ngram SETTINGS mutations_sync = 2")
            for label, fn in cases:
                fn()
                runs = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    fn()
                    runs.append(time.perf_counter() - t)
                timings.setdefault(label, []).append(statistics.median(runs))
        store.close()
    print(f"  {'query':<52}{'without index':>15}{'with index':>12}{'ratio':>7}")
    for label, (without, with_) in timings.items():
        print(f"  {label:<52}{without * 1000:>12.0f} ms{with_ * 1000:>9.0f} ms{without / with_:>7.2f}")


# --- the parent: every variant in a fresh process, one table ------------------------------------------------------

COLUMNS = ["MergeMutate", "ThreadPool", "audit-spool", "audit-ship", "other chdb", "exited"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=450, help="rows per second (default 450)")
    ap.add_argument("--seconds", type=float, default=15, help="measured window per variant (default 15)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds fed before the window (default 3)")
    ap.add_argument("--variants", default="with-ngram,shipped,zstd1,flush-2s,base-20",
                    help="comma-separated, the first is the reference for the ratios")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--list", action="store_true", help="show the variants and exit")
    ap.add_argument("--names", action="store_true", help="also ms per row by raw thread name, per variant")
    ap.add_argument("--search", type=int, metavar="ROWS",
                    help="instead: time text search over ROWS rows without and with the ngram index")
    ap.add_argument("--baseline", metavar="REV",
                    help="a commit whose storage and writer code the variants ending in @base run with")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        for name, (what, _, _) in VARIANTS.items():
            print(f"{name:<18} {what}")
        return
    if args.search:
        search_cost(args.search, 5)
        return
    if args.child:
        print(json.dumps(run_variant(args.child, args.rate, args.seconds, args.warmup)))
        return
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for spec in names for n in spec.removesuffix("@base").split("+") if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {', '.join(unknown)} (see --list)")
    if any(n.endswith("@base") for n in names) and not args.baseline:
        ap.error("variants ending in @base need --baseline REV")
    base = tempfile.TemporaryDirectory(prefix="bench-store-base-")
    if args.baseline:
        from bench._common import checkout
        checkout(args.baseline, Path(base.name))
    if args.baseline:
        print(f"@base: storage and writer of {args.baseline}")
    print(f"audit store CPU per row: {args.rate:.0f} rows/s, {args.seconds:.0f} s window after {args.warmup:.0f} s "
          f"warm-up, {args.rounds} round(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            code = ["--code", base.name] if name.endswith("@base") else []
            out = subprocess.run([sys.executable, __file__, "--child", name.removesuffix("@base"), *code,
                                  "--rate", str(args.rate), "--seconds", str(args.seconds),
                                  "--warmup", str(args.warmup)],
                                 capture_output=True, text=True, check=False, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(f"variant {name} failed:\n{out.stderr[-3000:]}")
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = "".join(f"{c:>12}" for c in COLUMNS)
    print(f"\nms of CPU per row{'':<14}{header}{'total':>9}{'ratio':>7}{'feeder':>8}{'parts':>7}{'MB':>7}  check")
    reference = None
    for name in names:
        runs = results[name]
        per_row = {c: statistics.median(run["cpu"].get(c, 0.0) / run["rows"] * 1000 for run in runs)
                   for c in {*COLUMNS, "feeder", "other python"}}
        per_row["other chdb"] += per_row["other python"]  # (none: every Python thread has its name)
        total = statistics.median(sum(v for k, v in run["cpu"].items() if k != "feeder") / run["rows"] * 1000
                                  for run in runs)
        reference = reference or total
        last = runs[-1]
        check = ("ok" if all(r["stored"] == r["expected"] and r["drained"] for r in runs)
                 else f"MISSING {last['expected'] - last['stored']} rows")
        print(f"{name:<31}" + "".join(f"{per_row[c]:>12.3f}" for c in COLUMNS)
              + f"{total:>9.3f}{total / reference:>7.2f}{per_row['feeder']:>8.3f}{last['parts']:>7}"
              f"{last['bytes'] / 1e6:>7.1f}  {check}")
        if args.names:
            print("    " + ", ".join(f"{k} {v / last['rows'] * 1000:.3f}" for k, v in
                                     sorted(last["names"].items(), key=lambda kv: -kv[1]) if v > 0))
    base.cleanup()


__doc__ += "".join(f"    {name:<18} {what}\n" for name, (what, _, _) in VARIANTS.items())

if __name__ == "__main__":
    main()
