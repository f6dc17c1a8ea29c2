"""Plain Presidio with the same recognizers: the yardstick of tests/test_dlp_corpus.py and bench/dlp.py.

The very recognizer objects of the rules (same patterns, validators, per-recognizer score thresholds) in Presidio's
own AnalyzerEngine with the NoOpNlpEngine (the only engine that works without a model), and the allow-list terms
passed the way Presidio takes them. What differs is everything the gateway's Scanner adds: the prefilter, context
scoring without an NLP model, gates, column headers, blobs, markup, overlap resolution.
"""

from __future__ import annotations

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NoOpNlpEngine

from dlp.spec import DlpRules


class PlainPresidio:
    def __init__(self, rules: DlpRules):
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])
        registry = RecognizerRegistry(recognizers=[s.recognizer for s in rules.recognizers], supported_languages=["en"])
        self.engine = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        self.allow_list = list(rules.allow_terms)

    def analyze(self, text: str) -> list[RecognizerResult]:
        return self.engine.analyze(text, language="en", allow_list=self.allow_list or None)
