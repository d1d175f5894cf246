"""HTTP/2 on the wire: real clients, advertised SETTINGS, concurrency, flow control, resets and
connection errors, h2c, and a client's GOAWAY. Frame-level claims use the raw client in h2client.py."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from attack import frame_bytes
from conftest import STATIC, TEMPLATES, open_tls
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, PingReceived, ResponseReceived, StreamEnded
from h2.settings import SettingCodes, Settings
from h2client import H2Client
from hpack import Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2serve.proto.compat import ServerConnection
from h2serve.proto.hpackcache import CachedEncoder

CURL_TIMEOUT = 30
DATA, WINDOW_UPDATE, END_STREAM_FLAG = 0x0, 0x8, 0x1  # frame types and flag (RFC 9113 section 6)


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CURL_TIMEOUT)


def static_files() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*") if p.is_file())


def connection_error(client: H2Client, timeout: float = 5) -> GoAwayFrame:
    """Wait for the server to end the connection; the GOAWAY it sent before closing."""
    client.wait_closed(timeout)
    assert client.goaways, "the server closed without a GOAWAY"
    return client.goaways[-1]


# -- real clients ------------------------------------------------------------------------------------


def test_httpx_negotiates_http2(server, verify):
    with httpx.Client(http2=True, verify=verify) as client:
        r = client.get(server.url + "/")
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200
    assert r.content == (TEMPLATES / "index.html").read_bytes()


def test_curl_http2(server, ca_file):
    p = run(["curl", "-sS", "--http2", "--cacert", ca_file, "-o", "/dev/null",
             "-w", "%{http_version} %{http_code}", server.url + "/"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "2 200"


def test_nghttp_verbose_shows_settings_and_status(server):
    # nghttp has no option to trust a CA file; it reports but does not enforce verification.
    p = run(["nghttp", "-nv", server.url + "/"])
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "The negotiated protocol: h2" in out
    assert re.search(r"recv SETTINGS frame <length=\d+, flags=0x00, stream_id=0>", out)
    assert "[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100]" in out
    assert "[SETTINGS_MAX_HEADER_LIST_SIZE(0x06):32768]" in out
    assert "[SETTINGS_ENABLE_PUSH(0x02):1]" not in out
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", out)
    # nghttp asks for gzip: the page arrives coded, in one DATA frame that ends the stream.
    assert re.search(r"recv DATA frame <length=\d+, flags=0x01, stream_id=\d+>", out)


def test_nghttp_fetches_page_and_assets(server):
    p = run(["nghttp", "-ans", server.url + "/"])
    assert p.returncode == 0, p.stderr
    # A pushed response is marked with '*' after its responseEnd.
    rows = re.findall(r"^\s*\d+\s+\+\S+(?: \*)?\s+\+\S+\s+\S+\s+(\d{3})\s+\S+\s+(\S+)$", p.stdout, re.M)
    paths = {path: code for code, path in rows}
    assert paths["/"] == "200"
    for asset in ("/static/css/site.css", "/static/js/site.js", "/static/img/hero.png"):
        assert paths.get(asset) == "200", p.stdout
    assert set(paths.values()) == {"200"}


# -- SETTINGS ------------------------------------------------------------------------------------------


def test_settings_advertised_are_the_configured_ones(make_server, ca_file):
    srv = make_server(max_concurrent_streams=50, initial_window_size=1_000_000,
                      max_header_list_size=20_000)
    with H2Client.tls(srv.port, ca_file) as client:
        client.receive_until(lambda: bool(client.server_settings))
        first = client.frames[0].frame
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags  # the server preface
        settings = client.server_settings
        assert settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 50
        assert settings[SettingCodes.INITIAL_WINDOW_SIZE] == 1_000_000
        assert settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 20_000
        assert settings.get(SettingCodes.ENABLE_PUSH, 0) == 0  # RFC 9113 6.5.2: a server never sends 1
        sid = client.request("/")
        client.receive_until(lambda: client.responses[sid].done)
        assert client.responses[sid].status == 200


def test_max_header_list_size_is_enforced(make_server, ca_file):
    srv = make_server(max_header_list_size=20_000)
    with H2Client.tls(srv.port, ca_file) as client:
        ok = client.request("/", headers=[(b"x-fill", b"a" * 15_000)])
        client.receive_until(lambda: client.responses[ok].done)
        assert client.responses[ok].status == 200
        client.request("/", headers=[(b"x-fill", b"a" * 25_000)])
        goaway = connection_error(client)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert goaway.last_stream_id == ok


def test_a_stream_beyond_max_concurrent_streams_is_refused_alone(make_server, big_file, ca_file):
    """RFC 9113 section 5.1.2: the excess stream gets RST_STREAM REFUSED_STREAM; the connection and
    the streams within the limit carry on."""
    srv = make_server(max_concurrent_streams=5, **big_file.server_options())
    # Window 0: every response stays open after its HEADERS.
    with H2Client.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0},
                      flow_control="manual") as client:
        client.receive_until(lambda: bool(client.server_settings))
        assert client.server_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 5
        sids = [client.request(big_file.url_path) for _ in range(5)]
        client.receive_until(lambda: all(client.responses[s].status == 200 for s in sids))
        # h2 will not exceed the limit itself: let the client's h2 believe the limit is higher.
        values = dict(client.conn.remote_settings.items())
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = 100
        client.conn.remote_settings = Settings(client=False, initial_values=values)
        sixth = client.request(big_file.url_path)
        client.receive_until(lambda: client.responses[sixth].reset_code is not None)
        assert client.responses[sixth].reset_code == ErrorCodes.REFUSED_STREAM
        assert client.responses[sixth].status is None
        assert not client.goaways
        # The five streams within the limit still get their data once the window opens.
        client.grant(sids[0], 100_000)
        client.receive_until(lambda: client.responses[sids[0]].received >= 100_000)


def test_far_beyond_max_concurrent_streams_ends_the_connection(make_server, big_file, ca_file):
    """A client that keeps opening streams past the limit is a protocol violator: GOAWAY."""
    srv = make_server(max_concurrent_streams=5, **big_file.server_options())
    with H2Client.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0},
                      flow_control="manual") as client:
        client.receive_until(lambda: bool(client.server_settings))
        sids = [client.request(big_file.url_path) for _ in range(5)]
        client.receive_until(lambda: all(client.responses[s].status == 200 for s in sids))
        block = client.conn.encoder.encode(client.responses[sids[0]].request_headers)
        sid = client.conn.get_next_available_stream_id()
        frames = b"".join(HeadersFrame(sid + 2 * i, block, flags=["END_HEADERS"]).serialize()
                          for i in range(40))  # no END_STREAM: these stay open
        client.send_raw(frames)
        goaway = connection_error(client)
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR


# -- concurrency -------------------------------------------------------------------------------------------


def test_100_concurrent_streams_on_one_connection(server, ca_file):
    files = static_files()
    with H2Client.tls(server.port, ca_file) as client:
        client.receive_until(lambda: bool(client.server_settings))
        wanted: dict[int, Path] = {}
        for i in range(100):
            path = files[i % len(files)]
            sid = client.request("/static/" + path.relative_to(STATIC).as_posix())
            wanted[sid] = path
        # All 100 requests are out before any response is read: they are truly concurrent.
        assert len([w for w in client.sent_frames if w.type == "HEADERS"]) == 100
        client.receive_until(lambda: all(client.responses[s].done for s in wanted), timeout=20)
        for sid, path in wanted.items():
            response = client.responses[sid]
            assert response.status == 200, sid
            assert response.reset_code is None
            assert bytes(response.body) == path.read_bytes(), path
        assert not client.goaways


def test_100_concurrent_requests_through_httpx(server, verify):
    # One AsyncClient multiplexes them all on one connection (the sync client is not safe for
    # HTTP/2 from many threads: httpcore can write HEADERS out of stream-id order).
    files = static_files()

    async def main() -> tuple[list[tuple[Path, httpx.Response]], set[tuple[str, int]]]:
        peers: set[tuple[str, int]] = set()

        async def note(response: httpx.Response) -> None:
            stream = response.extensions["network_stream"]
            peers.add(stream.get_extra_info("client_addr"))

        async with httpx.AsyncClient(http2=True, verify=verify,
                                     event_hooks={"response": [note]}) as client:
            async def fetch(i: int) -> tuple[Path, httpx.Response]:
                path = files[i % len(files)]
                url = server.url + "/static/" + path.relative_to(STATIC).as_posix()
                return path, await client.get(url)

            results = await asyncio.gather(*(fetch(i) for i in range(100)))
        return results, peers

    results, peers = asyncio.run(main())
    (local,) = peers  # one local address and port: one connection
    assert local[0] == "127.0.0.1" and local[1] > 0
    for path, r in results:
        assert r.http_version == "HTTP/2"
        assert r.content == path.read_bytes()


# -- flow control ----------------------------------------------------------------------------------------


def test_large_file_with_small_windows_never_exceeds_them(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 16384},
                      flow_control="consume", ack_every=8192) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.responses[sid].done, timeout=40)
        response = client.responses[sid]
        assert response.status == 200
        assert response.ended and response.reset_code is None
        assert response.received == big_file.size
        assert response.sha256() == big_file.sha256
        assert client.flow_violations == []
        assert client.stream_received[sid] == big_file.size <= client.stream_granted[sid]
        assert client.conn_received <= client.conn_granted
        assert client.conn_granted < big_file.size + 65535 + 8192  # the connection window stayed small
        assert client.max_data_frame <= 16384
        updates = [w for w in client.sent_frames if isinstance(w.frame, WindowUpdateFrame)]
        assert len(updates) > 2 * big_file.size // 16384 - 10  # many small grants did the pacing


def test_data_frames_honour_the_default_max_frame_size(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 22},
                      connection_window=1 << 24) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.responses[sid].done, timeout=30)
        assert client.responses[sid].sha256() == big_file.sha256
        assert client.max_data_frame == 16384  # used fully, never exceeded
        assert client.flow_violations == []


def test_data_frames_grow_to_a_larger_peer_max_frame_size(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    settings = {SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24, SettingCodes.MAX_FRAME_SIZE: 65536}
    with H2Client.tls(srv.port, ca_file, settings=settings, connection_window=1 << 26) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.responses[sid].done, timeout=30)
        assert client.responses[sid].sha256() == big_file.sha256
        assert client.max_data_frame == 65536
        sizes = [w.length for w in client.frames if isinstance(w.frame, DataFrame)]
        assert sum(sizes) == big_file.size
        assert len(sizes) <= big_file.size // 65536 + 2
        assert client.flow_violations == []


def warm(port: int, ca_file: str, *paths: str) -> None:
    """HEAD each path once, so the server has the files loaded. A cold file is loaded in a worker
    thread, and answers that come back from threads at different moments each go out on their own:
    the tests of turn-taking want answers that are ready together."""
    with H2Client.tls(port, ca_file) as client:
        sids = [client.request(path, method="HEAD") for path in paths]
        client.receive_until(lambda: all(client.responses[s].done for s in sids))


def test_data_runs_are_cut_at_an_odd_max_frame_size_and_end_once(make_server, site, ca_file):
    """DATA goes out in runs (http2.py send_data_run): cut at the peer's SETTINGS_MAX_FRAME_SIZE
    whatever it is, END_STREAM on each stream's last frame only, streams taking turns."""
    sizes = {"/static/a.bin": 1_000_003, "/static/b.bin": 700_001, "/static/c.bin": 65_537}
    for path, size in sizes.items():
        (site / path.removeprefix("/")).write_bytes(os.urandom(size))
    srv = make_server(templates=str(site / "templates"), static=str(site / "static"))
    settings = {SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24, SettingCodes.MAX_FRAME_SIZE: 20_000}
    warm(srv.port, ca_file, *sizes)  # loaded: the three answers are ready in the same read
    with H2Client.tls(srv.port, ca_file, settings=settings, connection_window=1 << 26) as client:
        # Incremental (RFC 9218 `i`): responses of one urgency that take turns.
        sids = {client.request(path, flush=False, headers=[(b"priority", b"i")]): path for path in sizes}
        client.flush()  # the three requests in one write: the server reads them together
        client.receive_until(lambda: all(client.responses[s].done for s in sids), timeout=30)
    frames = [w for w in client.frames if isinstance(w.frame, DataFrame)]
    assert max(w.length for w in frames) == 20_000
    for sid, path in sids.items():
        mine = [w for w in frames if w.stream_id == sid]
        assert bytes(client.responses[sid].body) == (site / path.removeprefix("/")).read_bytes()
        assert [("END_STREAM" in w.frame.flags) for w in mine] == [False] * (len(mine) - 1) + [True]
        assert all(w.length > 0 for w in mine)
    first_end = min(i for i, w in enumerate(frames) if "END_STREAM" in w.frame.flags)
    assert len({w.stream_id for w in frames[:first_end]}) == 3  # all three sent before one ends
    assert client.flow_violations == []


