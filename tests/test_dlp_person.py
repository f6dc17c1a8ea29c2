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


# --- issue 12 point 5: names outside the gazetteer's plain shape, and what is not a person ------------------------

def test_diacritics_are_folded_for_the_lookup(scanner):
    assert people(scanner, "Beneficiary: Élodie Marchand. Line manager: Siobhán O'Neill.") == {
        "Élodie Marchand", "Siobhán O'Neill"}
    assert people(scanner, "The refund was approved for Mehmet Öztürk yesterday.") == {"Mehmet Öztürk"}


def test_other_scripts_are_read_in_latin_letters(scanner):
    # Faker's ru_RU and uk_UA names, transliterated (Оксана Шевченко)
    assert people(scanner, "The job owner is Oksana Shevchenko, ask her.") == {"Oksana Shevchenko"}


def test_names_in_capitals(scanner):
    assert people(scanner, "ANANYA KRISHNAN\nBengaluru | ananya.krishnan92@outlook.com") == {"ANANYA KRISHNAN"}
    assert people(scanner, "<HolderName>FATIMA AL MANSOURI</HolderName>") == {"FATIMA AL MANSOURI"}
    assert people(scanner, "CREATE TABLE t (email CITEXT UNIQUE NOT NULL, ORDER BY id);") == set()


def test_last_comma_first_only_as_a_field_of_its_own(scanner):
    assert people(scanner, 'Morgan Stanley,"Nakamura, Yui",VP Procurement') == {"Nakamura, Yui"}
    # a comma between two people is not one name
    assert people(scanner, "Attendees: Chukwuemeka Okonkwo, Mei Wong") == {"Chukwuemeka Okonkwo", "Mei Wong"}


def test_surname_first(scanner):
    text = "Reviewed-by: Chen Jing. Users: Park Ji-woo and Kim Min-jun. Invitation for Mr. Zhang Xiaoming."
    assert people(scanner, text) == {"Chen Jing", "Park Ji-woo", "Kim Min-jun", "Mr. Zhang Xiaoming"}


def test_short_given_names_with_a_known_surname(scanner):
    text = "Mon standup\n- Jo Park: on-call\n- Li Wei: out sick\n- Ed Nolan: reviewing"
    assert people(scanner, text) == {"Jo Park", "Li Wei", "Ed Nolan"}


def test_unknown_names_confirmed_by_their_email_address(scanner):
    assert people(scanner, "From: Haruto Sato <h.sato@kansai-denki.co.jp>") == {"Haruto Sato"}
    assert people(scanner, "2024-05-14,Armen Hakobyan,Picsart,armen.hakobyan@picsart.com,Attendee") == {
        "Armen Hakobyan"}
    assert people(scanner, "Cheers,\nOluwaseun Bakare\nTalent Partner\noluwaseun@ledgerline.io") == {
        "Oluwaseun Bakare"}
    # an address that does not spell the words confirms nothing
    assert people(scanner, "Write to Customer Success <support@acme.io> or Thabo Mokoena <sales@acme.io>.") == set()


def test_unknown_names_after_a_persons_label_or_as_a_speaker(scanner):
    text = ('Landlord: Dariush Farahani\nTenant: Shirin Tehrani\n{"name": "Dilani Jayawardena", "title": "Lead"}\n'
            "Thanks,\nEilidh Robertson\n"
            "Maricel Dela Cruz (Agent): Hi, how can I help?")
    assert people(scanner, text) == {"Dariush Farahani", "Shirin Tehrani", "Dilani Jayawardena", "Eilidh Robertson",
                                     "Maricel Dela Cruz"}
    # a label before words that are not a name's
    assert people(scanner, "Customer: Customer Success\nKnown Issues: none\nTo: Visa Section") == set()


def test_lower_case_names_only_after_a_cue(scanner):
    assert people(scanner, "morning, spoke to john smith at the vendor; cc raj patel") == {"john smith"}
    assert people(scanner, "please ask the team to review grace notes") == set()


def test_firms_places_and_products_named_after_people(scanner):
    text = ("Shares of Morgan Stanley and Charles Schwab rose. Aston Villa won at Villa Park. See Lincoln Park Zoo, "
            "Washington Square Park and Hudson Yards, then drive to Santa Cruz. A Dr Pepper float and a Johnnie "
            "Walker Black highball. The Max Planck Institute and the James Webb Space Telescope. Access to Martin "
            "Luther King Jr. Boulevard. New hire office: Austin TX. Mozilla/5.0 (like Mac OS X). The Dodd-Frank "
            "Wall Street Reform Act. Johnson Controls and Tim Hortons. Downtown Ho Chi Minh City.")
    assert people(scanner, text) == set()


def test_a_title_and_a_surname_is_a_name(scanner):
    assert people(scanner, "Thank you for referring Mr. Murphy. Dear Ms. Harrington,") == {"Mr. Murphy",
                                                                                          "Ms. Harrington"}
