"""A harness for attack tests: a server subprocess under watch while a hostile client works on it.

    proc = spawn_server(*QUICK, "--static", ...)
    with Siege(proc, ca_file) as siege:
        ... attack proc.port with a raw client, assert it was stopped ...
    # on leaving: the bystander got every answer within 2 s, and RSS grew by less than 150 MiB

`Siege` runs two threads beside the attack: a `Bystander`, a well-behaved HTTP/2 client on its own
TLS connections fetching a small file in a loop and timing every answer, and an `RssSampler`
reading the server's VmRSS from /proc. Every loop here and in the attacks is bounded in count and
time (`bounded()`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from conftest import STATIC, ServerProcess, open_tls
from h2.errors import ErrorCodes
from h2client import PREFACE, H2Client, _FrameSplitter, parse_frame
from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

MiB = 1 << 20
SMALL_PATH = "/static/css/site.css"
SMALL_BODY = (STATIC / "css" / "site.css").read_bytes()
MAX_LATENCY = 2.0
MAX_GROWTH = 150 * MiB

# Short timeouts so that tests of them run in seconds; no access log (it would go to stdout).
QUICK = ("--send-timeout", "2", "--idle-timeout", "2", "--header-timeout", "2",
         "--handshake-timeout", "2", "--access-log", "off")
LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def bounded(count: int, seconds: float) -> Iterator[int]:
    """0, 1, ... up to `count` iterations or until `seconds` have passed, whichever is first."""
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            return
        yield i


def wait_for(predicate: Callable[[], bool], timeout: float = 10, interval: float = 0.05) -> float:
    """Poll until `predicate()` holds; the seconds it took. AssertionError if it never does."""
    start = time.monotonic()
    for _ in bounded(100_000, timeout):
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    if predicate():
        return time.monotonic() - start
    raise AssertionError(f"condition not met within {timeout}s")


# -- /proc -----------------------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss(pid: int) -> int:
    """Resident set size in bytes."""
    return proc_status(pid, "VmRSS") * 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the server's log ----------------------------------------------------------------------------------


def log_levels(lines: list[str]) -> list[str]:
    return [m.group(1) for m in map(LOG_LINE.match, lines) if m]


def assert_quiet(proc: ServerProcess, since: int = 0, worst: str = "INFO") -> list[str]:
    """No traceback, and nothing logged above `worst`, in the server's stderr from line `since`."""
    lines = list(proc.stderr_lines[since:])
    text = "".join(lines)
    assert "Traceback" not in text, text
    order = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    loud = [level for level in log_levels(lines) if order.index(level) > order.index(worst)]
    assert not loud, text
    return lines


# -- a well-behaved client, and RSS -------------------------------------------------------------------


class Bystander(threading.Thread):
    """GETs of a small file over HTTP/2, one after another, on connections of its own (a new one every
    `per_connection` requests); records each answer's latency (a new connection's handshake
    included) and every failure."""

    def __init__(self, port: int, ca_file: str, *, per_connection: int = 10, pause: float = 0.02,
                 max_requests: int = 5000, max_seconds: float = 120) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ca_file = ca_file
        self.per_connection = per_connection
        self.pause = pause
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        client: H2Client | None = None
        try:
            for i in bounded(self.max_requests, self.max_seconds):
                if self.stopping.is_set():
                    break
                start = time.monotonic()
                try:
                    if client is None or i % self.per_connection == 0:
                        if client is not None:
                            client.close()
                        client = None
                        client = nodelay(H2Client.tls(self.port, self.ca_file, timeout=5))
                    self._get(client, start)
                except Exception as e:  # any failure is recorded; the test asserts there were none
                    self.errors.append(f"request {i} after {time.monotonic() - start:.2f}s: {e!r}")
                    if client is not None:
                        client.close()
                    client = None
                self.stopping.wait(self.pause)
        finally:
            if client is not None:
                client.close()

    def _get(self, client: H2Client, start: float) -> None:
        sid = client.request(SMALL_PATH)
        client.receive_until(lambda: client.responses[sid].done, timeout=5)
        response = client.responses[sid]
        if response.status != 200 or bytes(response.body) != SMALL_BODY:
            raise AssertionError(f"status {response.status}, {len(response.body)} bytes")
        self.latencies.append(time.monotonic() - start)
        del client.responses[sid]  # a long-lived connection should not keep every body

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)


