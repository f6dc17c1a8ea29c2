"""Uploads: multipart/form-data bodies and files sent to AI services, as `Attachment`s.

Every file is recorded with its name, type and size, and its text is extracted so DLP inspects what is uploaded as
well as what is typed. Nothing is cut: the decoded body is already bounded by the gateway (its decoded-size limit),
so a text file is read to its end and a secret at 600 KB is scanned like one at the start. `inspected` is True only
when all of a file's text was extracted; otherwise the audit shows the file as not inspected.

What a file is comes from its bytes first, its declared type second: clients send `application/octet-stream`, no
extension or a wrong type, and a wrong label must not hide text from DLP.

- `%PDF-` in the first KiB: a PDF, whatever the declared type. Its text is extracted by pypdf in a child process
  (`PdfWorkers`): pypdf is pure Python, so in a thread it would still hold the GIL that mitmproxy's event loop needs,
  and a crafted PDF could stall or exhaust the gateway. The child is bounded in time, memory, pages and characters.
- Declared text (plain text, CSV, JSON, Markdown, source code): decoded as before (UTF-8, UTF-16 with a BOM, legacy
  8-bit text as Latin-1 so every byte counts); NUL bytes mean it is binary after all.
- Anything else is sniffed: valid UTF-8 or UTF-16 with a BOM, no NULs, mostly printable, is text and is scanned.
  Other bytes (images, audio, archives) stay not inspected.

Multipart bodies are parsed with python-multipart's streaming parser. Every part is kept: each form field whole (a
second field of the same name too), and each file whose first bytes show it can be read; a file that sniffs as
binary keeps only its size, so a large image costs its byte count, not a copy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import multiprocessing
import posixpath
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from core.exchange import Attachment
from providers.base import BodyError

#: Bytes looked at to tell what a file is (its magic number, whether it reads as text).
SNIFF_BYTES = 8192
#: A PDF header may sit after some leading junk; readers accept it within the first KiB.
PDF_HEADER_WITHIN = 1024
#: Bounds on one PDF's extraction. Past a bound the text so far is scanned and the file is marked not inspected.
PDF_MAX_PAGES = 5000
PDF_MAX_CHARS = 32 * 1024 * 1024
#: Seconds one PDF may take. On the event loop (a small body is parsed inline) every other connection waits, so
#: the bound there is tighter; off the loop (core/offload.py runs large bodies in a thread) the thread only waits.
PDF_SECONDS = 20.0
PDF_SECONDS_ON_LOOP = 2.0
#: Extra seconds the gateway waits for a worker beyond its own alarm: starting one (spawn, imports) takes ~0.5 s.
PDF_WORKER_GRACE = 5.0
#: Address space of a PDF worker: a decompression bomb fails there with MemoryError, not in the gateway.
PDF_WORKER_MEMORY = 1 << 30
PDF_WORKERS = 2
#: Recent PDF results, so the parser and the whole-body walk (providers/walk.py) do not extract one file twice.
PDF_CACHE = 4

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
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
#: Characters text does not contain more than now and then: C0 controls other than tab, newlines, form feed and
#: escape (terminal logs), DEL, and C1 controls.
_CONTROLS = frozenset(chr(c) for c in (*range(9), 11, *range(14, 27), *range(28, 32), *range(0x7F, 0xA0)))

Warn = Callable[[str], None]


def extension(name: str) -> str:
    base = posixpath.basename(name.replace("\\", "/")).lower()
    return base.rpartition(".")[2] if "." in base else base


def _mime(mime_type: str) -> str:
    return mime_type.split(";")[0].strip().lower()


def is_text_like(name: str, mime_type: str) -> bool:
    mime = _mime(mime_type)
    return (mime.startswith("text/") or mime in TEXT_MIME_TYPES or mime.endswith(("+json", "+xml"))
            or extension(name) in TEXT_EXTENSIONS)


def is_declared_pdf(name: str, mime_type: str) -> bool:
    return _mime(mime_type) == "application/pdf" or extension(name) == "pdf"


def kind_of(mime_type: str, default: str = "file") -> str:
    top = mime_type.split("/")[0].lower()
    return top if top in ("image", "audio", "video") else default


def has_pdf_header(data: bytes) -> bool:
    return b"%PDF-" in data[:PDF_HEADER_WITHIN]


def looks_like_text(sample: bytes) -> bool:
    """Whether the first bytes of an undeclared file are text: UTF-16 with a BOM, or UTF-8 without NULs (a
    character cut at the end of the sample is fine), and at most one control character in a hundred."""
    if sample[:2] in _UTF16_BOMS:
        text = sample[: len(sample) & ~1].decode("utf-16", "replace")
    elif b"\0" in sample:
        return False
    else:
        try:
            text = sample.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        except UnicodeDecodeError as e:
            if e.reason != "unexpected end of data" or e.start < len(sample) - 3:
                return False
            text = sample[: e.start].decode("utf-8")
    return bool(text) and sum(c in _CONTROLS for c in text) * 100 <= len(text)


def worth_reading(name: str, mime_type: str, sample: bytes) -> bool:
    """Whether a file whose first bytes are `sample` may have text to extract, so its bytes are kept."""
    return (has_pdf_header(sample) or is_declared_pdf(name, mime_type) or is_text_like(name, mime_type)
            or looks_like_text(sample))


@dataclass(frozen=True)
class Extracted:
    """The text of a file and whether it is all of it; `warning` says why not, when the audit should know."""

    text: str | None
    whole: bool = False
    warning: str = ""


def extract(data: bytes, name: str, mime_type: str) -> Extracted:
    """The text of a whole file: PDF by its header, declared text, else text by its bytes (module docstring)."""
    if has_pdf_header(data):
        return pdf_text(data)
    if is_text_like(name, mime_type):
        return _declared_text(data)
    if looks_like_text(data[:SNIFF_BYTES]) or not data:
        return _sniffed_text(data)
    if is_declared_pdf(name, mime_type):
        return Extracted(None, warning="declared a PDF but has no PDF header: not inspected")
    return Extracted(None)


def _declared_text(data: bytes) -> Extracted:
    """A file that says it is text. UTF-8 first; a UTF-16 file needs its BOM; other bytes without NULs are legacy
    8-bit text (a cp1252 CSV export), read as Latin-1 so every byte counts. NULs: binary named as text."""
    if data[:2] in _UTF16_BOMS:
        return Extracted(data.decode("utf-16", "replace"), True)
    if b"\0" in data:
        return Extracted(None)
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return Extracted(data.decode("utf-8"), True)
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":  # the file ends inside a character
            return Extracted(data[: e.start].decode("utf-8"), True)
        return Extracted(data.decode("latin-1"), True)


def _sniffed_text(data: bytes) -> Extracted:
    """A file whose first bytes read as text. Read strictly: where it stops being text (a NUL, invalid UTF-8) the
    text so far is scanned and the file is not inspected whole (text followed by an archive, say)."""
    if data[:2] in _UTF16_BOMS:
        try:
            return Extracted(data.decode("utf-16"), True)
        except UnicodeDecodeError as e:
            return Extracted(data[: e.start & ~1].decode("utf-16"), False,
                             f"not text after byte {e.start}: the rest not inspected")
    nul = data.find(b"\0")
    end = len(data) if nul < 0 else nul
    try:
        text = data[:end].removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        return Extracted(data[:start].removeprefix(b"\xef\xbb\xbf").decode("utf-8"), False,
                         f"not text after byte {start}: the rest not inspected")
    if nul >= 0:
        return Extracted(text, False, f"binary data after byte {nul}: the rest not inspected")
    return Extracted(text, True)


def pdf_text(data: bytes) -> Extracted:
    """The text of a PDF, from a worker process (`PdfWorkers`); a recent result is reused."""
    key = (len(data), hash(data))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    result = _workers.run(data)
    if result.warning != _BUSY:
        with _cache_lock:
            _cache[key] = result
            while len(_cache) > PDF_CACHE:
                _cache.popitem(last=False)
    return result


_cache: OrderedDict[tuple[int, int], Extracted] = OrderedDict()
_cache_lock = threading.Lock()
_BUSY = "PDF: the text extraction workers did not answer in time: not inspected"


class PdfWorkers:
    """A lazily started pool of PDF extraction processes.

    The parse that needs a PDF's text is synchronous (the extract addon calls it inline for a small body, in a
    thread for a large one), so it waits for the worker's answer. Waiting releases the GIL: in a thread, the event
    loop keeps serving others; inline, the loop waits, for at most PDF_SECONDS_ON_LOOP. Workers are spawned, not
    forked, so they inherit none of the gateway's threads or sockets. Each worker bounds itself (an alarm and an
    address-space limit); should one still not answer, the pool is abandoned and the next PDF gets a fresh one."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(PDF_WORKERS, multiprocessing.get_context("spawn"),
                                                 initializer=_worker_init)
            return self._pool

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def run(self, data: bytes) -> Extracted:
        seconds = PDF_SECONDS_ON_LOOP if _on_event_loop() else PDF_SECONDS
        pool = self._get()
        try:
            future = pool.submit(_pdf_extract, data, seconds, PDF_MAX_PAGES, PDF_MAX_CHARS)
            return future.result(timeout=seconds + PDF_WORKER_GRACE)
        except FutureTimeout:
            self._drop(pool)
            return Extracted(None, warning=_BUSY)
        except BrokenProcessPool:  # a worker died (killed, out of memory in C code)
            self._drop(pool)
            return Extracted(None, warning="PDF: the extraction worker died: not inspected")
        except Exception as e:  # the worker's alarm went off as it answered, or its result would not unpickle
            return Extracted(None, warning=f"PDF: extraction failed ({type(e).__name__}): not inspected")


