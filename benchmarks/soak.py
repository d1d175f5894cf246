"""Soak: thousands of concurrent TLS connections, well-behaved and abusive, for a bounded time.

    python benchmarks/soak.py                  # 2,000 connections for 60 s
    python benchmarks/soak.py --quick          # 500 connections for 15 s
    python benchmarks/soak.py --connections 3000 --duration 120 --abusive 0.5

Not a test. The server runs as a subprocess on 127.0.0.1 (a development certificate in a temporary
folder, the demo site plus an 8 MiB file); this process opens every connection, from one asyncio
loop. Each client holds one connection at a time and, when the server closes it, opens another,
until the time is up. Well-behaved clients (HTTP/2 and HTTP/1.1 keep-alive) GET small files with a
pause between requests and time each answer; abusive ones each repeat one attack:

    rapid-reset  streams opened and reset at once (CVE-2023-44487)
    ping-flood   PING frames without end (CVE-2019-9512)
    continuation a header block that never ends (CVE-2024-27316)
    zero-window  streams of the large file parked at a zero window (CVE-2019-9517)
    no-read      a download to a client that stops reading its socket
    slowloris    an HTTP/1.1 request head a byte at a time
    silent       a TCP connection that never starts its TLS handshake

The report: requests and errors of the good clients, their latency (p50, p99, max), how each kind of
attack ended (the GOAWAY or RST_STREAM code, or the close), and the server's peak RSS and file
descriptors, sampled from /proc. Every loop is bounded in time; only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import random
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from h2.config import H2Configuration  # noqa: E402
from h2.connection import H2Connection  # noqa: E402
from h2.events import ConnectionTerminated, DataReceived, StreamEnded, StreamReset  # noqa: E402
from h2.settings import SettingCodes  # noqa: E402
from hpack import Encoder  # noqa: E402
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame  # noqa: E402

from h2serve.net.certs import ensure_dev_certs  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SMALL = ["/static/css/site.css", "/static/js/site.js", "/static/img/logo.svg", "/about"]
BIG = "/static/soak.bin"
ATTACKS = ["rapid-reset", "ping-flood", "continuation", "zero-window", "no-read", "slowloris", "silent"]
ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
          5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL",
          9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    good_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    connects: collections.Counter[str] = field(default_factory=collections.Counter)


# -- the server ---------------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class LogTally:
    """The server's stderr, read by a thread so that the pipe never fills: lines counted by level,
    and the loud ones (ERROR, CRITICAL, tracebacks) kept."""

    def __init__(self) -> None:
        self.levels: collections.Counter[str] = collections.Counter()
        self.loud: list[str] = []
        self.infos: collections.Counter[str] = collections.Counter()

    def read(self, stream: Any) -> None:
        for line in stream:
            match = re.match(r"^\S+ \S+ (\w+) \S+: (.*)", line)
            level = match.group(1) if match else "other"
            self.levels[level] += 1
            if match and level == "INFO":
                self.infos[re.sub(r"\d+(\.\d+)*", "N", match.group(2))[:70]] += 1
            if (level in ("ERROR", "CRITICAL") or "Traceback" in line) and len(self.loud) < 50:
                self.loud.append(line.rstrip())


def start_server(workdir: Path, connections: int) -> tuple[subprocess.Popen[str], int, str, LogTally]:
    certs, _ = ensure_dev_certs(workdir / "certs")
    site = workdir / "site"
    shutil.copytree(REPO / "templates", site / "templates")
    shutil.copytree(REPO / "static", site / "static")
    (site / "static" / "soak.bin").write_bytes(os.urandom(8 << 20))
    (workdir / "push.json").write_text("{}")
    args = [sys.executable, "-m", "h2serve", "--bind", "127.0.0.1:0", "--cert", str(certs.cert),
            "--key", str(certs.key), "--templates", str(site / "templates"),
            "--static", str(site / "static"), "--push-manifest", str(workdir / "push.json"),
            "--access-log", "off", "--log-level", "info", "--max-connections", str(connections * 2),
            "--handshake-timeout", "5", "--header-timeout", "5", "--send-timeout", "5",
            "--idle-timeout", "15"]
    proc = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=raise_fd_limit, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r" on https://[^ ]+:(\d+)/", line)
        if match:
            tally = LogTally()
            threading.Thread(target=tally.read, args=(proc.stderr,), daemon=True).start()
            return proc, int(match.group(1)), str(certs.ca), tally
    proc.kill()
    raise SystemExit("server did not start:\n" + "".join(lines))


def proc_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(pid: int, stop: threading.Event, out: dict[str, Any]) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            out["peak_rss"] = max(out.get("peak_rss", 0), proc_kib(pid, "VmRSS") * 1024)
            out["peak_fds"] = max(out.get("peak_fds", 0), len(os.listdir(f"/proc/{pid}/fd")))
        stop.wait(0.1)


# -- clients ------------------------------------------------------------------------------------------


class Conn:
    """One TLS connection: asyncio streams plus a frame splitter for the raw attackers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext | None) -> Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None), 15)
        return cls(reader, writer)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def send(self, data: bytes) -> bool:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), 10)
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        return True

    async def frames_until_close(self, seconds: float) -> list[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload) of the frames read until the server closes; [] if it did
        not close in `seconds`."""
        frames = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), deadline - time.monotonic())
            except (TimeoutError, OSError, ssl.SSLError):
                data = b"" if time.monotonic() < deadline else None
            if data is None:
                return []
            if not data:
                return [*frames, (-1, 0, 0, b"")]
            self.buffer += data
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                frames.append((self.buffer[3], self.buffer[4],
                               int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF,
                               bytes(self.buffer[9:9 + length])))
                del self.buffer[:9 + length]
        return []


def ending(frames: list[tuple[int, int, int, bytes]]) -> str:
    """How a connection ended: its GOAWAY's code, else the last RST_STREAM's, else 'closed'."""
    if not frames:
        return "still open"
    for kind, _, _, payload in reversed(frames):
        if kind == 0x7:
            return "GOAWAY " + ERRORS.get(int.from_bytes(payload[4:8], "big"), "?")
    for kind, _, _, payload in reversed(frames):
        if kind == 0x3:
            return "RST_STREAM " + ERRORS.get(int.from_bytes(payload[:4], "big"), "?")
    return "closed"


def request_block(path: str, method: bytes = b"GET") -> bytes:
    return Encoder().encode([(b":method", method), (b":scheme", b"https"), (b":authority", b"localhost"),
                             (b":path", path.encode())])


async def good_h2(port: int, ctx: ssl.SSLContext, deadline: float, tally: Tally) -> None:
    rng = random.Random()
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(port, ctx)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            tally.good_errors["h2 connect: " + type(e).__name__] += 1
            await asyncio.sleep(0.5)
            continue
        tally.connects["good-h2"] += 1
        h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        h2.initiate_connection()
        try:
            while time.monotonic() < deadline:
                sid = h2.get_next_available_stream_id()
                h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                      (b":authority", b"localhost"), (b":path", rng.choice(SMALL).encode())],
                                end_stream=True)
                started = time.monotonic()
                conn.writer.write(h2.data_to_send())
                done = False
                while not done:
                    data = await asyncio.wait_for(conn.reader.read(65536), 10)
                    if not data:
                        raise ConnectionError("closed by the server")
                    for event in h2.receive_data(data):
                        if isinstance(event, DataReceived):
                            h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        elif isinstance(event, StreamEnded) and event.stream_id == sid:
                            done = True
                        elif isinstance(event, StreamReset) and event.stream_id == sid:
                            raise ConnectionError(f"stream reset {event.error_code!r}")
                        elif isinstance(event, ConnectionTerminated) and not done:
                            raise ConnectionError(f"GOAWAY {event.error_code!r}")
                    conn.writer.write(h2.data_to_send())
                tally.latencies.append(time.monotonic() - started)
                await asyncio.sleep(rng.uniform(0.2, 1.0))
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError, Exception) as e:
            if time.monotonic() < deadline and "GOAWAY ErrorCodes.NO_ERROR" not in str(e):
                tally.good_errors["h2: " + (str(e)[:60] or type(e).__name__)] += 1
        finally:
            conn.close()


async def good_h1(port: int, ctx: ssl.SSLContext, deadline: float, tally: Tally) -> None:
    rng = random.Random()
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(port, ctx)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            tally.good_errors["h1 connect: " + type(e).__name__] += 1
            await asyncio.sleep(0.5)
            continue
        tally.connects["good-h1"] += 1
        try:
            while time.monotonic() < deadline:
                path = rng.choice(SMALL)
                started = time.monotonic()
                conn.writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise ConnectionError(head[:40].decode("latin-1"))
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                await asyncio.wait_for(conn.reader.readexactly(length), 10)
                tally.latencies.append(time.monotonic() - started)
                await asyncio.sleep(rng.uniform(0.2, 1.0))
        except asyncio.IncompleteReadError as e:
            if e.partial or time.monotonic() < deadline - 20:  # an idle close between requests is fine
                tally.good_errors["h1: closed mid-response"] += 1
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as e:
            if time.monotonic() < deadline:
                tally.good_errors["h1: " + (str(e)[:60] or type(e).__name__)] += 1
        finally:
            conn.close()


async def abuser(kind: str, port: int, ctx: ssl.SSLContext, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(port, None if kind == "silent" else ctx)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            tally.outcomes[kind]["connect failed: " + type(e).__name__] += 1
            await asyncio.sleep(0.5)
            continue
        tally.connects[kind] += 1
        try:
            outcome = await ATTACK[kind](conn, min(30.0, deadline - time.monotonic() + 10))
        finally:
            conn.close()
        tally.outcomes[kind][outcome] += 1


async def rapid_reset(conn: Conn, seconds: float) -> str:
    block = request_block(BIG)
    await conn.send(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    sid = 1
    for _ in range(100):  # at most 10,000 streams
        batch = b"".join(HeadersFrame(sid + 2 * i, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                         + RstStreamFrame(sid + 2 * i, error_code=8).serialize() for i in range(100))
        sid += 200
        if not await conn.send(batch):
            break
        await asyncio.sleep(0.01)
    return ending(await conn.frames_until_close(seconds))


async def ping_flood(conn: Conn, seconds: float) -> str:
    await conn.send(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    pings = b"".join(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(500))
    for _ in range(100):
        if not await conn.send(pings):
            break
        await asyncio.sleep(0.01)
    return ending(await conn.frames_until_close(seconds))


async def continuation(conn: Conn, seconds: float) -> str:
    await conn.send(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                    + HeadersFrame(1, request_block("/")[:4]).serialize())
    for _ in range(1000):
        if not await conn.send(ContinuationFrame(1, b"\x00" * 4096).serialize()):
            break
        await asyncio.sleep(0.005)
    return ending(await conn.frames_until_close(seconds))


async def zero_window(conn: Conn, seconds: float) -> str:
    settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + SettingCodes.INITIAL_WINDOW_SIZE.to_bytes(2, "big") \
        + (0).to_bytes(4, "big")
    block = request_block(BIG)
    await conn.send(PREFACE + settings + b"".join(
        HeadersFrame(1 + 2 * i, block, flags=["END_HEADERS", "END_STREAM"]).serialize() for i in range(10)))
    return ending(await conn.frames_until_close(seconds))


async def no_read(conn: Conn, seconds: float) -> str:
    settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + SettingCodes.INITIAL_WINDOW_SIZE.to_bytes(2, "big") \
        + (2**31 - 1).to_bytes(4, "big")
    update = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + (2**30).to_bytes(4, "big")
    await conn.send(PREFACE + settings + update + HeadersFrame(
        1, request_block(BIG), flags=["END_HEADERS", "END_STREAM"]).serialize())
    conn.writer.transport.pause_reading()  # and never reads again
    started = time.monotonic()
    while time.monotonic() - started < seconds and not conn.writer.transport.is_closing():
        await asyncio.sleep(0.5)
        with contextlib.suppress(Exception):
            conn.writer.write(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"stillhere")  # a PING now and then
            if conn.writer.transport.get_write_buffer_size() > 0:
                break
    conn.writer.transport.resume_reading()
    frames = await conn.frames_until_close(seconds)
    return "closed (not reading)" if frames else "still open"


async def slowloris(conn: Conn, seconds: float) -> str:
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: " + b"z" * 4000
    started = time.monotonic()
    for byte in head:
        if time.monotonic() - started > seconds or not await conn.send(bytes([byte])):
            break
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(conn.reader.read(1), 0.2)
            return "answered" if data else f"closed after {time.monotonic() - started:.0f}s"
    return "still open"


async def silent(conn: Conn, seconds: float) -> str:
    started = time.monotonic()
    with contextlib.suppress(TimeoutError, OSError):
        data = await asyncio.wait_for(conn.reader.read(1), seconds)
        return "answered" if data else f"closed after {time.monotonic() - started:.0f}s"
    return "still open"


ATTACK = {"rapid-reset": rapid_reset, "ping-flood": ping_flood, "continuation": continuation,
          "zero-window": zero_window, "no-read": no_read, "slowloris": slowloris, "silent": silent}


# -- the run ------------------------------------------------------------------------------------------


async def clients(role: str, args: argparse.Namespace, port: int, ca: str) -> Tally:
    """This process's share of the connections: the well-behaved ones, or the abusive ones."""
    ctx_h2 = ssl.create_default_context(cafile=ca)
    ctx_h2.set_alpn_protocols(["h2"])
    ctx_h1 = ssl.create_default_context(cafile=ca)
    ctx_h1.set_alpn_protocols(["http/1.1"])
    tally = Tally()
    deadline = time.monotonic() + args.duration
    abusive = int(args.connections * args.abusive)
    mine = range(abusive) if role == "abusive" else range(abusive, args.connections)
    tasks = []
    for n, i in enumerate(mine):
        if role == "abusive":
            kind = args.attacks[i % len(args.attacks)]
            coro = abuser(kind, port, ctx_h1 if kind == "slowloris" else ctx_h2, deadline, tally)
        elif i % 3:
            coro = good_h2(port, ctx_h2, deadline, tally)
        else:
            coro = good_h1(port, ctx_h1, deadline, tally)
        tasks.append(asyncio.ensure_future(coro))
        if n % 25 == 24:
            await asyncio.sleep(args.ramp * 25 / args.connections)  # spread the handshakes
    await asyncio.wait(tasks, timeout=args.duration + 45)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return tally


