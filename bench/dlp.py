"""DLP scan speed: the gateway's Scanner against plain Presidio with the same recognizers, side by side.

    python bench/dlp.py [--rules DIR] [--quick] [--no-detector]

For 200 B, 2 KB, 20 KB, 100 KB and 1 MB texts of mixed prose, code, logs and JSON with some personal data and
secrets in them: median and p99 scan time and MB/s of each engine, and the ratio of the medians; for the gateway
also the median CPU time (on a busy machine the wall-clock includes waiting for a core). Every repetition scans a
different text (different values, same mix), so nothing is measured warm that would be cold in real traffic.
Plain Presidio is repeated fewer times at large sizes (it takes seconds per megabyte) so the run stays under
3 minutes. One process, one thread: what one core does. Goals (issue 4): 2 KB <= 1 ms, 100 KB <= 20 ms median.

The gateway's scan includes prompt-injection detection (dlp/injection.py), as in the workers; `dlp only cpu` is the
median CPU time of the same scanner without it, on the same texts in the same run (text by text, alternating), and
`detect` the ratio of the CPU medians, with and without (the goal of issue 15: DLP and detection together within
the goals above). `--no-detector` measures DLP alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dlp  # noqa: E402,F401  (offline-safe environment for presidio)
from dlp.baseline import PlainPresidio  # noqa: E402
from dlp.scanner import Scanner  # noqa: E402

SIZES = [("200 B", 200), ("2 KB", 2_000), ("20 KB", 20_000), ("100 KB", 100_000), ("1 MB", 1_000_000)]
# repetitions: (scanner, plain presidio)
REPS = {200: (300, 40), 2_000: (300, 20), 20_000: (60, 6), 100_000: (20, 3), 1_000_000: (5, 1)}

FIRST = ["Ada", "Grace", "Alan", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen", "Perlman"]
WORDS = ("the service request customer report latency cache deploy cluster budget quarter migration review "
         "release schedule incident metrics feature invoice contract onboarding roadmap backlog sprint team "
         "dashboard pipeline storage network billing summary draft proposal policy compliance audit").split()


class Values:
    """Fresh random values, so no two texts repeat their numbers, keys or addresses."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def alnum(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def name(self) -> str:
        return f"{self.r.choice(FIRST)} {self.r.choice(LAST)}"

    def email(self) -> str:
        return f"{self.r.choice(FIRST).lower()}.{self.r.choice(LAST).lower()}{self.digits(2)}@{self.r.choice(['example.com', 'acme-corp.io', 'mail.example.org'])}"

    def phone(self) -> str:
        """Numbers that exist (valid area codes and exchanges), as real prompts hold, not 555 test numbers."""
        area = self.r.choice(["212", "415", "617", "312", "646", "303", "206", "512"])
        exchange = f"{self.r.randint(2, 9)}{self.r.randint(0, 9)}{self.r.randint(2, 9)}"
        return self.r.choice([f"+1 ({area}) {exchange}-{self.digits(4)}", f"+44 20 3{self.digits(3)} {self.digits(4)}",
                              f"({area}) {exchange}-{self.digits(4)}", f"+49 30 {self.digits(8)}"])

    def ip(self) -> str:
        return f"10.{self.r.randint(0, 255)}.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}"

    def uuid(self) -> str:
        h = self.alnum(32, "0123456789abcdef")
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def sha(self) -> str:
        return self.alnum(40, "0123456789abcdef")

    def ssn(self) -> str:
        return f"{self.r.randint(100, 665)}-{self.r.randint(10, 99)}-{self.r.randint(1000, 9999)}"

    def card(self) -> str:
        body = "4" + self.digits(14)
        total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(map(int, body)))
        number = body + str((10 - total % 10) % 10)
        return " ".join(number[i:i + 4] for i in range(0, 16, 4))

    def key(self) -> str:
        return self.r.choice([f"AKIA{self.alnum(16, string.ascii_uppercase + '234567')}", f"ghp_{self.alnum(36)}",
                              f"sk-proj-{self.alnum(48)}", f"xoxb-{self.digits(11)}-{self.digits(12)}-{self.alnum(24)}"])