def test_frames_queued_between_data_runs_keep_their_place(make_server, site, ca_file):
    """A run of several DATA frames is queued as one block (http2.py send_data_run); a frame
    queued in h2's buffer while blocks wait, here a small file's single DATA frame sent in its turn
    between two runs of a large file, goes out between them, not before or after both."""
    (site / "static/run.bin").write_bytes(os.urandom(100_000))
    srv = make_server(templates=str(site / "templates"), static=str(site / "static"))
    settings = {SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}
    warm(srv.port, ca_file, "/static/run.bin", "/static/css/site.css")
    with H2Client.tls(srv.port, ca_file, settings=settings, connection_window=1 << 22) as client:
        big = client.request("/static/run.bin", flush=False, headers=[(b"priority", b"i")])
        small = client.request("/static/css/site.css", flush=False, headers=[(b"priority", b"i")])
        client.flush()  # both requests in one write: the server takes turns between them
        client.receive_until(lambda: client.responses[big].done and client.responses[small].done)
    order = [w.stream_id for w in client.frames if isinstance(w.frame, DataFrame)]
    first_small = order.index(small)
    assert order[:first_small] == [big] * 4  # the large file's first run: 64 KiB in 16 KiB frames
    assert big in order[first_small + 1:]     # its second run after the small file's frame
    assert bytes(client.responses[big].body) == (site / "static/run.bin").read_bytes()
    assert bytes(client.responses[small].body) == (STATIC / "css/site.css").read_bytes()


