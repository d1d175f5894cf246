"""The server as a whole: the embedding API, graceful shutdown (in process and by signal), ALPN
restriction, and the TLS rules of RFC 9113 section 9.2."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import httpx
import pytest
from conftest import (
    STATIC,
    TEMPLATES,
    ServerProcess,
    open_tls,
    refused,
    sigterm_during_download,
)
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2client import H2Client
from hyperframe.frame import PingFrame

from h2serve import Config, Server

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# -- the embedding API ---------------------------------------------------------------------------------


def test_embedding_start_port_zero_and_stop(certs, verify, tmp_path):
    config = Config(bind=["127.0.0.1:0"], h2c_bind=["127.0.0.1:0"], cert=str(certs.cert),
                    key=str(certs.key), templates=str(TEMPLATES), static=str(STATIC),
                    access_log=str(tmp_path / "access.log"), log_level="warning")

    async def main() -> tuple[int, int, int, str]:
        server = Server(config)
        await server.start()
        port, h2c_port = server.port, server.h2c_port
        described = server.describe()
        async with httpx.AsyncClient(http2=True, verify=verify) as client:
            tls = await client.get(f"https://localhost:{port}/")
        async with httpx.AsyncClient() as client:
            clear = await client.get(f"http://127.0.0.1:{h2c_port}/about")
        assert (tls.http_version, tls.status_code) == ("HTTP/2", 200)
        assert (clear.http_version, clear.status_code) == ("HTTP/1.1", 200)
        await server.stop()
        return port, h2c_port, len(server.listeners), described

    started = time.monotonic()
    port, h2c_port, listeners, described = asyncio.run(main())
    assert time.monotonic() - started < 5  # stop() with idle connections does not wait out the grace
    assert port > 0 and h2c_port > 0 and port != h2c_port
    assert listeners == 2
    assert f"https://127.0.0.1:{port}/ (h2, http/1.1)" in described
    assert f"http://127.0.0.1:{h2c_port}/ (h2c, http/1.1)" in described
    assert refused(port) and refused(h2c_port)
    assert "GET / HTTP/2.0\" 200" in (tmp_path / "access.log").read_text()


def test_stop_closes_the_listeners(server, verify):
    with httpx.Client(http2=True, verify=verify) as client:
        assert client.get(server.url + "/").status_code == 200
    assert not refused(server.port) and not refused(server.h2c_port)
    server.call(server.server.stop(1))
    assert refused(server.port)
    assert refused(server.h2c_port)


def stop_in_background(srv, timeout: float) -> tuple[threading.Thread, list[float]]:
    """Call `srv.server.stop(timeout)` from another thread (the test thread keeps reading); the
    list gets how long it took."""
    took: list[float] = []

    def stop() -> None:
        started = time.monotonic()
        srv.call(srv.server.stop(timeout), timeout=timeout + 10)
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread, took


def test_stop_closes_idle_connections_with_goaway(server, ca_file):
    with H2Client.tls(server.port, ca_file) as client:
        sid = client.request("/")
        client.receive_until(lambda: client.responses[sid].done)
        stopper, took = stop_in_background(server, 10)
        client.wait_closed(5)
    stopper.join(15)
    assert took and took[0] < 2  # no stream to wait for: PING ACK, final GOAWAY, close
    assert [(g.last_stream_id, g.error_code) for g in client.goaways] == [
        (2**31 - 1, ErrorCodes.NO_ERROR), (sid, ErrorCodes.NO_ERROR)]


# -- graceful shutdown in process ---------------------------------------------------------------------------


def test_graceful_stop_finishes_the_download_with_two_goaways(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    settings = {SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}
    with H2Client.tls(srv.port, ca_file, settings=settings, flow_control="manual",
                      connection_window=1 << 30) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received[sid] == 1 << 20)  # stalled at 1 MiB

        stopper, took = stop_in_background(srv, 10)
        client.receive_until(lambda: len(client.goaways) == 2, timeout=5)
        first, final = client.goaways
        # RFC 9113 6.8: first "no new streams soon" with the largest id, a PING, then the real last id.
        assert (first.last_stream_id, first.error_code) == (2**31 - 1, ErrorCodes.NO_ERROR)
        assert (final.last_stream_id, final.error_code) == (sid, ErrorCodes.NO_ERROR)
        kinds = [(w.type, getattr(w.frame, "last_stream_id", None)) for w in client.frames]
        first_at = kinds.index(("GOAWAY", 2**31 - 1))
        ping_at = next(i for i, w in enumerate(client.frames)
                       if isinstance(w.frame, PingFrame) and "ACK" not in w.frame.flags)
        assert first_at < ping_at < kinds.index(("GOAWAY", sid))
        assert refused(srv.port)  # the listeners are closed at once

        # A stream opened after the final GOAWAY is refused; the one in flight carries on.
        late = client.request("/static/css/site.css")
        client.receive_until(lambda: client.responses[late].done)
        assert client.responses[late].reset_code == ErrorCodes.REFUSED_STREAM
        assert client.responses[late].status is None
        assert stopper.is_alive()  # stop() waits for the download

        client.grant(sid, big_file.size)
        client.receive_until(lambda: client.responses[sid].done, timeout=30)
        response = client.responses[sid]
        assert response.ended and response.reset_code is None
        assert response.sha256() == big_file.sha256
        client.wait_closed(5)  # the server closes once the last stream is answered
        assert all(g.error_code == ErrorCodes.NO_ERROR for g in client.goaways)
    stopper.join(15)
    assert took and took[0] < 9  # drained, not timed out


def test_graceful_stop_cuts_off_after_the_timeout(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, flow_control="manual") as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received[sid] == 65535)  # then never grant more
        started = time.monotonic()
        srv.call(srv.server.stop(0.5))
        elapsed = time.monotonic() - started
        client.wait_closed(5)
    assert 0.4 < elapsed < 2
    assert not client.responses[sid].done  # the response was cut short
    assert client.goaways[0].last_stream_id == 2**31 - 1


# -- signals ------------------------------------------------------------------------------------------


def stalled_client(proc: ServerProcess, ca_file: str, path: str) -> H2Client:
    """A client whose download stops after the first window: it never acknowledges any data."""
    client = H2Client.tls(proc.port, ca_file, flow_control="manual")
    sid = client.request(path, keep_body=False)
    client.receive_until(lambda: client.stream_received[sid] == 65535)
    return client


def test_sigterm_lets_a_download_finish_then_exits_0(spawn_server, big_file, ca_file, tmp_path):
    proc = spawn_server("--templates", str(big_file.templates), "--static", str(big_file.static))
    sigterm_during_download(proc, ca_file, big_file, tmp_path / "download.bin")
    log = "".join(proc.stderr_lines)
    assert "SIGTERM: stopping" in log
    assert "stopped" in log


def test_sigterm_with_a_stalled_client_exits_after_the_graceful_timeout(spawn_server, big_file,
                                                                         ca_file):
    proc = spawn_server("--templates", str(big_file.templates), "--static", str(big_file.static),
                        "--graceful-timeout", "1")
    with stalled_client(proc, ca_file, big_file.url_path):
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(10)
        elapsed = time.monotonic() - started
    assert code == 0
    assert 0.9 < elapsed < 3.5


def test_second_sigint_exits_at_once(spawn_server, big_file, ca_file):
    proc = spawn_server("--templates", str(big_file.templates), "--static", str(big_file.static),
                        "--graceful-timeout", "30")
    with stalled_client(proc, ca_file, big_file.url_path) as client:
        proc.proc.send_signal(signal.SIGINT)
        client.receive_until(lambda: bool(client.goaways))  # the graceful stop has begun
        time.sleep(0.3)
        assert proc.proc.poll() is None  # waiting for the stalled download
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGINT)
        code = proc.proc.wait(10)
        elapsed = time.monotonic() - started
        client.wait_closed(5)
    assert code == 0
    assert elapsed < 2
    assert "second SIGINT: closing connections now" in "".join(proc.stderr_lines)


def test_sigterm_right_after_startup_is_graceful(spawn_server):
    proc = spawn_server()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(10) == 0
    assert "Traceback" not in "".join(proc.stderr_lines)


# -- ALPN -----------------------------------------------------------------------------------------------


def test_alpn_http11_only_refuses_h2(make_server, ca_file, verify):
    srv = make_server(alpn=["http/1.1"])
    with open_tls(srv.port, ca_file, alpn=["h2"]) as sock:
        assert sock.selected_alpn_protocol() is None  # no overlap: no protocol chosen
        sock.sendall(H2_PREFACE)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 405 ")  # it is treated as an HTTP/1.1 "PRI" request
    with httpx.Client(http2=True, verify=verify) as client:
        r = client.get(srv.url + "/")
    assert (r.http_version, r.status_code) == ("HTTP/1.1", 200)


def test_alpn_h2_only_speaks_h2_to_every_client(make_server, ca_file, verify):
    srv = make_server(alpn=["h2"])
    with httpx.Client(http2=True, verify=verify) as client:
        r = client.get(srv.url + "/")
    assert (r.http_version, r.status_code) == ("HTTP/2", 200)
    # A client offering only http/1.1 gets no ALPN answer and then HTTP/2 framing it cannot use.
    for alpn in (["http/1.1"], None):
        with open_tls(srv.port, ca_file, alpn=alpn) as sock:
            assert sock.selected_alpn_protocol() is None
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        assert received[3:5] == b"\x04\x00"  # a SETTINGS frame, the server's h2 preface ...
        assert b"HTTP/1.1" not in received   # ... and never an HTTP/1.1 response; then it closes
    with httpx.Client(http2=False, verify=verify) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(srv.url + "/")
    # A client with no ALPN that speaks HTTP/2 directly is served.
    with H2Client(open_tls(srv.port, ca_file, alpn=None), authority="localhost", scheme="https") as h2:
        sid = h2.request("/")
        h2.receive_until(lambda: h2.responses[sid].done)
        assert h2.responses[sid].status == 200


# -- TLS (RFC 9113 section 9.2) --------------------------------------------------------------------------


def handshake(port: int, ca_file: str, *, version: ssl.TLSVersion | None = None,
              ciphers: str | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
            ctx.minimum_version = version
            ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_hello_that_comes_late_still_gets_tls(make_server, spawn_server, ca_file, loop):
    """The listener waits for the client's first byte before the TLS handshake (listener.py): a
    client that connects and says nothing for a while, then sends its ClientHello, is served, on
    either loop (in-process servers run on asyncio, the CLI on uvloop)."""
    port = make_server().port if loop == "asyncio" else spawn_server("--loop", "uvloop").port
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    time.sleep(0.3)  # the server has accepted and found nothing to read yet
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2"])
    with H2Client(ctx.wrap_socket(raw, server_hostname="localhost"), authority="localhost",
                  scheme="https") as client:
        sid = client.request("/about")
        client.receive_until(lambda: client.responses[sid].done)
        assert client.responses[sid].status == 200
        assert bytes(client.responses[sid].body) == (TEMPLATES / "about.html").read_bytes()


def test_tls11_is_refused(server, ca_file):
    # SECLEVEL=0 lets this OpenSSL build a TLS 1.1 ClientHello at all; the server must refuse it.
    with pytest.raises(ssl.SSLError):
        handshake(server.port, ca_file, version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    p = subprocess.run(["openssl", "s_client", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0",
                        "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost"],
                       input="", capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "Cipher    : 0000" in p.stdout  # no session was established


@pytest.mark.parametrize("cipher", [
    "AES128-SHA256",              # no ephemeral key exchange
    "AES128-GCM-SHA256",          # AEAD but static RSA key exchange
    "ECDHE-ECDSA-AES128-SHA",     # ephemeral but CBC, not AEAD
    "ECDHE-ECDSA-AES256-SHA384",  # ephemeral but CBC, not AEAD
])
def test_tls12_blocklisted_ciphers_are_refused(server, ca_file, cipher):
    with pytest.raises(ssl.SSLError):
        handshake(server.port, ca_file, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_tls12_ecdhe_aead_works(server, ca_file, cipher):
    with handshake(server.port, ca_file, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher) as sock:
        assert sock.version() == "TLSv1.2"
        assert sock.cipher()[0] == cipher
        assert sock.selected_alpn_protocol() == "h2"
        assert sock.compression() is None


@pytest.mark.parametrize("ciphers", [
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305",
])
def test_tls12_client_cipher_preference_is_honoured(server, ca_file, ciphers):
    """Every allowed suite is ECDHE with an AEAD: the client picks the one fastest on its hardware
    (ChaCha20 without AES instructions), as Mozilla's TLS guidelines advise."""
    with handshake(server.port, ca_file, version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers) as sock:
        assert sock.cipher()[0] == ciphers.split(":")[0]


@pytest.mark.parametrize("suites", [
    "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
])
def test_tls13_client_suite_preference_is_honoured(server, ca_file, suites):
    p = subprocess.run(["openssl", "s_client", "-tls1_3", "-ciphersuites", suites, "-CAfile", ca_file,
                        "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost"],
                       input="", capture_output=True, text=True, timeout=10)
    assert re.search(r"Cipher is (\S+)", p.stdout).group(1) == suites.split(":")[0]


def test_tls13_works_without_compression(server, ca_file):
    with handshake(server.port, ca_file, version=ssl.TLSVersion.TLSv1_3) as sock:
        assert sock.version() == "TLSv1.3"
        assert sock.selected_alpn_protocol() == "h2"
        assert sock.compression() is None
        client = H2Client(sock, authority=f"localhost:{server.port}", scheme="https")
        sid = client.request("/")
        client.receive_until(lambda: client.responses[sid].done)
        assert client.responses[sid].status == 200
