"""DLP over a conversation: what each turn costs when the history is remembered, and when it is scanned again.

    python bench/conversation.py [--turns 30] [--rounds 3]

Chat clients resend the whole conversation with every turn. A simulated conversation (system prompt; each turn a
user message and an answer of about 1 KB of mixed prose, code and personal data, from bench/dlp.py's generator)
is scanned turn by turn in the real worker pool, twice per round: by a pool that remembers what it scanned
(dlp.known, the gateway's default) and by the same pool made to forget before every turn, which is how every turn
was scanned before. Each round is a new conversation for a new user, so nothing carries over between rounds. It
prints the median scan time at a few turns, the whole conversation's total, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import machine_line  # noqa: E402
from bench.dlp import make_text  # noqa: E402
from dlp.known import KnownTexts  # noqa: E402
from dlp.pool import DlpPool  # noqa: E402

SYSTEM = "You are a helpful assistant for the support team. Answer briefly."


def conversation(turns: int, seed: int) -> list[list[str]]:
    """The texts sent at each turn: system prompt, every earlier message, the new user message."""
    history: list[str] = []
    sent = []
    for turn in range(turns):
        user = make_text(1_000, seed * 1_000 + 2 * turn)
        sent.append([SYSTEM, *history, user])
        history += [user, make_text(1_000, seed * 1_000 + 2 * turn + 1)]  # the answer joins the history
    return sent


async def scan(pool: DlpPool, turns: list[list[str]], user: str, remember: bool) -> list[float]:
    times = []
    for texts in turns:
        if not remember:
            pool.known = KnownTexts()
        start = time.perf_counter()
        await pool.scan_parts(texts, timeout=60, wait=60, scope=user)
        times.append(time.perf_counter() - start)
    return times


async def run(turns: int, rounds: int) -> dict[str, list[list[float]]]:
    pool = DlpPool(ROOT / "rules", workers=2)
    await pool.start()
    for seed in range(4):  # both workers warm, so that the first conversation measured does not pay for that
        await pool.scan_parts([make_text(2_000, 10**6 + seed)], timeout=60, wait=60)
    results: dict[str, list[list[float]]] = {"remembering": [], "scanning again": []}
    try:
        for r in range(rounds):
            sent = conversation(turns, r)
            order = [True, False] if r % 2 == 0 else [False, True]  # alternate which goes first
            for remember in order:
                pool.known = KnownTexts()
                results["remembering" if remember else "scanning again"].append(
                    await scan(pool, sent, f"user-{r}-{remember}", remember))
    finally:
        pool.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=30, help="turns per conversation (30)")
    parser.add_argument("--rounds", type=int, default=3, help="conversations per mode (3)")
    args = parser.parse_args()
    print(f"bench/conversation.py: {args.turns} turns of about 2 KB each (question and answer), {args.rounds} "
          f"conversations per mode, 2 DLP workers")
    print(machine_line())
    results = asyncio.run(run(args.turns, args.rounds))
    marks = sorted({1, 5, 10, 20, args.turns} & set(range(1, args.turns + 1)))
    ms = {mode: [statistics.median(times[t - 1] for times in runs) * 1000 for t in marks]
          for mode, runs in results.items()}
    total = {mode: statistics.median(sum(times) for times in runs) * 1000 for mode, runs in results.items()}
    print(f"{'median scan ms at turn':<24}" + "".join(f"{t:>9}" for t in marks) + f"{'whole conversation':>20}")
    for mode in results:
        print(f"{mode:<24}" + "".join(f"{v:>9.2f}" for v in ms[mode]) + f"{total[mode]:>20.1f}")
    print(f"{'scanning again / remembering':<24}" +
          "".join(f"{b / a:>8.1f}x" for a, b in zip(ms["remembering"], ms["scanning again"])) +
          f"{total['scanning again'] / total['remembering']:>19.1f}x")
    print(machine_line().replace("machine", "after"))


if __name__ == "__main__":
    main()
