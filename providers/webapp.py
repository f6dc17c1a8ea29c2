"""What the consumer-app parsers (ChatGPT, Claude, Gemini, Perplexity, DeepSeek, Mistral web) share.

These apps speak undocumented, drifting formats (all [OBS]: seen only in third-party clients, docs/providers.md).
Their parsers therefore FAIL SOFT: a shape they do not know marks the exchange unparsed with a warning, but never
raises. A raised BodyError would make the registry report a parse *error*, which `gateway_on_parse_error=block`
turns into a blocked request: one silent change in a web app would then cut a whole company off ChatGPT. Blocking
unparsed traffic stays possible, but as an explicit policy on `parsed = False`, not as an accident of drift.

A consumer provider claims a request only when the catalog names its format for the host (`hints`), so its
loose path patterns never capture an API host's traffic.
"""

from __future__ import annotations

from typing import Any, ClassVar

from core.exchange import Exchange, Message
from providers.base import MAX_COMPLETION_CHARS, BodyError, HttpRequest, ResponseParser, SseParser, json_body
from providers.uploads import parse_form

#: The errors a best-effort parser may hit on an unexpected shape; anything else is a bug and should surface.
SHAPE_ERRORS = (BodyError, KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError)


class WebAppProvider:
    """Base for consumer-app providers, only asked for hinted hosts. What most apps do is the default, so an app
    writes only where it differs:

    - `operation(req)` picks the operation: by default a POST to one of `paths`;
    - `parse(req, operation, exchange)` fills the exchange: by default an `upload` is a multipart form of files,
      anything else a JSON object holding the prompt, read by `prompt(req, body, exchange)`, and answered by a
      stream. Both may raise on a shape they do not know: the exchange is then marked unparsed (see above);
    - `answer(exchange)` is the parser of a conversation's answer; other operations' answers (upload tickets)
      carry nothing to audit."""

    name = ""
    #: The paths the app is posted to, and the operation each is (apps whose paths vary override `operation`).
    paths: ClassVar[dict[str, str]] = {}

    def recognises(self, req: HttpRequest, hints: tuple[str, ...]) -> str | None:
        if self.name not in hints:
            return None
        return self.operation(req)

    def operation(self, req: HttpRequest) -> str | None:
        return self.paths.get(req.path) if req.method == "POST" else None

    def parse_request(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        try:
            self.parse(req, operation, exchange)
        except SHAPE_ERRORS as e:
            unparsed(exchange, f"{self.name} {operation}: {e if isinstance(e, BodyError) else _shape(e)}")

    def parse(self, req: HttpRequest, operation: str, exchange: Exchange) -> None:
        if operation == "upload":
            form_upload(req, exchange)
            return
        body = json_body(req)
        if not isinstance(body, dict):
            raise TypeError("body is not a JSON object")
        exchange.stream = True
        self.prompt(req, body, exchange)

    def prompt(self, req: HttpRequest, body: dict[str, Any], exchange: Exchange) -> None:
        raise NotImplementedError

    def response_parser(self, exchange: Exchange, content_type: str) -> ResponseParser:
        return self.answer(exchange) if exchange.operation == "conversation" else Ignore()

    def answer(self, exchange: Exchange) -> ResponseParser:
        raise NotImplementedError


def form_upload(req: HttpRequest, exchange: Exchange) -> None:
    """A multipart upload: each file becomes an attachment (text-like files extracted for inspection)."""
    form = parse_form(req.body, req.headers.get("content-type", ""))
    files = form.files()
    if not files:
        raise BodyError("multipart body without a file")
    exchange.messages.append(Message("user", attachments=[f.attachment(warn=exchange.warn) for f in files]))
    if not form.complete:
        exchange.warn("multipart body cut short: the last file may be incomplete")


def unparsed(exchange: Exchange, why: str) -> None:
    exchange.parsed = False
    exchange.warn(why)


def _shape(e: Exception) -> str:
    return f"unexpected shape: {type(e).__name__}: {e}"


class Ignore:
    """A response parser for answers that carry nothing to audit (upload tickets, processing status)."""

    def feed(self, chunk: bytes) -> None:
        pass

    def finish(self) -> None:
        pass


class SoftResponse:
    """Tells an answer in an unknown shape from an empty one, so a format change shows in the audit.

    The app parser calls `saw_data()` when bytes arrive and `understood()` each time it recognises a frame; if the
    response ends with data but nothing recognised, `conclude()` marks the exchange unparsed."""

    def __init__(self, exchange: Exchange, app: str):
        self.exchange = exchange
        self.app = app
        self.seen_data = False
        self.recognised = False

    def saw_data(self) -> None:
        self.seen_data = True

    def understood(self) -> None:
        self.recognised = True

    def conclude(self) -> None:
        if self.seen_data and not self.recognised:
            unparsed(self.exchange, f"{self.app}: response not understood")


class SoftSseParser(SseParser):
    """An SSE response parser with a `SoftResponse` (`self.soft`): any bytes count as data, so a page of HTML
    where a stream was expected is reported, not mistaken for an empty answer."""

    def __init__(self, exchange: Exchange, app: str, on_event, on_finish):
        super().__init__(exchange, on_event, on_finish)
        self.soft = SoftResponse(exchange, app)

    def feed(self, chunk: bytes) -> None:
        if chunk.strip():
            self.soft.saw_data()
        super().feed(chunk)

    def finish(self) -> None:
        super().finish()
        self.soft.conclude()


def str_field(data: Any, *keys: str) -> str:
    """The first string value among `keys` of a dict ("" if none): tolerant of renamed fields."""
    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), str):
                return data[key]
    return ""


