"""`--workers N` and `--loop` (h2serve/workers.py, server.py): real supervisor and worker processes,
real sockets, real TLS.

Which worker holds a connection is read from /proc (the socket inodes of each worker's descriptors
against the established connections of /proc/net/tcp), so nothing in the server tells it.
"""

from __future__ import annotations

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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    REPO,
    STATIC,
    TEMPLATES,
    ServerProcess,
    open_tls,
    sigterm_during_download,
    wait_for,
)

from h2serve.net.certs import DevCerts
from h2serve.workers import describe_exit, line_chunks, worker_pids

ABOUT = (TEMPLATES / "about.html").read_bytes()
ACCESS_LINE = re.compile(r'^127\.0\.0\.1 - - \[[^\]]+\] "GET /about\?q=x{400} HTTP/(1\.1|2\.0)" 200 \d+ '
                         r'"-" "h2load nghttp2/[\d.]+"$')


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def established_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many established connections to local `port` each process of `pids` holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
        counts[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return counts


def get(url: str, verify: ssl.SSLContext, http2: bool = True) -> httpx.Response:
    """One request on a connection of its own."""
    with httpx.Client(http2=http2, verify=verify, timeout=10) as client:
        return client.get(url)


def startup_line(proc: ServerProcess) -> str:
    return next(x for x in proc.stderr_lines if " serving " in x)


@pytest.fixture
def supervised(spawn_server: Callable[..., ServerProcess]) -> Iterator[Callable[..., ServerProcess]]:
    """spawn_server, stopped with SIGTERM at the end (a SIGKILL would leave the workers to stop by
    themselves), and no worker left running after it."""
    started: list[tuple[ServerProcess, list[int]]] = []

    def spawn(*args: str) -> ServerProcess:
        proc = spawn_server(*args)
        started.append((proc, worker_pids(proc.proc.pid)))
        return proc

    yield spawn
    for proc, first in started:
        pids = set(first) | (set(worker_pids(proc.proc.pid)) if proc.proc.poll() is None else set())
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
            proc.proc.wait(20)
        wait_for(lambda pids=pids: not any(alive(p) for p in pids), timeout=10)


# -- serving ------------------------------------------------------------------------------------------


def test_two_workers_serve_h2_and_http11(supervised, verify: ssl.SSLContext) -> None:
    """One startup line naming the workers; two worker processes, each its own process group; both
    protocols answered, over TLS and h2c."""
    proc = supervised("--workers", "2", "--h2c-bind", "127.0.0.1:0")
    line = startup_line(proc)
    assert "; 2 workers" in line
    assert f"https://127.0.0.1:{proc.port}/ (h2, http/1.1)" in line
    assert sum(" serving " in x for x in proc.stderr_lines) == 1
    pids = worker_pids(proc.proc.pid)
    assert len(pids) == 2
    assert all(os.getpgid(p) == p for p in pids)  # a terminal's Ctrl-C reaches the supervisor only
    for http2, version in ((True, "HTTP/2"), (False, "HTTP/1.1")):
        r = get(f"https://localhost:{proc.port}/about", verify, http2)
        assert (r.status_code, r.http_version, r.content) == (200, version, ABOUT)
    h2c_port = int(re.search(r"http://127\.0\.0\.1:(\d+)/ \(h2c", line).group(1))  # type: ignore[union-attr]
    assert httpx.get(f"http://127.0.0.1:{h2c_port}/about").content == ABOUT


def test_connections_are_spread_over_the_workers(supervised, ca_file: str) -> None:
    """16 connections held open at once land on both workers (the kernel spreads them over the
    workers' SO_REUSEPORT sockets; all 16 on one worker would happen once in 30,000 runs)."""
    proc = supervised("--workers", "2")
    pids = worker_pids(proc.proc.pid)
    conns = [open_tls(proc.port, ca_file) for _ in range(16)]
    try:
        wait_for(lambda: sum(established_by_pid(proc.port, pids).values()) == 16)
        counts = established_by_pid(proc.port, pids)
    finally:
        for conn in conns:
            conn.close()
    assert all(n > 0 for n in counts.values()), counts


def test_a_killed_worker_is_replaced(supervised, verify: ssl.SSLContext) -> None:
    """kill -9 of a worker: a warning naming the signal, a new worker with another pid, and requests
    answered all along."""
    proc = supervised("--workers", "2")
    first = worker_pids(proc.proc.pid)
    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(proc.proc.pid)) == 2 and victim not in worker_pids(proc.proc.pid))
    now = worker_pids(proc.proc.pid)
    assert first[1] in now and len(set(now) - set(first)) == 1
    for i in range(8):
        r = get(f"https://localhost:{proc.port}/about", verify, http2=i % 2 == 0)
        assert r.status_code == 200
    warning = next(x for x in proc.stderr_lines if f"worker {victim} " in x)
    assert "WARNING" in warning and "killed by SIGKILL" in warning and "starting another" in warning


