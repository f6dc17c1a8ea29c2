"""Obfuscated values are found, on the exact characters of the original, and the prefilter gate knows it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from dlp.normalize import Normalizer
from dlp.redact import Placeholders, redact_text
from dlp.scanner import Scanner

RULES = Path(__file__).resolve().parent.parent / "rules"
GH = "ghp_aB3dEfGh1jKlMn0pQrStUvWxYz0123456789"
AWS = "AKIA4QWE7RTY2UIO3PLK"
ZW = "\u200b"

# (entity, the value as sent, obfuscated): the prompt is f"please use {value} for this"
CASES = [
    # NFKC: fullwidth letters and digits
    ("EMAIL_ADDRESS", "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
    ("CREDIT_CARD", "４１１１ １１１１ １１１１ １１１１"),
    # invisible characters
    ("GITHUB_TOKEN", GH[:3] + ZW + GH[3:9] + "\u2060" + GH[9:]),
    ("AWS_ACCESS_KEY", "\ufeff".join(AWS)),
    ("EMAIL_ADDRESS", "jane\u00ad.doe@exa\u202emple.com"),
    ("AWS_ACCESS_KEY", AWS[:4] + "\U000e0041\U000e0042" + AWS[4:]),
    # Unicode spaces
    ("CREDIT_CARD", "4111\u00a01111\u00a01111\u00a01111"),
    ("CREDIT_CARD", "4111\u20091111\u20091111\u20091111"),
    # confusables (Cyrillic and Greek look-alikes)
    ("EMAIL_ADDRESS", "јоhn@ехаmрlе.соm"),
    ("GITHUB_TOKEN", "ghр_" + GH[4:]),
    ("AWS_ACCESS_KEY", "АКІА" + AWS[4:]),
    # HTML entities
    ("EMAIL_ADDRESS", "jane&#64;example.com"),
    ("EMAIL_ADDRESS", "jane&commat;example&period;com"),
    ("EMAIL_ADDRESS", "jane&#x40;example.com"),
    # percent-encoding
    ("EMAIL_ADDRESS", "jane%40example.com"),
    ("GITHUB_TOKEN", "ghp%5F" + GH[4:]),
    # separators inside digit runs
    ("CREDIT_CARD", "4111.1111.1111.1111"),
    ("CREDIT_CARD", "4111_1111_1111_1111"),
    ("CREDIT_CARD", "4111/1111/1111/1111"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    # spaced out
    ("GITHUB_TOKEN", " ".join(GH)),
    ("AWS_ACCESS_KEY", " ".join(AWS)),
    ("CREDIT_CARD", " ".join("4111111111111111")),
    # key prefixes in another case
    ("GITHUB_TOKEN", "GHP_" + GH[4:]),
    ("AWS_ACCESS_KEY", "akia" + AWS[4:]),
    ("OPENAI_KEY", "Sk-proj-" + "Ab3dEfGh1jKlMn0pQrStUvWxYz0123456789AbCdEfGh"),
    # base64 and hex of text holding a value
    ("AWS_ACCESS_KEY", base64.b64encode(f"aws_access_key_id = {AWS}".encode()).decode()),
    ("GITHUB_TOKEN", base64.urlsafe_b64encode(f"token {GH}".encode()).decode().rstrip("=")),
    ("EMAIL_ADDRESS", "jane.doe@example.com".encode().hex()),
    ("CREDIT_CARD", "card 4111 1111 1111 1111".encode().hex().upper()),
]


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.from_rules(RULES)


@pytest.mark.parametrize("entity, value", CASES, ids=[f"{e}-{i}" for i, (e, _) in enumerate(CASES)])
def test_an_obfuscated_value_is_found_on_its_original_characters(scanner, entity, value):
    text = f"please use {value} for this"
    found = [(f.entity, text[f.start:f.end]) for f in scanner.scan(text)]
    assert (entity, value) in found
    assert entity in scanner.could_find(text)  # the proxy's gate must not declare it clean


def test_a_flood_of_encoded_runs_does_not_hide_a_value(scanner):
    """Every run is decoded: before, 16 decoded views (or 256 runs tried) per text were kept, so harmless base64
    sentences before the encoded key hid it, and the proxy's gate called the text clean."""
    harmless = " ".join(base64.b64encode(f"note {i}: the build passed on the first try".encode()).decode()
                        for i in range(300))
    value = base64.b64encode(f"aws_access_key_id = {AWS}".encode()).decode()
    text = f"logs: {harmless} key: {value}"
    assert ("AWS_ACCESS_KEY", value) in [(f.entity, text[f.start:f.end]) for f in scanner.scan(text)]
    # the proxy's gate does not read that many decoded characters on its event loop: it cannot say (the workers scan)
    assert scanner.could_find(text) is None


@pytest.mark.parametrize("entity, value", CASES[:6], ids=[f"{e}-{i}" for i, (e, _) in enumerate(CASES[:6])])
def test_redaction_rewrites_the_whole_obfuscated_value(scanner, entity, value):
    text = f"please use {value} for this"
    assert redact_text(text, scanner.scan(text), Placeholders()) == f"please use <{entity}_1> for this"


