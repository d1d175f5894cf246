"""Shared fixtures: a real server on an ephemeral loopback port, real TLS verified against a real CA.

`make_server(**options)` starts `h2serve.Server` in a thread of its own event loop (so tests can use
blocking clients: httpx, curl, nghttp, raw sockets) and stops it at the end of the test.
`spawn_server(*args)` runs `python -m h2serve` as a subprocess and waits for its startup line, for
what only a process shows: signals, exit codes, the command line.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h11
import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.events import DataReceived
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame

from h2serve import Config, Server
from h2serve.accesslog import AccessLog
from h2serve.net.certs import DevCerts, ensure_dev_certs
from h2serve.proto.exchange import Services
from h2serve.proto.h1engine import H1Engine
from h2serve.proto.h2engine import H2Engine
from h2serve.proto.lifecycle import CLOSED
from h2serve.push.manifest import EMPTY, build_map
from h2serve.push.plan import Pusher
from h2serve.site.handler import Policy, Site

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
STATIC = REPO / "static"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """A development CA and localhost leaf made once for the whole run."""
    made, _ = ensure_dev_certs(tmp_path_factory.mktemp("certs"))
    return made


@pytest.fixture(scope="session")
def ca_file(certs: DevCerts) -> str:
    return str(certs.ca)


@pytest.fixture(scope="session")
def verify(ca_file: str) -> ssl.SSLContext:
    """A client SSL context trusting only the test CA (for httpx's `verify=`)."""
    return ssl.create_default_context(cafile=ca_file)


@pytest.fixture(params=["h2", "http/1.1"])
def proto(request: pytest.FixtureRequest) -> str:
    """The protocol a test runs over: HTTP/2 and HTTP/1.1 alike."""
    return request.param


@pytest.fixture
def client(proto: str, verify: ssl.SSLContext) -> Iterator[httpx.Client]:
    """httpx over TLS verified with the test CA, speaking `proto`. It asks for the identity coding,
    so lengths compare with the files on disk (codings have their own client in test_coding.py)."""
    with httpx.Client(http2=proto == "h2", verify=verify, timeout=15,
                      headers={"accept-encoding": "identity"}) as c:
        yield c


@dataclass
class RunningServer:
    """A started server and where to reach it."""

    server: Server
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def h2c_port(self) -> int:
        return self.server.h2c_port

    @property
    def url(self) -> str:
        """Base URL over TLS, by name so the certificate verifies: https://localhost:PORT"""
        return f"https://localhost:{self.port}"

    @property
    def h2c_url(self) -> str:
        return f"http://127.0.0.1:{self.h2c_port}"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        if self.thread.is_alive():
            self.call(self.server.stop(timeout))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture
def make_server(certs: DevCerts, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with `Config` options (demo site, TLS on 127.0.0.1:0 and h2c by default)."""
    started: list[RunningServer] = []

    def start(**options: Any) -> RunningServer:
        if {"root", "templates", "static"} & options.keys() and "push_manifest" not in options:
            options["push_manifest"] = _empty_manifest(tmp_path)  # the demo's map names demo files
        options.setdefault("bind", ["127.0.0.1:0"])
        options.setdefault("h2c_bind", ["127.0.0.1:0"])
        options.setdefault("cert", str(certs.cert))
        options.setdefault("key", str(certs.key))
        options.setdefault("templates", str(TEMPLATES))
        options.setdefault("static", str(STATIC))
        options.setdefault("access_log", str(tmp_path / "access.log"))
        options.setdefault("log_level", "warning")
        server = Server(Config(**options))
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        running = RunningServer(server, loop, thread)
        try:
            running.call(server.start())
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    """The demo site on TLS (h2 and http/1.1) and h2c."""
    return make_server()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A writable copy of the demo site (templates/ and static/) for tests that add files."""
    root = tmp_path / "site"
    shutil.copytree(TEMPLATES, root / "templates")
    shutil.copytree(STATIC, root / "static")
    return root


def tls_client_context(ca_file: str, alpn: list[str] | None) -> ssl.SSLContext:
    """A verifying client context; `alpn=None` offers no ALPN at all."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def open_tls(port: int, ca_file: str, alpn: list[str] | None = ("h2",),  # type: ignore[assignment]
             timeout: float = 10) -> ssl.SSLSocket:
    """A verified TLS socket to the server on localhost:`port`."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    ctx = tls_client_context(ca_file, list(alpn) if alpn is not None else None)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def wait_for(predicate: Callable[[], object], timeout: float = 10, interval: float = 0.02) -> None:
    """Poll `predicate` until it is true; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(interval)


def start_curl(url: str, ca_file: str, out: Path, rate: str) -> subprocess.Popen[str]:
    """curl over h2 downloading `url` to `out` at `rate` (curl's --limit-rate); it prints
    'HTTP-version status size' when done."""
    return subprocess.Popen(
        ["curl", "-sS", "--http2", "--cacert", ca_file, "--limit-rate", rate, "-o", str(out),
         "-w", "%{http_version} %{http_code} %{size_download}", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sigterm_during_download(proc: ServerProcess, ca_file: str, big: BigFile, out: Path) -> None:
    """SIGTERM once 2 MiB of a rate-limited download has arrived: the port refuses new connections
    at once, the download still completes intact over h2, and the server exits 0."""
    curl = start_curl(f"https://localhost:{proc.port}{big.url_path}", ca_file, out, "24M")
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 2 << 20)
        proc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(proc.port), timeout=5)  # no new connections once stopping
        assert proc.proc.poll() is None  # but still running: the download is in flight
        stdout, stderr = curl.communicate(timeout=30)
    finally:
        if curl.poll() is None:
            curl.kill()
    assert curl.returncode == 0, stderr
    assert stdout == f"2 200 {big.size}"
    assert file_sha256(out) == big.sha256
    assert proc.proc.wait(10) == 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def refused(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _empty_manifest(directory: Path) -> str:
    """An empty push map, for servers whose site is not the demo site."""
    path = directory / "empty_push_manifest.json"
    path.write_text("{}")
    return str(path)


@dataclass
class ServerProcess:
    """`python -m h2serve` running in a subprocess."""

    proc: subprocess.Popen[str]
    port: int
    stderr_lines: list[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_process(args: list[str], cwd: Path | str = REPO, timeout: float = 20,
                  stdout: Path | None = None) -> ServerProcess:
    """Run the server with `args` and wait for its startup line; the port is read from it.
    `stdout`: a file to keep the server's standard output in (the access log's "-")."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",  # PYTHONPATH: the package, from any cwd
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = open(stdout, "w") if stdout is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "h2serve", *args], cwd=cwd, env=env, text=True,
            stdout=out, stderr=subprocess.PIPE)
    finally:
        if stdout is not None:
            out.close()  # type: ignore[union-attr]
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r" on https?://[^ ]+:(\d+)/", line)
        if match:
            reader = threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True)
            reader.start()
            return ServerProcess(proc, int(match.group(1)), lines)
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def _drain(stream: Any, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


@pytest.fixture
def spawn_server(certs: DevCerts, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `python -m h2serve` subprocesses serving the demo site with the test certificate."""
    procs: list[ServerProcess] = []

    def spawn(*args: str, cwd: Path | str = REPO) -> ServerProcess:
        base = ["--bind", "127.0.0.1:0", "--cert", str(certs.cert), "--key", str(certs.key),
                "--templates", str(TEMPLATES), "--static", str(STATIC)]
        if {"--root", "--templates", "--static"} & set(args) and "--push-manifest" not in args:
            base += ["--push-manifest", _empty_manifest(tmp_path)]  # the demo's map names demo files
        running = start_process([*base, *args], cwd=cwd)
        procs.append(running)
        return running

    yield spawn
    for running in procs:
        running.stop()


# -- a large file for flow-control, cancellation and shutdown tests (appended) ---------------------

BIG_SIZE = 64 * 1024 * 1024


@dataclass
class BigFile:
    """A 64 MiB random file in a writable copy of the demo site, served at `url_path`."""

    site: Path
    name: str
    size: int
    sha256: str

    @property
    def templates(self) -> Path:
        return self.site / "templates"

    @property
    def static(self) -> Path:
        return self.site / "static"

    @property
    def url_path(self) -> str:
        return "/static/" + self.name

    def server_options(self) -> dict[str, str]:
        """`make_server` options serving this site."""
        return {"templates": str(self.templates), "static": str(self.static)}


@pytest.fixture(scope="session")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """64 MiB of random bytes written once per run, and their sha256."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(BIG_SIZE // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return path, digest.hexdigest()


@pytest.fixture
def big_file(big_source: tuple[Path, str], site: Path) -> BigFile:
    """The 64 MiB file placed (hard-linked when possible) in the `site` copy's static folder."""
    source, digest = big_source
    target = site / "static" / "big.bin"
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return BigFile(site, "big.bin", BIG_SIZE, digest)


# -- in-memory engine harness: paired connections, no sockets, no event loop (appended) ------------
#
# In the manner of h11's own tests: a real client (h2's H2Connection, h11's Connection) wired to an
# engine by plain method calls. Time is a `FakeClock` the test moves; blocking site work runs when
# the `MemoryHost` is told to. Nothing waits, so every test is fast and every order deterministic.

MEMORY_BIG = 200_000      # the two large files: over SMALL_FILE (64 KiB), so sent from disk in runs
MEMORY_MEDIUM = 40_000    # kept in memory (under SMALL_FILE), over a 16 KiB frame


class FakeClock:
    """A monotonic clock that moves only when told: `clock.now = t`, or `clock.advance(s)`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class MemoryHost:
    """An engine's `Host` in memory: the fake clock; deferred work run at once, or (`queue=True`)
    kept until `run_deferred()`; `wake()` only counted."""

    def __init__(self, clock: FakeClock, *, queue: bool = False) -> None:
        self.clock = clock
        self.queue = queue
        self.deferred: list[tuple[str, Callable[[], None], Callable[[BaseException | None], None]]] = []
        self.kinds: list[str] = []  # every kind deferred, in order
        self.wakes = 0

    def now(self) -> float:
        return self.clock.now

    def defer(self, kind: str, work: Callable[[], None],
              done: Callable[[BaseException | None], None]) -> None:
        self.kinds.append(kind)
        if self.queue:
            self.deferred.append((kind, work, done))
        else:
            _run_work(work, done)

    def run_deferred(self) -> int:
        """Run the queued work and its `done` callbacks, oldest first (work queued meanwhile too);
        how many ran."""
        ran = 0
        while self.deferred:
            _, work, done = self.deferred.pop(0)
            _run_work(work, done)
            ran += 1
        return ran

    def wake(self) -> None:
        self.wakes += 1


def _run_work(work: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
    try:
        work()
    except Exception as e:  # what a worker thread's future would hold
        done(e)
        return
    done(None)


@dataclass
class MemorySite:
    """The small site of the engine tests: `files` maps each URL path to its bytes."""

    templates: Path
    static: Path
    files: dict[str, bytes]


@pytest.fixture(scope="session")
def memory_site_source(tmp_path_factory: pytest.TempPathFactory) -> MemorySite:
    """The engine tests' site, made once: a page, a stylesheet, a script, a font and binary files."""
    root = tmp_path_factory.mktemp("memory-site")
    css = b"body { color: #333; }\n" * 100
    js = b"console.log('app');\n" * 150
    page = (b"<!doctype html>\n<html><head><link rel=stylesheet href=/static/app.css>"
            b"<script src=/static/app.js></script></head><body>" + b"<p>hello</p>\n" * 60
            + b"</body></html>\n")
    files = {
        "/": page,
        "/about": b"<!doctype html>\n<title>about</title>\n",
        "/static/app.css": css,
        "/static/app.js": js,
        "/static/font.woff2": os.urandom(3000),
        "/static/medium.bin": os.urandom(MEMORY_MEDIUM),
        "/static/one.bin": os.urandom(MEMORY_BIG),
        "/static/two.bin": os.urandom(MEMORY_BIG),
    }
    names = {"/": "templates/index.html", "/about": "templates/about.html"}
    for url, data in files.items():
        path = root / names.get(url, url.lstrip("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return MemorySite(root / "templates", root / "static", files)


@pytest.fixture
def memory_site(memory_site_source: MemorySite, tmp_path: Path) -> MemorySite:
    """A writable copy of the engine tests' site."""
    root = tmp_path / "memory-site"
    shutil.copytree(memory_site_source.templates, root / "templates")
    shutil.copytree(memory_site_source.static, root / "static")
    return MemorySite(root / "templates", root / "static", dict(memory_site_source.files))


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


class EngineEnv:
    """Builds what the engine tests wire together: `Services` over the memory site (with a push
    map when given one), `MemoryHost`s on the shared fake clock, and paired connections. The access
    log goes to `log` (`log_lines()`). Every engine made is told its connection is lost at the end
    of the test, so the files it holds open are closed."""

    def __init__(self, site: MemorySite, clock: FakeClock) -> None:
        self.site = site
        self.clock = clock
        self.log = io.StringIO()
        self.engines: list[Any] = []

    def services(self, push_map: dict[str, Any] | None = None, **options: Any) -> Services:
        """`Services` for a `Config` of `options` over the memory site; `push_map` is a push
        manifest's JSON (flat: the index page's)."""
        options.setdefault("access_log", "off")  # the Config's; the log here is `self.log`
        config = Config(templates=str(self.site.templates), static=str(self.site.static), **options)
        site = Site.from_folders(root=None, templates=config.templates, static=config.static,
                                 server_name=config.server_name, policy=Policy.from_config(config))
        mapped = EMPTY if push_map is None else build_map(push_map, site, "test push map")
        pusher = Pusher.from_config(config, site, mapped)
        return Services(config, site, pusher, AccessLog(self.log))

    def host(self, *, queue: bool = False) -> MemoryHost:
        return MemoryHost(self.clock, queue=queue)

    def h2(self, *, settings: dict[int, int] | None = None, queue: bool = False,
           push_map: dict[str, Any] | None = None, connect: bool = True, **options: Any) -> H2Pair:
        """A client `H2Connection` (local `settings` on top of h2's own) paired with an `H2Engine`
        over TLS, connected (both prefaces and SETTINGS ACKs exchanged) unless `connect=False`."""
        pair = H2Pair(self.services(push_map, **options), self.host(queue=queue), settings)
        self.engines.append(pair.engine)
        if connect:
            pair.connect()
        return pair

    def h1(self, *, queue: bool = False, push_map: dict[str, Any] | None = None,
           **options: Any) -> H1Pair:
        pair = H1Pair(self.services(push_map, **options), self.host(queue=queue))
        self.engines.append(pair.engine)
        return pair

    def log_lines(self) -> list[str]:
        return self.log.getvalue().splitlines()

    def close(self) -> None:
        for engine in self.engines:
            if engine.life.state != CLOSED:
                engine.connection_lost()


@pytest.fixture
def engine_env(memory_site: MemorySite, fake_clock: FakeClock) -> Iterator[EngineEnv]:
    env = EngineEnv(memory_site, fake_clock)
    yield env
    env.close()


class _ClientStateMachine(H2ConnectionStateMachine):
    """h2's client state machine, except that the server's GOAWAY does not close it: RFC 9113
    section 6.8 lets the streams up to its last stream id complete (the server's two-step GOAWAY
    sends DATA, a PING and a second GOAWAY after the first), and the tests go on sending after it
    (a PING ACK, WINDOW_UPDATEs, a request above the last stream id, to see it refused)."""

    _transitions: ClassVar = {
        **H2ConnectionStateMachine._transitions,
        (ConnectionState.IDLE, ConnectionInputs.RECV_GOAWAY): (None, ConnectionState.IDLE),
        (ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY): (None, ConnectionState.CLIENT_OPEN),
    }


class H2Pair:
    """A client `H2Connection` wired to an `H2Engine` with no socket between them.

    `client_send()` moves what the client queued into `engine.receive`; `server_send()` drains
    `engine.output()` into `client.receive_data` and returns the client's events. Every frame the
    server sent is kept, parsed, in `frames` (`new_frames` since the last drain). Flow control is
    manual: the client opens windows only when a test says so (`open_window`, `ack`), so a test can
    hold them shut. `fed` records how many bytes each `engine.receive` passed on to h2."""

    def __init__(self, services: Services, host: MemoryHost,
                 settings: dict[int, int] | None = None) -> None:


        self.services = services
        self.host = host
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.state_machine = _ClientStateMachine()
        if settings:
            self.client.local_settings = Settings(client=True, initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.client.DEFAULT_MAX_HEADER_LIST_SIZE,
                **settings})
        self.engine = H2Engine(services, host, tls=True, client="192.0.2.1")
        self.frames: list[Any] = []      # every frame the server sent
        self.new_frames: list[Any] = []  # those of the last drain
        self.events: list[Any] = []      # every event of the client's
        self.fed: list[int] = []         # bytes h2 was given, per engine.receive
        self._pending = b""
        conn = self.engine.conn
        receive = conn.receive_data

        def counted(data: bytes) -> Any:
            self.fed.append(len(data))
            return receive(data)

        conn.receive_data = counted  # type: ignore[method-assign]

    def connect(self) -> None:
        """Both prefaces, both SETTINGS and both ACKs."""
        self.engine.start()
        self.client.initiate_connection()
        self.client_send()
        self.server_send()
        self.client_send()
        self.server_send()

    def client_send(self) -> int:
        """What the client queued, into the engine in one `receive`; how many bytes."""
        data = self.client.data_to_send()
        if data:
            self.engine.receive(data)
        return len(data)

    def send_raw(self, data: bytes) -> None:
        """Bytes the client's h2 knows nothing of (hostile frames), into the engine in one read."""
        self.engine.receive(data)

    def drain(self) -> bytes:
        """Everything `output()` gives now; its frames are parsed into `new_frames` and `frames`."""
        out = bytearray()
        while chunk := self.engine.output():
            out += chunk
        self.new_frames = self._parse(bytes(out))
        self.frames += self.new_frames
        return bytes(out)

    def server_send(self) -> list[Any]:
        """Drain the engine into the client; the client's events."""
        data = self.drain()
        events = list(self.client.receive_data(data)) if data else []
        self.events += events
        return events

    def exchange(self) -> list[Any]:
        """`client_send()` then `server_send()`."""
        self.client_send()
        return self.server_send()

    def request(self, path: str, *, headers: Sequence[tuple[bytes, bytes]] = (),
                end_stream: bool = True, method: bytes = b"GET") -> int:
        """Queue a request on the client (sent by the next `client_send`); its stream id."""
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(b":method", method), (b":scheme", b"https"),
                                       (b":authority", b"localhost"), (b":path", path.encode()),
                                       *headers], end_stream=end_stream)
        return sid

    def open_window(self, increment: int, stream_id: int | None = None) -> None:
        """Queue a WINDOW_UPDATE: the connection's (None) or a stream's."""
        self.client.increment_flow_control_window(increment, stream_id)

    def ack(self, events: Iterable[Any]) -> None:
        """Give back the window of every DataReceived in `events` (queued WINDOW_UPDATEs)."""

        for event in events:
            if isinstance(event, DataReceived) and event.flow_controlled_length:
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _parse(self, data: bytes) -> list[Any]:

        buffer = self._pending + data
        frames, pos = [], 0
        while len(buffer) - pos >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[pos:pos + 9]))
            if len(buffer) - pos - 9 < length:
                break
            frame.parse_body(memoryview(buffer[pos + 9:pos + 9 + length]))
            frames.append(frame)
            pos += 9 + length
        self._pending = buffer[pos:]
        return frames


