"""HTTP/1.1 (h2serve/http1.py) on real TLS sockets, with h11 as the client's parser or raw bytes."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import h11
import httpx
import pytest
from conftest import STATIC, TEMPLATES, RunningServer, open_tls

CSS = (STATIC / "css/site.css").read_bytes()
JS = (STATIC / "js/site.js").read_bytes()
ABOUT = (TEMPLATES / "about.html").read_bytes()
INDEX = (TEMPLATES / "index.html").read_bytes()


class H1Client:
    """A TLS connection (ALPN http/1.1 unless told) whose responses h11 parses.

    Requests go out through h11 (`request`) or as raw bytes written by the test, after which
    `expect()` tells h11 what was asked so it can frame the answer (HEAD has no body, etc.).
    """

    def __init__(self, port: int, ca_file: str, alpn: list[str] | None = ["http/1.1"]) -> None:  # noqa: B006
        self.sock = open_tls(port, ca_file, alpn=alpn)
        self.conn = h11.Connection(h11.CLIENT)

    def __enter__(self) -> H1Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _announce(self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]],
                  version: bytes) -> bytes:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        data = self.conn.send(h11.Request(method=method, target=target, http_version=version,
                                          headers=[(b"host", b"localhost"), *headers]))
        return data + self.conn.send(h11.EndOfMessage())

    def request(self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
                ) -> tuple[h11.Response, bytes]:
        self.sock.sendall(self._announce(method, target, headers, b"1.1"))
        return self.read_response()

    def expect(self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]] = (),
               version: bytes = b"1.1") -> tuple[h11.Response, bytes]:
        """Read the response to a request the test already wrote raw."""
        self._announce(method, target, headers, version)
        return self.read_response()

    def read_response(self) -> tuple[h11.Response, bytes]:
        response = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("server closed the connection before answering")

    def assert_closed_by_server(self, timeout: float = 5) -> None:
        assert_closed(self.sock, timeout)


def assert_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    """The server closes the connection (recv returns b"") within `timeout`; returns what came first."""
    sock.settimeout(timeout)
    extra = bytearray()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return bytes(extra)
            extra += data
    except TimeoutError:
        raise AssertionError(f"server kept the connection open (had sent {bytes(extra[:80])!r})") from None


def header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


def raw_exchange(port: int, ca_file: str, data: bytes) -> bytes:
    """Write `data` verbatim over TLS (http/1.1) and return all the server sends until it closes."""
    with open_tls(port, ca_file, alpn=["http/1.1"]) as sock:
        sock.sendall(data)
        return assert_closed(sock)


# -- connection management ---------------------------------------------------------------------------

def test_keep_alive_serves_requests_in_turn(server: RunningServer, ca_file: str) -> None:
    """Three requests one after another on one connection are all answered on it."""
    with H1Client(server.port, ca_file) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        for target, body in ((b"/", INDEX), (b"/static/css/site.css", CSS), (b"/about", ABOUT)):
            response, got = c.request(b"GET", target)
            assert response.status_code == 200, target
            assert response.http_version == b"1.1"
            assert got == body
            assert header(response, b"connection") is None  # keep-alive is the default


def test_pipelined_requests_answered_in_order(server: RunningServer, ca_file: str) -> None:
    """Three requests written in one sendall come back in order, each with its own body."""
    requests = [(b"/static/css/site.css", CSS, b"text/css; charset=utf-8"),
                (b"/static/js/site.js", JS, b"text/javascript; charset=utf-8"),
                (b"/about", ABOUT, b"text/html; charset=utf-8")]
    with H1Client(server.port, ca_file) as c:
        c.sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % t for t, _, _ in requests))
        for target, body, ctype in requests:
            response, got = c.expect(b"GET", target)
            assert response.status_code == 200
            assert header(response, b"content-type") == ctype
            assert got == body, target


def test_pipelined_head_and_404_keep_framing(server: RunningServer, ca_file: str) -> None:
    """Pipelined HEAD, 404 and 405 answers keep the stream framed: the GET after them still parses."""
    with H1Client(server.port, ca_file) as c:
        c.sock.sendall(b"HEAD /static/css/site.css HTTP/1.1\r\nHost: localhost\r\n\r\n"
                       b"GET /missing HTTP/1.1\r\nHost: localhost\r\n\r\n"
                       b"POST /about HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
                       b"GET /static/js/site.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, body = c.expect(b"HEAD", b"/static/css/site.css")
        assert (head.status_code, body) == (200, b"")
        assert header(head, b"content-length") == str(len(CSS)).encode()
        missing, body = c.expect(b"GET", b"/missing")
        assert missing.status_code == 404
        assert body == (TEMPLATES / "404.html").read_bytes()
        post, _ = c.expect(b"POST", b"/about")  # (h11 here only frames the answer)
        assert post.status_code == 405
        js, body = c.expect(b"GET", b"/static/js/site.js")
        assert (js.status_code, body) == (200, JS)


def test_connection_close_request(server: RunningServer, ca_file: str) -> None:
    """`Connection: close` is answered with `connection: close`, then the server closes;
    a request pipelined after it is not answered."""
    with H1Client(server.port, ca_file) as c:
        c.sock.sendall(b"GET /about HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                       b"GET /static/js/site.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        response, body = c.expect(b"GET", b"/about", [(b"connection", b"close")])
        assert response.status_code == 200
        assert body == ABOUT
        assert header(response, b"connection") == b"close"
        assert c.conn.their_state is h11.MUST_CLOSE
        leftover = assert_closed(c.sock)
        assert b"HTTP/1.1" not in leftover  # nothing answered the second request


def test_http10_request_answered_then_closed(server: RunningServer, ca_file: str) -> None:
    """An HTTP/1.0 request without keep-alive is answered in full, then the connection is closed."""
    data = raw_exchange(server.port, ca_file, b"GET /about HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 200 ", head)
    assert re.search(rb"(?im)^connection: *close\r?$", head)
    assert re.search(rb"(?im)^content-length: *%d\r?$" % len(ABOUT), head)
    assert body == ABOUT


def test_repeated_answers_reuse_a_head_and_keep_their_own_framing(server: RunningServer,
                                                                    ca_file: str) -> None:
    """An answer whose head was validated before (http1.py `_response_head`: same status and
    headers, within the same second of Date) reuses h11's event; h11 still frames each response
    for its own request: HEAD has no body, HTTP/1.0 without keep-alive is closed after."""
    with H1Client(server.port, ca_file) as c:
        first, body1 = c.request(b"GET", b"/static/css/site.css")
        head, head_body = c.request(b"HEAD", b"/static/css/site.css")
        again, body2 = c.request(b"GET", b"/static/css/site.css")
    assert body1 == body2 == CSS and head_body == b""
    assert first.status_code == head.status_code == again.status_code == 200
    assert header(head, b"content-length") == str(len(CSS)).encode()
    assert [h for h in again.headers if h[0] != b"date"] == [h for h in first.headers if h[0] != b"date"]
    data = raw_exchange(server.port, ca_file, b"GET /static/css/site.css HTTP/1.0\r\n\r\n")
    raw_head, _, raw_body = data.partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^connection: *close\r?$", raw_head)
    assert raw_body == CSS  # and then the server closed (raw_exchange reads until it does)


def test_response_head_cache_is_bounded_and_still_validates() -> None:
    from h2serve.proto import h1engine as http1

    events = [http1._response_head(200, [(b"content-length", b"0"), (b"x-n", str(i).encode())])
              for i in range(3 * http1.HEADS_CACHED)]
    assert len(http1._HEADS) <= http1.HEADS_CACHED
    assert [e.headers[1][1] for e in events[:3]] == [b"0", b"1", b"2"]
    assert http1._response_head(200, [(b"content-length", b"0"), (b"x-n", b"5")]).reason == b"OK"
    with pytest.raises(h11.LocalProtocolError):  # a head not seen before is validated by h11
        http1._response_head(200, [(b"x-bad", b"split\r\nheader")])


# -- malformed requests ---------------------------------------------------------------------------------

MALFORMED = {
    "garbage request line": (b"GARBAGE\r\n\r\n", 400),
    "request line without version": (b"GET /\r\n\r\n", 400),
    "header line without colon": (b"GET / HTTP/1.1\r\nHost: localhost\r\nNoColonHere\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n", 400),
    "invalid Content-Length": (b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n", 400),
    "negative Content-Length": (b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", 400),
    "conflicting Content-Lengths": (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "Content-Length and Transfer-Encoding": (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n", 400),
    "missing Host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "unsupported Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_rejected_and_closed(server: RunningServer, ca_file: str, name: str) -> None:
    """A malformed request gets an error status with `connection: close`, then the socket closes,
    and a request smuggled after it is never answered."""
    payload, status = MALFORMED[name]
    smuggled = b"GET /static/js/site.js HTTP/1.1\r\nHost: localhost\r\n\r\n"
    data = raw_exchange(server.port, ca_file, payload + smuggled)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:100]
    head, _, body = data.partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^connection: *close\r?$", head)
    assert b"<h1>%d " % status in body
    assert data.count(b"HTTP/1.1 ") == 1, "a second response followed the error"
    assert JS not in data


def test_bad_chunked_body_closes_connection(server: RunningServer, ca_file: str) -> None:
    """A request whose chunked body is malformed ends the connection: the answer already sent for
    its head (413: a GET takes no body) stands, and a request smuggled inside or after the body is
    never answered."""
    data = raw_exchange(server.port, ca_file,
                        b"GET /about HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"zz\r\nGET /static/js/site.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert data.count(b"HTTP/1.1 ") == 1
    assert data.startswith(b"HTTP/1.1 413 ")
    assert JS not in data


def test_oversized_headers_431(make_server: Callable[..., RunningServer], ca_file: str) -> None:
    """A request head over max_header_list_size is refused with 431 and the connection closed,
    whether it arrives in one piece or in several."""
    server = make_server(max_header_list_size=2048)
    big = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
    data = raw_exchange(server.port, ca_file, big)
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    assert INDEX not in data
    with open_tls(server.port, ca_file, alpn=["http/1.1"]) as sock:
        for i in range(0, len(big), 512):
            sock.sendall(big[i:i + 512])
            time.sleep(0.005)
        data = assert_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    # Just under the limit is fine.
    ok = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 1500 + b"\r\nConnection: close\r\n\r\n"
    data = raw_exchange(server.port, ca_file, ok)
    assert data.startswith(b"HTTP/1.1 200 ")


def test_many_headers_over_limit_431(make_server: Callable[..., RunningServer], ca_file: str) -> None:
    """Many small headers adding up past the limit count too."""
    server = make_server(max_header_list_size=2048)
    fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(100))
    data = raw_exchange(server.port, ca_file, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n")
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]


def test_pipelined_input_is_bounded_while_busy(make_server: Callable[..., RunningServer], site: Path,
                                               ca_file: str) -> None:
    """While a large response is in flight to a client that does not read, the server stops reading
    that connection instead of buffering whatever the client keeps pipelining."""
    (site / "static" / "big.bin").write_bytes(b"\0" * (16 * 1024 * 1024))
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    request = b"GET /static/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n"
    filler = request * (65536 // len(request))
    limit = 64 * 1024 * 1024
    with open_tls(server.port, ca_file, alpn=["http/1.1"]) as sock:
        sock.sendall(request)
        sock.settimeout(0.3)
        sent = 0
        try:
            while sent < limit:
                sent += sock.send(filler)
        except (TimeoutError, ssl.SSLWantWriteError):
            pass
    assert sent < 32 * 1024 * 1024, f"server accepted {sent >> 20} MiB of pipelined requests"


def test_reading_resumes_after_pipelined_backlog(make_server: Callable[..., RunningServer], site: Path,
                                                 ca_file: str) -> None:
    """Requests pipelined behind a large response, far more than the input the server holds and
    the kernel buffers, are all answered in order once the client reads: reading resumes after
    it was paused."""
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: still in flight while the backlog arrives
    (site / "static" / "big.bin").write_bytes(big)
    server = make_server(templates=str(site / "templates"), static=str(site / "static"),
                         max_header_list_size=65536)
    pad = [(b"x-pad", b"p" * 30000)]
    n = 400  # about 12 MiB of requests behind the big response: more than kernel buffers hold
    data = b"GET /static/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n" + b"".join(
        b"GET /static/js/site.js?%d HTTP/1.1\r\nHost: localhost\r\nX-Pad: %s\r\n\r\n" % (i, pad[0][1])
        for i in range(n))
    with H1Client(server.port, ca_file) as c:
        c.sock.setblocking(False)
        pos = 0
        # First write without reading, as far as the server takes it (it stops reading: the big
        # response is in flight), then write the rest while reading, in one thread, non-blocking.
        for reading in (False, True):
            received = bytearray()
            while pos < len(data):
                readable, writable, _ = select.select([c.sock] if reading else [], [c.sock], [],
                                                      5 if reading else 0.3)
                if not reading and not writable:
                    break
                assert readable or writable, "stalled"
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    if writable:
                        pos += c.sock.send(data[pos:pos + 16384])
                    if readable:
                        chunk = c.sock.recv(1 << 20)
                        assert chunk, f"EOF while writing, at byte {pos}"
                        received += chunk
        c.sock.settimeout(10)
        if received:  # (h11 takes b"" for end of input)
            c.conn.receive_data(bytes(received))
        response, body = c.expect(b"GET", b"/static/big.bin")
        assert response.status_code == 200 and body == big
        for i in range(n):
            response, body = c.expect(b"GET", b"/static/js/site.js?%d" % i, pad)
            assert response.status_code == 200 and body == JS, i


# -- protocol selection ------------------------------------------------------------------------------------

def test_tls_without_alpn_gets_http11(server: RunningServer, ca_file: str) -> None:
    """A TLS client that offers no ALPN is served HTTP/1.1."""
    with H1Client(server.port, ca_file, alpn=None) as c:
        assert c.sock.selected_alpn_protocol() is None
        response, body = c.request(b"GET", b"/about")
        assert response.status_code == 200
        assert response.http_version == b"1.1"
        assert body == ABOUT


def test_http11_on_h2c_port(server: RunningServer) -> None:
    """The cleartext port answers plain HTTP/1.1 (httpx and curl) when no h2 preface comes."""
    with httpx.Client(http2=False) as client:
        r = client.get(server.h2c_url + "/static/css/site.css")
        assert r.http_version == "HTTP/1.1"
        assert r.status_code == 200
        assert r.content == CSS
    out = subprocess.run(
        ["curl", "-sS", "--http1.1", "-o", "-", "-w", "\n%{http_code} %{http_version}",
         server.h2c_url + "/about"], capture_output=True, timeout=10, check=True).stdout
    body, _, tail = out.rpartition(b"\n")
    assert tail == b"200 1.1"
    assert body == ABOUT


def test_half_closed_client_gets_whole_response_on_h2c(make_server: Callable[..., RunningServer],
                                                        site: Path) -> None:
    """On the cleartext port a client may shut down its sending side after the request: a large
    response is still sent in full, then the server closes."""
    big = bytes(range(256)) * (8 * 1024)  # 2 MiB, pumped over several writes
    (site / "static" / "big.bin").write_bytes(big)
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    with socket.create_connection(("127.0.0.1", server.h2c_port), timeout=10) as sock:
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = assert_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == big


def test_curl_http11_over_tls(server: RunningServer, ca_file: str) -> None:
    """curl --http1.1, verifying against the test CA, gets HTTP/1.1 and the page."""
    out = subprocess.run(
        ["curl", "-sS", "--http1.1", "--cacert", ca_file, "-o", "-", "-w", "\n%{http_version}",
         server.url + "/about"], capture_output=True, timeout=10, check=True).stdout
    body, _, version = out.rpartition(b"\n")
    assert version == b"1.1"
    assert body == ABOUT


# -- access log --------------------------------------------------------------------------------------------

def read_log_until(path: Path, pattern: str, timeout: float = 2.0) -> str:
    """Poll the access log until a line matches `pattern` (it is flushed on the next loop turn)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if re.search(pattern, text, re.M):
            return text
        time.sleep(0.02)
    raise AssertionError(f"no line matching {pattern!r} in the access log:\n{text}")