PROSE = [
    "Can you help me rewrite this paragraph so it sounds more professional and less defensive?",
    "The {w} {w} for Q{q} shows growth of {n}% compared to last year, mostly in the {w} segment.",
    "Please summarize the following meeting notes and list the action items with their owners.",
    "Our customer {name} ({email}) reported that the checkout page times out after {n} seconds.",
    "You can reach {name} at {phone} if the {w} is still blocked tomorrow morning.",
    "We agreed to move the {w} {w} to next sprint because the {w} review is not finished yet.",
    "Translate the following paragraph into French and keep the product names in English.",
    "Draft a polite reply explaining that the {w} {w} will be delayed by {n} days.",
    "The {w} team deployed version {v} on Tuesday; error rates dropped from {n}% to {n2}%.",
    "Write unit tests for the function below; it should reject negative amounts and empty names.",
    "Order {order} was shipped on {date} and should arrive within {n} business days.",
    "What is the difference between a {w} {w} and a {w} {w} in terms of cost and latency?",
    "Refund request from {name}: card ending {last4}, amount {n}.{n2} USD, reason: duplicate charge.",
    "{name} asked whether the {w} {w} is compliant with our data retention policy.",
    "For the payroll fix I need the employee record: {name}, SSN {ssn}, start date {date}.",
    "Explain why this query is slow and suggest an index; the table has about {n} million rows.",
    "Give me three options for the {w} name, each under twenty characters, and explain the trade-offs.",
    "Rewrite the error message so that a non-technical user understands what to do next.",
    "The build fails on the {w} step with a timeout; the runner has {n2} GB of memory and two cores.",
    "Compare the two approaches below and recommend one for a team of {n2} engineers.",
    "List the risks of migrating the {w} database during business hours and how to mitigate them.",
    "Make this function easier to read without changing its behaviour, and add type hints.",
    "Why does the {w} dashboard show a spike at midnight UTC every day since version {v}?",
    "Turn these bullet points into a short announcement for the {w} channel.",
    "Suggest test cases for a parser that reads {w} files with optional headers and quoted fields.",
    "Estimate the monthly cost of {n} requests per second with an average payload of {n2} KB.",
    "The {w} job processed {n} records in {n2} minutes; how can we make it twice as fast?",
    "Review this pull request description and point out anything unclear to a new reviewer.",
]
CODE = [
    "def fetch_{w}(client, since):\n    resp = client.get(\"/v2/{w}\", params={{\"since\": since, \"limit\": {n}}})\n"
    "    resp.raise_for_status()\n    return [Item(**o) for o in resp.json()[\"items\"]]\n",
    "const config = {{\n  region: \"eu-west-1\",\n  retries: {n},\n  timeoutMs: {n}000,\n  bucket: \"{w}-{w}-prod\",\n}};\n",
    "SELECT id, email, created_at FROM users WHERE created_at > '{date}' ORDER BY id LIMIT {n};\n",
    "# settings.py\nDEBUG = False\nALLOWED_HOSTS = [\"{w}.example.com\"]\nAWS_ACCESS_KEY_ID = \"{key}\"\n",
    "for (let i = 0; i < items.length; i++) {{\n  total += items[i].price * items[i].qty;\n}}\n",
    "git checkout -b fix/{w}-{w} && git cherry-pick {sha}\n",
    "class {W}Service:\n    def __init__(self, repo, cache):\n        self.repo = repo\n        self.cache = cache\n\n"
    "    def get(self, key):\n        return self.cache.get(key) or self.repo.load(key)\n",
    "requests==2.{n}.0\nnumpy>=1.{n}\npydantic~=2.{n2}\n",
    "    if not items:\n        raise ValueError(\"empty {w} list\")\n    return sorted(items, key=lambda i: i.{w})\n",
    "func (s *Server) handle{W}(w http.ResponseWriter, r *http.Request) {{\n\tctx := r.Context()\n"
    "\tif err := s.store.Touch(ctx, r.URL.Path); err != nil {{\n\t\thttp.Error(w, err.Error(), 500)\n\t}}\n}}\n",
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {w}-api\nspec:\n  replicas: {n2}\n",
    "docker build -t registry.example.com/{w}:{v} . && docker push registry.example.com/{w}:{v}\n",
]
LOGS = [
    "{date}T10:{n2:02d}:{n2:02d}Z INFO  request_id={uuid} path=/api/v1/{w} status=200 latency_ms={n}\n",
    "{date}T10:{n2:02d}:44Z DEBUG cache hit ratio={n2}% keys={n} evictions={n2}\n",
    "{date}T10:{n2:02d}:13Z INFO  worker {n2} finished {w} batch in {n} ms\n",
    "{date}T11:{n2:02d}:07Z WARN  client {ip} retried {n} times on /api/v1/{w}\n",
    "{date}T12:{n2:02d}:31Z ERROR user={email} payment failed: card declined (code {n})\n",
]
JSONS = [
    "{{\"id\": \"{uuid}\", \"customer\": {{\"name\": \"{name}\", \"email\": \"{email}\", \"phone\": \"{phone}\"}}, "
    "\"total\": {n}.{n2}, \"items\": {n2}}}\n",
    "{{\"event\": \"{w}.updated\", \"version\": \"{v}\", \"ts\": {ts}, \"sha\": \"{sha}\"}}\n",
]


SENSITIVE = ("{email}", "{phone}", "{ip}", "{ssn}", "{key}", "{card}")
SENSITIVE_SHARE = 0.1  # of the pieces; about one finding per kilobyte