class PatchDocument:
    """Applies the JSON-patch-like streams of ChatGPT ("delta encoding v1") and DeepSeek web to a document.

    A frame is `{p, o, v}`: path, operation, value. Paths are `/`-separated (`/message/content/parts/0` or
    `response/fragments/-1/content`; `-1` is the last element). Operations, case-insensitive: `add`/`set`/`replace`
    (set the value), `append` (concatenate a string, extend or append to a list, merge into a dict), `patch`/`batch`
    (v is a list of sub-operations whose paths are relative to p), `remove`, `truncate`. A frame without `p` and
    `o` repeats the previous frame's path and operation, which is how both apps send text deltas as `{"v": "..."}`;
    the very first such frame sets the whole document. A path without an operation appends a string to a string
    (text deltas) and sets anything else.

    Strings added are counted: past `max_chars` further string growth is dropped with one warning, so a hostile
    stream cannot grow the gateway's memory without bound. Unknown operations and paths that do not resolve are
    counted in `bad_ops`, never raised.
    """

    def __init__(self, exchange: Exchange, max_chars: int = 2 * MAX_COMPLETION_CHARS):
        self.exchange = exchange
        self.doc: Any = None
        self.last_path: str | None = None
        self.last_op: str | None = None
        self.chars = 0
        self.max_chars = max_chars
        self.full = False
        self.bad_ops = 0

    def apply_frame(self, frame: dict[str, Any]) -> None:
        if "v" not in frame:
            self.bad_ops += 1
            return
        if "p" in frame or "o" in frame:
            self.last_path = str(frame.get("p") or "")
            self.last_op = str(frame["o"]) if frame.get("o") else None
        elif self.last_path is None:
            self.apply("", "set", frame["v"])
            return
        self.apply(self.last_path, self.last_op or "auto", frame["v"])

    def apply(self, path: str, op: str, value: Any, depth: int = 0) -> None:
        op = op.lower()
        if op == "auto":  # no operation named: text grows, anything else is set
            op = "append" if isinstance(value, str) and isinstance(self.resolve(path), str) else "set"
        if op in ("patch", "batch"):
            if not isinstance(value, list) or depth > 4:
                self.bad_ops += 1
                return
            for sub in value:
                if isinstance(sub, dict) and "v" in sub:
                    self.apply(_join(path, str(sub.get("p") or "")), str(sub.get("o") or "auto"), sub["v"],
                               depth + 1)
                else:
                    self.bad_ops += 1
            return
        tokens = _tokens(path)
        if not tokens:
            if op in ("add", "set", "replace") and self._budget(value):
                self.doc = value
            elif op == "append":
                self.doc = self._appended(self.doc, value)
            else:
                self.bad_ops += 1
            return
        parent = self._resolve(tokens[:-1], create=op in ("add", "set", "replace"))
        key = tokens[-1]
        if isinstance(parent, list) and isinstance(key, str) and key != "-":
            self.bad_ops += 1
            return
        try:
            if op in ("add", "set", "replace"):
                if not self._budget(value):
                    return
                if isinstance(parent, list) and (key == "-" or key == len(parent)):
                    parent.append(value)
                else:
                    parent[key] = value
            elif op == "append":
                current = parent[key] if isinstance(parent, list) or key in parent else None
                parent[key] = self._appended(current, value)
            elif op == "remove":
                del parent[key]
            elif op == "truncate" and isinstance(value, int):
                parent[key] = parent[key][:value]
            else:
                self.bad_ops += 1
        except (KeyError, IndexError, TypeError):
            self.bad_ops += 1

    def _resolve(self, tokens: list, create: bool) -> Any:
        if self.doc is None and create:
            self.doc = {}
        node = self.doc
        for t in tokens:
            if isinstance(node, dict):
                if t not in node and create:
                    node[t] = {}
                node = node[t]
            elif isinstance(node, list) and isinstance(t, int):
                node = node[t]
            else:
                raise TypeError(f"path segment {t!r} does not resolve")
        if not isinstance(node, (dict, list)):
            raise TypeError("path does not end in an object or list")
        return node

    def _appended(self, current: Any, value: Any) -> Any:
        if isinstance(current, str) and isinstance(value, str):
            return current + value if self._budget(value) else current
        if isinstance(current, list):
            items = value if isinstance(value, list) else [value]
            if self._budget(items):
                current.extend(items)
            return current
        if isinstance(current, dict) and isinstance(value, dict):
            if self._budget(value):
                current.update(value)
            return current
        if current is None:
            return value if self._budget(value) else None
        raise TypeError(f"cannot append {type(value).__name__} to {type(current).__name__}")

    def _budget(self, value: Any) -> bool:
        if self.full:
            return False
        self.chars += _size(value)
        if self.chars > self.max_chars:
            self.full = True
            self.exchange.warn(f"stream: answer larger than {self.max_chars} characters, the rest not audited")
            return False
        return True

    def resolve(self, path: str) -> Any:
        """The value at a path of the current document, or None."""
        try:
            node = self.doc
            for t in _tokens(path):
                node = node[t]
            return node
        except (KeyError, IndexError, TypeError):
            return None


def _tokens(path: str) -> list:
    out: list = []
    for raw in path.strip("/").split("/") if path.strip("/") else []:
        raw = raw.replace("~1", "/").replace("~0", "~")
        out.append(int(raw) if raw.lstrip("-").isdigit() else raw)
    return out


def _join(base: str, sub: str) -> str:
    if not base.strip("/"):
        return sub
    if not sub.strip("/"):
        return base
    return base.rstrip("/") + "/" + sub.lstrip("/")


def _size(value: Any, depth: int = 0) -> int:
    """Roughly how many characters a JSON value holds (strings only; structure is cheap)."""
    if isinstance(value, str):
        return len(value)
    if depth > 20:
        return 0
    if isinstance(value, dict):
        return sum(_size(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return sum(_size(v, depth + 1) for v in value)
    return 1