def test_a_request_without_end_stream_is_answered_and_its_stream_stays_checked(server, ca_file):
    """A GET whose HEADERS lack END_STREAM is answered at once, and the stream stays half-closed
    rather than reset: a WINDOW_UPDATE the client then sends on it that overflows the window gets
    the stream error RFC 9113 section 6.9.1 names (FLOW_CONTROL_ERROR), as h2spec checks."""
    with H2Client.tls(server.port, ca_file) as client:
        sid = client.request("/about", end_stream=False)
        client.receive_until(lambda: client.responses[sid].done)
        client.receive_for(0.2)
        assert client.resets(sid) == []  # no RST_STREAM(NO_ERROR) before the client sends a body
        client.send_raw(frame_bytes(WINDOW_UPDATE, 0, sid, (2**31 - 1).to_bytes(4, "big")))
        client.receive_until(lambda: bool(client.resets(sid)))
        assert [f.error_code for f in client.resets(sid)] == [ErrorCodes.FLOW_CONTROL_ERROR]
        after = client.request("/")
        client.receive_until(lambda: client.responses[after].done)
        assert client.responses[after].status == 200 and not client.goaways


def test_data_on_a_stream_both_ends_closed_is_a_connection_error(server, ca_file):
    """RFC 9113 section 5.1, closed: DATA after both END_STREAMs is a connection error of type
    STREAM_CLOSED (h2 alone would answer with a stream error); after the client's own reset it is a
    stream error, and the connection goes on."""
    with H2Client.tls(server.port, ca_file) as client:
        # Files without push map entries: h2's client mishandles promises on a stream it reset.
        reset = client.request("/static/css/site.css", end_stream=False)
        client.reset(reset)
        client.send_raw(frame_bytes(DATA, END_STREAM_FLAG, reset, b"late"))
        client.receive_until(lambda: bool(client.resets(reset)))
        assert [f.error_code for f in client.resets(reset)] == [ErrorCodes.STREAM_CLOSED]
        sid = client.request("/static/js/site.js")
        client.receive_until(lambda: client.responses[sid].done)
        assert not client.goaways
        client.send_raw(frame_bytes(DATA, END_STREAM_FLAG, sid, b"test"))
        goaway = connection_error(client)
    assert goaway.error_code == ErrorCodes.STREAM_CLOSED