def client_process(role: str, args: argparse.Namespace, port: int, ca: str, out: Any) -> None:
    raise_fd_limit()
    tally = asyncio.run(clients(role, args, port, ca))
    out.put((role, tally.latencies, dict(tally.good_errors), {k: dict(v) for k, v in tally.outcomes.items()},
             dict(tally.connects), sum(os.times()[:2])))


def run(args: argparse.Namespace, port: int, ca: str, pid: int) -> tuple[Tally, dict[str, Any]]:
    """Good clients in one process, abusive ones in another (so that the attackers' own work never
    delays the good clients' clocks), the server's RSS and descriptors sampled meanwhile."""
    stats: dict[str, Any] = {"start_rss": proc_kib(pid, "VmRSS") * 1024,
                             "start_fds": len(os.listdir(f"/proc/{pid}/fd"))}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(pid, stop, stats), daemon=True)
    sampler.start()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=client_process, args=(role, args, port, ca, out))
             for role in ("good", "abusive")]
    for proc in procs:
        proc.start()
    tally = Tally()
    stats["client_cpu"] = 0.0
    for _ in procs:
        _, latencies, errors, outcomes, connects, cpu = out.get(timeout=args.duration + 120)
        tally.latencies += latencies
        tally.good_errors.update(errors)
        for kind, counts in outcomes.items():
            tally.outcomes[kind].update(counts)
        tally.connects.update(connects)
        stats["client_cpu"] += cpu
    for proc in procs:
        proc.join(10)
    stop.set()
    sampler.join(5)
    return tally, stats


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else (values or [0])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--abusive", type=float, default=0.35, help="fraction of abusive clients")
    parser.add_argument("--ramp", type=float, default=5, help="seconds over which to open connections")
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help="which attacks the abusive clients make (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="500 connections for 15 s")
    args = parser.parse_args()
    args.attacks = [a for a in args.attacks.split(",") if a]
    if unknown := set(args.attacks) - set(ATTACKS):
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    if args.quick:
        args.connections, args.duration, args.ramp = 500, 15, 2
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="h2serve-soak-") as tmp:
        proc, port, ca, log = start_server(Path(tmp), args.connections)
        try:
            time.sleep(0.5)
            started = time.monotonic()
            tally, stats = run(args, port, ca, proc.pid)
            elapsed = time.monotonic() - started
            time.sleep(6)  # the parked and closing connections time out
            end_fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            stats["cpu"] = cpu_seconds(proc.pid)
            end_rss = proc_kib(proc.pid, "VmRSS") * 1024
            alive = proc.poll() is None
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
    report(args, tally, stats, elapsed, end_fds, end_rss, alive, log)
    return 0 if alive and not tally.good_errors else 1


