"""Socket activation (h2serve/net/activation.py): `--bind fd://N` with LISTEN_FDS/LISTEN_PID, through
tests/activate.py, a launcher that binds, sets the variables and execs the server as systemd does.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, STATIC, TEMPLATES

from h2serve.net.certs import DevCerts
from h2serve.workers import worker_pids

LAUNCHER = Path(__file__).parent / "activate.py"


class Activated:
    """A server started through the launcher; its port read from the startup line."""

    def __init__(self, launch: list[str], args: list[str], certs: DevCerts,
                 pass_fds: tuple[int, ...] = ()) -> None:
        command = [sys.executable, str(LAUNCHER), *launch, "--", sys.executable, "-m", "h2serve",
                   "--cert", str(certs.cert), "--key", str(certs.key), "--templates", str(TEMPLATES),
                   "--static", str(STATIC), "--access-log", "off", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                                     pass_fds=pass_fds)
        self.lines: list[str] = []
        self.port = 0
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r" on https://[^ ]+:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                threading.Thread(target=self._drain, daemon=True).start()
                return

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def activated(certs: DevCerts):
    started: list[Activated] = []

    def start(launch: list[str], *args: str, pass_fds: tuple[int, ...] = ()) -> Activated:
        server = Activated(launch, list(args), certs, pass_fds)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


def test_serves_the_socket_it_was_passed(activated, verify: ssl.SSLContext) -> None:
    server = activated(["127.0.0.1:0"], "--bind", "fd://3")
    assert server.port, "".join(server.lines)
    assert f"https://127.0.0.1:{server.port}/ (h2, http/1.1)" in server.lines[-1]
    for http2 in (True, False):
        with httpx.Client(http2=http2, verify=verify) as client:
            r = client.get(f"https://localhost:{server.port}/about")
            assert r.status_code == 200 and r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert server.stop() == 0


def test_workers_share_the_passed_socket(activated, verify: ssl.SSLContext) -> None:
    server = activated(["127.0.0.1:0"], "--bind", "fd://3", "--workers", "2")
    assert server.port, "".join(server.lines)
    assert len(worker_pids(server.proc.pid)) == 2
    for _ in range(6):
        with httpx.Client(verify=verify) as client:
            assert client.get(f"https://localhost:{server.port}/about").status_code == 200
    assert server.stop() == 0


def test_a_restart_loses_no_connection_attempt(activated, ca_file: str) -> None:
    """The socket unit's copy of the socket (here the test's) keeps listening while the server is
    replaced: a client that connects in between waits in the backlog and is answered by the next."""
    unit = socket.create_server(("127.0.0.1", 0))
    port = unit.getsockname()[1]
    fd = unit.fileno()
    first = activated(["--fd", str(fd)], "--bind", "fd://3", pass_fds=(fd,))
    assert first.port == port, "".join(first.lines)
    assert first.stop() == 0
    waiting = socket.create_connection(("127.0.0.1", port), timeout=10)  # no server runs now
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    second = activated(["--fd", str(fd)], "--bind", "fd://3", pass_fds=(fd,))
    assert second.port == port
    with ctx.wrap_socket(waiting, server_hostname="localhost") as tls:
        tls.sendall(b"GET /about HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    unit.close()


@pytest.mark.parametrize(("bind", "fragment"), [
    ("fd://4", "cannot listen on fd://4: LISTEN_FDS passes file descriptors 3 to 3"),
    ("fd://x", "fd:// takes a file descriptor number"),
])
def test_bad_descriptor_is_one_line_and_status_2(activated, bind: str, fragment: str) -> None:
    server = activated(["127.0.0.1:0"], "--bind", bind)
    assert server.proc.wait(20) == 2
    lines = [x for x in server.lines if x.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines


def test_descriptor_that_is_no_listening_socket(certs: DevCerts, tmp_path: Path) -> None:
    with open(tmp_path / "file", "w") as f:
        p = subprocess.run([sys.executable, "-m", "h2serve", "--bind", f"fd://{f.fileno()}",
                            "--cert", str(certs.cert), "--key", str(certs.key)],
                           capture_output=True, text=True, timeout=20, cwd=REPO, pass_fds=(f.fileno(),))
    assert p.returncode == 2
    assert "is not a listening TCP socket" in p.stderr or "Socket operation on non-socket" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