def memory_pair(**client_settings: int) -> tuple[H2Connection, ServerConnection]:
    """A client H2Connection and the server's ServerConnection wired in memory, past the preface, with
    stream 1 a GET of /."""
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20, **client_settings})
    client.increment_flow_control_window(1 << 20)
    server = ServerConnection(65536, CachedEncoder())
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                            (":authority", "localhost")], end_stream=True)
    server.receive_data(client.data_to_send())
    return client, server


def test_partial_data_to_send_keeps_the_order_of_runs_and_frames():
    """h2's data_to_send(amount) (not used by the server, kept correct): a DATA run and the frames
    queued before and after it come out in order, whatever the slices (sans-IO, in memory)."""
    client, server = memory_pair()
    body = os.urandom(50_000)
    server.send_response_headers(1, [(b":status", b"200")], end_stream=False)
    server.send_data_run(1, body, end_stream=False)
    server.ping(b"after-12")  # queued by h2 after the run
    server.send_data_run(1, b"tail", end_stream=True)
    events = []
    while chunk := server.data_to_send(777):
        events += client.receive_data(chunk)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == body + b"tail"
    assert isinstance(events[0], ResponseReceived)
    ping_at = next(i for i, e in enumerate(events) if isinstance(e, PingReceived))
    data_before = sum(len(e.data) for e in events[:ping_at] if isinstance(e, DataReceived))
    assert data_before == len(body)  # the PING came after the whole first run, before the tail


