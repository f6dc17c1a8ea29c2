"""Incremental decoder for the AWS binary event stream (`application/vnd.amazon.eventstream`), as Bedrock's
ConverseStream and InvokeModelWithResponseStream send it. Source [SDK]: botocore's `eventstream.py` (marks:
docs/providers.md).

Frame: total length (u32 BE), headers length (u32 BE), CRC32 of those 8 bytes, headers, payload, CRC32 of
everything before it. Frames are reassembled across arbitrary chunk boundaries from the length prelude.

Why not botocore's EventStreamBuffer (installed with boto3): importing botocore into the proxy process pulls in
a large SDK for forty lines of framing, its buffer re-copies all pending bytes on every chunk, and its errors
are exceptions from deep inside the SDK. This decoder is pure, checks both CRCs, caps header and payload sizes
at botocore's own limits, and on a framing error stops with a reason instead of raising: the stream it reads is
passed to the client untouched anyway. tests/test_providers_bedrock.py checks it against botocore byte for byte.
"""

from __future__ import annotations

import struct
import uuid
from binascii import crc32
from dataclasses import dataclass, field
from typing import Any

PRELUDE = 12
MAX_HEADERS = 128 * 1024  # botocore's limits
MAX_PAYLOAD = 24 * 1024 * 1024


@dataclass(slots=True)
class EventMessage:
    headers: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    @property
    def message_type(self) -> str:
        return str(self.headers.get(":message-type", "event"))

    @property
    def event_type(self) -> str:
        return str(self.headers.get(":event-type") or self.headers.get(":exception-type")
                   or self.headers.get(":error-code") or "")


class EventStreamDecoder:
    """Feed bytes, get complete messages. After a framing error `error` says why and nothing more is decoded
    (the stream cannot be re-synchronised once a length is wrong)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.error = ""

    def feed(self, chunk: bytes) -> list[EventMessage]:
        if self.error:
            return []
        self.buf += chunk
        out: list[EventMessage] = []
        with memoryview(self.buf) as view:
            start = self._decode(view, out)
        if self.error:
            self.buf.clear()
        else:
            del self.buf[:start]  # the decoded frames, dropped once per chunk
        return out

    def _decode(self, view: memoryview, out: list[EventMessage]) -> int:
        """Append the complete frames in `view` to `out`; the offset of the first undecoded byte."""
        start = 0
        while len(view) - start >= PRELUDE:
            total, headers_len, prelude_crc = struct.unpack_from(">III", view, start)
            if crc32(view[start:start + 8]) != prelude_crc:
                return self._fail("prelude CRC mismatch")
            if headers_len > MAX_HEADERS:
                return self._fail(f"headers of {headers_len} bytes exceed {MAX_HEADERS}")
            payload_len = total - headers_len - PRELUDE - 4
            if payload_len < 0:
                return self._fail(f"frame length {total} shorter than its headers")
            if payload_len > MAX_PAYLOAD:
                return self._fail(f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD}")
            if len(view) - start < total:
                break
            end = start + total
            (message_crc,) = struct.unpack_from(">I", view, end - 4)
            if crc32(view[start:end - 4]) != message_crc:
                return self._fail("message CRC mismatch")
            try:
                headers = _headers(bytes(view[start + PRELUDE:start + PRELUDE + headers_len]))
            except (ValueError, struct.error, IndexError) as e:
                return self._fail(f"bad headers: {e}")
            out.append(EventMessage(headers, bytes(view[start + PRELUDE + headers_len:end - 4])))
            start = end
        return start

    def finish(self) -> str:
        """Why the stream ended badly ("" if it ended on a frame boundary)."""
        if not self.error and self.buf:
            self.error = f"truncated: {len(self.buf)} bytes of an incomplete frame"
        return self.error

    def _fail(self, reason: str) -> int:
        self.error = reason
        return 0


_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def _headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    i = 0
    while i < len(data):
        name_len = data[i]
        name = data[i + 1:i + 1 + name_len].decode("utf-8", "replace")
        i += 1 + name_len
        kind = data[i]
        i += 1
        if kind in (0, 1):
            value: Any = kind == 0
        elif kind in _FIXED:
            fmt = _FIXED[kind]
            (value,) = struct.unpack_from(fmt, data, i)
            i += struct.calcsize(fmt)
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", data, i)
            raw = data[i + 2:i + 2 + length]
            if len(raw) != length:
                raise ValueError(f"header {name!r} runs past the headers block")
            value = raw.decode("utf-8", "replace") if kind == 7 else raw
            i += 2 + length
        elif kind == 9:
            value = str(uuid.UUID(bytes=data[i:i + 16]))
            i += 16
        else:
            raise ValueError(f"header {name!r} has unknown type {kind}")
        headers[name] = value
    return headers


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame, every header a string (type 7, as AWS sends `:event-type` and friends): for a message the
    gateway writes into a stream itself (providers/toolcalls.py)."""
    hb = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    prelude = struct.pack(">II", PRELUDE + len(hb) + len(payload) + 4, len(hb))
    body = prelude + struct.pack(">I", crc32(prelude)) + hb + payload
    return body + struct.pack(">I", crc32(body))
