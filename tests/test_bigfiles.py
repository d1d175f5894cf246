"""Large files from a real `python -m h2serve` process: a 2 GiB file downloaded over HTTP/2 and
HTTP/1.1 with the server's peak memory read from /proc, other clients answered meanwhile; and a file
truncated under a download in progress (RST_STREAM INTERNAL_ERROR on h2, a short body on HTTP/1.1,
one warning in the log, everyone else unaffected).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess
from h2.errors import ErrorCodes
from h2client import H2Client
from hyperframe.frame import RstStreamFrame

GiB = 1024 ** 3
MiB = 1024 ** 2
SPARSE_SIZE = 2 * GiB
TAIL = b"--end of the 2 GiB file--"
SMALL = b"small and hot\n" * 10


def vm_kib(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/PID/status (VmRSS, VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


@pytest.fixture
def sparse_static(tmp_path: Path) -> Path:
    """A static folder with a 2 GiB sparse file (no disk blocks but the last few, which hold a
    marker so the end of the download can be checked) and a small file."""
    static = tmp_path / "static"
    static.mkdir()
    with open(static / "huge.bin", "wb") as f:
        f.truncate(SPARSE_SIZE)
        f.seek(SPARSE_SIZE - len(TAIL))
        f.write(TAIL)
    assert os.stat(static / "huge.bin").st_blocks * 512 < 1 * MiB  # sparse: takes no disk
    (static / "small.txt").write_bytes(SMALL)
    return static


class Prober(threading.Thread):
    """Another client, on connections of its own, asking for a small file every 0.2 s and timing
    each answer, until stopped."""

    def __init__(self, base: str, verify) -> None:
        super().__init__(daemon=True)
        self.base, self.verify = base, verify
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        clients = [httpx.Client(http2=True, verify=self.verify, timeout=10),
                   httpx.Client(http2=False, verify=self.verify, timeout=10)]
        try:
            i = 0
            while not self.stop.wait(0.2):
                c = clients[i % 2]
                i += 1
                t0 = time.monotonic()
                try:
                    r = c.get(self.base + "/static/small.txt")
                except httpx.HTTPError as e:
                    self.errors.append(repr(e))
                    continue
                self.latencies.append(time.monotonic() - t0)
                if r.status_code != 200 or r.content != SMALL:
                    self.errors.append(f"{r.status_code} {r.content[:40]!r}")
        finally:
            for c in clients:
                c.close()


def download(client: httpx.Client, url: str, version: str, headers: dict[str, str] | None = None
             ) -> tuple[httpx.Response, int, bytes, float]:
    """Stream a response, counting bytes and keeping only the last few; (response, bytes, tail,
    seconds)."""
    t0 = time.monotonic()
    n = 0
    tail = b""
    with client.stream("GET", url, headers=headers) as r:
        assert r.http_version == version
        for chunk in r.iter_raw(1 << 20):
            n += len(chunk)
            tail = (tail + chunk[-64:])[-64:]
    return r, n, tail, time.monotonic() - t0


def test_2gib_sparse_file_bounded_memory_others_served(sparse_static: Path,
                                                       spawn_server: Callable[..., ServerProcess],
                                                       verify) -> None:
    """2 GiB over HTTP/2, then 2 GiB over HTTP/1.1: every byte arrives (length and the final
    marker), the server's peak RSS stays under 100 MiB, and small requests from another client
    are each answered within 2 s throughout."""
    proc = spawn_server("--static", str(sparse_static), "--access-log", "off")
    pid = proc.proc.pid
    base = f"https://localhost:{proc.port}"
    for http2 in (True, False):  # warm both code paths up
        with httpx.Client(http2=http2, verify=verify) as c:
            assert c.get(base + "/static/small.txt").content == SMALL
    baseline = vm_kib(pid, "VmHWM")
    prober = Prober(base, verify)
    prober.start()
    figures = []
    try:
        for http2, version in ((True, "HTTP/2"), (False, "HTTP/1.1")):
            with httpx.Client(http2=http2, verify=verify, timeout=30) as c:
                r, n, tail, seconds = download(c, base + "/static/huge.bin", version)
            assert r.status_code == 200
            assert r.headers["content-length"] == str(SPARSE_SIZE)
            assert n == SPARSE_SIZE, version
            assert tail.endswith(TAIL)
            peak_now = vm_kib(pid, "VmHWM") / 1024
            figures.append(f"{version}: {n / MiB / seconds:.0f} MiB/s, VmHWM {peak_now:.1f} MiB")
    finally:
        prober.stop.set()
        prober.join(15)
    peak = vm_kib(pid, "VmHWM")
    slowest = max(prober.latencies, default=0.0)
    report = (f"{'; '.join(figures)}; baseline VmHWM {baseline / 1024:.1f} MiB; "
              f"{len(prober.latencies)} small answers meanwhile, slowest {slowest * 1000:.0f} ms")
    print(report)
    assert peak < 100 * 1024, report
    assert peak - baseline < 40 * 1024, report
    assert not prober.errors, prober.errors
    assert len(prober.latencies) >= 20, f"only {len(prober.latencies)} probes"
    assert slowest < 2.0, report


# -- a file truncated mid-transfer --------------------------------------------------------------

def make_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def warnings_in(proc: ServerProcess) -> list[str]:
    return [line for line in list(proc.stderr_lines) if " WARNING " in line]


def wait_for_warning(proc: ServerProcess, timeout: float = 5) -> list[str]:
    """The log's warning lines, once there is one and the log has been quiet for a moment."""
    deadline = time.monotonic() + timeout
    while not warnings_in(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a second warning, if there were one, would be in by now
    return warnings_in(proc)


@pytest.fixture
def truncation_server(tmp_path: Path, spawn_server: Callable[..., ServerProcess]
                      ) -> tuple[ServerProcess, Path]:
    static = tmp_path / "static"
    static.mkdir()
    (static / "small.txt").write_bytes(SMALL)
    return spawn_server("--static", str(static), "--access-log", "off"), static


def test_truncated_mid_transfer_h2_rst_stream(truncation_server: tuple[ServerProcess, Path], ca_file: str,
                                              verify) -> None:
    """HTTP/2: the client holds the window after the first 64 KiB; the file is truncated to 1000
    bytes; once the window opens the server resets that stream with INTERNAL_ERROR (it cannot send
    what Content-Length promised), logs one warning, and goes on serving on the same connection and
    others."""
    proc, static = truncation_server
    path = static / "big.bin"
    size = 64 * MiB
    make_file(path, size)
    with H2Client.tls(proc.port, ca_file, flow_control="manual") as client:
        sid = client.request("/static/big.bin")
        response = client.responses[sid]
        client.receive_until(lambda: response.received >= 65535)
        assert response.status == 200
        assert response.header(b"content-length") == str(size).encode()
        client.receive_for(0.2)
        assert response.received == 65535 and not response.done  # held by flow control
        os.truncate(path, 1000)
        client.grant(sid, 16 * MiB)
        client.receive_until(lambda: response.done)
        assert response.reset_code == ErrorCodes.INTERNAL_ERROR
        resets = client.frames_of(RstStreamFrame, sid)
        assert [f.error_code for f in resets] == [ErrorCodes.INTERNAL_ERROR]
        assert response.received < size
        assert not response.ended
        # The connection itself is fine: another request on it is answered.
        other = client.request("/static/small.txt")
        client.grant(0, 1 * MiB)
        client.receive_until(lambda: client.responses[other].done)
        assert client.responses[other].status == 200
        assert bytes(client.responses[other].body) == SMALL
        assert not client.goaways
    lines = wait_for_warning(proc)
    assert len(lines) == 1, lines
    assert "/static/big.bin" in lines[0] and "failed" in lines[0] and "early" in lines[0]
    with httpx.Client(http2=True, verify=verify) as c:
        assert c.get(f"https://localhost:{proc.port}/static/small.txt").content == SMALL


def test_truncated_mid_transfer_h1_connection_closed(truncation_server: tuple[ServerProcess, Path],
                                                     verify) -> None:
    """HTTP/1.1: a client reading slowly; the file is truncated; the connection closes before
    Content-Length bytes arrived (the client sees a short body, never wrong bytes), one warning is
    logged, and another client is served."""
    proc, static = truncation_server
    path = static / "big.bin"
    size = 64 * MiB
    digest = make_file(path, size)
    original = path.read_bytes()
    url = f"https://localhost:{proc.port}/static/big.bin"
    received = bytearray()
    with httpx.Client(http2=False, verify=verify, timeout=15) as c, c.stream("GET", url) as r:
        assert r.http_version == "HTTP/1.1"
        assert r.headers["content-length"] == str(size)
        chunks = r.iter_raw(64 * 1024)
        while len(received) < 256 * 1024:
            received += next(chunks)
        time.sleep(0.3)  # the server fills the socket buffers and waits for us
        os.truncate(path, 1000)
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in chunks:
                received += chunk
    assert 256 * 1024 <= len(received) < size
    assert bytes(received) == original[:len(received)]  # what came was right, only short
    assert hashlib.sha256(original).hexdigest() == digest
    lines = wait_for_warning(proc)
    assert len(lines) == 1, lines
    assert "/static/big.bin" in lines[0] and "failed" in lines[0]
    with httpx.Client(http2=False, verify=verify) as c:
        assert c.get(f"https://localhost:{proc.port}/static/small.txt").content == SMALL


@pytest.mark.parametrize("change", ["unlink", "replace"])
def test_deleted_or_replaced_mid_transfer_completes(truncation_server: tuple[ServerProcess, Path],
                                                    ca_file: str, change: str) -> None:
    """A file deleted, or replaced with os.replace(), while it is being sent: the open file lives on
    (Linux), so the download completes with the original bytes, and nothing is logged; the next
    request sees the change."""
    proc, static = truncation_server
    path = static / "big.bin"
    size = 8 * MiB
    digest = make_file(path, size)
    with H2Client.tls(proc.port, ca_file, flow_control="manual") as client:
        sid = client.request("/static/big.bin", keep_body=False)
        response = client.responses[sid]
        client.receive_until(lambda: response.received >= 65535)
        if change == "unlink":
            path.unlink()
        else:
            tmp = static / "big.bin.new"
            tmp.write_bytes(b"new content\n")
            os.replace(tmp, path)
        client.grant(sid, size)
        client.receive_until(lambda: response.done, timeout=30)
        assert response.ended and response.reset_code is None
        assert response.received == size
        assert response.sha256() == digest
        after = client.request("/static/big.bin")
        client.grant(0, MiB)
        client.receive_until(lambda: client.responses[after].done)
        if change == "unlink":
            assert client.responses[after].status == 404
        else:
            assert bytes(client.responses[after].body) == b"new content\n"
    time.sleep(0.2)
    assert warnings_in(proc) == []