def test_a_header_block_over_the_max_frame_size_goes_out_as_headers_and_continuations():
    """send_response_headers frames the block itself: HEADERS then CONTINUATION frames of at most
    the peer's SETTINGS_MAX_FRAME_SIZE, END_STREAM on the HEADERS frame, END_HEADERS on the last."""
    client, server = memory_pair()
    headers = [(b":status", b"200"), *((b"x-filler-%d" % i, b"v" * 40) for i in range(600))]
    server.send_response_headers(1, headers, end_stream=True)
    wire = server.data_to_send()
    frames = []
    while wire:
        frame, length = Frame.parse_frame_header(memoryview(wire[:9]))
        frame.parse_body(memoryview(wire[9:9 + length]))
        frames.append(frame)
        wire = wire[9 + length:]
    assert [type(f).__name__ for f in frames] == ["HeadersFrame"] + ["ContinuationFrame"] * (len(frames) - 1)
    assert len(frames) >= 2 and all(len(f.data) <= 16384 for f in frames)
    assert [("END_HEADERS" in f.flags) for f in frames] == [False] * (len(frames) - 1) + [True]
    assert "END_STREAM" in frames[0].flags
    events = client.receive_data(b"".join(f.serialize() for f in frames))
    (response,) = [e for e in events if isinstance(e, ResponseReceived)]
    assert response.headers == headers
    assert any(isinstance(e, StreamEnded) for e in events)


def test_zero_window_stalls_until_window_update(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0},
                      flow_control="manual") as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.responses[sid].status is not None)
        client.receive_for(0.5)
        assert client.stream_received[sid] == 0  # HEADERS, but no DATA while the window is 0
        client.grant(sid, 100_000)
        client.receive_until(lambda: client.stream_received[sid] == 100_000)
        client.receive_for(0.3)
        assert client.stream_received[sid] == 100_000  # exactly what was granted, no more
        client.grant(sid, big_file.size - 100_000)
        client.receive_until(lambda: client.responses[sid].done, timeout=30)
        assert client.responses[sid].sha256() == big_file.sha256
        assert client.flow_violations == []


def test_settings_initial_window_size_wakes_a_blocked_stream(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0},
                      flow_control="manual", connection_window=1 << 30) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.responses[sid].status is not None)
        client.receive_for(0.5)
        assert client.stream_received[sid] == 0
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65536})  # no WINDOW_UPDATE at all
        client.receive_until(lambda: client.stream_received[sid] == 65536)
        client.receive_for(0.3)
        assert client.stream_received[sid] == 65536
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: big_file.size})
        client.receive_until(lambda: client.responses[sid].done, timeout=30)
        assert client.responses[sid].sha256() == big_file.sha256
        assert client.flow_violations == []


