"""rules/recognizers.yaml: the shipped file loads, and every mistake in a hand-edited file names its file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.rulesfile import RulesError
from dlp.rules import load_rules

SHIPPED = Path(__file__).resolve().parent.parent / "rules"

MINIMAL = """\
recognizers:
  - name: EmailRecognizer
    threshold: 0.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recognizers.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> RulesError:
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as e:
        load_rules(path)
    assert str(e.value).startswith(f"{path}:"), str(e.value)
    return e.value


def test_shipped_rules_load_with_every_kind_of_recognizer():
    rules = load_rules(SHIPPED)
    names = {s.name for s in rules.recognizers}
    assert {"EmailRecognizer", "PhoneRecognizer", "CreditCardRecognizer", "IbanRecognizer", "UsSsnRecognizer",
            "AwsAccessKey", "PrivateKey", "GenericSecret", "CodeNames", "ClassificationMarkings"} <= names
    assert all(0 < s.threshold <= 1 for s in rules.recognizers)
    assert rules.ner is None  # no model named by default: NER is optional, never required
    assert "4242 4242 4242 4242" in rules.allow_terms
    # the folder and the file itself are both accepted
    assert [s.name for s in load_rules(SHIPPED / "recognizers.yaml").recognizers] == [s.name for s in rules.recognizers]


def test_a_minimal_file_is_enough(tmp_path):
    rules = load_rules(write(tmp_path, MINIMAL))
    assert [s.entities for s in rules.recognizers] == [["EMAIL_ADDRESS"]]
    assert rules.allow_terms == [] and rules.limits.chunk_chars > 0


def test_unknown_key_names_its_line(tmp_path):
    e = error_of(tmp_path, """\
        recognizers:
          - name: EmailRecognizer
            threshold: 0.5
            treshold: 0.7
        """)
    assert e.line == 4 and "unknown key 'treshold'" in e.message


def test_unknown_top_level_key(tmp_path):
    e = error_of(tmp_path, MINIMAL + "allowlist: [S3]\n")
    assert e.line == 4 and "'allowlist'" in e.message


def test_bad_regex_names_the_line_of_the_regex(tmp_path):
    e = error_of(tmp_path, """\
        recognizers:
          - name: Tickets
            type: custom
            supported_entity: TICKET
            threshold: 0.5
            patterns:
              - name: ticket
                score: 0.8
                regex: 'TCK-(\\d{4}'
        """)
    assert e.line == 9 and "bad regex" in e.message


@pytest.mark.parametrize("value, line", [("1.5", 3), ("-0.1", 3), ("high", 3), ("true", 3)])
def test_threshold_must_be_a_number_between_0_and_1(tmp_path, value, line):
    e = error_of(tmp_path, f"recognizers:\n  - name: EmailRecognizer\n    threshold: {value}\n")
    assert e.line == line and "threshold must be a number between 0 and 1" in e.message


def test_a_threshold_no_match_can_reach_is_refused(tmp_path):
    # US passport patterns score 0.05 and 0.1: with context at most 0.45
    e = error_of(tmp_path, "recognizers:\n  - name: UsPassportRecognizer\n    threshold: 0.6\n")
    assert e.line == 3 and "can never be reached" in e.message


def test_unknown_predefined_recognizer_suggests_a_name(tmp_path):
    e = error_of(tmp_path, "recognizers:\n  - name: EmailRecogniser\n    threshold: 0.5\n")
    assert e.line == 2 and "EmailRecognizer" in e.message


def test_custom_recognizer_needs_an_entity_and_patterns(tmp_path):
    e = error_of(tmp_path, "recognizers:\n  - name: X\n    type: custom\n    threshold: 0.5\n    supported_entity: x\n")
    assert e.line == 5 and "UPPER_CASE" in e.message
    e = error_of(tmp_path, "recognizers:\n  - name: X\n    type: custom\n    threshold: 0.5\n    supported_entity: X\n")
    assert e.line == 2 and "patterns or a deny_list" in e.message


def test_candidates_must_compile_exactly_in_hyperscan(tmp_path):
    e = error_of(tmp_path, """\
        recognizers:
          - name: PhoneRecognizer
            threshold: 0.4
            candidates:
              - '\\+\\d{7,}'
              - '(?<=tel:)\\d{7,}'
        """)
    assert e.line == 6 and "lookarounds" in e.message


def test_unknown_validator_and_option(tmp_path):
    e = error_of(tmp_path, """\
        recognizers:
          - name: Key
            type: custom
            supported_entity: KEY
            threshold: 0.5
            validator: luhn
            patterns: [{name: k, score: 0.9, regex: 'key-\\w{20}'}]
        """)
    assert e.line == 6 and "unknown validator 'luhn'" in e.message
    e = error_of(tmp_path, "recognizers:\n  - name: PhoneRecognizer\n    threshold: 0.4\n    options:\n"
                           "      regions: [US]\n")
    assert e.line == 5 and "unknown option 'regions'" in e.message


def test_duplicate_recognizer_and_yaml_syntax(tmp_path):
    e = error_of(tmp_path, MINIMAL + "  - name: EmailRecognizer\n    threshold: 0.6\n")
    assert e.line == 4 and "defined twice" in e.message
    e = error_of(tmp_path, "recognizers:\n  - name: EmailRecognizer\n    threshold: [0.5\n")
    assert e.line is not None


def test_allow_patterns_need_a_maximum_length(tmp_path):
    e = error_of(tmp_path, MINIMAL + "allow:\n  patterns:\n    - name: anything\n      regex: 'x+'\n")
    assert e.line == 7 and "maximum length" in e.message


def test_require_context_needs_context_words(tmp_path):
    e = error_of(tmp_path, """\
        recognizers:
          - name: Ids
            type: custom
            supported_entity: STAFF_ID
            threshold: 0.5
            require_context: true
            patterns: [{name: id, score: 0.9, regex: 'S\\d{6}'}]
        """)
    assert e.line == 6 and "context words" in e.message


def test_missing_ner_model_is_a_clear_error_and_never_a_download(tmp_path):
    e = error_of(tmp_path, MINIMAL + "ner:\n  model: en_core_web_sm\n")
    assert e.line == 5 and "not installed" in e.message and "never downloads" in e.message


def test_ner_with_an_installed_spacy_pipeline_finds_people(tmp_path):
    """A real spaCy pipeline on disk (an entity ruler: no model can be downloaded here) turns PERSON on."""
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": "Ada Lovelace"}, {"label": "GPE", "pattern": "London"}])
    nlp.to_disk(tmp_path / "pipeline")
    path = write(tmp_path, MINIMAL + "ner:\n  model: ./pipeline\n  threshold: 0.8\n")
    rules = load_rules(path)
    assert rules.ner is not None and rules.ner.entities == ["PERSON", "LOCATION"]

    from dlp.scanner import Scanner

    text = "Ada Lovelace wrote to ada@example.com from London."
    found = {(f.entity, text[f.start:f.end]) for f in Scanner(rules).scan(text)}
    assert found == {("PERSON", "Ada Lovelace"), ("LOCATION", "London"), ("EMAIL_ADDRESS", "ada@example.com")}