_workers = PdfWorkers()


def _on_event_loop() -> bool:
    """Whether this thread runs an asyncio loop, which then waits for the parse (a small body parsed inline)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Timeout(Exception):
    pass


def _worker_init() -> None:
    """In each PDF worker: bound its memory, and keep pypdf's complaints about sloppy files off the logs (the
    result's warning says what matters)."""
    import logging
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (PDF_WORKER_MEMORY, PDF_WORKER_MEMORY))
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _pdf_extract(data: bytes, seconds: float, max_pages: int, max_chars: int) -> Extracted:
    """In a worker: the PDF's text, page by page, then its form fields and document information (both can carry
    what a person wrote). The bounds come from the gateway process, whose settings count. Never raises: an
    encrypted, broken or hostile PDF is a warning and not inspected."""
    import signal

    import pypdf

    signal.signal(signal.SIGALRM, _alarm)
    texts: list[str] = []
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            return Extracted(None, warning="PDF: encrypted (a password is needed to read it): not inspected")
        pages = len(reader.pages)
        chars = 0
        for page in reader.pages[:max_pages]:
            texts.append(page.extract_text() or "")
            chars += len(texts[-1])
            if chars > max_chars:
                return Extracted("\n".join(texts)[:max_chars], warning=f"PDF: more than {max_chars} "
                                 f"characters of text: the rest not inspected")
        texts.extend(str(v) for v in (reader.get_form_text_fields() or {}).values() if v)
        texts.extend(str(v) for v in (reader.metadata or {}).values() if isinstance(v, str) and v)
        if pages > max_pages:
            return Extracted("\n".join(texts), warning=f"PDF: {pages} pages, the text of the first {max_pages} "
                             f"inspected")
        if reader.attachments:
            return Extracted("\n".join(texts), warning="PDF: embedded files not inspected")
        if not "".join(texts).strip():
            return Extracted("", warning="PDF: no text layer (scanned pages are not read): not inspected")
        return Extracted("\n".join(texts), True)
    except _Timeout:
        return Extracted("\n".join(texts) or None, warning=f"PDF: text extraction took more than {seconds:g} s: "
                         f"not inspected")
    except MemoryError:
        return Extracted(None, warning="PDF: text extraction ran out of memory: not inspected")
    except Exception as e:  # pypdf raises many kinds on broken files; none may cost the audit
        return Extracted(None, warning=f"PDF: unreadable ({type(e).__name__}: {str(e)[:120]}): not inspected")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def file_attachment(name: str, mime_type: str, size: int, content: bytes | None, kind: str = "",
                    warn: Warn | None = None) -> Attachment:
    """An Attachment for a file of `size` bytes whose content is `content` (None: not available, or binary).

    `inspected` is True only when `content` is the whole file and all its text was extracted; `warn` (the
    exchange's) hears why a file that could have been read was not (an encrypted PDF, say)."""
    att = Attachment(kind=kind or kind_of(mime_type), name=name, mime_type=mime_type, size=size)
    if content is None:
        return att
    result = extract(content, name, mime_type)
    att.text = result.text
    att.inspected = result.text is not None and result.whole and len(content) >= size
    if result.warning and warn is not None:
        warn(f"{name}: {result.warning}" if name else result.warning)
    return att