def test_access_log_combined_format(make_server: Callable[..., RunningServer], tmp_path: Path,
                                    verify: ssl.SSLContext) -> None:
    """A request is logged in combined format with the protocol, status, bytes, referer and agent."""
    log = tmp_path / "h1-access.log"
    server = make_server(access_log=str(log))
    with httpx.Client(http2=False, verify=verify,
                      headers={"user-agent": "h1-test/1.0", "accept-encoding": "identity"}) as client:
        assert client.get(server.url + "/about").status_code == 200
        assert client.get(server.url + "/missing", headers={"referer": "https://x.test/a"}).status_code == 404
    size_404 = len((TEMPLATES / "404.html").read_bytes())
    text = read_log_until(log, r"GET /missing")
    date = r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"
    assert re.search(rf'^127\.0\.0\.1 - - {date} "GET /about HTTP/1\.1" 200 {len(ABOUT)} "-" "h1-test/1\.0"$',
                     text, re.M), text
    assert re.search(rf'^127\.0\.0\.1 - - {date} "GET /missing HTTP/1\.1" 404 {size_404} '
                     r'"https://x\.test/a" "h1-test/1\.0"$', text, re.M), text


def test_access_log_bad_request_logged(make_server: Callable[..., RunningServer], tmp_path: Path,
                                       ca_file: str) -> None:
    """A malformed request shows up in the access log with its error status."""
    log = tmp_path / "bad-access.log"
    server = make_server(access_log=str(log))
    raw_exchange(server.port, ca_file, b"GARBAGE\r\n\r\n")
    read_log_until(log, r'^127\.0\.0\.1 - - \[[^]]+\] "- - HTTP/1\.1" 400 \d+ "-" "-"$')
