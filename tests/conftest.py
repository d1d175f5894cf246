"""Shared fixtures: a real server on an ephemeral loopback port, real TLS verified against a real CA.

`make_server(**options)` starts `h2serve.Server` in a thread of its own event loop (so tests can use
blocking clients: httpx, curl, nghttp, raw sockets) and stops it at the end of the test.
`spawn_server(*args)` runs `python -m h2serve` as a subprocess and waits for its startup line, for
what only a process shows: signals, exit codes, the command line.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from h2serve import Config, Server
from h2serve.net.certs import DevCerts, ensure_dev_certs

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