def base64_attachment(data: str, name: str, mime_type: str, kind: str = "", warn: Warn | None = None) -> Attachment:
    """An Attachment for base64 data carried inside JSON (a data: URI or bare base64). The first bytes are decoded
    to tell what the file is; the whole file only when it may have text."""
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        mime_type = mime_type or header[5:].split(";", 1)[0]
    size = max(len(data) * 3 // 4 - data[-2:].count("="), 0)
    try:
        content: bytes | None = base64.b64decode(data[: SNIFF_BYTES // 3 * 4], validate=False)
        if not worth_reading(name, mime_type, content):
            content = None
        elif len(data) > SNIFF_BYTES // 3 * 4:
            content = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        content = None
    if content is not None:
        size = len(content)
    return file_attachment(name, mime_type, size, content, kind, warn)


@dataclass
class FormPart:
    """One part of a multipart body: a form field (`filename` None) or a file."""

    name: str
    filename: str | None = None
    content_type: str = ""
    size: int = 0
    head: bytearray = field(default_factory=bytearray)  # the whole part, unless it sniffed as binary (`keep`)
    keep: bool | None = None  # None: not decided yet (fewer than SNIFF_BYTES seen); False: only the size is kept
    ended: bool = False  # its closing boundary was seen: `head` is all of it

    @property
    def value(self) -> str:
        return self.head.decode("utf-8", "replace")

    def attachment(self, kind: str = "", warn: Warn | None = None) -> Attachment:
        content = bytes(self.head) if self.keep is not False and self.ended else None
        return file_attachment(self.filename or self.name, self.content_type, self.size, content, kind, warn)


@dataclass
class Form:
    parts: list[FormPart] = field(default_factory=list)
    complete: bool = False  # the closing boundary was seen

    def field(self, name: str) -> str | None:
        """The first field named `name` (the one most servers read)."""
        return next(iter(self.fields(name)), None)

    def fields(self, name: str) -> list[str]:
        """Every field named `name`: a repeated field is read too, since a server may take either."""
        return [p.value for p in self.parts if p.name == name and p.filename is None]

    def files(self) -> list[FormPart]:
        return [p for p in self.parts if p.filename is not None]


# An extended parameter (RFC 2231 / RFC 5987): `filename*=UTF-8''na%C3%AFve.txt`, possibly in numbered sections
# (`filename*0*=...; filename*1*=...`). python-multipart's parse_options_header drops these.
_EXTENDED = re.compile(rb'(?:^|;)\s*(name|filename)\*(\d+)?\*?\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.I)


def _disposition(raw: bytes) -> tuple[str, str | None]:
    """A part's field name and file name from its Content-Disposition; an extended `name*`/`filename*` wins over
    the plain one, as a client that sends both means the extended one for readers that know it."""
    _, params = parse_options_header(raw)
    found = {k: v.decode("utf-8", "replace") for k, v in params.items() if k in (b"name", b"filename")}
    sections: dict[str, list[tuple[int, str]]] = {}
    for m in _EXTENDED.finditer(raw):
        value = m[3].strip().strip(b'"').decode("latin-1")
        sections.setdefault(m[1].decode().lower(), []).append((int(m[2] or 0), value))
    for key, parts in sections.items():
        found[key.encode()] = _rfc5987("".join(v for _, v in sorted(parts)))
    filename = found.get(b"filename")
    return found.get(b"name", ""), filename


def _rfc5987(value: str) -> str:
    """`charset'language'percent-encoded` to text; a value without the charset prefix is percent-decoded as UTF-8."""
    charset, sep, rest = value.partition("'")
    if not sep:
        return unquote(value)
    encoded = rest.partition("'")[2]
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return unquote(encoded, errors="replace")


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
        name, filename = _disposition(headers.get(b"content-disposition", b""))
        part = FormPart(name=name, filename=filename,
                        content_type=headers.get(b"content-type", b"").decode("latin-1"))
        if filename is None:
            part.keep = True  # a field is text the user sent, read whole
        form.parts.append(part)
        current[:] = [part]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current[0]
        part.size += end - start
        if part.keep is False:
            return
        part.head += data[start:end]
        if part.keep is None and len(part.head) >= SNIFF_BYTES:
            part.keep = worth_reading(part.filename or "", part.content_type, bytes(part.head[:SNIFF_BYTES]))
            if not part.keep:
                part.head = bytearray()

    def on_part_end() -> None:
        current[0].ended = True

    def on_end() -> None:
        form.complete = True

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end, "on_end": on_end})
    try:
        parser.write(body)
    except MultipartParseError as e:
        raise BodyError(f"malformed multipart body: {e}") from None
    return form
