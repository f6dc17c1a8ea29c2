"""The labelled prompt-injection corpus (tests/injection_corpus/, issue 15) is well formed and as large and varied as
the detector's scoring needs: a malformed or shrunken corpus would make its precision and recall mean nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

CORPUS = Path(__file__).parent / "injection_corpus"
SOURCES = {"user", "system", "tool_result", "document", "mcp_result", "tool_definition", "answer"}


def samples() -> list[dict]:
    return [s for f in sorted(CORPUS.glob("*.yaml")) for s in yaml.safe_load(f.read_text(encoding="utf-8"))["samples"]]


def test_every_sample_is_well_formed_and_ids_are_unique():
    all_samples = samples()
    ids = Counter(s["id"] for s in all_samples)
    assert not [i for i, n in ids.items() if n > 1]
    for s in all_samples:
        assert s["source"] in SOURCES and s["label"] in ("injection", "benign"), s["id"]
        assert isinstance(s["text"], str) and s["text"].strip() and s.get("family") and s.get("lang"), s["id"]


def test_the_corpus_has_the_size_and_spread_the_scoring_needs():
    all_samples = samples()
    labels = Counter(s["label"] for s in all_samples)
    assert len(all_samples) >= 300 and labels["benign"] >= 150 and labels["injection"] >= 150
    for source in SOURCES:
        assert {s["label"] for s in all_samples if s["source"] == source} == {"injection", "benign"}, source
    assert len({s["lang"] for s in all_samples} - {"en"}) >= 6