def _pools(sensitive: bool) -> list[list[str]]:
    return [[t for t in pool if any(s in t for s in SENSITIVE) == sensitive] for pool in (PROSE, CODE, LOGS, JSONS)]


POOLS = {False: _pools(False), True: _pools(True)}


def make_text(size: int, seed: int) -> str:
    """Realistic mixed text of exactly `size` characters: prose, code, logs and JSON, some PII and a few secrets."""
    rng = random.Random(seed)
    v = Values(rng)
    parts, length = [], 0
    while length < size:
        pools = POOLS[rng.random() < SENSITIVE_SHARE]
        pool = rng.choices(pools, weights=[6, 3, 2, 1])[0] or pools[0]
        n = rng.randint(2, 500)
        template = rng.choice(pool)
        while "{w}" in template:
            template = template.replace("{w}", rng.choice(WORDS), 1)
        piece = template.format(
            W=rng.choice(WORDS).title(), q=rng.randint(1, 4), n=n, n2=rng.randint(0, 59),
            name=v.name(), email=v.email(), phone=v.phone(), ip=v.ip(), uuid=v.uuid(), sha=v.sha(), ssn=v.ssn(),
            last4=v.digits(4), order=f"ORD-{v.digits(8)}", date=f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            v=f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}", ts=1_700_000_000 + rng.randint(0, 10**7),
            key=v.key(), card=v.card())
        prose = pool is pools[0]
        parts.append(piece + ("\n" if prose and rng.random() < 0.3 else " " if prose else ""))
        length += len(parts[-1])
    return "".join(parts)[:size]


def _time(fn, texts: list[str]) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each call (CPU: what the scan costs one core, however busy the machine)."""
    wall, cpu = [], []
    for text in texts:
        t, c = time.perf_counter(), time.thread_time()
        fn(text)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return wall, cpu


def _p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=Path, default=ROOT / "rules")
    ap.add_argument("--quick", action="store_true", help="a tenth of the repetitions (smoke test)")
    ap.add_argument("--detector", action=argparse.BooleanOptionalAction, default=True,
                    help="scan with prompt-injection detection, beside DLP alone (default: on)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    scanner = Scanner.from_rules(args.rules)
    if not args.detector:
        scanner = scanner.without_threats()
    dlp_only = scanner.without_threats() if args.detector else None
    plain = PlainPresidio(scanner.rules)
    warm = make_text(5_000, 0)
    scanner.scan(warm)
    plain.analyze(warm)
    if dlp_only is not None:
        dlp_only.scan(warm)
    sample = make_text(100_000, 10**6)
    print(f"DLP scan, {len(scanner.rules.recognizers)} recognizers, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, python {platform.python_version()}; "
          f"texts hold about {len(scanner.scan(sample)) / 100:.1f} findings per KB")
    print(f"{'size':>7} | {'gateway median':>14} {'p99':>9} {'cpu':>9} {'MB/s':>6} | "
          + (f"{'dlp only cpu':>11} {'detect':>6} | " if dlp_only is not None else "")
          + f"{'presidio median':>15} {'p99':>8} {'MB/s':>5} | {'speed-up':>8} | goal (median)")
    for label, size in SIZES:
        reps_scanner, reps_plain = REPS[size]
        if args.quick:
            reps_scanner, reps_plain = max(1, reps_scanner // 10), max(1, reps_plain // 3)
        texts = [make_text(size, seed) for seed in range(1, reps_scanner + 1)]
        if dlp_only is None:
            ours, ours_cpu = _time(scanner.scan, texts)
            alone = None
        else:  # text by text, one after the other: a busy machine's noise falls on both alike
            timed = [(_time(scanner.scan, [t]), _time(dlp_only.scan, [t])[1][0]) for t in texts]
            ours, ours_cpu = [w[0] for (w, _), _ in timed], [c[0] for (_, c), _ in timed]
            alone = statistics.median(a for _, a in timed)  # CPU: the wall-clock of a busy machine is mostly waiting
        theirs, _ = _time(plain.analyze, texts[:reps_plain])
        med, med_p, cpu = statistics.median(ours), statistics.median(theirs), statistics.median(ours_cpu)
        goal = {2_000: 0.001, 100_000: 0.020}.get(size)
        verdict = "" if goal is None else ("met" if med <= goal else f"MISSED (<= {goal * 1000:.0f} ms)")
        print(f"{label:>7} | {med * 1000:11.3f} ms {_p99(ours) * 1000:6.2f} ms {cpu * 1000:6.2f} ms "
              f"{size / med / 1e6:6.1f} | "
              + (f"{alone * 1000:8.3f} ms {cpu / alone:5.2f}x | " if alone is not None else "")
              + f"{med_p * 1000:12.1f} ms {_p99(theirs) * 1000:5.0f} ms "
              f"{size / med_p / 1e6:5.2f} | {med_p / med:7.0f}x | {verdict}")
    print(f"({reps_scanner} and {reps_plain} repetitions at 1 MB; total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
