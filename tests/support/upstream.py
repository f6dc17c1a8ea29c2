"""A fake AI provider: a real HTTPS server on 127.0.0.1 with a certificate from a test CA.

Handlers are registered per path (prefix); each gets the recorded request and returns a `Reply` (a whole body,
or a list of chunks sent one by one with flushes, for streams). Every request is recorded so tests can assert
what actually left the gateway (for example, the redacted body).
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from mitmproxy.certs import CertStore


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    chunks: Iterable[bytes] | None = None  # streamed with Transfer-Encoding: chunked, one flush per chunk
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Recorded], Reply]


class TestCA:
    """A CA for fake upstreams, created with mitmproxy's own certificate code."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.store = CertStore.from_store(folder, "testca", 2048)
        self.ca_pem = folder / "testca-ca-cert.pem"

    def leaf_pem(self, hosts: list[str]) -> Path:
        """A certificate for `hosts` (and 127.0.0.1) with its key, in one PEM file: for servers that load files."""
        entry = self.store.get_cert(hosts[0], [x509.DNSName(h) for h in hosts] + [x509.IPAddress(
            __import__("ipaddress").ip_address("127.0.0.1"))])
        cert_file = self.folder / f"leaf-{abs(hash(tuple(hosts)))}.pem"
        from cryptography.hazmat.primitives import serialization
        cert_file.write_bytes(entry.cert.to_pem() + entry.privatekey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        return cert_file

    def server_context(self, hosts: list[str]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.leaf_pem(hosts))
        return ctx


class FakeUpstream:
    def __init__(self, ca: TestCA, hosts: list[str]):
        self.requests: list[Recorded] = []
        self.handlers: list[tuple[str, Handler]] = []
        upstream = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                upstream.requests.append(rec)
                reply = upstream._dispatch(rec)
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.chunks is None:
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in reply.chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        class _Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.socket = ca.server_context(hosts).wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, prefix: str, handler: Handler) -> None:
        """Later routes win over earlier ones for the same prefix."""
        self.handlers.insert(0, (prefix, handler))

    def _dispatch(self, rec: Recorded) -> Reply:
        for prefix, handler in self.handlers:
            if rec.path.startswith(prefix):
                return handler(rec)
        return Reply(404, b'{"error": {"message": "no fake route"}}')

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sse(events: Iterable[bytes | str], gate: threading.Event | None = None, delay: float = 0.0) -> Iterable[bytes]:
    """SSE frames, one chunk each. If `gate` is given, the last frame waits until the test sets it: proof that
    earlier frames reached the client before the upstream finished."""
    events = [e.encode() if isinstance(e, str) else e for e in events]
    for i, e in enumerate(events):
        if i == len(events) - 1 and gate is not None:
            if not gate.wait(20):
                raise TimeoutError("test never released the last chunk")
        if delay:
            time.sleep(delay)
        yield e
