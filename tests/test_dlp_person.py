"""PERSON without a model: the gazetteer recognizer (dlp.recognizers.PersonNameRecognizer) through the scanner."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlp.scanner import Scanner

RULES = Path(__file__).resolve().parent.parent / "rules"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.from_rules(RULES)


def people(scanner: Scanner, text: str) -> set[str]:
    return {text[f.start:f.end] for f in scanner.scan(text) if f.entity == "PERSON"}


def test_known_first_names_with_a_surname_and_titles(scanner):
    text = "Ticket from Maria Gonzalez; cc Sofia Rossi. Dear Mr. Patel, see Dr. Amara Okafor on Monday."
    assert people(scanner, text) == {"Maria Gonzalez", "Sofia Rossi", "Mr. Patel", "Dr. Amara Okafor"}


def test_trailing_punctuation_and_common_words_are_not_part_of_a_name(scanner):
    assert people(scanner, "INSERT INTO staff VALUES ('Elena Popescu', 3);") == {"Elena Popescu"}
    assert people(scanner, "Signed: Maria Gonzalez Support") == {"Maria Gonzalez"}


def test_places_and_capitalised_words_are_not_names(scanner):
    text = ("The office moved to Jackson Street near Victoria Station. May Contain Nuts. Grant Access only after "
            "review. The Archer AX55 router. His German Steuer-ID is pending.")
    assert people(scanner, text) == set()


def test_a_first_name_that_is_a_word_needs_a_known_surname(scanner):
    assert people(scanner, "The gift came from May Lindqvist.") == {"May Lindqvist"}
    assert people(scanner, "Summer Sale starts in June.") == set()


def test_the_prefilter_gate_says_person_where_a_name_could_be(scanner):
    assert "PERSON" in scanner.could_find("please reply to Maria Gonzalez")
    assert scanner.could_find("summarise the quarterly figures in three bullet points") == frozenset()
