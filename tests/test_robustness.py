"""Timeouts, oversized and malformed input, and clients that vanish, against a real server.

Each attack runs against a server subprocess inside a `Siege` (tests/attack.py): a well-behaved
client on other connections keeps getting answers within 2 s and the server's RSS grows by less than
150 MiB, while the test shows the attacker stopped the way the protocol says. The server's own log
is checked too: one line per rejected client, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import socket
import ssl
import struct
import subprocess
import time

import pytest
from attack import (
    QUICK,
    SMALL_BODY,
    SMALL_PATH,
    MiB,
    RawH2,
    Siege,
    assert_quiet,
    bounded,
    closed_by_server,
    count_lines,
    error_name,
    fd_count,
    frame_bytes,
    h2c_port,
    hpack_block,
    hpack_request,
    rss,
    tcp,
    tls,
    wait_for,
)
from conftest import open_tls
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2client import H2Client
from hyperframe.frame import HeadersFrame, SettingsFrame

H2C = ("--h2c-bind", "127.0.0.1:0")


@pytest.fixture
def quick_server(spawn_server):
    """A server subprocess with 2-second timeouts, TLS and cleartext listeners."""
    def start(*args: str):
        return spawn_server(*QUICK, *H2C, *args)
    return start


@pytest.fixture
def big_server(spawn_server, big_file):
    def start(*args: str):
        return spawn_server(*QUICK, *H2C, "--templates", str(big_file.templates),
                            "--static", str(big_file.static), *args)
    return start


def request(path: str = SMALL_PATH, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (path.encode(), extra)


def status_of(data: bytes) -> int | None:
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data[9:12])


def get_ok(port: int, ca_file: str) -> bool:
    """One GET on a new connection, answered 200 with the right body."""
    with H2Client.tls(port, ca_file, timeout=5) as client:
        sid = client.request(SMALL_PATH)
        client.receive_until(lambda: client.responses[sid].done, timeout=5)
        return client.responses[sid].status == 200 and bytes(client.responses[sid].body) == SMALL_BODY


# -- 6. Timeouts and the connection cap ------------------------------------------------------------------


def test_silent_and_stalled_handshakes_are_closed_within_the_handshake_timeout(quick_server, ca_file):
    proc = quick_server()
    cleartext = h2c_port(proc)
    with Siege(proc, ca_file):
        started = time.monotonic()
        silent = [tcp(proc.port) for _ in range(20)]                  # TLS port: not a byte
        partial = [tcp(proc.port) for _ in range(5)]                  # half a ClientHello
        for sock in partial:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20))
        quiet_h2c = [tcp(cleartext) for _ in range(5)]                # h2c port: not a byte
        half_preface = [tcp(cleartext) for _ in range(5)]             # h2c: half the preface
        for sock in half_preface:
            sock.sendall(b"PRI * HTTP/2.0\r\n")
        for sock in silent + partial + quiet_h2c + half_preface:
            closed, data = closed_by_server(sock, 2 + 2.5 - (time.monotonic() - started))
            assert closed
            assert not data.startswith(b"HTTP/")  # no answer of any kind
            sock.close()
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 2 + 2.5
    assert_quiet(proc)


@pytest.mark.parametrize("transport", ["tls", "h2c"])
def test_slowloris_is_closed_after_the_header_timeout(quick_server, ca_file, transport):
    """A request head trickling in a byte at a time: 2 s for the whole head, however steady."""
    proc = quick_server()
    port = proc.port if transport == "tls" else h2c_port(proc)
    head = request(extra=b"".join(b"X-Slow-%d: %s\r\n" % (i, b"v" * 20) for i in range(50)))
    with Siege(proc, ca_file):
        socks = [tls(port, ca_file) if transport == "tls" else tcp(port) for _ in range(10)]
        started = time.monotonic()
        position = 0
        for _ in bounded(len(head), 6):
            try:
                for sock in socks:
                    sock.sendall(head[position:position + 1])
            except OSError:
                break  # closed by the server
            position += 1
            time.sleep(0.05)
        for sock in socks:
            closed, data = closed_by_server(sock, 1)
            assert closed
            assert data == b""  # no answer: the client is not worth one (the access log gets a 408)
            sock.close()
        elapsed = time.monotonic() - started
    assert position < len(head)
    assert 2 <= elapsed < 2 + 2
    assert count_lines(proc, "sent no complete request head in 2s") == 10


def test_idle_connections_are_closed_after_the_idle_timeout(quick_server, ca_file):
    """HTTP/1.1: closed; HTTP/2: GOAWAY NO_ERROR, then closed."""
    proc = quick_server()
    with Siege(proc, ca_file):
        h1 = tls(proc.port, ca_file)
        h1.sendall(request())
        h2 = H2Client.tls(proc.port, ca_file)
        sid = h2.request(SMALL_PATH)
        h2.receive_until(lambda: h2.responses[sid].done)
        started = time.monotonic()
        closed, data = closed_by_server(h1, 5)
        assert closed and status_of(data) == 200
        h2.wait_closed(5)
        assert [(g.error_code, g.last_stream_id) for g in h2.goaways] == [(ErrorCodes.NO_ERROR, sid)]
        elapsed = time.monotonic() - started
        h1.close()
        h2.close()
    assert 1.5 < elapsed < 2 + 2


def test_a_client_that_ignores_the_close_does_not_keep_its_connection(quick_server, ca_file):
    """The server's close of a TLS connection waits for the client's close_notify, and of a TCP
    connection for its unsent bytes: a client that neither reads nor closes must not keep the
    socket (and its place under --max-connections) for good."""
    proc = quick_server()
    pid = proc.proc.pid
    with Siege(proc, ca_file, per_connection=1000):
        before = fd_count(pid)
        lingering = [open_tls(proc.port, ca_file, alpn=["h2"]) for _ in range(10)]
        lingering += [tcp(h2c_port(proc)) for _ in range(10)]
        for sock in lingering[10:]:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        wait_for(lambda: fd_count(pid) >= before + 20, 5)
        # idle timeout (2 s): GOAWAY and close, which these clients never acknowledge; then the
        # send timeout (2 s) later the server lets go.
        took = wait_for(lambda: fd_count(pid) <= before, 10)
        for sock in lingering:
            sock.close()
    assert took < 2 + 2 + 3


def test_connections_beyond_the_cap_wait_and_the_server_carries_on(quick_server, ca_file):
    proc = quick_server("--max-connections", "4", "--idle-timeout", "30")
    with Siege(proc, ca_file, per_connection=1000):  # the bystander holds one connection
        wait_for(lambda: fd_count(proc.proc.pid) < 100, 1)
        held = [open_tls(proc.port, ca_file, alpn=["h2"]) for _ in range(3)]  # the cap is reached
        waiting = []
        for _ in range(5):
            raw = tcp(proc.port, timeout=1)  # the kernel completes the TCP handshake...
            ctx = ssl.create_default_context(cafile=ca_file)
            waiting.append(raw)
            with pytest.raises((TimeoutError, ssl.SSLError, OSError)):
                ctx.wrap_socket(raw, server_hostname="localhost")  # ...but nobody answers TLS
        for sock in held:
            sock.close()
        # Room again: a new client is served.
        assert wait_for(lambda: get_ok(proc.port, ca_file), 5) < 5
        for sock in waiting:
            sock.close()
    assert proc.proc.poll() is None
    assert_quiet(proc)


def test_running_out_of_file_descriptors_pauses_accepting_and_recovers(quick_server, ca_file):
    proc = quick_server("--max-connections", "10000")
    pid = proc.proc.pid
    with Siege(proc, ca_file, per_connection=1000):
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        limit = fd_count(pid) + 8
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        try:
            socks = [tcp(proc.port) for _ in range(40)]  # more than the server can accept
            wait_for(lambda: count_lines(proc, "out of file descriptors") > 0, 5)
            assert fd_count(pid) <= limit
            for sock in socks:
                sock.close()
            # The silent ones it took are closed at the handshake timeout; it accepts again.
            assert wait_for(lambda: get_ok(proc.port, ca_file), 8) < 8
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert proc.proc.poll() is None
    assert count_lines(proc, "out of file descriptors") == 1  # said once, not once per attempt
    assert_quiet(proc, worst="WARNING")


# -- 7. Oversized input ----------------------------------------------------------------------------------


def test_oversized_input_gets_414_431_and_goaway(quick_server, ca_file):
    """HTTP/1.1: a request line over the head limit gets 414, a head over it 431; HTTP/2: a header
    block over SETTINGS_MAX_HEADER_LIST_SIZE ends the connection with ENHANCE_YOUR_CALM. Twenty
    clients of each, at once, each cut off as soon as it passes the limit (32 KiB by default)."""
    proc = quick_server()
    with Siege(proc, ca_file):
        long_line = [tls(proc.port, ca_file) for _ in range(20)]
        big_head = [tls(proc.port, ca_file) for _ in range(20)]
        h2 = [RawH2.tls(proc.port, ca_file) for _ in range(20)]
        for sock in long_line:
            sock.sendall(b"GET /" + b"a" * 40_000)  # and never the end of the line
        for sock in big_head:
            sock.sendall(request(extra=b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))))
        for client in h2:
            client.send_frames(HeadersFrame(1, hpack_request(extra=[(b"x-big", b"v" * 40_000)])[:16384]),
                               b"")
            client.send(frame_bytes(0x9, 0, 1, b"v" * 16384) + frame_bytes(0x9, 0x4, 1, b"v" * 16384))
        for sock in long_line:
            closed, data = closed_by_server(sock, 5)
            assert closed and status_of(data) == 414, data[:60]
        for sock in big_head:
            closed, data = closed_by_server(sock, 5)
            assert closed and status_of(data) == 431, data[:60]
        for client in h2:
            assert client.wait_closed(5)
            assert [error_name(g.error_code) for g in client.goaways] == ["ENHANCE_YOUR_CALM"]
            assert not client.responses(1)
            client.close()
    assert_quiet(proc)


def test_long_path_under_the_head_limit_gets_414(quick_server, ca_file):
    """A request target far longer than any URL of the site (16 KiB), though within the head limit:
    414 URI Too Long over HTTP/1.1 and HTTP/2 alike."""
    proc = quick_server()
    path = "/" + "a" * 16_000
    with tls(proc.port, ca_file) as sock:
        sock.sendall(request(path))
        sock.settimeout(5)
        assert status_of(sock.recv(65536)) == 414
    with H2Client.tls(proc.port, ca_file) as client:
        sid = client.request(path)
        client.receive_until(lambda: client.responses[sid].done)
        assert client.responses[sid].status == 414


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_body_on_a_get_only_route_gets_413_over_http1(quick_server, ca_file, framing):
    """The body is refused without being read: 413 with connection: close, then the connection
    closes (the rest of the body is never read as requests)."""
    proc = quick_server()
    if framing == "content-length":
        head = request(extra=b"Content-Length: 100000\r\n")
    else:
        head = request(extra=b"Transfer-Encoding: chunked\r\n") + b"186a0\r\n"
    with tls(proc.port, ca_file) as sock:
        sock.sendall(head + b"x" * 1000 + request())
        closed, data = closed_by_server(sock, 5)
    assert closed
    assert status_of(data) == 413, data[:60]
    assert b"connection: close" in data.lower()
    assert data.count(b"HTTP/1.1 ") == 1


def test_request_body_on_a_get_only_route_gets_413_over_http2(quick_server, ca_file):
    proc = quick_server()
    with H2Client.tls(proc.port, ca_file) as client:
        sid = client.request(SMALL_PATH, end_stream=False, headers=[(b"content-length", b"100000")])
        client.conn.send_data(sid, b"x" * 1000)
        client.flush()
        client.receive_until(lambda: client.responses[sid].done)
        assert client.responses[sid].status == 413
        assert [f.error_code for f in client.resets(sid)] in ([ErrorCodes.NO_ERROR], [])


# -- 8. Garbage and malformed requests ---------------------------------------------------------------------


def test_garbage_instead_of_tls_is_closed_with_one_log_line_each(quick_server, ca_file):
    proc = quick_server("--log-level", "debug")
    since = len(proc.stderr_lines)
    payloads = [b"\x9f" + os.urandom(200), b"\x16\x03\x01\x00\x05hello", b"\x00" * 1000,
                b"\x16\x03\x03\xff\xff" + b"z" * 300, b"get / http/1.1\r\n\r\n"]
    with Siege(proc, ca_file):
        for payload in payloads:
            with tcp(proc.port) as sock:
                sock.sendall(payload)
                closed, data = closed_by_server(sock, 3)
                assert closed
                assert not data.startswith(b"HTTP/")  # whatever it is, it is not answered in HTTP
    wait_for(lambda: count_lines(proc, "TLS handshake failed", since) >= len(payloads), 3)
    assert count_lines(proc, "TLS handshake failed", since) == len(payloads)
    assert_quiet(proc, since, worst="DEBUG")


@pytest.mark.parametrize("payload", [request(), b"POST /x HTTP/1.0\r\n\r\n",
                                     b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
def test_plain_http_on_the_tls_port_gets_a_400_saying_so(quick_server, ca_file, payload):
    """As nginx answers: a client that speaks plain HTTP (or h2 with prior knowledge) to the TLS
    port learns why it is refused, in plain text, and the connection closes cleanly after it."""
    proc = quick_server()
    since = len(proc.stderr_lines)
    with Siege(proc, ca_file), tcp(proc.port) as sock:
        sock.sendall(payload)
        closed, data = closed_by_server(sock, 3)
    assert closed
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close" in head and b"content-length: %d" % len(body) in head
    assert b"https://" in body
    wait_for(lambda: count_lines(proc, "plain HTTP request on a TLS port", since) == 1, 3)
    assert count_lines(proc, "TLS handshake failed", since) == 0
    assert_quiet(proc, since)


def test_curl_with_http_to_the_tls_port_prints_the_reason(quick_server):
    proc = quick_server()
    done = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{proc.port}/"], capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert "plain HTTP" in done.stdout and "https://" in done.stdout


H1_BAD = {
    "content-length-and-transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n", 400),
    # The head is answered (405) before the body is read; the bad chunk then ends the connection.
    "bad-chunk-size": (b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\n", 405),
    "two-content-lengths": (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
                            b"Content-Length: 2\r\n\r\nxx", 400),
    "signed-content-length": (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: +4\r\n\r\nxxxx", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n", 400),
    "chunked-not-last": (b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity"
                         b"\r\n\r\n", 501),
    "nul-in-header": (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n", 400),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "garbage-request-line": (b"\x01\x02\x03 nonsense\r\n\r\n", 400),
}


@pytest.mark.parametrize("transport", ["tls", "h2c"])
def test_http1_smuggling_shapes_get_400_and_one_log_line(quick_server, ca_file, transport):
    """Each is answered with its status and `connection: close`, the request smuggled behind it is
    never answered, and the server logs one line for it."""
    proc = quick_server()
    port = proc.port if transport == "tls" else h2c_port(proc)
    smuggled = b"GET /static/js/site.js HTTP/1.1\r\nHost: localhost\r\n\r\n"
    since = len(proc.stderr_lines)
    with Siege(proc, ca_file):
        for name, (payload, status) in H1_BAD.items():
            with tls(port, ca_file) if transport == "tls" else tcp(port) as sock:
                sock.sendall(payload + smuggled)
                closed, data = closed_by_server(sock, 5)
            assert closed, name
            assert status_of(data) == status, (name, data[:60])
            assert data.count(b"HTTP/1.1 ") == 1, name
            assert status == 405 or b"connection: close" in data.lower(), name
    wait_for(lambda: count_lines(proc, "bad HTTP/1.1 request", since) >= len(H1_BAD), 3)
    assert count_lines(proc, "bad HTTP/1.1 request", since) == len(H1_BAD)
    assert_quiet(proc, since)


H2_BAD = {
    "bad-preface": (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", None),
    "uppercase-name": (None, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                              (b":path", b"/"), (b"X-Upper", b"1")]),
    "unknown-pseudo-header": (None, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                     (b":path", b"/"), (b":protocol", b"x")]),
    "connection-header": (None, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                 (b":path", b"/"), (b"connection", b"close")]),
    "te-gzip": (None, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                       (b":path", b"/"), (b"te", b"gzip")]),
    "missing-path": (None, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x")]),
}


def test_bad_http2_gets_protocol_error_and_one_log_line(quick_server, ca_file):
    proc = quick_server()
    since = len(proc.stderr_lines)
    with Siege(proc, ca_file):
        for name, (preface, headers) in H2_BAD.items():
            if preface is not None:
                client = RawH2.tls(proc.port, ca_file, preface=False)
                client.send(preface + SettingsFrame(0).serialize())
            else:
                client = RawH2.tls(proc.port, ca_file)
                client.send_frames(HeadersFrame(1, hpack_block(headers), flags=["END_HEADERS", "END_STREAM"]))
            with client:
                client.read_until(lambda c=client: c.closed or bool(c.resets(1)), 5)
                codes = client.resets(1) + [g.error_code for g in client.goaways]
                assert codes and codes[0] == ErrorCodes.PROTOCOL_ERROR, (name, codes)
                assert not client.responses(1), name
    wait_for(lambda: count_lines(proc, "protocol error", since) >= len(H2_BAD), 3)
    assert count_lines(proc, "protocol error", since) == len(H2_BAD)
    assert_quiet(proc, since)


def test_random_frames_never_crash_the_server(quick_server, ca_file):
    """200 connections of random frames (seeded): each ends in a GOAWAY, a close, or lives on; the
    server logs no traceback and keeps serving."""
    proc = quick_server()
    rng = random.Random(9113)
    with Siege(proc, ca_file):
        for i in range(200):
            frames = []
            for _ in range(rng.randint(1, 8)):
                kind = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, rng.randint(10, 255)])
                sid = rng.choice([0, 1, 2, 3, rng.randint(0, 2**31 - 1)])
                payload = rng.randbytes(rng.choice([0, 1, 4, 5, 6, 8, 9, rng.randint(0, 300)]))
                if rng.random() < 0.3:
                    payload = hpack_request() if kind in (1, 9) else payload
                frames.append(frame_bytes(kind, rng.randint(0, 255), sid, payload))
            sock = (tcp(h2c_port(proc)) if i % 2 else open_tls(proc.port, ca_file, alpn=["h2"]))
            with RawH2(sock) as client:
                client.send(b"".join(frames))
                client.read_for(0.05)
        assert get_ok(proc.port, ca_file)
    assert proc.proc.poll() is None
    assert_quiet(proc)


# -- 9. Clients that vanish -----------------------------------------------------------------------------


def _vanish(sock: socket.socket, how: str) -> None:
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    elif how == "close":
        sock.close()
    elif how == "half-close":
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        raw.shutdown(socket.SHUT_WR)
        raw.close()
        sock.close()
    elif how == "tls-garbage":
        os.write(sock.fileno(), b"\x17\x03\x03\x00\x10" + os.urandom(16))  # a record no key made
        time.sleep(0.01)
        sock.close()


def _downloads(port: int, ca_file: str, path: str, n: int) -> list[tuple[socket.socket, str]]:
    """`n` downloads of `path` under way, half HTTP/2, half HTTP/1.1, each a first chunk in."""
    out = []
    for i in range(n):
        if i % 2:
            client = H2Client.tls(port, ca_file, connection_window=1 << 30,
                                  settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
            sid = client.request(path, keep_body=False)
            client.receive_until(lambda c=client, s=sid: c.responses[s].received > 100_000)
            out.append((client.sock, "h2"))
        else:
            sock = tls(port, ca_file)
            sock.sendall(request(path))
            sock.settimeout(5)
            got = 0
            for _ in bounded(1000, 5):
                got += len(sock.recv(65536))
                if got > 100_000:
                    break
            out.append((sock, "h1"))
    return out


def test_vanishing_clients_leave_nothing_behind(big_server, big_file, ca_file):
    """Downloads cut off every way a client can go: the server's file descriptors return to their
    count before, and nothing is logged above INFO."""
    proc = big_server()
    pid = proc.proc.pid
    with Siege(proc, ca_file, per_connection=1000):
        time.sleep(0.2)
        before = fd_count(pid)
        since = len(proc.stderr_lines)
        for how in ("reset", "close", "half-close", "tls-garbage"):
            for sock, _ in _downloads(proc.port, ca_file, big_file.url_path, 6):
                _vanish(sock, how)
        took = wait_for(lambda: fd_count(pid) <= before, 8)
    assert took < 5
    assert_quiet(proc, since)


def test_vanishing_clients_leave_no_task_connection_or_file_open(make_server, big_file, ca_file):
    """The same, in-process: no asyncio task, no connection object, no open file outlives them."""
    srv = make_server(**big_file.server_options())
    registry = srv.server.registry
    tasks_before = srv.call(_task_count())
    fds_before = len(os.listdir("/proc/self/fd"))
    for how in ("reset", "close", "half-close", "tls-garbage"):
        for sock, _ in _downloads(srv.port, ca_file, big_file.url_path, 4):
            _vanish(sock, how)
    wait_for(lambda: not registry.connections, 5)
    wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds_before, 5)
    assert srv.call(_task_count()) <= tasks_before


async def _task_count() -> int:
    return len(asyncio.all_tasks()) - 1  # this one


def test_http1_pipelining_without_reading_is_bounded(quick_server, ca_file):
    """Small answers go out whole, without the body pump: a client pipelining thousands of requests
    and reading none must still meet the output limit and the send timeout."""
    proc = quick_server()
    pid = proc.proc.pid
    with Siege(proc, ca_file) as siege:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", h2c_port(proc)))
        raw.settimeout(0.5)
        batch = request() * 100
        sent = 0
        started = time.monotonic()
        for _ in bounded(500, 10):  # at most 50,000 requests: some 340 MB of answers
            try:
                raw.sendall(batch)
                sent += 100
            except TimeoutError:
                pass
            except OSError:
                break
            if count_lines(proc, "has read nothing") or count_lines(proc, "does not read"):
                break
        wait_for(lambda: count_lines(proc, "has read nothing") + count_lines(proc, "does not read") > 0, 5)
        assert time.monotonic() - started < 10
        closed, _ = closed_by_server(raw, 5)
        assert closed
        raw.close()
        growth = siege.growth
    assert growth < 50 * MiB, f"{growth / MiB:.0f} MiB for {sent} requests"
    assert rss(pid) > 0
