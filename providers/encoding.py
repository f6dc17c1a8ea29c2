"""Content-Encoding decoders (gzip, deflate, br, zstd) that refuse to expand past a cap.

Why not mitmproxy's `get_content()`: it decodes the whole body in one call, so a 50 KB compression bomb becomes
gigabytes in the proxy's memory before anyone can look at the size. These decoders produce output in bounded steps
and raise `CompressionBomb` as soon as the decoded size passes the cap, having held at most the cap plus one step.

They are incremental, so a streamed response can be decoded chunk by chunk for the parser while the client keeps
receiving the original bytes. Pure: no mitmproxy import.
"""

from __future__ import annotations

import zlib

import brotli
import zstandard

#: Default cap on the decoded size of one body: bodies the audit parses are JSON or SSE, never this large.
MAX_DECODED_BYTES = 64 * 1024 * 1024


class EncodingError(ValueError):
    """The body cannot be decoded: unsupported encoding, corrupt or truncated data."""


class CompressionBomb(EncodingError):
    """The decoded body would exceed the cap; it was not expanded."""

    def __init__(self, encoding: str, limit: int):
        super().__init__(f"{encoding} body decodes to more than {limit} bytes (compression bomb?): not expanded")
        self.limit = limit


class _Codec:
    """One decoding stage. `feed` returns at most `budget` bytes or raises `_Over`."""

    name = ""

    def feed(self, data: bytes, budget: int) -> bytes:
        raise NotImplementedError

    def truncated(self) -> bool:
        return False


class _Over(Exception):
    pass


class _Zlib(_Codec):
    """gzip (wbits 16+15) and zlib-wrapped deflate; raw deflate when the first bytes are not a zlib header, as
    some servers send it. Concatenated gzip members are decoded one after another."""

    def __init__(self, name: str):
        self.name = name
        self.obj: zlib._Decompress | None = None
        self.head = b""

    def _start(self, data: bytes) -> None:
        if self.name == "gzip":
            wbits = 16 + zlib.MAX_WBITS
        else:
            zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
        self.obj = zlib.decompressobj(wbits)

    def feed(self, data: bytes, budget: int) -> bytes:
        if self.obj is None:
            self.head += data
            if len(self.head) < 2 and self.name == "deflate":
                return b""
            data, self.head = self.head, b""
            self._start(data)
        out = bytearray()
        while data:
            assert self.obj is not None
            try:
                piece = self.obj.decompress(data, budget - len(out) + 1)
            except zlib.error as e:
                raise EncodingError(f"{self.name}: corrupt data: {e}") from None
            out += piece
            if len(out) > budget:
                raise _Over
            if self.obj.eof and self.obj.unused_data and self.name == "gzip":
                data = self.obj.unused_data  # next gzip member
                self._start(data)
            else:
                data = b""
        return bytes(out)

    def truncated(self) -> bool:
        return self.obj is None or not self.obj.eof


class _Brotli(_Codec):
    name = "br"

    def __init__(self) -> None:
        self.obj = brotli.Decompressor()

    def feed(self, data: bytes, budget: int) -> bytes:
        out = bytearray()
        try:
            out += self.obj.process(data, output_buffer_limit=budget + 1)
            while len(out) <= budget and not self.obj.can_accept_more_data():
                out += self.obj.process(b"", output_buffer_limit=budget - len(out) + 1)
        except brotli.error as e:
            raise EncodingError(f"br: corrupt data: {e}") from None
        if len(out) > budget:
            raise _Over
        return bytes(out)

    def truncated(self) -> bool:
        return not self.obj.is_finished()


class _Sink:
    """Where zstd writes its output, in steps of `write_size`; raising here stops the decompression."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.budget = 0

    def write(self, data: bytes) -> int:
        self.out += data
        if len(self.out) > self.budget:
            raise _Over
        return len(data)


class _Zstd(_Codec):
    """RFC 9659 limits the window of the HTTP `zstd` coding to 8 MiB; a frame that asks for more would make the
    decoder allocate its window (up to 2 GiB) before producing a byte, so it is refused as corrupt. The streaming
    writer does not say whether the last frame ended, so a truncated zstd body is not reported."""

    name = "zstd"
    STEP = 64 * 1024
    MAX_WINDOW = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.sink = _Sink()
        self.writer = zstandard.ZstdDecompressor(max_window_size=self.MAX_WINDOW).stream_writer(
            self.sink, write_size=self.STEP)

    def feed(self, data: bytes, budget: int) -> bytes:
        self.sink.budget = budget
        try:
            self.writer.write(data)
        except zstandard.ZstdError as e:
            raise EncodingError(f"zstd: corrupt data: {e}") from None
        out, self.sink.out = bytes(self.sink.out), bytearray()
        return out


_CODECS = {"gzip": lambda: _Zlib("gzip"), "x-gzip": lambda: _Zlib("gzip"), "deflate": lambda: _Zlib("deflate"),
           "br": _Brotli, "zstd": _Zstd}


def encodings(header: str | None) -> list[str]:
    """The codings named by a Content-Encoding header, in the order they were applied (identity dropped)."""
    return [c for c in (p.strip().lower() for p in (header or "").split(",")) if c and c != "identity"]


class Decoder:
    """Incremental decoder for one Content-Encoding header (a chain such as `gzip, br` is undone in reverse).

    `feed` returns the decoded bytes available so far; after `CompressionBomb` or `EncodingError` the decoder is
    spent and every later call raises the same error, so a caller may feed blindly and report once."""

    def __init__(self, header: str | None, limit: int = MAX_DECODED_BYTES):
        names = encodings(header)
        unknown = [n for n in names if n not in _CODECS]
        self.limit = limit
        self.consumed = 0
        self.produced = 0
        self.failure: EncodingError | None = None
        if unknown:
            self.failure = EncodingError(f"unsupported content-encoding {', '.join(unknown)!r}")
        self.stages = [_CODECS[n]() for n in reversed(names)] if not unknown else []

    def feed(self, chunk: bytes) -> bytes:
        if self.failure is not None:
            raise self.failure
        self.consumed += len(chunk)
        data = chunk
        try:
            for stage in self.stages:
                data = stage.feed(data, self.limit - self.produced)
        except _Over:
            self.failure = CompressionBomb(stage.name, self.limit)
            raise self.failure from None
        except EncodingError as e:
            self.failure = e
            raise
        self.produced += len(data)
        return data

    def finish(self) -> None:
        """Raise EncodingError if the encoded body ended before its end marker (a truncated body). An empty body
        is no body, not a truncated one."""
        if self.failure is not None:
            raise self.failure
        if not self.consumed:
            return
        for stage in self.stages:
            if stage.truncated():
                raise EncodingError(f"{stage.name}: body truncated")


def decode(data: bytes, header: str | None, limit: int = MAX_DECODED_BYTES) -> bytes:
    """A whole body decoded, capped; raises CompressionBomb or EncodingError."""
    if not encodings(header):
        return data
    decoder = Decoder(header, limit)
    out = decoder.feed(data)
    decoder.finish()
    return out
