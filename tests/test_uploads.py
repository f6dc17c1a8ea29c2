"""Uploads read whole (providers/uploads.py): text files to their end, files sniffed by their bytes, PDF text from a
worker process, every multipart part. Every file here is real bytes built in the test."""

from __future__ import annotations

import asyncio
import base64

import pytest

from providers import uploads
from tests.support.pdf import pdf
from tests.support.wire import parse

SECRET = "AKIAIOSFODNN7EXAMPLE"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 64


def attach(data: bytes, name: str = "", mime: str = "application/octet-stream") -> tuple[uploads.Attachment, list]:
    warnings: list[str] = []
    return uploads.file_attachment(name, mime, len(data), data, warn=warnings.append), warnings


def multipart(*parts: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body from (Content-Disposition parameters, content) pairs, each part as given."""
    boundary = "----uploadtest"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; {disp}\r\n\r\n".encode() + content + b"\r\n"
                    for disp, content in parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


# --- text to its end ------------------------------------------------------------------------------------------

def test_a_long_text_file_is_scanned_to_its_end():
    data = b"x" * (600 * 1024) + f" key={SECRET} ".encode() + b"y" * (100 * 1024)  # 700 KB, the secret at 600 KB
    att, _ = attach(data, "notes.txt", "text/plain")
    assert SECRET in att.text and att.inspected and len(att.text) == len(data)

    body, headers = multipart(('name="file"; filename="notes.txt"', data), ('name="purpose"', b"assistants"))
    [att] = parse("/v1/files", body, headers=headers).exchange.messages[0].attachments
    assert SECRET in att.text and att.inspected

    b64 = base64.b64encode(data).decode()
    att = uploads.base64_attachment(f"data:text/plain;base64,{b64}", "notes.txt", "")
    assert (SECRET in att.text, att.inspected, att.size) == (True, True, len(data))


# --- sniffed by content ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mime", [("blob", "application/octet-stream"), ("", ""), ("photo.png", "image/png"),
                                       ("upload", "application/x-unknown")])
def test_text_under_any_label_is_read(name, mime):
    data = f"DB_PASSWORD=hunter2\naws_key={SECRET}\n".encode()
    att, _ = attach(data, name, mime)
    assert (att.text, att.inspected) == (data.decode(), True)


def test_utf16_with_bom_is_read_binary_is_not():
    att, _ = attach(f"key {SECRET}".encode("utf-16"))
    assert (att.text, att.inspected) == (f"key {SECRET}", True)
    for binary in (PNG, bytes(range(256)) * 40, b"\x1f\x8b\x08\x00" + bytes(500)):
        att, warnings = attach(binary)
        assert (att.text, att.inspected, warnings) == (None, False, [])


def test_text_that_turns_binary_is_scanned_so_far_and_not_inspected():
    att, warnings = attach(f"header {SECRET}\n".encode() * 1000 + b"\x00PK\x03\x04" + bytes(100))
    assert SECRET in att.text and not att.inspected
    assert "binary data after byte" in warnings[0]


def test_a_large_binary_part_keeps_only_its_size():
    image = PNG * 100
    body, headers = multipart(('name="image"; filename="a.bin"', image))
    [part] = uploads.parse_form(body, headers["content-type"]).files()
    assert (part.size, part.keep, len(part.head)) == (len(image), False, 0)
    assert not part.attachment().inspected


# --- PDF ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mime", [("report.pdf", "application/pdf"), ("blob", "application/octet-stream"),
                                       ("notes.txt", "text/plain")])  # the header wins over a declared type
def test_pdf_text_is_extracted_whatever_the_declared_type(name, mime):
    att, warnings = attach(pdf("Quarterly numbers", f"aws {SECRET}"), name, mime)
    assert "Quarterly numbers" in att.text and SECRET in att.text
    assert (att.inspected, warnings) == (True, [])


def test_pdf_through_the_providers():
    data = pdf(f"aws {SECRET}")
    b64 = base64.b64encode(data).decode()
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"filename": "r.pdf", "file_data": f"data:application/pdf;base64,{b64}"}}]}]}
    [att] = parse("/v1/chat/completions", chat).exchange.messages[0].attachments
    assert SECRET in att.text and att.inspected

    responses = {"model": "gpt-4o", "input": [{"role": "user", "content": [
        {"type": "input_file", "filename": "r", "file_data": b64}]}]}
    [att] = parse("/v1/responses", responses).exchange.messages[0].attachments
    assert SECRET in att.text and att.inspected

    body, headers = multipart(('name="purpose"', b"user_data"),
                              ('name="file"; filename="r"', data))
    [att] = parse("/v1/files", body, headers=headers).exchange.messages[0].attachments
    assert SECRET in att.text and att.inspected


@pytest.mark.parametrize("data,why", [
    (pdf(f"aws {SECRET}", password="s3cret"), "encrypted"),
    (b"%PDF-1.7\n" + bytes(range(256)) * 40, "unreadable"),
    (b"%PDF-1.4\n%%EOF\n", "unreadable"),
    (bytes(range(256)) * 4, "no PDF header"),  # named and typed a PDF, but not one
])
def test_a_pdf_that_cannot_be_read_is_a_warning_not_a_crash(data, why):
    att, warnings = attach(data, "doc.pdf", "application/pdf")
    assert not att.inspected and SECRET not in (att.text or "")
    assert len(warnings) == 1 and why in warnings[0] and warnings[0].startswith("doc.pdf: ")


def test_an_unreadable_pdf_in_an_anthropic_document_is_warned_on_the_exchange():
    b64 = base64.b64encode(pdf("x", password="pw")).decode()
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": b64}}]}]}
    ex = parse("/v1/messages", body, host="api.anthropic.com", hints=("anthropic",)).exchange
    [att] = ex.messages[0].attachments
    assert (att.kind, att.inspected) == ("document", False)
    assert any("encrypted" in w for w in ex.warnings)


def test_pdf_bounds_pages_and_time(monkeypatch):
    data = pdf(*(f"page {i} {SECRET}" for i in range(30)))
    monkeypatch.setattr(uploads, "PDF_MAX_PAGES", 10)
    monkeypatch.setattr(uploads, "_cache", type(uploads._cache)())
    att, warnings = attach(data)
    assert "page 9 " in att.text and "page 10 " not in att.text and not att.inspected
    assert "30 pages" in warnings[0]

    monkeypatch.setattr(uploads, "PDF_SECONDS", 1e-6)
    att, warnings = attach(pdf(*(f"slow {i}" for i in range(200))))
    assert not att.inspected and "took more than" in warnings[0]


def test_a_pdf_parsed_on_the_event_loop_is_read_too():
    data = pdf(f"loop {SECRET}")

    async def on_loop() -> uploads.Attachment:
        return attach(data)[0]

    att = asyncio.run(on_loop())
    assert SECRET in att.text and att.inspected


# --- every multipart part -------------------------------------------------------------------------------------

def test_extended_file_names_are_decoded():
    body, headers = multipart(
        ("name=\"file\"; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates%20na%C3%AFve.txt", b"a"),
        ("name=\"doc\"; filename*=iso-8859-1'en'caf%E9.md", b"b"),
        ("name=\"part\"; filename*0*=UTF-8''long%20; filename*1*=name.csv", b"c"))
    form = uploads.parse_form(body, headers["content-type"])
    assert [p.filename for p in form.files()] == ["€ rates naïve.txt", "café.md", "long name.csv"]
    assert [p.attachment().text for p in form.files()] == ["a", "b", "c"]


def test_repeated_fields_and_long_fields_are_read_whole():
    long = b"z" * (1100 * 1024) + SECRET.encode()
    body, headers = multipart(('name="prompt"', b"first prompt"), ('name="prompt"', f"second {SECRET}".encode()),
                              ('name="note"', long), ('name="file"; filename="a.txt"', b"one"),
                              ('name="file"; filename="b.txt"', b"two"))
    form = uploads.parse_form(body, headers["content-type"])
    assert form.fields("prompt") == ["first prompt", f"second {SECRET}"] and form.field("prompt") == "first prompt"
    assert form.field("note") == long.decode()
    assert [p.attachment().text for p in form.files()] == ["one", "two"]

    p = parse("/v1/audio/transcriptions", body, headers=headers)
    texts = [t.text for t in p.exchange.messages[0].parts]
    assert texts == ["first prompt", f"second {SECRET}"]
    assert any(long.decode() == t.text for t in p.exchange.request_parts())  # the whole-body walk's field


def test_a_part_cut_short_is_not_inspected():
    body, headers = multipart(('name="file"; filename="a.txt"', b"complete text " * 10))
    cut = body[: body.index(b"complete") + 50]
    form = uploads.parse_form(cut, headers["content-type"])
    assert not form.complete and not form.files()[0].attachment().inspected
