"""What gunicorn cannot send, from a scripted HTTP/1.1 upstream (h11 over a real socket, TCP or
Unix): its own 103 passed on over HTTP/2, trailers, hop-by-hop response fields, an answer broken
off midway, a malformed one, and a kept-alive connection reused."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import h11
import httpx
import pytest
from conftest import RunningServer
from h2.settings import SettingCodes
from h2client import H2Client

from h2serve.upstream.proxy import MAX_INTERIM

Script = Callable[[h11.Connection, h11.Request, socket.socket], None]


class ScriptedUpstream:
    """Accepts connections and answers each request with `script(conn, request, sock)`."""

    def __init__(self, script: Script, unix: Path | None = None) -> None:
        self.script = script
        if unix is not None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(str(unix))
            self.url = f"unix:{unix}"
        else:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen(16)
        self.connections = 0
        self.requests: list[h11.Request] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        with sock:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = sock.recv(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    self.requests.append(event)
                    while not isinstance(conn.next_event(), h11.EndOfMessage):
                        pass
                    self.script(conn, event, sock)
                    if conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []

    def make(script: Script, unix: Path | None = None) -> ScriptedUpstream:
        made.append(ScriptedUpstream(script, unix))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


def send(conn: h11.Connection, sock: socket.socket, *events: h11.Event) -> None:
    sock.sendall(b"".join(conn.send(e) or b"" for e in events))


def with_hints_and_trailers(conn: h11.Connection, request: h11.Request, sock: socket.socket) -> None:
    hint = [(b"link", b"</early.css>; rel=preload; as=style")]
    head = [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked"),
            (b"connection", b"x-hop"), (b"x-hop", b"1"), (b"x-app", b"yes")]
    send(conn, sock,
         h11.InformationalResponse(status_code=103, headers=hint),
         h11.Response(status_code=200, headers=head),
         h11.Data(data=b"hello "), h11.Data(data=b"world"),
         h11.EndOfMessage(headers=[(b"x-checksum", b"abc123")]))


@pytest.fixture
def h2server(make_server: Callable[..., RunningServer], tmp_path: Path) -> Callable[[str], RunningServer]:
    root = tmp_path / "root"
    root.mkdir()
    return lambda url: make_server(root=str(root), upstream=url)


def test_upstream_103_and_trailers_reach_an_h2_client_hop_by_hop_fields_do_not(
        scripted, h2server, ca_file: str) -> None:
    server = h2server(scripted(with_hints_and_trailers).url)
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as c:
        sid = c.request("/page")
        c.receive_until(lambda: c.responses[sid].done)
    answer = c.responses[sid]
    assert answer.informational == [[(b":status", b"103"), (b"link", b"</early.css>; rel=preload; as=style")]]
    assert answer.status == 200 and bytes(answer.body) == b"hello world"
    assert answer.header(b"x-app") == b"yes" and answer.header(b"x-hop") is None
    assert answer.header(b"connection") is None and answer.header(b"transfer-encoding") is None
    assert answer.trailers == [(b"x-checksum", b"abc123")]


def test_an_endless_run_of_103s_reaches_the_client_only_up_to_max_interim(
        scripted, h2server, ca_file: str) -> None:
    """Interim HEADERS bypass the body's back-pressure: the application's 103s beyond
    MAX_INTERIM are read and dropped, not written out to the client."""
    def many_hints(conn: h11.Connection, request: h11.Request, sock: socket.socket) -> None:
        hints = [h11.InformationalResponse(status_code=103,
                                           headers=[(b"link", b"</%d.css>; rel=preload" % i)])
                 for i in range(3 * MAX_INTERIM)]
        send(conn, sock, *hints, h11.Response(status_code=200, headers=[(b"content-length", b"2")]),
             h11.Data(data=b"ok"), h11.EndOfMessage())

    server = h2server(scripted(many_hints).url)
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as c:
        sid = c.request("/page")
        c.receive_until(lambda: c.responses[sid].done)
    answer = c.responses[sid]
    assert answer.status == 200 and bytes(answer.body) == b"ok"
    assert [dict(block)[b"link"] for block in answer.informational] == [
        b"</%d.css>; rel=preload" % i for i in range(MAX_INTERIM)]


def test_trailers_reach_an_http11_client_in_the_chunked_answer(scripted, h2server, ca_file: str) -> None:
    from test_upstream_proxy import raw_h11_get

    server = h2server(scripted(with_hints_and_trailers).url)
    raw = raw_h11_get(server.port, ca_file,
                      b"GET /page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert b"HTTP/1.1 103" not in raw  # the app's own 103 goes to HTTP/2 clients only
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    events = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(b"")
            continue
        events.append(event)
        if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    assert isinstance(events[0], h11.Response) and events[0].status_code == 200
    assert b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data)) == b"hello world"
    assert list(events[-1].headers) == [(b"x-checksum", b"abc123")]


def test_keep_alive_connection_is_reused_over_a_unix_socket(scripted, h2server, tmp_path: Path,
                                                            verify) -> None:
    def ok(conn: h11.Connection, request: h11.Request, sock: socket.socket) -> None:
        send(conn, sock, h11.Response(status_code=200, headers=[(b"content-length", b"2")]),
             h11.Data(data=b"ok"), h11.EndOfMessage())

    upstream = scripted(ok, unix=tmp_path / "app.sock")
    server = h2server(upstream.url)
    with httpx.Client(http2=True, verify=verify) as client:
        for _ in range(5):
            assert client.get(server.url + "/x").text == "ok"
    assert upstream.connections == 1 and len(upstream.requests) == 5


def test_answer_broken_off_midway_cuts_the_client_answer_off(scripted, h2server, ca_file: str) -> None:
    def broken(conn: h11.Connection, request: h11.Request, sock: socket.socket) -> None:
        send(conn, sock, h11.Response(status_code=200, headers=[(b"content-length", b"100")]),
             h11.Data(data=b"only part"))
        sock.shutdown(socket.SHUT_RDWR)

    server = h2server(scripted(broken).url)
    with H2Client.tls(server.port, ca_file) as c:
        sid = c.request("/page")
        c.receive_until(lambda: c.responses[sid].done)
        assert c.responses[sid].status == 200 and c.responses[sid].reset_code is not None
        sid = c.request("/again")  # the connection goes on
        c.receive_until(lambda: c.responses[sid].done)
        assert c.responses[sid].status == 200 and c.responses[sid].reset_code is not None


def test_malformed_answer_gives_502(scripted, h2server, verify) -> None:
    def garbage(conn: h11.Connection, request: h11.Request, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 banana\r\n\r\n")
        sock.shutdown(socket.SHUT_RDWR)

    server = h2server(scripted(garbage).url)
    with httpx.Client(http2=True, verify=verify) as client:
        assert client.get(server.url + "/page").status_code == 502


def test_pool_is_bounded_and_idle_connections_expire(scripted, make_server, tmp_path: Path,
                                                     verify) -> None:
    """--upstream-connections 2: four slow requests at once use two connections, the others
    wait; --upstream-idle-timeout closes them when idle, and the next request connects anew."""
    import time as _time

    active = [0, 0]  # now, most at once
    lock = threading.Lock()

    def slow(conn: h11.Connection, request: h11.Request, sock: socket.socket) -> None:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        _time.sleep(0.3)
        with lock:
            active[0] -= 1
        send(conn, sock, h11.Response(status_code=200, headers=[(b"content-length", b"2")]),
             h11.Data(data=b"ok"), h11.EndOfMessage())

    upstream = scripted(slow)
    root = tmp_path / "root"
    root.mkdir()
    server = make_server(root=str(root), upstream=upstream.url, upstream_connections=2,
                         upstream_idle_timeout=0.5)
    results: list[int] = []

    def fetch() -> None:
        with httpx.Client(http2=True, verify=verify) as client:
            results.append(client.get(server.url + "/slow").status_code)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4 and active[1] == 2 and upstream.connections == 2
    _time.sleep(1.6)  # past the idle timeout (and the sweep after it)
    fetch()
    assert upstream.connections == 3


def test_client_reset_abandons_the_call_and_frees_its_connection(scripted, make_server,
                                                                 tmp_path: Path, ca_file: str) -> None:
    """A stream reset while the application thinks: its connection is closed, not kept (its
    answer would come to nobody), and the pool's only slot serves the next request."""
    def answer(conn: h11.Connection, request: h11.Request, sock: socket.socket) -> None:
        if request.target == b"/stuck":
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                sock.recv(1)  # until h2serve closes the connection
            return
        send(conn, sock, h11.Response(status_code=200, headers=[(b"content-length", b"2")]),
             h11.Data(data=b"ok"), h11.EndOfMessage())

    upstream = scripted(answer)
    root = tmp_path / "root"
    root.mkdir()
    server = make_server(root=str(root), upstream=upstream.url, upstream_connections=1)
    with H2Client.tls(server.port, ca_file) as c:
        stuck = c.request("/stuck")
        c.receive_for(0.3)
        c.reset(stuck)
        sid = c.request("/next")
        c.receive_until(lambda: c.responses[sid].done)
        assert c.responses[sid].status == 200 and bytes(c.responses[sid].body) == b"ok"
    assert upstream.connections == 2


def test_connect_that_takes_too_long_gives_504(make_server, tmp_path: Path, verify) -> None:
    """An application whose accept queue is full: SYNs go unanswered, so connecting hangs, and
    the client gets a 504 after --upstream-connect-timeout."""
    import time as _time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(2):  # the queue takes one; the second connect times out: the queue is full
        filler = socket.socket()
        filler.settimeout(0.3)
        with contextlib.suppress(OSError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    root = tmp_path / "root"
    root.mkdir()
    server = make_server(root=str(root), upstream=f"http://127.0.0.1:{port}",
                         upstream_connect_timeout=0.5)
    try:
        with httpx.Client(http2=True, verify=verify) as client:
            started = _time.monotonic()
            assert client.get(server.url + "/page").status_code == 504
            assert _time.monotonic() - started >= 0.5
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