class H1Pair:
    """An `h11.Connection(h11.CLIENT)` wired to an `H1Engine` with no socket between them.

    `send(target)` sends one request through the client; `request_bytes(target)` makes the bytes of
    one without it (for pipelining, which h11's client does not do); `server_send()` drains
    `engine.output()` into the client and returns its events; `responses(targets)` reads the
    answers to pipelined requests in order."""

    def __init__(self, services: Services, host: MemoryHost) -> None:


        self.services = services
        self.host = host
        self.client = h11.Connection(h11.CLIENT)
        self.engine = H1Engine(services, host, tls=True, client="192.0.2.1")
        self.engine.start()
        self.received = bytearray()  # everything the server sent

    @staticmethod
    def request_bytes(target: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:

        conn = h11.Connection(h11.CLIENT)
        return conn.send(_h11_request(target, headers)) + conn.send(h11.EndOfMessage())

    def send(self, target: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:

        data = self.client.send(_h11_request(target, headers)) + self.client.send(h11.EndOfMessage())
        self.engine.receive(data)

    def drain(self) -> bytes:
        out = bytearray()
        while chunk := self.engine.output():
            out += chunk
        self.received += out
        return bytes(out)

    def server_send(self) -> list[Any]:
        """Drain the engine into the client; its events up to the end of the response (or until it
        needs more)."""

        data = self.drain()
        if data:
            self.client.receive_data(data)
        events = []
        while True:
            event = self.client.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED):
                return events
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                return events

    def responses(self, targets: Sequence[str]) -> list[tuple[int, bytes]]:
        """(status, body) of the answers to the pipelined requests for `targets`, in order, from
        what the server has sent (the client is walked through each request in turn)."""

        data = self.drain()
        if data:
            self.client.receive_data(data)
        out = []
        for target in targets:
            if self.client.our_state is h11.DONE and self.client.their_state is h11.DONE:
                self.client.start_next_cycle()
            self.client.send(_h11_request(target, ()))
            self.client.send(h11.EndOfMessage())
            status, body = 0, bytearray()
            while True:
                event = self.client.next_event()
                assert event not in (h11.NEED_DATA, h11.PAUSED), f"no complete answer to {target}"
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            out.append((status, bytes(body)))
        return out


def _h11_request(target: str, headers: Sequence[tuple[bytes, bytes]]) -> Any:
    import h11

    return h11.Request(method="GET", target=target, headers=[(b"host", b"localhost"), *headers])


UPSTREAM_APPS = REPO / "tests" / "upstream_apps"


@dataclass
class AppProcess:
    """A test application (tests/upstream_apps/) run by gunicorn, and where it listens."""

    proc: subprocess.Popen[str]
    port: int
    log: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def upstream_app() -> Iterator[Callable[..., AppProcess]]:
    """Start `tests/upstream_apps/MODULE.py`'s `app` under gunicorn (threaded worker) on a free
    port, as an application runs in production; stopped at the end of the test."""
    apps: list[AppProcess] = []

    def start(module: str, *, env: dict[str, str] | None = None, threads: int = 8) -> AppProcess:
        cmd = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1",
               "--threads", str(threads), "--no-control-socket", "--graceful-timeout", "1",
               "--chdir", str(UPSTREAM_APPS), f"{module}:app"]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env={**os.environ, **(env or {})})
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        port = 0
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
            if port and "Booting worker" in line:
                break
        if not port:
            proc.kill()
            raise RuntimeError("gunicorn did not start:\n" + "".join(lines))
        threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True).start()
        app = AppProcess(proc, port, lines)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()
