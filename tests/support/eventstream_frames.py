"""Test-only encoder for AWS event-stream frames (the inverse of providers/eventstream.py), so fake Bedrock
upstreams answer with the exact binary framing and CRCs botocore checks."""

from __future__ import annotations

import base64
import json
import struct
from binascii import crc32


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One message; every header is encoded as a string (type 7), as AWS does for :event-type and friends."""
    hb = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", crc32(prelude))
    body = prelude + hb + payload
    return body + struct.pack(">I", crc32(body))


def event(event_type: str, payload: dict) -> bytes:
    """A ConverseStream event."""
    return frame({":message-type": "event", ":event-type": event_type, ":content-type": "application/json"},
                 json.dumps(payload).encode())


def chunk(native: dict) -> bytes:
    """An InvokeModelWithResponseStream `chunk` event carrying one native JSON object, base64 in `bytes`."""
    return event("chunk", {"bytes": base64.b64encode(json.dumps(native).encode()).decode()})


def exception(exception_type: str, message: str) -> bytes:
    return frame({":message-type": "exception", ":exception-type": exception_type,
                  ":content-type": "application/json"}, json.dumps({"message": message}).encode())