def report(args: argparse.Namespace, tally: Tally, stats: dict[str, Any], elapsed: float, end_fds: int,
           end_rss: int, alive: bool, log: LogTally) -> None:
    mib = 1 << 20
    lat = sorted(tally.latencies)
    print(f"soak: {args.connections} connections ({int(args.connections * args.abusive)} abusive) "
          f"for {args.duration:g} s ({elapsed:.1f} s with wind-down)")
    print(f"good clients: {len(lat)} answers, {sum(tally.good_errors.values())} errors; latency "
          f"p50 {percentile(lat, 0.5) * 1000:.1f} ms, p99 {percentile(lat, 0.99) * 1000:.1f} ms, "
          f"max {(lat[-1] if lat else 0) * 1000:.1f} ms")
    for what, n in tally.good_errors.most_common(10):
        print(f"  error x{n}: {what}")
    print("connections opened: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.connects.items())))
    print("how the attacks ended:")
    for kind in ATTACKS:
        outcomes = tally.outcomes.get(kind, {})
        print(f"  {kind:13} " + (", ".join(f"{what} x{n}" for what, n in sorted(outcomes.items()))
                                 or "(none finished)"))
    peak = stats.get("peak_rss", 0)
    print(f"server RSS: start {stats['start_rss'] / mib:.1f} MiB, peak {peak / mib:.1f} MiB "
          f"(+{(peak - stats['start_rss']) / mib:.1f}), end {end_rss / mib:.1f} MiB")
    print(f"CPU: server {stats.get('cpu', 0):.1f} s, clients {stats['client_cpu']:.1f} s "
          f"(2 processes)")
    print(f"server fds: start {stats['start_fds']}, peak {stats.get('peak_fds', 0)}, end {end_fds}")
    print(f"server: {'alive' if alive else 'DIED'}; log lines by level: "
          + ", ".join(f"{k} {v}" for k, v in sorted(log.levels.items())))
    for what, n in log.infos.most_common(8):
        print(f"  info x{n}: {what}")
    for line in log.loud[:5]:
        print("  LOUD: " + line)


if __name__ == "__main__":
    sys.exit(main())