NEGATIVES = [
    "The quarterly review went well; the team shipped the migration and closed the backlog before the sprint ended.",
    "def get_user_account_settings(request):\n    return Settings.objects.filter(user=request.user).first()\n",
    "Upgrade from version 2.14.0 to 3.1.4-rc.2 (build 20240115.3), kernel 6.8.0-45-generic.",
    "Request 3f2b8c4e-9a1d-4e7b-8c3a-2d5e6f7a8b9c and 123e4567-e89b-12d3-a456-426614174000 both failed.",
    "Meeting on 2024-01-15, then 15/01/2024 and 01.15.2024 at 10:30; deadline 2024/02/29.",
    "Servers 10.0.0.1, 192.168.100.200 and 172.16.254.1 answered; fe80::1 did not.",
    "Café, naïve, Zürich, Ελλάδα, Привет мир, 東京 — “quoted” and don’t – ranges 2019–2020.",
    "See https://example.com/search?q=hello%20world&amp;page=2 and the docs at /usr/share/doc/python3.",
    "The matrix rows are 1 0 0 1 1 0 1 0 and 0 1 1 0 1 0 0 1, with a b c d e f g h as labels.",
    "SGVsbG8gd29ybGQsIHRoaXMgaXMganVzdCBhIGdyZWV0aW5nLg== is a plain greeting; sha 9fceb02d0ae598e95dc970b74767f19372d61af8.",
]


@pytest.mark.parametrize("text", NEGATIVES, ids=range(len(NEGATIVES)))
def test_ordinary_text_gets_no_new_findings(scanner, text):
    plain = scanner._scan_region(text, scanner.chunks(len(text))[0], 0)
    assert scanner.scan(text) == plain


def test_ascii_prose_without_encodings_has_no_view():
    normalizer = Normalizer(["ghp_", "AKIA"])
    assert normalizer.views(NEGATIVES[0]) == []
    assert normalizer.views(NEGATIVES[1]) == []
    assert normalizer.views("Project Nightjar ships in Q3 with 4111 1111 1111 1111 as the test card.") == []


def test_a_view_maps_every_character_back():
    text = "x j&#97;ne@ex" + ZW + "ample.com y"
    [view] = Normalizer().views(text)
    assert view.text == "x jane@example.com y"
    i = view.text.index("a")
    assert text[slice(*view.span(i, i + 1))] == "&#97;"
    j = view.text.index("example")
    assert text[slice(*view.span(j, j + len("example")))] == "ex" + ZW + "ample"


def test_a_view_is_a_window_around_the_change_not_the_whole_text():
    filler = "nothing to see in this line of text. " * 200
    text = filler + "mail jane&#64;example.com" + filler
    [view] = Normalizer().views(text)
    assert len(view.text) < 700 and "jane@example.com" in view.text


@pytest.mark.parametrize("left, right, entity, pieces", [
    (f"my key is {GH[:20]}", f"{GH[20:]} thanks", "GITHUB_TOKEN", (GH[:20], GH[20:])),
    ("card 4111 1111", " 1111 1111 expires soon", "CREDIT_CARD", ("4111 1111", " 1111 1111")),
    (f"export AWS_ACCESS_KEY_ID={AWS[:9]}", AWS[9:], "AWS_ACCESS_KEY", (AWS[:9], AWS[9:])),
])
def test_a_value_split_across_two_parts_is_found_in_both(scanner, left, right, entity, pieces):
    texts = ["first message", left, right]
    found = {(f.part, texts[f.part][f.start:f.end]) for f in scanner.scan_parts(texts) if f.entity == entity}
    assert found == {(1, pieces[0]), (2, pieces[1])}
    assert not any(entity in scanner.could_find(t) for t in texts)  # each part alone looks clean...
    assert entity in scanner.could_find_parts(texts)  # ...but not together


def test_a_whole_value_next_to_the_following_part_is_not_split(scanner):
    found = scanner.scan_parts(["mail bob@example.com", "Thanks, see you"])
    assert [(f.part, f.entity) for f in found] == [(0, "EMAIL_ADDRESS")]


@pytest.mark.parametrize("text, value", [
    ("the Project-Nightjar roadmap", "Project-Nightjar"),
    ("ProjectNightjar slipped", "ProjectNightjar"),
    ("both Nightjars are late", "Nightjars"),
    ("Initech's renewal", "Initech's"),
    ("the Globex’s contract", "Globex’s"),
    ("Umbrella-Health signed", "Umbrella-Health"),
])
def test_company_terms_match_their_inflections(scanner, text, value):
    assert [text[f.start:f.end] for f in scanner.scan(text) if f.entity in ("CODE_NAME", "CUSTOMER_NAME")] == [value]


def test_company_terms_stay_whole_words(scanner):
    assert not [f for f in scanner.scan("Initechnology and Nightjarring are other words") if f.entity == "CODE_NAME"
                or f.entity == "CUSTOMER_NAME"]
