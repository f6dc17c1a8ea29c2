"""The DLP scanner: what it finds, that the prefilter loses nothing, chunking, and the false-positive controls."""

from __future__ import annotations

import base64
import os
import random
import textwrap
from pathlib import Path

import pytest
from presidio_analyzer import EntityRecognizer, PatternRecognizer, RecognizerResult

from dlp.recognizers import match_patterns
from dlp.rules import load_rules
from dlp.scanner import Finding, Scanner, _outside_markup, resolve_overlaps
from tests.test_dlp_corpus import load_corpus

RULES = Path(__file__).resolve().parent.parent / "rules"
AWS_KEY = "AKIA4QWE7RTY2UIO3PLK"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.from_rules(RULES)


@pytest.fixture(scope="module")
def reference(scanner) -> Scanner:
    """Every recognizer on the whole text: Presidio's own way, with the same post-processing."""
    return Scanner(scanner.rules, exhaustive=True)


def found(scanner: Scanner, text: str) -> set[tuple[str, str]]:
    return {(f.entity, text[f.start:f.end]) for f in scanner.scan(text)}


def mixed_text(seed: int, size: int) -> str:
    """Prose, code and logs with values in them, different for every seed (a property-style check)."""
    rng = random.Random(seed)
    samples = [s["text"] for s in load_corpus()]
    out = []
    while sum(map(len, out)) < size:
        out.append(rng.choice(samples))
    return "\n".join(out)


def test_a_prompt_with_pii_secrets_and_company_terms(scanner):
    text = ("CONFIDENTIAL - INTERNAL. Project Nightjar update for Globex Corporation: call Jane on "
            "+44 20 7946 0018 or mail jane.doe@acme-corp.com; her SSN is 536-22-8470.\n"
            f"export AWS_ACCESS_KEY_ID={AWS_KEY}\n"
            "db = 'postgres://app:S3cr3t-Pa55@db.internal.example.com:5432/app'\n")
    assert found(scanner, text) == {
        ("CLASSIFICATION_MARKING", "CONFIDENTIAL - INTERNAL"), ("CODE_NAME", "Project Nightjar"),
        ("CUSTOMER_NAME", "Globex Corporation"), ("PHONE_NUMBER", "+44 20 7946 0018"),
        ("EMAIL_ADDRESS", "jane.doe@acme-corp.com"), ("US_SSN", "536-22-8470"), ("AWS_ACCESS_KEY", AWS_KEY),
        ("DB_CONNECTION_STRING", "postgres://app:S3cr3t-Pa55@db.internal.example.com:5432/app")}


def test_findings_are_sorted_deterministic_and_never_overlap(scanner):
    text = mixed_text(1, 20_000)
    first, second = scanner.scan(text), scanner.scan(text)
    assert first == second and first == sorted(first, key=lambda f: (f.start, f.end, f.entity))
    assert all(a.end <= b.start for a, b in zip(first, first[1:]))


@pytest.mark.parametrize("sample", load_corpus(), ids=lambda s: s["id"])
def test_the_prefilter_loses_nothing_on_the_corpus(scanner, reference, sample):
    """Windows around prefilter hits give exactly what every recognizer run on the whole text gives."""
    assert scanner.scan(sample["text"]) == reference.scan(sample["text"])


@pytest.mark.parametrize("seed", range(5))
def test_the_prefilter_loses_nothing_on_mixed_text(scanner, reference, seed):
    text = mixed_text(seed, 30_000)
    assert scanner.scan(text) == reference.scan(text)