# -- resets --------------------------------------------------------------------------------------------


def test_client_cancel_stops_the_stream_and_the_connection_goes_on(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    settings = {SettingCodes.INITIAL_WINDOW_SIZE: 256 * 1024}
    with H2Client.tls(srv.port, ca_file, settings=settings, flow_control="manual",
                      connection_window=1 << 30) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received[sid] >= 128 * 1024)
        client.grant(sid, 4 << 20, connection=False)  # plenty in flight when the reset goes out
        client.receive_until(lambda: client.stream_received[sid] >= 512 * 1024)
        at_reset = client.stream_received[sid]
        granted = client.stream_granted[sid]
        client.reset(sid, ErrorCodes.CANCEL)
        client.ping(b"after-rs")  # handled after the reset: its ACK marks "reset processed"
        client.receive_until(lambda: any(isinstance(w.frame, PingFrame) and "ACK" in w.frame.flags
                                         for w in client.frames))
        ack = next(i for i, w in enumerate(client.frames)
                   if isinstance(w.frame, PingFrame) and "ACK" in w.frame.flags)
        client.receive_for(0.5)
        after_ack = [w for w in client.frames[ack:] if isinstance(w.frame, DataFrame)
                     and w.stream_id == sid]
        assert after_ack == []  # nothing once the reset was processed
        assert client.stream_received[sid] - at_reset <= granted - at_reset  # at most what was in flight
        assert client.stream_received[sid] < big_file.size // 4
        assert not client.responses[sid].ended
        assert client.resets(sid) == []  # the server does not answer a reset with one of its own

        other = client.request("/static/css/site.css")
        client.receive_until(lambda: client.responses[other].done)
        assert client.responses[other].status == 200
        assert bytes(client.responses[other].body) == (STATIC / "css" / "site.css").read_bytes()
        assert not client.goaways and not client.closed


# -- responses at frame level -------------------------------------------------------------------------


def test_head_and_404_over_h2(server, ca_file):
    with H2Client.tls(server.port, ca_file) as client:
        head = client.request("/", method="HEAD")
        missing = client.request("/no/such/page")
        client.receive_until(lambda: client.responses[head].done and client.responses[missing].done)
        assert client.responses[head].status == 200
        assert client.responses[head].header(b"content-length") == b"4002"
        assert client.responses[head].received == 0
        assert not [f for f in client.frames_of(DataFrame, head)]  # END_STREAM on the HEADERS
        headers = client.frames_of(HeadersFrame, head)
        assert len(headers) == 1 and "END_STREAM" in headers[0].flags
        assert client.responses[missing].status == 404
        assert bytes(client.responses[missing].body) == (TEMPLATES / "404.html").read_bytes()


@pytest.mark.parametrize("together", [True, False], ids=["one-write", "body-later"])
def test_response_before_the_request_ends_is_followed_by_rst_stream_no_error(server, ca_file, together):
    # RFC 9113 8.1: a server may answer before the request is complete, then ask the client to
    # stop sending with RST_STREAM(NO_ERROR), once a body it does not need arrives: read with the
    # request (the answer still going out), or after the answer is complete. The connection stays
    # usable.
    with H2Client.tls(server.port, ca_file) as client:
        sid = client.request("/", method="POST", end_stream=False, flush=not together)
        client.conn.send_data(sid, b"x" * 1000)
        client.flush()
        client.receive_until(lambda: client.responses[sid].done and bool(client.resets(sid)))
        response = client.responses[sid]
        assert response.status == 405
        assert response.header(b"allow") == b"GET, HEAD"
        assert response.ended
        assert [f.error_code for f in client.resets(sid)] == [ErrorCodes.NO_ERROR]
        after = client.request("/about")
        client.receive_until(lambda: client.responses[after].done)
        assert client.responses[after].status == 200
        assert not client.goaways