def test_restarts_back_off_while_workers_keep_dying(supervised, certs: DevCerts, tmp_path: Path,
                                                    verify: ssl.SSLContext) -> None:
    """A key deleted after startup makes every new worker fail: at most 3 restarts in 5 s, then a
    wait; once the key is back, the workers come back and serve."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(certs.cert.read_bytes())
    key.write_bytes(certs.key.read_bytes())
    proc = supervised("--workers", "2", "--cert", str(cert), "--key", str(key))
    key.unlink()
    for pid in worker_pids(proc.proc.pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any("worker restarts in 5s: waiting" in x for x in proc.stderr_lines))
    time.sleep(1.0)
    log = "".join(proc.stderr_lines)
    assert log.count("exited with status 2") == 3, log  # the two replacements and one more
    assert log.count(f"--key {key}: no such file") == 3
    key.write_bytes(certs.key.read_bytes())
    deadline = time.monotonic() + 15
    while True:
        try:
            assert get(f"https://localhost:{proc.port}/about", verify).status_code == 200
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
    assert len(worker_pids(proc.proc.pid)) == 2


def test_workers_auto_is_one_per_usable_cpu(supervised, verify: ssl.SSLContext) -> None:
    proc = supervised("--workers", "auto")
    cpus = len(os.sched_getaffinity(0))
    line = startup_line(proc)
    if cpus > 1:
        assert f"; {cpus} workers" in line
    else:
        assert "workers" not in line  # one CPU: the single-process server, no supervisor
    assert len(worker_pids(proc.proc.pid)) == (cpus if cpus > 1 else 0)
    assert get(f"https://localhost:{proc.port}/about", verify).status_code == 200


def test_sighup_reaches_every_worker(supervised) -> None:
    proc = supervised("--workers", "2")
    pids = worker_pids(proc.proc.pid)
    proc.proc.send_signal(signal.SIGHUP)
    for pid in pids:
        wait_for(lambda pid=pid: any(f"h2serve[{pid}]: SIGHUP: reloaded the configuration" in x
                                     for x in proc.stderr_lines))
    assert proc.proc.poll() is None and worker_pids(proc.proc.pid) == pids


# -- stopping -----------------------------------------------------------------------------------------


def test_sigterm_lets_a_download_finish_then_exits_0(supervised, big_file, ca_file: str,
                                                     tmp_path: Path) -> None:
    """SIGTERM to the supervisor during a download: no new connections, the download completes
    intact, then the supervisor exits 0 and no worker is left."""
    proc = supervised("--workers", "2", "--templates", str(big_file.templates),
                      "--static", str(big_file.static))
    pids = worker_pids(proc.proc.pid)
    sigterm_during_download(proc, ca_file, big_file, tmp_path / "download.bin")
    assert not any(alive(p) for p in pids)
    log = "".join(proc.stderr_lines)
    assert "SIGTERM: stopping 2 workers" in log and log.rstrip().endswith("stopped")


def test_second_signal_cuts_the_grace_short(supervised, big_file, ca_file: str) -> None:
    """A stalled download holds a worker in its grace period; a second SIGINT ends it at once."""
    from h2client import H2Client

    proc = supervised("--workers", "2", "--graceful-timeout", "30", "--templates",
                      str(big_file.templates), "--static", str(big_file.static))
    with H2Client.tls(proc.port, ca_file, flow_control="manual") as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received[sid] == 65535)
        proc.proc.send_signal(signal.SIGINT)
        client.receive_until(lambda: bool(client.goaways))
        time.sleep(0.3)
        assert proc.proc.poll() is None
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(10) == 0
        assert time.monotonic() - started < 3
    assert "second SIGINT: closing connections now" in "".join(proc.stderr_lines)


def test_workers_stop_when_the_supervisor_is_killed(supervised) -> None:
    """A supervisor killed outright (no chance to stop them) still leaves no worker behind."""
    proc = supervised("--workers", "2")
    pids = worker_pids(proc.proc.pid)
    proc.proc.kill()
    proc.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in pids), timeout=10)


# -- configuration errors ------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "h2serve", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": path, **(env or {})})


def processes_with(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (a worker keeps its supervisor's)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("case", ["bad key", "port in use", "missing root", "bad manifest"])
def test_bad_config_exits_2_with_one_line_and_no_worker(certs: DevCerts, tmp_path: Path, case: str) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    bad_key = tmp_path / "bad-key.pem"
    bad_key.write_text("not a key\n")
    bad_manifest = tmp_path / "push.json"
    bad_manifest.write_text("{not json")
    args = ["--workers", "2", "--server-name", marker, "--cert", str(certs.cert), "--key", str(certs.key),
            "--templates", str(TEMPLATES), "--static", str(STATIC)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        extra, fragment = {
            "bad key": (["--bind", "127.0.0.1:0", "--key", str(bad_key)], "cannot load certificate"),
            "port in use": (["--bind", f"127.0.0.1:{taken.getsockname()[1]}"], "cannot listen on"),
            "missing root": (["--bind", "127.0.0.1:0", "--root", "/nonexistent-root"], "--root"),
            "bad manifest": (["--bind", "127.0.0.1:0", "--push-manifest", str(bad_manifest)],
                             str(bad_manifest)),
        }[case]
        result = run_cli(*args, *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert processes_with(marker) == []


def test_a_worker_failing_to_start_fails_the_start(certs: DevCerts) -> None:
    """Workers that exit before serving (here: `run` replaced by one that reports a bad setting):
    one error line, exit status 2, no worker left, no startup line."""
    script = f"""