def test_could_find_is_exact_where_it_says_so(scanner, reference):
    """The proxy skips the workers for a text whose answer is empty, and sends a prompt before its scan ends when
    no rule in force looks at the entities in the answer: so every entity the scan finds (judged by every
    recognizer on the whole text) must be in it. And ordinary clean prose must get an empty answer, or the gate
    saves nothing."""
    lines = [line for s in load_corpus() for line in s["text"].splitlines() if line.strip()]
    texts = [s["text"] for s in load_corpus()] + lines + [mixed_text(seed, 3_000) for seed in range(20)]
    answers = {t: scanner.could_find(t) for t in texts}
    assert all({f.entity for f in reference.scan(t)} <= answers[t] for t in texts if answers[t] is not None)
    assert sum(answers[t] == frozenset() for t in texts) > 50
    assert sum(answers[t] is None for t in texts) < len(texts) / 10  # it answers for ordinary prompt sizes
    assert scanner.could_find("Summarise the quarterly figures for the board in three bullet points. " * 50) == set()
    assert scanner.could_find("mail jane.doe@acme-corp.com") == {"EMAIL_ADDRESS"}  # only what could be there


def test_could_find_cannot_say_for_the_exhaustive_mode_or_long_texts(scanner, reference):
    assert reference.could_find("hello") is None
    assert scanner.could_find("hello " * (scanner.rules.limits.chunk_chars // 6 + 1)) is None


def test_pattern_loop_agrees_with_presidio_analyze(scanner):
    """dlp.recognizers.match_patterns is PatternRecognizer.analyze without its bookkeeping: same results."""
    texts = [s["text"] for s in load_corpus()]
    for spec in scanner.specs:
        recognizer = spec.recognizer
        if not isinstance(recognizer, PatternRecognizer):
            continue
        for text in texts:
            theirs = {(r.start, r.end, r.score) for r in recognizer.analyze(text, spec.entities, None)}
            ours = [RecognizerResult(spec.entities[0], s, e, score) for s, e, score in match_patterns(recognizer, text)]
            ours = {(r.start, r.end, r.score) for r in EntityRecognizer.remove_duplicates(ours)}
            assert ours == theirs, (spec.name, text[:80])


def test_a_secret_straddling_a_chunk_boundary_is_found(tmp_path):
    """Above the size cap the text is scanned in overlapping chunks, never skipped: a value cut by a chunk edge
    is found whole by the chunk that overlaps it, and exactly once."""
    rules_text = (RULES / "recognizers.yaml").read_text(encoding="utf-8")
    rules_text = rules_text.replace("chunk_chars: 262144", "chunk_chars: 16384").replace(
        "chunk_overlap: 16384", "chunk_overlap: 4096")
    (tmp_path / "recognizers.yaml").write_text(rules_text, encoding="utf-8")
    small = Scanner.from_rules(tmp_path)
    assert small.rules.limits.chunk_chars == 16384
    from tests.test_dlp_corpus import load_corpus as corpus

    pem = next(e["value"] for s in corpus() for e in s["expect"] if e["entity"] == "PRIVATE_KEY" and "\n" in e["value"])
    filler = "The quarterly numbers look fine, nothing sensitive here. " * 400  # ~23 KB, no findings
    chunks = small.chunks(3 * len(filler))
    assert len(chunks) >= 4
    text = filler * 3
    # put a value across every chunk edge (the edge falls inside the value)
    for i, chunk in enumerate(chunks[:-1]):
        value = pem if i % 2 else f"token in use: {AWS_KEY} (rotate it)"
        cut = chunk.hi - len(value) // 2
        text = text[:cut] + value + text[cut + len(value):]
    result = small.scan(text)
    assert [f.entity for f in result].count("AWS_ACCESS_KEY") == len(range(0, len(chunks) - 1, 2))
    assert [f.entity for f in result].count("PRIVATE_KEY") == len(range(1, len(chunks) - 1, 2))
    whole = Scanner(load_rules(RULES))  # one chunk: the cap of the shipped rules is far above this text
    assert result == whole.scan(text)


def test_base64_blobs_are_skipped_but_text_around_them_is_scanned(scanner):
    blob = base64.b64encode(os.urandom(20_000)).decode()
    text = f'{{"image": "data:image/png;base64,{blob}", "note": "send it to jane.doe@acme-corp.com"}}'
    assert found(scanner, text) == {("EMAIL_ADDRESS", "jane.doe@acme-corp.com")}


def test_offsets_are_character_offsets_in_non_ascii_text(scanner):
    text = "Grüße aus Zürich 🇨🇭 — 電話は +41 44 668 18 00 です、メール: müller@example.ch, Schlüssel " + AWS_KEY
    assert found(scanner, text) == {("PHONE_NUMBER", "+41 44 668 18 00"), ("EMAIL_ADDRESS", "müller@example.ch"),
                                    ("AWS_ACCESS_KEY", AWS_KEY)}


def test_context_words_make_weak_matches_count(scanner):
    assert found(scanner, "Passport number: 287131127, issued 2019.") == {("US_PASSPORT", "287131127")}
    assert found(scanner, "Build 287131127 finished.") == set()
    # in code, identifiers count as words: passportNumber, passport_number
    assert found(scanner, 'traveller = {"passportNumber": "287131127"}') == {("US_PASSPORT", "287131127")}


def test_a_column_header_is_context_for_its_cells(scanner):
    csv = "name,passport_number,order_id\nJane Doe,287131127,554433221\nOmar Haddad,911502778,554433222\n"
    assert found(scanner, csv) == {("US_PASSPORT", "287131127"), ("US_PASSPORT", "911502778"),
                                   ("PERSON", "Jane Doe"), ("PERSON", "Omar Haddad")}  # the name cells are people


def test_checksum_only_ids_need_context(scanner):
    nhs = "943 476 5919"  # a valid NHS number (mod 11), as one in eleven 3-3-4 digit runs is
    assert found(scanner, f"ref {nhs}") == {("PHONE_NUMBER", nhs)}  # it is also a North-American phone number
    assert found(scanner, f"NHS number {nhs}") == {("UK_NHS", nhs)}


def test_phone_numbers_must_look_like_phone_numbers(scanner):
    assert found(scanner, "Call me at (212) 734-5568 tomorrow.") == {("PHONE_NUMBER", "(212) 734-5568")}
    assert found(scanner, "phone: 2127345568") == {("PHONE_NUMBER", "2127345568")}
    # digit runs that phonenumbers would accept: a timestamp, an order number, an IP address
    assert found(scanner, "ts=1715509381 order 2127345568 at 10.20.30.40") == {("IP_ADDRESS", "10.20.30.40")}


def test_allow_lists(scanner):
    text = ("Test with 4242 4242 4242 4242 or 4242-4242-4242-4242; docs key AKIAIOSFODNN7EXAMPLE. "
            "Trace 123e4567-e89b-12d3-a456-426614174000, commit 9fceb02d0ae598e95dc970b74767f19372d61af8.")
    assert found(scanner, text) == set()


def test_secret_validators_reject_placeholders_and_code(scanner):
    text = textwrap.dedent("""\
        GITHUB_TOKEN=ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX
        password = get_password()
        token = request.headers["Authorization"]
        DB_PASSWORD=${DB_PASSWORD}
        url = "postgres://app:${PGPASSWORD}@db:5432/app"
        """)
    assert found(scanner, text) == set()
    assert found(scanner, "password: Tr0ub4dor&3xyz") == {("GENERIC_SECRET", "Tr0ub4dor&3xyz")}


def test_a_finding_never_swallows_a_markup_tag(tmp_path):
    path = tmp_path / "recognizers.yaml"
    path.write_text(textwrap.dedent("""\
        recognizers:
          - name: Notes
            type: custom
            supported_entity: NOTE
            threshold: 0.5
            patterns: [{name: note, score: 0.9, regex: 'note:[^\\n]+'}]
        """), encoding="utf-8")
    text = "<doc><p>note: call the bank</p><p>ok</p></doc>"
    result = Scanner.from_rules(path).scan(text)
    assert [text[f.start:f.end] for f in result] == ["note: call the bank"]
    assert _outside_markup("<a>x</a>", 0, 8) == (3, 4) and _outside_markup("<a></a>", 0, 7) is None


def test_overlaps_resolved_by_score_then_length():
    a = Finding("EMAIL_ADDRESS", 10, 30, 1.0)
    b = Finding("URL", 12, 30, 0.5)
    c = Finding("CREDIT_CARD", 40, 53, 1.0)
    d = Finding("SLACK_TOKEN", 35, 70, 1.0)
    assert resolve_overlaps([b, a, c, d]) == [a, d]
    assert resolve_overlaps([Finding("X", 0, 5, 0.5, part=1), Finding("Y", 0, 5, 0.5, part=0)]) == [
        Finding("Y", 0, 5, 0.5, part=0), Finding("X", 0, 5, 0.5, part=1)]


def test_overlaps_resolved_as_the_greedy_rule_says_on_random_findings():
    """Whatever the bookkeeping (a mark per taken character), the result is the greedy rule's: in rank order, a
    finding is kept unless it overlaps one kept before it in its part (values and threats apart)."""
    rng = random.Random(7)
    for _ in range(200):
        findings = []
        for _ in range(rng.randint(1, 40)):
            start = rng.randint(0, 120)
            findings.append(Finding(rng.choice(["EMAIL_ADDRESS", "PHONE_NUMBER", "PROMPT_INJECTION"]), start,
                                    start + rng.randint(1, 30), rng.choice([0.4, 0.85, 1.0]), rng.randint(0, 2)))
        expected: list[Finding] = []
        for f in sorted(set(findings), key=lambda f: (-f.score, -(f.end - f.start), f.part, f.start, f.entity)):
            threat = f.entity == "PROMPT_INJECTION"
            if not any(k.part == f.part and (k.entity == "PROMPT_INJECTION") == threat
                       and k.start < f.end and f.start < k.end for k in expected):
                expected.append(f)
        assert resolve_overlaps(findings) == sorted(expected, key=lambda f: (f.part, f.start, f.end, f.entity))


def test_scan_parts_numbers_the_parts(scanner):
    result = scanner.scan_parts(["nothing", "mail jane.doe@acme-corp.com", "", AWS_KEY])
    assert [(f.part, f.entity) for f in result] == [(1, "EMAIL_ADDRESS"), (3, "AWS_ACCESS_KEY")]


def test_compiled_prefilter_is_cached_on_disk(tmp_path, monkeypatch):
    """(Rules of one recognizer: the shipped ones take seconds to compile, and this test compiles three times.)"""
    monkeypatch.setenv("GATEWAY_DLP_CACHE", str(tmp_path))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "recognizers.yaml").write_text(textwrap.dedent("""\
        language: en
        recognizers:
          - {name: Ticket, type: custom, supported_entity: TICKET, threshold: 0.5,
             patterns: [{name: ticket, regex: 'TCK-\\d{6}', score: 0.9}]}
        """))
    rules = load_rules(tmp_path / "rules")
    text = "see TCK-123456 and TCK-654321, not TCK-12"
    first = Scanner(rules).scan(text)
    assert [f.entity for f in first] == ["TICKET", "TICKET"]
    cached = list(tmp_path.glob("prefilter-*.hsdb"))
    assert len(cached) == 1
    assert Scanner(rules).scan(text) == first  # loaded from the cache
    cached[0].write_bytes(b"{not json\n" + os.urandom(64))  # a damaged cache file is ignored and rewritten
    assert Scanner(rules).scan(text) == first
    assert cached[0].read_bytes()[:1] == b"{" and Scanner(rules).scan(text) == first
    for i in range(12):  # databases of older rules are pruned
        (tmp_path / f"prefilter-old{i}.hsdb").write_bytes(b"x")
        os.utime(tmp_path / f"prefilter-old{i}.hsdb", (i, i))
    cached[0].unlink()
    Scanner(rules)
    assert len(list(tmp_path.glob("prefilter-*.hsdb"))) == 8 and cached[0].exists()


def test_the_shipped_rules_compile_into_one_hyperscan_database(scanner):
    """No expression of the shipped rules needs the slow per-expression fallback (or runs on whole texts)."""
    hyperscan = pytest.importorskip("hyperscan")
    plan = scanner._prefilter._plan(scanner.rules.context)
    hyperscan.Database().compile(expressions=[p[0] for p in plan], ids=list(range(len(plan))), elements=len(plan),
                                 flags=[p[1] for p in plan])
    assert scanner._prefilter._always == []
