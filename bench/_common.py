"""What the benchmarks share: the fake upstream in its own process, the proxies under test, and a raw asyncio client.

Three things keep the numbers about the proxy and not about the harness (docs/stack.md):
- the load generator is a raw asyncio HTTP/1.1 client over TLS inside an HTTP CONNECT tunnel (httpx's AsyncClient
  is itself a bottleneck at 50 concurrent requests; wrk cannot tunnel TLS through a CONNECT proxy);
- the fake upstream is a bare asyncio protocol (UpstreamProtocol: no Nagle delay, a deep accept queue), run in a
  separate process so that its GIL is not the client's;
- every target is measured in the same run, interleaved in rounds, so a noisy neighbour hurts them all alike.

`python -m bench._common upstream CA_DIR [--chunks N --interval S]` serves the fake api.openai.com and prints its
port; it stops when its stdin closes (so it can never outlive the benchmark). `python -m bench._common mitmdump N
PORT READY -- ARGS` runs N bare mitmdumps on one port (Mitmdump).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.gateway import ROUTE_ADDON, GatewayProcess, free_port, wait_listening

ROOT = Path(__file__).resolve().parents[1]

HOST = "api.openai.com"
PATH = "/v1/chat/completions"


# --- the traffic ---------------------------------------------------------------------------------------------------

#: What ends the user turn of a bench prompt, by the DLP work it causes in the gateway with the shipped policy.
PROMPT_TAILS = {
    # nothing any recognizer could match: the prefilter in the proxy proves it, no worker runs
    "clean": "",
    # an e-mail address: only a monitored rule looks at it, so the prompt is sent while the workers scan it
    "pii": " Send the summary to jane.doe@acme-corp.com.",
    # a word the enforced secrets rule must rule out before the prompt may leave (it is not a secret): the
    # request waits for the workers' scan
    "token": " Use token ghp_notreallyatoken for the demo.",
}


#: The tool a bench request offers when it asks for `tools` (and the upstream then calls it: `sse_frames`).
TOOL = {"type": "function", "function": {
    "name": "run_command", "description": "Runs a shell command.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}


def chat_body(stream: bool = False, size: int = 1024, prompt: str = "clean", nonce: int | None = None,
              tools: bool = False) -> bytes:
    """An OpenAI chat completion request of about `size` bytes (system prompt plus a user turn), whose user turn
    ends with PROMPT_TAILS[prompt]. `nonce` makes the user turn one of its own: the gateway remembers the findings
    of texts it has scanned (dlp.known), so a bench that repeats one prompt would measure that memory, not DLP.
    `tools`: it offers the model TOOL."""
    body = {"model": "gpt-4o", "stream": stream,
            "messages": [{"role": "system", "content": "You are a concise assistant for the finance team."},
                         {"role": "user", "content": ""}]}
    if tools:
        body["tools"] = [TOOL]
    filler = "Summarise the quarterly figures for the board in three bullet points. "
    tail = ("" if nonce is None else f" Request {nonce}.") + PROMPT_TAILS[prompt]
    need = size - len(json.dumps(body, separators=(",", ":"))) - len(tail)
    body["messages"][1]["content"] = (filler * (need // len(filler) + 1))[:max(need, 0)] + tail
    return json.dumps(body, separators=(",", ":")).encode()


CHAT_REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "- Revenue up 4%\n- Costs flat\n- Cash strong"}}],
    "usage": {"prompt_tokens": 230, "completion_tokens": 18, "total_tokens": 248}}).encode()


def sse_frames(chunks: int, tool_call: bool = False) -> list[bytes]:
    """`chunks` (at least 3; 5 with a tool call) SSE frames as the real API sends them: a word per chunk, then
    (`tool_call`) a call of TOOL in two pieces, then the finish reason, the usage block and [DONE]. The usage
    counts chunks - 3 tokens either way."""
    def frame(choices: list, usage: dict | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
                                       "model": "gpt-4o", "choices": choices, "usage": usage}).encode() + b"\n\n"

    def call(piece: dict) -> bytes:
        return frame([{"index": 0, "delta": {"tool_calls": [{"index": 0, **piece}]}, "finish_reason": None}])
    tokens = max(chunks - 3, 0)
    words = max(chunks - 5, 0) if tool_call else tokens
    pieces = [call({"id": "call_bench", "type": "function", "function": {"name": "run_command", "arguments": ""}}),
              call({"function": {"arguments": '{"command": "ls -la /srv/reports"}'}})] if tool_call else []
    return ([frame([{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}]) for i in range(words)]
            + pieces + [frame([{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_call else "stop"}]),
                        frame([], {"prompt_tokens": 230, "completion_tokens": tokens, "total_tokens": 230 + tokens}),
                        b"data: [DONE]\n\n"])


# --- the fake upstream, in its own process --------------------------------------------------------------------

class UpstreamProtocol(asyncio.Protocol):
    """The fake api.openai.com on one connection: HTTP/1.1 keep-alive, every POST answered with CHAT_REPLY, or
    (`"stream":true`) with SSE frames sent chunked one by one `interval` apart (with a tool call when the request
    offers tools). A bare asyncio protocol, not tests/support/upstream.py's threaded http.server: on a 2-core machine
    the harness shares the cores with the proxies it measures, and that server's per-request Python (header
    parsing, a thread per connection) took a sixth of a core at 1,000 req/s, which the proxies then could not have.
    Requests on one connection are answered in order; a streamed answer holds the next request until it ends."""

    def __init__(self, frames: list[bytes], with_call: list[bytes], interval: float):
        self.frames, self.with_call, self.interval = frames, with_call, interval
        self.buffer = bytearray()
        self.streaming: asyncio.Task | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.answer()

    def answer(self) -> None:
        while self.streaming is None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:head_end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                return
            body = bytes(self.buffer[head_end + 4:head_end + 4 + length])
            del self.buffer[:head_end + 4 + length]
            if b'"stream":true' not in body:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                     b"\r\n%s" % (len(CHAT_REPLY), CHAT_REPLY))
                continue
            self.streaming = asyncio.ensure_future(self.stream(self.with_call if b'"tools"' in body else self.frames))

    async def stream(self, frames: list[bytes]) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for frame in frames:
            if self.interval:
                await asyncio.sleep(self.interval)
            if self.transport.is_closing():
                return
            self.transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.transport.write(b"0\r\n\r\n")
        self.streaming = None
        self.answer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()


def serve_upstream(ca_dir: Path, chunks: int, interval: float) -> None:
    from tests.support.upstream import TestCA

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        frames, with_call = sse_frames(chunks), sse_frames(chunks, tool_call=True)
        server = await loop.create_server(lambda: UpstreamProtocol(frames, with_call, interval), "127.0.0.1", 0,
                                          ssl=TestCA(ca_dir).server_context([HOST]), backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes our stdin (or dies)
        server.close()

    asyncio.run(serve())


class Upstream:
    """The fake api.openai.com (HTTPS, test CA) in a child process."""

    def __init__(self, workdir: Path, chunks: int = 50, interval: float = 0.01):
        from tests.support.upstream import TestCA

        self.ca = TestCA(workdir / "testca").ca_pem  # created here, loaded by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._common", "upstream", str(workdir / "testca"), "--chunks", str(chunks),
             "--interval", str(interval)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"fake upstream did not start (exit {self.proc.returncode})")
        self.port = int(line)

    def stop(self) -> None:
        _stop(self.proc, close_stdin=True)


# --- the proxies under test ------------------------------------------------------------------------------------

class Mitmdump:
    """Bare mitmdump with only the test routing addon: the floor the gateway's cost is measured against.

    `processes` > 1 runs that many mitmdumps on one port the way `gateway run --workers` does (each on an event
    loop whose servers set SO_REUSEPORT: cli.run.SharedPortLoop), under one launcher process whose descendants
    they are, so `cpu_seconds(proc.pid)` counts them all: how far bare mitmproxy scales on this machine with the
    same client and upstream, the ceiling a gateway's ratio is read against."""

    def __init__(self, workdir: Path, upstream: Upstream, sets: list[str] = (), processes: int = 1):
        self.port = free_port()
        confdir = workdir / "ca"
        self.ca = confdir / "mitmproxy-ca-cert.pem"
        args = ["-q", "--listen-host", "127.0.0.1", "--listen-port", str(self.port), "--set", f"confdir={confdir}",
                "-s", str(ROUTE_ADDON), "--set", f"test_upstream={HOST}={upstream.port}",
                "--set", f"ssl_verify_upstream_trusted_ca={upstream.ca}"]
        for s in sets:
            args += ["--set", s]
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mitmdump.log"
        ready = workdir / "listening"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench._common", "mitmdump", str(processes), str(self.port), str(ready),
                 "--", *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_listening("mitmdump", self.proc, self.port, ready, self.log_path.read_text, 30)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        _stop(self.proc)