import sys
from h2serve import workers
from h2serve.cli import setup_logging
from h2serve.config import Config
setup_logging("info")
workers.run = lambda *args, **kwargs: 2
sys.exit(workers.supervise(Config(bind=["127.0.0.1:0"], workers=2, cert={str(certs.cert)!r},
    key={str(certs.key)!r}, templates={str(TEMPLATES)!r}, static={str(STATIC)!r})))
"""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "exited with status 2 before it served: stopping" in lines[0], lines


@pytest.mark.parametrize(("value", "fragment"), [
    ("0", "--workers: expected a number of processes from 1 to 1024, or auto; not '0'"),
    ("-2", "not '-2'"), ("two", "not 'two'"), ("1.5", "not '1.5'"), ("", "not ''")])
def test_bad_workers_value(value: str, fragment: str) -> None:
    result = run_cli("--bind", "127.0.0.1:0", "--workers", value)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and fragment in result.stderr, result.stderr


# -- event loops -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_loop_choice_serves_and_is_named(supervised, verify: ssl.SSLContext, loop: str, workers: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    proc = supervised("--loop", loop, "--workers", workers)
    assert f"; {loop} event loop" in startup_line(proc)
    for http2 in (True, False):
        assert get(f"https://localhost:{proc.port}/about", verify, http2).content == ABOUT


def test_auto_loop_is_uvloop_when_installed(supervised) -> None:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        expected = "asyncio"
    else:
        expected = "uvloop"
    assert f"; {expected} event loop" in startup_line(supervised())


def test_without_uvloop(tmp_path: Path, certs: DevCerts) -> None:
    """Where uvloop cannot be imported, --loop uvloop is one line and exit 2; auto takes asyncio."""
    fake = tmp_path / "no-uvloop" / "uvloop"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('uvloop is not installed here')\n")
    path = os.pathsep.join([str(fake.parent), str(REPO)])
    args = ["--bind", "127.0.0.1:0", "--cert", str(certs.cert), "--key", str(certs.key),
            "--templates", str(TEMPLATES), "--static", str(STATIC)]
    for workers in ("1", "2"):
        result = run_cli(*args, "--loop", "uvloop", "--workers", workers, env={"PYTHONPATH": path})
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--loop uvloop: uvloop is not installed" in lines[0], result.stderr
    proc = subprocess.Popen([sys.executable, "-m", "h2serve", *args, "--graceful-timeout", "1"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": path}, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "; asyncio event loop" in line, line
    finally:
        proc.terminate()
        proc.wait(10)


# -- access log ------------------------------------------------------------------------------------------


def hammer(port: int) -> int:
    """h2load over h2 (8 connections x 32 streams) then HTTP/1.1 (8 connections), GETs with a long
    query: each worker answers dozens of requests per event-loop turn, so each write of the log is
    a batch of many KiB. The number of requests answered."""
    assert shutil.which("h2load"), "h2load is not installed: apt-get install nghttp2-client"
    url = f"https://127.0.0.1:{port}/about?q={'x' * 400}"
    done = 0
    for args in (["-c", "8", "-m", "32", "-n", "1600"], ["--h1", "-c", "8", "-n", "400"]):
        out = subprocess.run(["h2load", *args, url], capture_output=True, text=True, timeout=60).stdout
        match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done", out)
        assert match and match.group(1) == match.group(2), out
        done += int(match.group(2))
    return done


def check_access_log(text: str, expected: int) -> None:
    lines = text.splitlines()
    assert len(lines) == expected
    bad = [x for x in lines if not ACCESS_LINE.match(x)]
    assert not bad, bad[:3]
    assert text.endswith("\n")


def test_access_log_file_has_whole_lines(supervised, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    proc = supervised("--workers", "2", "--access-log", str(log))
    answered = hammer(proc.port)
    wait_for(lambda: log.read_text().count("\n") >= answered)
    check_access_log(log.read_text(), answered)


def slow_reader(fd: int, received: list[bytes]) -> None:
    """Read a pipe slowly, so that it fills and writers block part way through a large write: what
    lets the writes of two processes interleave."""
    while chunk := os.read(fd, 2048):
        received.append(chunk)
        time.sleep(0.002)


def test_access_log_on_a_pipe_has_whole_lines(certs: DevCerts) -> None:
    """Standard output a pipe shared by both workers: every line arrives whole."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "h2serve", "--workers", "2", "--bind", "127.0.0.1:0", "--cert",
         str(certs.cert), "--key", str(certs.key), "--templates", str(TEMPLATES), "--static", str(STATIC)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        port = int(re.search(rb" on https://[^ ]+:(\d+)/", proc.stderr.readline()).group(1))  # type: ignore[union-attr]
        received: list[bytes] = []
        reader = threading.Thread(target=slow_reader, args=(proc.stdout.fileno(), received))
        reader.start()
        answered = hammer(port)
        wait_for(lambda: b"".join(received).count(b"\n") >= answered, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    reader.join(5)
    check_access_log(b"".join(received).decode(), answered)


def test_line_chunks() -> None:
    """Whole lines, at most `limit` bytes a piece; a longer line alone; nothing lost or added."""
    lines = [b"a" * n + b"\n" for n in (10, 50, 3, 90, 20, 5, 130, 1, 40)]
    data = b"".join(lines)
    chunks = list(line_chunks(data, 100))
    assert b"".join(chunks) == data
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= 100 or chunk.count(b"\n") == 1
    assert b"a" * 130 + b"\n" in chunks
    assert list(line_chunks(b"", 100)) == []
    assert list(line_chunks(b"short\n", 100)) == [b"short\n"]
    assert b"".join(line_chunks(b"x" * 250, 100)) == b"x" * 250  # no newline at all: one piece


def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exited with status 2"


def test_help_names_workers_and_loop() -> None:
    out = run_cli("--help").stdout
    flat = " ".join(out.split())
    assert re.search(r"^\s+--workers N\|auto\b", out, re.M) and re.search(r"^\s+--loop LOOP\b", out, re.M)
    assert "auto for one per usable CPU" in flat and "(default: 1)" in flat
    assert "auto (uvloop when installed), asyncio, or uvloop (default: auto)" in flat
