"""Prompt-injection detection on the labelled corpus (tests/injection_corpus/): precision and recall per source and
overall, the gateway's detector (dlp/injection.py) side by side with `pyatr` (Agent Threat Rules) run as shipped.

    python bench/injection.py [--heldout [1|2]] [--threshold 0.5] [--misses] [--rules FOLDER]

Without --heldout every file but the held-out batches is scored (the files the rules were written against);
--heldout scores one held-out batch, never tuned on: heldout.yaml (1), written with the corpus before the rules,
or heldout2.yaml (2), written later by someone who had not seen the rules. A sample counts as detected when the
detector reports PROMPT_INJECTION, HIDDEN_INSTRUCTIONS or EXFILTRATION_LINK at `--threshold` or more after the
weights for its source (as the proxy scores a request part); for pyatr, when it returns any match. pyatr gets the
text as an `llm_input` event, which is how its `scan()` helper runs (it has no notion of a source). `--rules`: the
folder whose injection.yaml is scored (one that includes rules/injection-atr.yaml, to weigh the imported ATR rules).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.rulesfile import SHIPPED_RULES  # noqa: E402
from dlp.injection import Detector, load_rules, scan  # noqa: E402
from dlp.normalize import Normalizer  # noqa: E402

CORPUS = ROOT / "tests" / "injection_corpus"
HELDOUT = {1: "heldout.yaml", 2: "heldout2.yaml"}  # the held-out batches: never tune on them
THRESHOLD = 0.5


def samples(heldout: int = 0) -> list[dict]:
    """The tuned corpus (0), or held-out batch 1 or 2."""
    files = [CORPUS / HELDOUT[heldout]] if heldout else [f for f in sorted(CORPUS.glob("*.yaml"))
                                                         if f.name not in HELDOUT.values()]
    return [s for f in files for s in yaml.safe_load(f.read_text(encoding="utf-8"))["samples"]]


class Ours:
    """The detector as the gateway runs it: the text and its normalised views, then the source's weights."""

    name = "gateway"

    def __init__(self, threshold: float = THRESHOLD, rules: Path = SHIPPED_RULES):
        self.rules = load_rules(rules)
        self.detector = Detector(self.rules)
        self.normalizer = Normalizer()
        self.threshold = threshold

    def score(self, text: str, source: str) -> tuple[float, list]:
        hits = scan(self.detector, text, self.normalizer.views(text))
        scored = [(round(h.score * self.rules.weight(h.rule, source), 4), h) for h in hits]
        return max((s for s, _ in scored), default=0.0), scored

    def detects(self, text: str, source: str) -> bool:
        return self.score(text, source)[0] >= self.threshold


class Atr:
    """pyatr's `scan()` as shipped (its bundled rules)."""

    name = "pyatr"

    def __init__(self):
        import pyatr

        self.scan = pyatr.scan
        self.version = pyatr.__version__

    def detects(self, text: str, source: str) -> bool:
        return bool(self.scan(text))


def measure(engine, batch: list[dict]) -> tuple[dict[str, dict[str, int]], list[float], list[dict]]:
    """Confusion counts per source (and 'all'), seconds per sample, and the samples it got wrong."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "tn": 0})
    times, wrong = [], []
    for s in batch:
        t0 = time.perf_counter()
        found = engine.detects(s["text"], s["source"])
        times.append(time.perf_counter() - t0)
        truth = s["label"] == "injection"
        key = ("tp" if truth else "fp") if found else ("fn" if truth else "tn")
        for group in (s["source"], "all"):
            counts[group][key] += 1
        if key in ("fp", "fn"):
            wrong.append({**s, "outcome": key})
    return counts, times, wrong


def pr(c: dict[str, int]) -> tuple[float, float]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
    return precision, recall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", type=int, nargs="?", const=1, default=0, choices=[1, 2],
                   help="score held-out batch 1 (heldout.yaml) or 2 (heldout2.yaml) only; never tune on them")
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--misses", action="store_true", help="list the gateway's false positives and negatives")
    p.add_argument("--no-pyatr", action="store_true")
    p.add_argument("--rules", type=Path, default=SHIPPED_RULES, help="the rules folder (default: the shipped)")
    args = p.parse_args()
    batch = samples(args.heldout)
    engines = [Ours(args.threshold, args.rules)]
    if not args.no_pyatr:
        try:
            engines.append(Atr())
        except ImportError:
            print("pyatr is not installed (pip install pyatr): gateway only")
    results = {e.name: measure(e, batch) for e in engines}
    print(f"{HELDOUT[args.heldout] if args.heldout else 'corpus without the held-out batches'}: {len(batch)} samples, "
          f"threshold {args.threshold}")
    header = f"{'source':<16}{'n':>5}" + "".join(f"{e.name + ' P':>12}{e.name + ' R':>12}" for e in engines)
    print(header)
    sources = sorted({s["source"] for s in batch}) + ["all"]
    for source in sources:
        row = f"{source:<16}{sum(results[engines[0].name][0][source].values()):>5}"
        for e in engines:
            precision, recall = pr(results[e.name][0][source])
            row += f"{precision:>12.2f}{recall:>12.2f}"
        print(row)
    for e in engines:
        times = results[e.name][1]
        print(f"{e.name}: median {statistics.median(times) * 1000:.2f} ms per sample, "
              f"max {max(times) * 1000:.1f} ms")
    if args.misses:
        for s in results[engines[0].name][2]:
            print(f"{s['outcome']} {s['id']} {s['source']} {s['family']}: {s['text'][:110]!r}")


if __name__ == "__main__":
    main()
