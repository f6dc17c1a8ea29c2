"""Texts already scanned, and what was found in them: a conversation is scanned once, not again on every turn.

Chat clients send the whole conversation with every turn: the tenth question carries the nine before it and their
answers, and a document pasted at the start travels with every turn after it. Scanning all of it each time makes
DLP cost grow with the square of a conversation's length, and the prompt waits for that scan whenever an enforced
rule must look before it is sent. A text's findings depend only on the text and the rules, so the pools of one
rule set remember them per text and per user: by a 128-bit BLAKE2b digest keyed with a secret drawn at start,
never the text itself (the findings hold offsets, not values). Without the key nobody can craft a harmless text
whose digest a secret one shares, nor confirm a guessed prompt from a memory dump; with the user in it, nobody
can tell from how fast a scan answers whether someone else has sent a text. A reload that changes the
recognizers starts new pools that remember nothing. Only completed scans are remembered: a failed one is tried
again next time.

Memory is bounded by SIZE, counted as one per text plus one per finding (a finding is about a hundred bytes), the
least recently used texts forgotten first; a text with more than MAX_FINDINGS findings (a dump of addresses) is
not remembered at all.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence

from dlp.scanner import Finding

SIZE = 131_072  # texts plus findings remembered: about 20 MB at most
MAX_FINDINGS = 1_000  # per text


class KnownTexts:
    def __init__(self, size: int = SIZE):
        self.size = size
        self._key = os.urandom(32)
        self._found: OrderedDict[bytes, tuple[Finding, ...]] = OrderedDict()
        self._used = 0
        self.hits = 0  # texts whose findings came from here instead of a worker

    def digests(self, texts: list[str], scope: str = "") -> list[bytes]:
        """One key per text of this scope (hashlib releases the GIL on large texts: this may run in a thread)."""
        prefix = scope.encode("utf-8", "surrogatepass") + b"\0"
        return [hashlib.blake2b(prefix + t.encode("utf-8", "surrogatepass"), digest_size=16, key=self._key).digest()
                for t in texts]

    def get(self, key: bytes, part: int) -> list[Finding] | None:
        """The findings of the text with this key, as part `part`; None if it was not scanned (or forgotten)."""
        found = self._found.get(key)
        if found is None:
            return None
        self._found.move_to_end(key)
        self.hits += 1
        return as_part(found, part)

    def put(self, key: bytes, findings: Sequence[Finding]) -> None:
        if len(findings) > MAX_FINDINGS or key in self._found:
            return
        self._found[key] = tuple(findings)
        self._used += 1 + len(findings)
        while self._used > self.size:
            self._used -= 1 + len(self._found.popitem(last=False)[1])


def as_part(findings: Sequence[Finding], part: int) -> list[Finding]:
    """The findings moved to part `part` (copied only where they are not there already)."""
    return [f if f.part == part else Finding(f.entity, f.start, f.end, f.score, part, f.recognizer)
            for f in findings]
