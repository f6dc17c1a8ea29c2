"""Secrets in config files and connection strings, and passports of other countries (issue 12 point 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlp.scanner import Scanner

RULES = Path(__file__).resolve().parent.parent / "rules"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.from_rules(RULES)


def found(scanner: Scanner, text: str) -> set[tuple[str, str]]:
    return {(f.entity, text[f.start:f.end]) for f in scanner.scan(text)}


@pytest.mark.parametrize("url", [
    "redis://:mOBpq7HtPeqmenf2b1@redis:6379/0",                                  # a password and no user
    "postgresql+psycopg2://etl_loader:JlJITAxVGtr6vhrn8A@warehouse.internal:5432/dw",  # SQLAlchemy dialect+driver
    "mysql+pymysql://app:Q3vLr8TzW1bN8cYd@db.internal/app",
    "snowflake://dbt_runner:ALhTriQrKVyRO4tjCE@xy12345.eu-central-1/ANALYTICS?warehouse=WH",
    "mongodb+srv://svc:2NyJ2eBQ3Ddx86zBWV@cluster0.abcde.mongodb.net/orders",
    "amqp://guest:Zx8Lm2Qp7Rt4Vw9K@rabbit:5672/",
])
def test_connection_strings_of_other_schemes(scanner, url):
    assert found(scanner, f"DATABASE_URL={url}\n") == {("DB_CONNECTION_STRING", url)}


def test_a_placeholder_password_in_a_url_is_not_a_secret(scanner):
    assert found(scanner, "REDIS_URL=redis://:${REDIS_PASSWORD}@redis:6379/0\n") == set()


@pytest.mark.parametrize("line, value", [
    ("<password>Ow.Q1*9TIHgi#EsH</password>", "Ow.Q1*9TIHgi#EsH"),                    # maven settings.xml
    ("  adminPassword: rj8sK2.d#vIKq7s*", "rj8sK2.d#vIKq7s*"),                          # helm values, camelCase
    ('SECRET_KEY = "django-insecure-)lff$l@h5o5qz#)y7n+o^e_r5j4#0@8lzb7%i0uo"',
     "django-insecure-)lff$l@h5o5qz#)y7n+o^e_r5j4#0@8lzb7%i0uo"),                     # Django
    ("JWT_SIGNING_KEY: 0e300ccd475841f730bce4b117ec0b892d7576ba7632cc33fc97e929d3dc02c7",
     "0e300ccd475841f730bce4b117ec0b892d7576ba7632cc33fc97e929d3dc02c7"),
])
def test_passwords_and_keys_in_config_files(scanner, line, value):
    assert ("GENERIC_SECRET", value) in found(scanner, line)


def test_code_and_placeholders_under_those_keys_are_not_secrets(scanner):
    text = "<password>${env.NEXUS_PASSWORD}</password>\nadminPassword: changeme\nSECRET_KEY = get_secret_key()\n"
    assert found(scanner, text) == set()


def test_a_slack_placeholder_is_not_a_token(scanner):
    assert found(scanner, "SLACK_BOT_TOKEN=xoxb-your-bot-token\n") == set()


def test_an_aws_secret_key_next_to_secret_is_typed_as_one(scanner):
    text = "The old secret was gQti5t0t7vimU0LZv4HetdKdAY2IooKVvcQic5d8 - it had been in a public gist."
    assert found(scanner, text) == {("AWS_SECRET_KEY", "gQti5t0t7vimU0LZv4HetdKdAY2IooKVvcQic5d8")}


@pytest.mark.parametrize("text, number", [
    ("holder of Chinese passport number E48291735, to attend", "E48291735"),                 # US shape
    ("checkin room=512 nationality=NGA passport=A09382716 card_last4=8812", "A09382716"),     # US shape
    ("checkin room=514 nationality=POL passport=EK7391024 card_last4=0391", "EK7391024"),    # UK shape
    ('"passport": {"number": "TK4829173", "country": "JPN"}', "TK4829173"),                  # UK shape
    ('"type": "passport",\n  "number": "C4829173", "issuing_country": "VNM"', "C4829173"),    # Indian shape
    ('"passport": {"number": "PAB482913", "country": "ESP"}', "PAB482913"),                  # three letters
])
def test_a_passport_whose_stated_country_has_no_recognizer_of_its_own(scanner, text, number):
    assert found(scanner, text) == {("PASSPORT_NUMBER", number)}


def test_a_passport_stated_to_be_american_or_british_keeps_its_type(scanner):
    assert found(scanner, "nationality=USA passport=A09382716") == {("US_PASSPORT", "A09382716")}
    assert found(scanner, "My British passport number is UH7654003.") == {("UK_PASSPORT", "UH7654003")}