#: A mitmdump whose event loops set SO_REUSEPORT on the servers they start (mitmproxy's `run` calls asyncio.run
#: without a loop factory, so the policy supplies it).
_SHARED_PORT_MITMDUMP = """
import asyncio, sys
from cli.run import SharedPortLoop
class SharedPortPolicy(asyncio.DefaultEventLoopPolicy):
    _loop_factory = SharedPortLoop
asyncio.set_event_loop_policy(SharedPortPolicy())
from mitmproxy.tools.main import mitmdump
sys.exit(mitmdump())
"""


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (each SO_REUSEPORT socket is a line of /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == local and line.split()[3] == "0A")


def launch_mitmdumps(processes: int, port: int, ready: Path, args: list[str]) -> int:
    """Start `processes` mitmdumps on `port`: the first alone (it creates the CA in the shared confdir), then the
    rest; touch `ready` once all of them listen, and stop them all on SIGTERM or when one exits."""
    children: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for n in range(1, processes + 1):
            children.append(subprocess.Popen([sys.executable, "-c", _SHARED_PORT_MITMDUMP, *args], cwd=ROOT))
            deadline = time.monotonic() + 30
            while listeners(port) < n:
                if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                    print(f"bench: mitmdump {n} of {processes} did not listen on {port}", flush=True)
                    return 1
                time.sleep(0.05)
        ready.touch()
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
        return 1
    finally:
        for c in children:
            _stop(c)


