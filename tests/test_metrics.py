"""`--metrics-bind` (h2serve/metrics.py, net/opslistener.py): /metrics parsed with prometheus_client's
own text parser, each counter moving by what known requests, a push, an attack and a failed TLS
handshake must add; /healthz through a graceful stop; totals across `--workers 2` that survive a
worker killed and restarted.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable

import httpx
import pytest
from attack import bounded, goaway_on_close, hostile
from conftest import REPO, RunningServer, ServerProcess, open_tls, start_curl, wait_for
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import PingFrame
from prometheus_client.parser import text_string_to_metric_families

from h2serve.metrics import ABUSE_REASONS, flood_reason
from h2serve.workers import worker_pids

CSS = "/static/css/site.css"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of /metrics on 127.0.0.1:`port`, by name and labels."""
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def ops_port(running: RunningServer) -> int:
    assert running.server.ops_sockets
    return running.server.ops_sockets[0].getsockname()[1]


@pytest.fixture
def metered(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server(metrics_bind="127.0.0.1:0")


def test_every_counter_moves_by_what_was_done(metered: RunningServer, verify: ssl.SSLContext,
                                              ca_file: str) -> None:
    port = ops_port(metered)
    before = scrape(port)
    # Every metric the issue names is there from the start, labels included.
    names = {name for name, _ in before}
    for name in ("h2serve_requests_total", "h2serve_response_bytes_total",
                 "h2serve_request_duration_seconds_count", "h2serve_open_connections",
                 "h2serve_h2_streams_total", "h2serve_pushes_total", "h2serve_pushes_refused_total",
                 "h2serve_early_hints_total", "h2serve_abuse_disconnects_total",
                 "h2serve_tls_handshake_failures_total", "h2serve_file_cache_hits_total",
                 "h2serve_file_cache_misses_total", "h2serve_compressions_total"):
        assert name in names, name
    assert {dict(labels)["reason"] for name, labels in before
            if name == "h2serve_abuse_disconnects_total"} == set(ABUSE_REASONS)

    # Over h2 (one connection, kept open): the page, with a 103 since this client refuses pushes;
    # a stylesheet twice, in gzip. A 404 over HTTP/1.1. The page is asked for without a coding:
    # its answer has the map's entries made ready in the page request's coding (push/plan.py
    # `warm`), which must not be the stylesheet's here, or it would be compressed ahead of time.
    h2 = httpx.Client(http2=True, verify=verify, headers={"accept-encoding": "gzip"})
    try:
        assert h2.get(f"{metered.url}/", headers={"accept-encoding": "identity"}).status_code == 200
        mid = scrape(port)
        for _ in range(2):
            r = h2.get(f"{metered.url}{CSS}")
            assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
            assert h2.get(f"{metered.url}/static/none.css").status_code == 404
        css = scrape(port)
        assert moved(mid, css, "h2serve_compressions_total") == 1  # the second from the cache
        # The stylesheet (loaded with the push map) from memory, twice; the missing file (and the
        # places a 404 page may be) looked up on disk.
        assert moved(mid, css, "h2serve_file_cache_misses_total") >= 1
        assert moved(mid, css, "h2serve_file_cache_hits_total") >= 2
        assert moved(mid, css, "h2serve_response_bytes_total") > 2 * int(r.headers["content-length"])
        with httpx.Client(verify=verify) as h1:
            assert h1.get(f"{metered.url}/no-such-page").status_code == 404
        during = scrape(port)
        assert value(during, "h2serve_open_connections", protocol="h2") == 1
    finally:
        h2.close()

    # The page with its pushes, taken by nghttp (which accepts them; no 103: all is promised).
    page = subprocess.run(["nghttp", "-nv", f"{metered.url}/"],
                          capture_output=True, text=True, timeout=20)
    assert page.returncode == 0, page.stderr
    promised = page.stdout.count("recv PUSH_PROMISE frame")
    assert promised >= 1

    # A PING flood, told to calm down.
    attacker = hostile(metered.port, ca_file)
    with attacker:
        flood = b"".join(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(500))
        for _ in bounded(200, 15):
            attacker.send_raw(flood)
            attacker.receive_for(0.005)
            if attacker.closed:
                break
        assert goaway_on_close(attacker).error_code == ErrorCodes.ENHANCE_YOUR_CALM

    # A TLS handshake that fails: a ClientHello of garbage.
    with socket.create_connection(("127.0.0.1", metered.port)) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x08garbage!")
        raw.settimeout(5)
        while raw.recv(4096):
            pass

    wait_for(lambda: value(scrape(port), "h2serve_open_connections", protocol="h2") == 0)
    after = scrape(port)
    assert moved(before, after, "h2serve_requests_total", protocol="h2", status_class="2xx") == 4 + promised
    assert moved(before, after, "h2serve_requests_total", protocol="h2", status_class="4xx") == 2
    assert moved(before, after, "h2serve_requests_total", protocol="http/1.1", status_class="4xx") == 1
    assert moved(before, after, "h2serve_request_duration_seconds_count") == 7 + promised
    assert moved(before, after, "h2serve_h2_streams_total") == 6
    assert moved(before, after, "h2serve_pushes_total") == promised
    assert moved(before, after, "h2serve_pushes_refused_total") == 0
    assert moved(before, after, "h2serve_early_hints_total") == 1
    assert moved(before, after, "h2serve_abuse_disconnects_total", reason="ping_flood") == 1
    assert sum(moved(before, after, "h2serve_abuse_disconnects_total", reason=r) for r in ABUSE_REASONS) == 1
    assert moved(before, after, "h2serve_tls_handshake_failures_total") == 1
    assert value(after, "h2serve_open_connections", protocol="http/1.1") == 0


def test_a_refused_push_is_counted(metered: RunningServer, ca_file: str) -> None:
    """A client that resets promised streams (RST_STREAM CANCEL, as a browser does for what it has
    cached). Its window is 0 until then, so that no pushed answer is complete before the reset."""
    port = ops_port(metered)
    before = scrape(port)
    with hostile(metered.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client:
        sid = client.request("/")
        client.receive_until(lambda: len(client.responses[sid].pushed) > 0)
        client.receive_for(0.2)
        promised = client.responses[sid].pushed
        for pushed in promised:
            client.reset(pushed, ErrorCodes.CANCEL)
        client.grant(sid, 1 << 20)
        client.receive_until(lambda: client.responses[sid].done)
    wait_for(lambda: moved(before, scrape(port), "h2serve_pushes_refused_total") == len(promised))
    assert moved(before, scrape(port), "h2serve_pushes_total") == len(promised)


def test_healthz_is_200_then_503_while_stopping(make_server: Callable[..., RunningServer], big_file,
                                                ca_file: str, tmp_path) -> None:
    running = make_server(metrics_bind="127.0.0.1:0", **big_file.server_options())
    port = ops_port(running)
    health = f"http://127.0.0.1:{port}/healthz"
    r = httpx.get(health)
    assert (r.status_code, r.text) == (200, "ok\n")
    out = tmp_path / "download.bin"
    curl = start_curl(f"{running.url}{big_file.url_path}", ca_file, out, "24M")
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 1 << 20)
        stopping = asyncio.run_coroutine_threadsafe(running.server.stop(30), running.loop)
        with httpx.Client() as client:  # a scraper's kept connection still answers
            wait_for(lambda: client.get(health).status_code == 503)
            assert client.get(health).text == "stopping\n"
        assert curl.poll() is None  # the download is still going
        stdout, _ = curl.communicate(timeout=30)
        assert stdout == f"2 200 {big_file.size}"
        stopping.result(30)
    finally:
        if curl.poll() is None:
            curl.kill()


def test_ops_listener_answers_only_its_two_paths(metered: RunningServer) -> None:
    port = ops_port(metered)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        assert client.get("/").status_code == 404
        assert client.post("/metrics").status_code == 405
        assert client.head("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200  # on the same connection: keep-alive works
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")


def test_flood_reasons_name_a_label() -> None:
    assert flood_reason("PING flood") == "ping_flood"
    assert flood_reason("empty DATA flood") == "empty_data_flood"
    assert flood_reason("streams reset as fast as they are opened (Rapid Reset); RST_STREAM flood") == \
        "rapid_reset"
    assert flood_reason("header block over SETTINGS_MAX_HEADER_LIST_SIZE (8192 bytes)") == "header_size"
    assert flood_reason("unknown or GOAWAY frame flood") == "other_frame_flood"
    assert all(flood_reason(x) in ABUSE_REASONS for x in ("SETTINGS flood", "PRIORITY_UPDATE flood"))


# -- --workers 2: one exposition adding up every worker's files ----------------------------------------


def metrics_port(proc: ServerProcess) -> int:
    line = next(x for x in proc.stderr_lines if " serving " in x)
    match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
    assert match, line
    return int(match.group(1))


def total_requests(port: int) -> float:
    samples = scrape(port)
    return sum(v for (name, _), v in samples.items() if name == "h2serve_requests_total")


def alive_after_kill(socks: list[ssl.SSLSocket]) -> list[ssl.SSLSocket]:
    """The TLS connections the server has not closed (those of a killed worker see EOF or a reset)."""
    alive = []
    for sock in socks:
        readable, _, _ = select.select([sock], [], [], 0.5)
        if not readable:
            alive.append(sock)
            continue
        try:
            while sock.recv(65536):
                readable, _, _ = select.select([sock], [], [], 0.2)
                if not readable:
                    alive.append(sock)
                    break
        except (OSError, ssl.SSLError):
            pass
    return alive


def test_workers_totals_add_up_and_survive_a_killed_worker(spawn_server, verify: ssl.SSLContext,
                                                            ca_file: str, tmp_path) -> None:
    existing = set(glob.glob(os.path.join(tempfile.gettempdir(), "h2serve-metrics-*")))
    proc = spawn_server("--workers", "2", "--metrics-bind", "127.0.0.1:0", "--access-log", "off")
    port = metrics_port(proc)
    folders = set(glob.glob(os.path.join(tempfile.gettempdir(), "h2serve-metrics-*"))) - existing
    assert len(folders) == 1  # the supervisor's, for this run
    for _ in range(20):  # each on a connection of its own: the kernel spreads them over both workers
        with httpx.Client(http2=True, verify=verify) as client:
            assert client.get(f"https://localhost:{proc.port}/about").status_code == 200
    for _ in range(4):  # whichever worker takes the scrape, it sees both
        assert total_requests(port) == 20

    # Connections held open: the gauge counts them across the workers.
    socks = [open_tls(proc.port, ca_file) for _ in range(8)]
    try:
        wait_for(lambda: value(scrape(port), "h2serve_open_connections", protocol="h2") == 8)
        pids = worker_pids(proc.proc.pid)
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(worker_pids(proc.proc.pid)) == 2 and victim not in worker_pids(proc.proc.pid))
        alive = alive_after_kill(socks)
        assert len(alive) < 8
        # The dead worker's requests still count; its connections no longer do.
        for _ in range(4):
            assert total_requests(port) == 20
            assert value(scrape(port), "h2serve_open_connections", protocol="h2") == len(alive)
    finally:
        for sock in socks:
            sock.close()
    for _ in range(10):
        with httpx.Client(http2=False, verify=verify) as client:
            assert client.get(f"https://localhost:{proc.port}/about").status_code == 200
    wait_for(lambda: total_requests(port) == 30)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0
    assert not any(os.path.exists(folder) for folder in folders)  # removed at the end


def test_metrics_bind_without_prometheus_client_is_one_line(tmp_path) -> None:
    """The extra not installed: exit status 2 and what to install (prometheus_client hidden)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "prometheus_client.py").write_text("raise ImportError('hidden for the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "h2serve", "--bind", "127.0.0.1:0", "--certs-dir",
                        str(tmp_path / "certs"), "--metrics-bind", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=20, env=env, cwd=REPO)
    assert p.returncode == 2
    assert "pip install 'h2serve[metrics]'" in p.stderr