def test_ping_is_acknowledged_with_its_payload(server, ca_file):
    with H2Client.tls(server.port, ca_file) as client:
        client.ping(b"12345678")
        client.receive_until(lambda: bool(client.frames_of(PingFrame)))
        (ack,) = client.frames_of(PingFrame)
        assert "ACK" in ack.flags
        assert ack.opaque_data == b"12345678"


# -- connection errors ------------------------------------------------------------------------------------


def test_data_on_stream_zero_is_a_protocol_error(server, ca_file):
    with H2Client.tls(server.port, ca_file) as client:
        frame = DataFrame(1, b"hello")
        frame.stream_id = 0  # hyperframe refuses 0 in the constructor, not in serialize()
        client.send_raw(frame.serialize())
        goaway = connection_error(client)
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway.last_stream_id == 0


def test_headers_on_an_even_stream_is_a_protocol_error(server, ca_file):
    with H2Client.tls(server.port, ca_file) as client:
        block = Encoder().encode([(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":authority", b"localhost"), (b":path", b"/")])
        client.send_raw(HeadersFrame(2, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        goaway = connection_error(client)
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert not client.frames_of(HeadersFrame, 2)


def test_frame_larger_than_max_frame_size_is_a_frame_size_error(server, ca_file):
    with H2Client.tls(server.port, ca_file) as client:
        sid = client.request("/", method="POST", end_stream=False)
        client.receive_until(lambda: client.responses[sid].status is not None)
        client.send_raw(DataFrame(sid, b"x" * 16385).serialize())
        goaway = connection_error(client)
    assert goaway.error_code == ErrorCodes.FRAME_SIZE_ERROR


@pytest.mark.parametrize("preface", [
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
])
def test_bad_client_preface_closes_the_connection(server, ca_file, preface):
    # RFC 9113 3.4: an invalid preface is a connection error PROTOCOL_ERROR; the GOAWAY may be omitted.
    with H2Client(open_tls(server.port, ca_file, alpn=["h2"]), authority="localhost", scheme="https",
                  start=False) as client:
        client.send_raw(preface + SettingsFrame(0).serialize())
        client.wait_closed(5)
        kinds = [w.type for w in client.frames]
    assert kinds[0] == "SETTINGS"  # the server preface went out on connect
    assert set(kinds) <= {"SETTINGS", "GOAWAY"}  # no response of any kind
    assert all(g.error_code == ErrorCodes.PROTOCOL_ERROR for g in client.goaways)


# -- malformed requests ------------------------------------------------------------------------------------


def malformed_client(port: int, ca_file: str) -> H2Client:
    return H2Client.tls(port, ca_file, validate_outbound_headers=False,
                        normalize_outbound_headers=False)


@pytest.mark.parametrize("headers", [
    pytest.param([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost")],
                 id="missing-path"),
    pytest.param([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                  (b":path", b"/"), (b"X-Upper", b"1")], id="uppercase-name"),
    pytest.param([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
                  (b":authority", b"localhost"), (b":path", b"/about")], id="duplicate-path"),
    pytest.param([(b":method", b"GET"), (b":scheme", b"https"), (b"accept", b"*/*"),
                  (b":path", b"/"), (b":authority", b"localhost")], id="pseudo-after-regular"),
    pytest.param([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                  (b":path", b"/"), (b"connection", b"keep-alive")], id="connection-header"),
])
def test_malformed_request_is_a_protocol_error(server, ca_file, headers):
    # h2 treats a malformed request as a connection error (RFC 9113 8.1.1 asks for a stream error,
    # 5.4.1 lets any stream error be a connection error): GOAWAY PROTOCOL_ERROR, no response. Its
    # last stream id is the malformed stream's own (h2 reports the highest stream it has seen).
    with malformed_client(server.port, ca_file) as client:
        client.receive_until(lambda: bool(client.server_settings))
        sid = client.send_headers(headers)
        goaway = connection_error(client)
        assert client.responses[sid].status is None
        assert client.responses[sid].received == 0
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway.last_stream_id == sid


def test_malformed_request_after_a_good_one_keeps_the_good_one(server, ca_file):
    with malformed_client(server.port, ca_file) as client:
        good = client.request("/")
        client.receive_until(lambda: client.responses[good].done)
        bad = client.send_headers([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x")])
        goaway = connection_error(client)
    assert client.responses[good].status == 200
    assert bytes(client.responses[good].body) == (TEMPLATES / "index.html").read_bytes()
    assert client.responses[bad].status is None
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway.last_stream_id == bad


# -- h2c -----------------------------------------------------------------------------------------------


def test_curl_h2c_prior_knowledge(server):
    p = run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
             "-w", "%{http_version} %{http_code}", server.h2c_url + "/about"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "2 200"


def test_raw_h2_over_cleartext(server):
    with H2Client.h2c(server.h2c_port) as client:
        sid = client.request("/")
        client.receive_until(lambda: client.responses[sid].done)
        assert client.frames[0].type == "SETTINGS"
        response = client.responses[sid]
        assert response.status == 200
        assert response.header(b"content-type") == b"text/html; charset=utf-8"
        assert bytes(response.body) == (TEMPLATES / "index.html").read_bytes()


# -- the client's GOAWAY -------------------------------------------------------------------------------------


def test_client_goaway_lets_the_response_in_flight_finish(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20},
                      flow_control="manual", connection_window=1 << 30) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received[sid] == 1 << 20)
        # GOAWAY and, in the same write, the window the rest of the response needs.
        rest = big_file.size - (1 << 20)
        client.conn.increment_flow_control_window(rest, sid)  # h2 notes the grant; we send it
        update = client.conn.data_to_send()
        client.write(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR).serialize() + update)
        client.receive_until(lambda: client.responses[sid].done, timeout=30)
        assert client.responses[sid].ended
        assert client.responses[sid].sha256() == big_file.sha256
        start = time.monotonic()
        client.wait_closed(5)  # the server closes once its last stream is done
        assert time.monotonic() - start < 2
        assert client.goaways == []


def test_frames_before_a_client_goaway_are_still_answered(server, ca_file):
    # PING and GOAWAY in one write: the PING ACK must not be dropped with the connection.
    with H2Client.tls(server.port, ca_file) as client:
        client.receive_until(lambda: bool(client.server_settings))
        client.write(PingFrame(0, opaque_data=b"lastping").serialize()
                     + GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR).serialize())
        client.wait_closed(5)
        acks = [f for f in client.frames_of(PingFrame) if "ACK" in f.flags]
    assert [a.opaque_data for a in acks] == [b"lastping"]
    assert client.goaways == []


def test_a_stylesheet_asked_for_last_at_urgency_0_arrives_before_any_image(make_server, site, ca_file):
    """RFC 9218 over a real TLS connection: with every stream window shut, the client asks for
    three large images at u=5 and then a stylesheet at u=0; when it opens the windows, the
    stylesheet's DATA is complete before the first byte of any image."""
    for name in ("a", "b", "c"):
        (site / f"static/{name}.bin").write_bytes(os.urandom(300_000))
    srv = make_server(templates=str(site / "templates"), static=str(site / "static"))
    warm(srv.port, ca_file, "/static/a.bin", "/static/b.bin", "/static/c.bin", "/static/css/site.css")
    settings = {SettingCodes.INITIAL_WINDOW_SIZE: 0}
    with H2Client.tls(srv.port, ca_file, settings=settings, connection_window=1 << 24,
                      flow_control="manual") as client:
        images = [client.request(f"/static/{n}.bin", headers=[(b"priority", b"u=5, i")]) for n in "abc"]
        css = client.request("/static/css/site.css", headers=[(b"priority", b"u=0")])
        client.receive_until(lambda: all(client.responses[s].status == 200 for s in [*images, css]))
        assert not client.frames_of(DataFrame)  # nothing could be sent yet
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 22})
        client.receive_until(lambda: all(client.responses[s].done for s in [*images, css]), timeout=30)
    data = [w.stream_id for w in client.frames if isinstance(w.frame, DataFrame)]
    last_css = max(i for i, sid in enumerate(data) if sid == css)
    assert all(sid == css for sid in data[:last_css + 1])
    assert bytes(client.responses[css].body) == (STATIC / "css/site.css").read_bytes()
    assert client.server_settings.get(0x9) == 1  # SETTINGS_NO_RFC7540_PRIORITIES