WARM = ("DLP: prefilter gate ready", "DLP: no prefilter gate", "DLP prefilter gate unavailable",
        "DLP workers cannot scan")  # the lines that end the DLP warm-up, however it ends


def start_gateway(workdir: Path, upstream: Upstream, sets: list[str] = (), source: Path | None = None,
                  rules: Path | None = None, workers: int = 1) -> GatewayProcess:
    """The real `python -m gateway run`, shipped rules (or the `rules` folder), embedded chdb audit: exactly what
    the e2e tests run (`sets`: options NAME=VALUE, to measure what one of them costs; `source`: another commit's
    tree, see `checkout`). Returned once warm: the DLP workers and the prefilter gate built and the start-up objects
    frozen, which would otherwise land in the first rounds."""
    gateway = GatewayProcess(workdir, {HOST: upstream.port}, upstream.ca, sets=list(sets), source=source, rules=rules,
                             workers=workers)
    # DLP off: no warm-up to wait for
    if any(s.replace(" ", "").lower() in ("gateway_dlp=false", "gateway_dlp=0", "gateway_dlp=off") for s in sets):
        return gateway
    deadline = time.monotonic() + 120
    while not any(line in gateway.output() for line in WARM):
        if time.monotonic() > deadline or gateway.proc.poll() is not None:
            gateway.stop()
            raise RuntimeError(f"gateway not warm after 120 s:\n{gateway.output()[-3000:]}")
        time.sleep(0.1)
    return gateway