class RssSampler(threading.Thread):
    """The server's VmRSS every `interval` seconds; `peak` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = rss(pid)
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        for _ in bounded(1_000_000, 300):
            if self.stopping.is_set():
                return
            with contextlib.suppress(OSError, KeyError):  # the server may have exited
                self.peak = max(self.peak, rss(self.pid))
                self.samples += 1
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


class Siege:
    """A server under attack, watched: see the module docstring.

    On entering: one warm-up request, the baseline RSS, then the bystander and sampler start (the
    bystander's first answer is awaited). On leaving without an exception: the bystander made
    progress (`min_answers`), never failed, never waited `max_latency` or more; the RSS grew by
    less than `max_growth`.
    """

    def __init__(self, proc: ServerProcess, ca_file: str, *, per_connection: int = 10,
                 min_answers: int = 5, max_latency: float = MAX_LATENCY,
                 max_growth: int = MAX_GROWTH) -> None:
        self.proc = proc
        self.ca_file = ca_file
        self.min_answers = min_answers
        self.max_latency = max_latency
        self.max_growth = max_growth
        self.bystander = Bystander(proc.port, ca_file, per_connection=per_connection)
        self.sampler = RssSampler(proc.proc.pid)
        self.baseline = 0

    def __enter__(self) -> Siege:
        with H2Client.tls(self.proc.port, self.ca_file) as client:  # warm-up: caches, first imports
            sid = client.request(SMALL_PATH)
            client.receive_until(lambda: client.responses[sid].done)
        self.baseline = rss(self.proc.proc.pid)
        self.sampler.peak = self.baseline
        self.sampler.start()
        self.bystander.start()
        wait_for(lambda: bool(self.bystander.latencies or self.bystander.errors), timeout=5)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:  # a short attack: let the bystander show it still gets answers
            with contextlib.suppress(AssertionError):
                wait_for(lambda: len(self.bystander.latencies) >= self.min_answers, timeout=5)
        self.bystander.stop()
        self.sampler.stop()
        if exc_type is None:
            self.check()

    @property
    def growth(self) -> int:
        return self.sampler.peak - self.baseline

    def check(self) -> None:
        b = self.bystander
        assert not b.errors, f"the bystander failed: {b.errors[:5]}"
        assert len(b.latencies) >= self.min_answers, f"the bystander got {len(b.latencies)} answers"
        worst = max(b.latencies)
        assert worst < self.max_latency, f"an answer took {worst:.2f}s"
        assert self.growth < self.max_growth, f"RSS grew by {self.growth / MiB:.1f} MiB"


# -- attackers ---------------------------------------------------------------------------------------


def nodelay(client: H2Client) -> H2Client:
    """No Nagle: a client writing frame by frame would otherwise wait for delayed ACKs (40 ms)."""
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def hostile(port: int, ca_file: str, **kwargs: Any) -> H2Client:
    """A raw h2 client over verified TLS that lets the test send what h2 would refuse to."""
    kwargs.setdefault("validate_outbound_headers", False)
    kwargs.setdefault("normalize_outbound_headers", False)
    return nodelay(H2Client.tls(port, ca_file, **kwargs))


def request_headers(client: H2Client, path: str = "/", method: bytes = b"GET"
                    ) -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", b"https"), (b":authority", client.authority),
            (b":path", path.encode())]


def goaway_on_close(client: H2Client, timeout: float = 10) -> GoAwayFrame:
    """Wait until the server closes the connection; the last GOAWAY it sent before."""
    client.wait_closed(timeout)
    assert client.goaways, "the server closed the connection without a GOAWAY"
    return client.goaways[-1]


def error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def closed_by_server(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Read until the server closes (EOF or reset) or `timeout`; (closed?, bytes read)."""
    sock.settimeout(0.2)
    got = bytearray()
    for _ in bounded(100_000, timeout):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset, or a TLS error on a dead connection
            return True, bytes(got)
        if not data:
            return True, bytes(got)
        got += data
    return False, bytes(got)


def tcp(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def tls(port: int, ca_file: str, alpn: list[str] | None = None) -> socket.socket:
    return open_tls(port, ca_file, alpn=alpn or ["http/1.1"])


# -- a raw HTTP/2 connection: bytes out, frames in -------------------------------------------------------


def frame_bytes(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame as raw bytes, whatever its type, flags, stream or length (for malformed frames)."""
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big")
            + payload)


class RawH2:
    """An HTTP/2 connection with no state machine on the client side: the test writes bytes and
    frames as it likes and reads the server's frames (parsed by hyperframe, DATA payloads dropped).
    The server's SETTINGS are acknowledged; nothing else is answered."""

    def __init__(self, sock: socket.socket, *, settings: dict[int, int] | None = None,
                 preface: bool = True) -> None:
        self.sock = sock
        self.frames: list[Any] = []
        self.data_received: dict[int, int] = {}
        self.closed = False
        self._splitter = _FrameSplitter()
        if preface:
            self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    @classmethod
    def tls(cls, port: int, ca_file: str, **kwargs: Any) -> RawH2:
        sock = open_tls(port, ca_file, alpn=["h2"])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, **kwargs)

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Write bytes; False if the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def send_frames(self, *frames: Any) -> bool:
        return self.send(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def read(self, timeout: float) -> None:
        """Read what arrives within `timeout` (one recv)."""
        if self.closed:
            return
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(256 * 1024)
        except TimeoutError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        for raw in self._splitter.feed(data):
            wire = parse_frame(raw)
            frame = wire.frame
            self.frames.append(frame)
            if isinstance(frame, DataFrame):
                self.data_received[frame.stream_id] = self.data_received.get(frame.stream_id, 0) + wire.length
            elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.send(SettingsFrame(0, flags=["ACK"]).serialize())

    def read_until(self, predicate: Callable[[], bool], timeout: float = 5) -> bool:
        """Read until `predicate()` holds (True) or `timeout` passes or the connection closes."""
        deadline = time.monotonic() + timeout
        for _ in bounded(1_000_000, timeout):
            if predicate():
                return True
            if self.closed:
                break
            self.read(deadline - time.monotonic())
        return predicate()

    def read_for(self, seconds: float) -> None:
        self.read_until(lambda: False, seconds)

    def wait_closed(self, timeout: float = 5) -> bool:
        return self.read_until(lambda: self.closed, timeout)

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)
                and (stream_id is None or f.stream_id == stream_id)]

    @property
    def goaways(self) -> list[GoAwayFrame]:
        return self.of(GoAwayFrame)

    def resets(self, stream_id: int) -> list[int]:
        return [f.error_code for f in self.of(RstStreamFrame, stream_id)]

    def responses(self, stream_id: int) -> list[HeadersFrame]:
        return self.of(HeadersFrame, stream_id)

    def ping(self, data: bytes = b"syncsync") -> bool:
        """A PING and its ACK: every frame sent before it has been handled."""
        def acked() -> bool:
            return any("ACK" in f.flags and f.opaque_data == data for f in self.of(PingFrame))
        self.send_frames(PingFrame(0, opaque_data=data))
        return self.read_until(acked)


def hpack_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of exactly `headers`, valid or not, that leaves the server's HPACK dynamic
    table alone (no indexing), so blocks made at any time decode the same way."""
    return Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in headers], huffman=False)


def hpack_request(path: bytes = b"/", authority: bytes = b"localhost", method: bytes = b"GET",
                  extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A request's header block (see `hpack_block`)."""
    return hpack_block([(b":method", method), (b":scheme", b"https"), (b":authority", authority),
                        (b":path", path), *(extra or [])])


def h2c_port(proc: ServerProcess) -> int:
    """The cleartext port of a server started with --h2c-bind (from its startup line)."""
    for line in proc.stderr_lines:
        match = re.search(r" http://[^ ]+:(\d+)/", line)
        if match:
            return int(match.group(1))
    raise AssertionError("no cleartext listener in the startup line")


def count_lines(proc: ServerProcess, text: str, since: int = 0) -> int:
    return sum(text in line for line in proc.stderr_lines[since:])
