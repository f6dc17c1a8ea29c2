"""Uploads: multipart/form-data bodies and files sent to AI services, as `Attachment`s.

Every file is recorded with its name, type and size. Text-like files (plain text, CSV, JSON, Markdown, source code)
also have their text extracted, capped, so DLP inspects what is uploaded as well as what is typed; other files are
marked not inspected, which the audit shows.

Multipart bodies are parsed with python-multipart's streaming parser: a part is never copied whole unless it is
a text-like file (up to the cap) or a small form field, so a large binary upload costs its size count only.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from core.exchange import Attachment
from providers.base import BodyError

#: Extracted text per file; the rest of a long file is not inspected (and the attachment says so).
MAX_TEXT_BYTES = 512 * 1024
#: A plain form field (prompt, model, purpose) longer than this is cut: fields are meant to be short.
MAX_FIELD_BYTES = 1024 * 1024

TEXT_EXTENSIONS = frozenset("""
txt text md markdown rst csv tsv json jsonl ndjson xml yaml yml toml ini cfg conf env log html htm css svg
py pyi js mjs cjs ts tsx jsx java kt kts scala go rs c h cc cpp cxx hpp hh cs swift m mm rb php pl pm lua r
sql sh bash zsh fish ps1 bat cmd dockerfile makefile gradle tf hcl proto graphql gql vue svelte dart ex exs erl
hs clj el vim ipynb tex properties
""".split())
TEXT_MIME_TYPES = frozenset({
    "application/json", "application/xml", "application/x-yaml", "application/yaml", "application/javascript",
    "application/x-javascript", "application/typescript", "application/sql", "application/x-sh",
    "application/toml", "application/x-ndjson", "application/jsonl", "application/csv", "application/x-python",
    "application/x-httpd-php",
})


def extension(name: str) -> str:
    base = posixpath.basename(name.replace("\\", "/")).lower()
    return base.rpartition(".")[2] if "." in base else base


def is_text_like(name: str, mime_type: str) -> bool:
    mime = mime_type.split(";")[0].strip().lower()
    return (mime.startswith("text/") or mime in TEXT_MIME_TYPES or mime.endswith(("+json", "+xml"))
            or extension(name) in TEXT_EXTENSIONS)


def kind_of(mime_type: str, default: str = "file") -> str:
    top = mime_type.split("/")[0].lower()
    return top if top in ("image", "audio", "video") else default


def file_attachment(name: str, mime_type: str, size: int, head: bytes | None, kind: str = "") -> Attachment:
    """An Attachment for a file of `size` bytes whose first bytes are `head` (None: content not available).

    Text is extracted when the file is text-like by name or type and its bytes look like text (no NUL bytes, valid
    UTF-8 up to the cut); a binary file named `.txt` stays not inspected rather than feeding DLP garbage."""
    att = Attachment(kind=kind or kind_of(mime_type), name=name, mime_type=mime_type, size=size)
    if head is not None and is_text_like(name, mime_type):
        text = _text(head[:MAX_TEXT_BYTES])
        if text is not None:
            att.text = text
            att.inspected = size <= MAX_TEXT_BYTES
    return att


def _text(data: bytes) -> str | None:
    """The text of a text-like file, or None if its bytes are not text. UTF-8 first; a UTF-16 file needs its BOM;
    other bytes without NULs are legacy 8-bit text (a cp1252 CSV export), read as Latin-1 so every byte counts."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", "replace")
    if b"\0" in data:
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":  # a character cut by the cap
            return data[: e.start].decode("utf-8")
        return data.decode("latin-1")


def base64_attachment(data: str, name: str, mime_type: str, kind: str = "") -> Attachment:
    """An Attachment for base64 data carried inside JSON (a data: URI or bare base64)."""
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        mime_type = mime_type or header[5:].split(";", 1)[0]
    size = len(data) * 3 // 4 - data[-2:].count("=")
    head = None
    if is_text_like(name, mime_type):
        cut = data[: (MAX_TEXT_BYTES // 3 + 1) * 4]
        try:
            head = base64.b64decode(cut, validate=False)
        except (binascii.Error, ValueError):
            head = None
    return file_attachment(name, mime_type, max(size, 0), head, kind)


@dataclass
class FormPart:
    """One part of a multipart body: a form field (`filename` None) or a file."""

    name: str
    filename: str | None = None
    content_type: str = ""
    size: int = 0
    head: bytearray = field(default_factory=bytearray)  # first bytes: whole field, or the text-like file's start

    @property
    def value(self) -> str:
        return self.head.decode("utf-8", "replace")

    def attachment(self, kind: str = "") -> Attachment:
        keep = self.filename is not None and is_text_like(self.filename, self.content_type)
        return file_attachment(self.filename or self.name, self.content_type, self.size,
                               bytes(self.head) if keep else None, kind)


@dataclass
class Form:
    parts: list[FormPart] = field(default_factory=list)
    complete: bool = False  # the closing boundary was seen

    def field(self, name: str) -> str | None:
        for p in self.parts:
            if p.name == name and p.filename is None:
                return p.value
        return None

    def files(self) -> list[FormPart]:
        return [p for p in self.parts if p.filename is not None]


def parse_form(body: bytes, content_type: str) -> Form:
    """Parse a multipart/form-data body; BodyError if it is not one. A body cut short keeps the parts seen."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise BodyError(f"expected multipart/form-data with a boundary, got {content_type[:100]!r}")
    form = Form()
    current: list[FormPart] = []
    headers: dict[bytes, bytes] = {}
    pending = [b"", b""]

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        pending[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        pending[1] += data[start:end]

    def on_header_end() -> None:
        headers[pending[0].strip().lower()] = pending[1].strip()
        pending[0], pending[1] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        filename = disp.get(b"filename")
        part = FormPart(name=disp.get(b"name", b"").decode("utf-8", "replace"),
                        filename=None if filename is None else filename.decode("utf-8", "replace"),
                        content_type=headers.get(b"content-type", b"").decode("latin-1"))
        form.parts.append(part)
        current[:] = [part]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current[0]
        part.size += end - start
        keep = MAX_FIELD_BYTES if part.filename is None else (
            MAX_TEXT_BYTES if is_text_like(part.filename, part.content_type) else 0)
        room = keep - len(part.head)
        if room > 0:
            part.head += data[start: start + min(room, end - start)]

    def on_end() -> None:
        form.complete = True

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_end": on_end})
    try:
        parser.write(body)
    except MultipartParseError as e:
        raise BodyError(f"malformed multipart body: {e}") from None
    return form