def checkout(rev: str, into: Path) -> Path:
    """The repository's tree at `rev` (a commit, tag or branch), for a gateway row of an earlier commit beside this
    one in the same run: the way to tell a change's cost from the machine's mood."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def audited(gateway, where: str = "1") -> tuple[int | None, str]:
    """Events in the gateway's audit store, read after it stops (an embedded chdb store has one user at a time):
    a gateway row counts only if the gateway really decrypted, parsed and audited the traffic it was sent."""
    import clickhouse_connect

    gateway.stop()
    try:
        client = clickhouse_connect.get_client(dsn=gateway.audit_url)
        try:
            return int(client.command(f"SELECT count() FROM events WHERE {where}")), ""
        finally:
            client.close()
    except Exception as e:  # report it with the numbers rather than lose them
        return None, f"{type(e).__name__}: {str(e)[:300]}"


def _stop(proc: subprocess.Popen, close_stdin: bool = False) -> None:
    if proc.poll() is None:
        if close_stdin and proc.stdin:
            proc.stdin.close()
            try:
                proc.wait(5)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Target:
    """Where the client connects: straight to the upstream, or through a proxy (CONNECT, then TLS inside)."""
    name: str
    port: int
    ca: Path
    via_proxy: bool
    pid: int | None = None  # the proxy process whose CPU time is counted

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


class Workspace:
    """A temporary folder and every process started in it, stopped in reverse order whatever happens."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
        self.stops: list[Callable[[], None]] = []

    def __enter__(self) -> "Workspace":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its processes
        return self

    def keep(self, thing):
        self.stops.append(thing.stop)
        return thing

    def __exit__(self, *exc) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception as e:  # one stuck process must not leave the others running
                print(f"bench: stopping failed: {e}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- measuring -------------------------------------------------------------------------------------------------

def interleaved(targets: list[Target], rounds: int) -> Iterator[Target]:
    """Every target once per round, the order rotating, so drifting load from elsewhere is shared evenly."""
    for r in range(rounds):
        k = r % len(targets)
        yield from targets[k:] + targets[:k]


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process and all its descendants (a gateway may run worker processes)."""
    if pid is None:
        return 0.0
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                pass
    family, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in family:
                family.add(child)
                frontier.append(child)
    total = 0
    for p in family:
        try:
            fields = _stat(p)
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of /proc/PID/stat)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all processes used since boot: minus ours, what others took. Interrupt time is left out: on
    loopback most of it is our own traffic, charged to no process."""
    user, nice, system = map(int, Path("/proc/stat").read_text().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may contain spaces): [state, ppid, ...]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_difference(a: list[float], b: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """median(a) - median(b), and the 95% bootstrap interval of that difference: a difference whose interval holds
    zero is not told apart from run-to-run noise by this many samples."""
    rng = random.Random(0)  # the same numbers give the same interval
    diffs = sorted(statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
                   for _ in range(resamples))
    return median(a) - median(b), diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def machine_line() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average {load}"


# --- the raw client ----------------------------------------------------------------------------------------------

@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.transport.abort()


async def connect(target: Target, ctx: ssl.SSLContext) -> Connection:
    if not target.via_proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port, ssl=ctx, server_hostname=HOST)
        return Connection(reader, writer)
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        writer.transport.abort()
        raise ConnectionError(f"CONNECT refused: {head.splitlines()[0]!r}")
    await writer.start_tls(ctx, server_hostname=HOST)
    return Connection(reader, writer)


def request_bytes(body: bytes) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer sk-bench-not-a-key\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def exchange(conn: Connection, request: bytes, on_chunk: Callable[[bytes], None] | None = None) -> int:
    """Send one request on a kept-alive connection and read the whole response; returns the status code.
    `on_chunk` sees each body piece as it arrives (each chunk of a chunked body)."""
    conn.writer.write(request)
    head = await conn.reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await conn.reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the empty line
                    pass
                break
            data = (await conn.reader.readexactly(size + 2))[:-2]
            if on_chunk:
                on_chunk(data)
    else:
        data = await conn.reader.readexactly(int(headers.get(b"content-length", b"0")))
        if on_chunk and data:
            on_chunk(data)
    return status


@dataclass
class Tally:
    """What one target did in all its rounds together."""
    latencies: list[float] = field(default_factory=list)  # seconds per request
    errors: int = 0
    sent: int = 0  # requests sent, warm-up included
    seconds: float = 0.0  # wall time of the measured windows
    cpu: float = 0.0  # proxy CPU seconds during the measured windows
    client_cpu: float = 0.0  # the load generator's, same windows
    upstream_cpu: float = 0.0  # the fake upstream's, same windows
    others_cpu: float = 0.0  # every other process on the machine, same windows
    first_error: str = ""

    def error(self, e: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(e).__name__}: {e}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._common")
    roles = parser.add_subparsers(dest="role", required=True)
    upstream = roles.add_parser("upstream", help="serve the fake api.openai.com and print its port")
    upstream.add_argument("ca_dir", type=Path)
    upstream.add_argument("--chunks", type=int, default=50)
    upstream.add_argument("--interval", type=float, default=0.01)
    mitmdump = roles.add_parser("mitmdump", help="run N mitmdumps on one port (see Mitmdump)")
    mitmdump.add_argument("processes", type=int)
    mitmdump.add_argument("port", type=int)
    mitmdump.add_argument("ready", type=Path)
    mitmdump.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.role == "mitmdump":
        return launch_mitmdumps(args.processes, args.port, args.ready,
                                args.args[1:] if args.args[:1] == ["--"] else args.args)
    serve_upstream(args.ca_dir, args.chunks, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
