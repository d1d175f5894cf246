"""HTTP/2 under attack, and the server-side MUSTs of RFC 9113 that h2 leaves to the server.

Each attack runs against a server subprocess inside a `Siege` (tests/attack.py): a well-behaved
client on other connections must keep getting answers within 2 s, and the server's RSS must grow by
less than 150 MiB, while the test shows how the attacker is stopped (a GOAWAY or RST_STREAM code, or
the connection closed within a timeout). The RFC section at the end uses in-process servers.
"""

from __future__ import annotations

import socket
import time

import pytest
from attack import (
    QUICK,
    SMALL_BODY,
    SMALL_PATH,
    MiB,
    RawH2,
    Siege,
    bounded,
    closed_by_server,
    error_name,
    fd_count,
    frame_bytes,
    goaway_on_close,
    hostile,
    hpack_block,
    hpack_request,
    nodelay,
    wait_for,
)
from conftest import tls_client_context
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2client import H2Client
from hpack.hpack import encode_integer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

MAX_WINDOW = 2**31 - 1


@pytest.fixture
def big_server(spawn_server, big_file):
    """A server subprocess with short timeouts serving the site with the 64 MiB file."""
    def start(*args: str):
        return spawn_server(*QUICK, "--templates", str(big_file.templates),
                            "--static", str(big_file.static), *args)
    return start


def assert_calmed(client: H2Client, timeout: float = 10) -> GoAwayFrame:
    goaway = goaway_on_close(client, timeout)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM, error_name(goaway.error_code)
    return goaway


def _raw_goaway(client: RawH2, timeout: float) -> GoAwayFrame:
    assert client.wait_closed(timeout), "the server kept the connection open"
    assert client.goaways, "the server closed the connection without a GOAWAY"
    return client.goaways[-1]


# -- 1. Rapid Reset (CVE-2023-44487) -------------------------------------------------------------------


@pytest.mark.parametrize("batch", [100, 1], ids=["same-write", "one-by-one"])
def test_rapid_reset_is_told_to_calm_down(big_server, big_file, ca_file, batch):
    proc = big_server()
    with Siege(proc, ca_file), hostile(proc.port, ca_file, flow_control="manual") as attacker:
        attacker.receive_until(lambda: bool(attacker.server_settings))
        conn = attacker.conn
        opened = 0
        for _ in bounded(5000 // batch, 15):  # at most 5,000 streams
            for _ in range(batch):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                        (b":authority", attacker.authority),
                                        (b":path", big_file.url_path.encode())], end_stream=True)
                conn.reset_stream(sid, ErrorCodes.CANCEL)
                opened += 1
            attacker.flush()
            attacker.receive_for(0.001)
            if attacker.closed:
                break
        goaway = assert_calmed(attacker)
    # The budget is 200 resets, 20 more a second: far fewer than the attacker tried.
    assert goaway.last_stream_id < 2 * 2000
    assert opened < 5000


def test_reset_budget_is_earned_back_by_completed_streams(make_server, big_file, ca_file):
    """A browser that cancels many downloads but completes as many requests is never cut off."""
    srv = make_server(**big_file.server_options())
    start = time.monotonic()
    with nodelay(H2Client.tls(srv.port, ca_file, flow_control="manual",
                              connection_window=1 << 30)) as client:
        for _ in range(400):
            done = client.request(SMALL_PATH)
            cancelled = client.request(big_file.url_path, keep_body=False)
            client.receive_until(lambda d=done, c=cancelled: client.responses[d].done
                                 and client.responses[c].status is not None)
            assert client.responses[done].status == 200
            client.reset(cancelled)
        check = client.request(SMALL_PATH)
        client.receive_until(lambda: client.responses[check].done)
        assert client.responses[check].status == 200
        assert not client.goaways
    # 400 resets: more than the burst of 200 plus what 20 a second refill in this time.
    assert time.monotonic() - start < (400 - 200) / 20


# -- 2. CONTINUATION floods and HPACK bombs --------------------------------------------------------------


@pytest.mark.parametrize("size", [4096, 0], ids=["large-continuations", "empty-continuations"])
def test_continuation_flood_is_cut_off_at_the_header_list_limit(big_server, ca_file, size):
    limit = 16384
    proc = big_server("--max-header-list-size", str(limit))
    with Siege(proc, ca_file), RawH2.tls(proc.port, ca_file) as attacker:
        attacker.read_until(lambda: bool(attacker.of(SettingsFrame)))
        attacker.send_frames(HeadersFrame(1, hpack_request()[:5]))  # no END_HEADERS
        sent = 0
        for _ in bounded(10_000, 15):
            if not attacker.send_frames(ContinuationFrame(1, b"\x00" * size)):
                break
            sent += 1
            attacker.read_for(0.02 if size else 0.005)
            if attacker.closed:
                break
        goaway = _raw_goaway(attacker, 5)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM, error_name(goaway.error_code)
    if size:
        # Cut off once the block passed the advertised limit: never buffering more than that.
        assert sent * size <= limit + 2 * size
    else:
        assert sent <= 64  # a count limit for frames that carry nothing (before h2's own, 64)


def test_hpack_bomb_is_stopped_at_the_header_list_limit(big_server, ca_file):
    """One 4 KB header in the dynamic table, then a block that names it 10,000 times (40 MB)."""
    proc = big_server()
    value = b"a" * 4000
    insert = b"\x40" + encode_integer(6, 7) + b"x-bomb" + encode_integer(len(value), 7) + value
    with Siege(proc, ca_file), RawH2.tls(proc.port, ca_file) as attacker:
        attacker.send_frames(HeadersFrame(1, hpack_request(SMALL_PATH.encode()) + insert,
                                          flags=["END_HEADERS", "END_STREAM"]))
        assert attacker.read_until(lambda: bool(attacker.responses(1)))  # served: within limits
        attacker.send_frames(HeadersFrame(3, hpack_request(SMALL_PATH.encode()) + b"\xbe" * 10_000,
                                          flags=["END_HEADERS", "END_STREAM"]))
        goaway = _raw_goaway(attacker, 5)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert goaway.last_stream_id == 1  # stream 3 was never taken
    assert not attacker.responses(3)


def test_header_list_over_the_limit_ends_the_connection(big_server, ca_file):
    proc = big_server("--max-header-list-size", "8192")
    with Siege(proc, ca_file), hostile(proc.port, ca_file) as attacker:
        ok = attacker.request(SMALL_PATH, headers=[(b"x-fill", b"a" * 6000)])
        attacker.receive_until(lambda: attacker.responses[ok].done)
        big = attacker.request(SMALL_PATH, headers=[(b"x-fill", b"a" * 9000)])
        goaway = assert_calmed(attacker)
    assert attacker.responses[ok].status == 200
    assert attacker.responses[big].status is None
    assert goaway.last_stream_id == ok  # the oversized request was never taken


# -- 3. Floods of frames that cost the client nothing -------------------------------------------------------


def _flood_frames(kind: str, sid: int, n: int) -> bytes:
    if kind == "ping":
        frames: list[Frame] = [PingFrame(0, opaque_data=i.to_bytes(8, "big")) for i in range(n)]
    elif kind == "settings":
        frames = [SettingsFrame(0, settings={SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i % 2})
                  for i in range(n)]
    elif kind == "empty-settings":
        frames = [SettingsFrame(0) for _ in range(n)]
    elif kind == "empty-data":
        frames = [DataFrame(sid, b"") for _ in range(n)]
    elif kind == "window-update":
        frames = [WindowUpdateFrame(0, window_increment=1) for _ in range(n)]
    else:
        frames = [PriorityFrame(1 + 2 * (i % 500), depends_on=0, stream_weight=i % 256)
                  for i in range(n)]
    return b"".join(f.serialize() for f in frames)


@pytest.mark.parametrize("kind", ["ping", "settings", "empty-settings", "empty-data", "window-update",
                                  "priority"])
def test_frame_flood_is_told_to_calm_down(big_server, ca_file, kind):
    proc = big_server()
    with Siege(proc, ca_file), hostile(proc.port, ca_file) as attacker:
        # A request whose body never ends, for the empty DATA frames to go on.
        sid = attacker.request(SMALL_PATH, method="POST", end_stream=False)
        attacker.receive_until(lambda: attacker.responses[sid].status is not None)
        frames = _flood_frames(kind, sid, 500)
        for _ in bounded(200, 15):  # at most 100,000 frames
            attacker.send_raw(frames)
            attacker.receive_for(0.005)
            if attacker.closed:
                break
        goaway = goaway_on_close(attacker, 10)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM, error_name(goaway.error_code)
    assert any("GOAWAY ENHANCE_YOUR_CALM" in line for line in proc.stderr_lines)


def test_client_that_asks_but_never_reads_is_cut_off(big_server, big_file, ca_file):
    """A client that stops reading while its requests go on: a download fills the socket buffers
    and pauses the transport, then HEAD requests (their HEADERS are not flow-controlled) and PINGs
    (under the PING budget) keep adding answers. The server cuts it off, holding little."""
    proc = big_server()
    with Siege(proc, ca_file) as siege, slow_reader(proc.port, ca_file) as attacker:
        attacker.request(big_file.url_path, keep_body=False)
        block = hpack_request(SMALL_PATH.encode(), attacker.authority, b"HEAD")
        sid = attacker.conn.get_next_available_stream_id() + 2
        started = time.monotonic()
        attacker.sock.settimeout(0.5)
        for i in bounded(1000, 15):  # at most 1000 x 50 requests
            frames = [HeadersFrame(sid + 2 * k, block, flags=["END_HEADERS", "END_STREAM"])
                      for k in range(50)]
            sid += 100
            try:
                attacker.sock.sendall(b"".join(f.serialize() for f in frames)
                                      + PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize())
            except TimeoutError:
                pass  # the server reads slowly now and then; it never stops reading
            except OSError:
                break  # cut off
            if cut_off(proc):
                break
            time.sleep(0.05)  # requests in batches of 50: within SETTINGS_MAX_CONCURRENT_STREAMS
        assert wait_for(lambda: cut_off(proc), 5) < 5
        assert time.monotonic() - started < 2 + 4  # the send timeout, and a sweep
        closed, _ = closed_by_server(attacker.sock, 5)
        assert closed
    assert siege.growth < 50 * MiB


def cut_off(proc) -> bool:
    return any("does not read" in line or "has read nothing" in line for line in proc.stderr_lines)


def slow_reader(port: int, ca_file: str) -> H2Client:
    """A client with a tiny socket receive buffer (set before connecting, so the TCP window stays
    small) that grants the server huge flow-control windows; it reads only when the test says."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    sock = tls_client_context(ca_file, ["h2"]).wrap_socket(raw, server_hostname="localhost")
    return H2Client(sock, authority=f"localhost:{port}", scheme="https", connection_window=1 << 30,
                    settings={SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW})


# -- 4. Zero windows and slow readers (CVE-2019-9517) ----------------------------------------------------


@pytest.mark.parametrize("mode", ["zero-window", "never-acknowledges"])
def test_parked_streams_stay_cheap_and_are_timed_out(big_server, big_file, ca_file, mode):
    """20 connections x 20 streams of the 64 MiB file that the clients never let through."""
    proc = big_server()
    pid = proc.proc.pid
    fds_before = fd_count(pid)
    if mode == "zero-window":
        options = {"settings": {SettingCodes.INITIAL_WINDOW_SIZE: 0}, "flow_control": "manual"}
    else:  # the default window, a huge connection window, then never another WINDOW_UPDATE
        options = {"flow_control": "manual", "connection_window": 1 << 30}
    with Siege(proc, ca_file) as siege:
        attackers = [H2Client.tls(proc.port, ca_file, **options) for _ in range(20)]
        try:
            for attacker in attackers:
                sids = [attacker.request(big_file.url_path, keep_body=False) for _ in range(20)]
                attacker.receive_until(lambda a=attacker, s=sids: all(a.responses[x].status == 200
                                                                      for x in s))
            parked_at = time.monotonic()
            assert fd_count(pid) >= fds_before + 20 * 21  # a socket and an open file per stream
            # The attackers read their sockets all along (they only withhold WINDOW_UPDATEs; one
            # that does not read at all is the next test's): the send timeout (2 s) resets every
            # parked stream, then the connection ends.
            while not all(a.closed for a in attackers) and time.monotonic() - parked_at < 8:
                for attacker in attackers:
                    attacker.receive_for(0.01)
            for attacker in attackers:
                goaway = goaway_on_close(attacker, 0.1)
                assert goaway.error_code == ErrorCodes.NO_ERROR
                for sid, response in attacker.responses.items():
                    assert response.reset_code == ErrorCodes.CANCEL, sid
                    assert response.received <= 65535
            assert time.monotonic() - parked_at < 6
        finally:
            for attacker in attackers:
                attacker.close()
        growth = siege.growth
    wait_for(lambda: fd_count(pid) <= fds_before + 2, 5)  # +2: the bystander may be connected
    assert growth < 150 * MiB, growth


def test_client_that_stops_reading_its_socket_is_closed_after_the_send_timeout(big_server, big_file,
                                                                                ca_file):
    proc = big_server()
    with Siege(proc, ca_file), slow_reader(proc.port, ca_file) as attacker:
        sid = attacker.request(big_file.url_path, keep_body=False)
        started = time.monotonic()
        wait_for(lambda: any("has read nothing" in line for line in proc.stderr_lines), 10)
        assert time.monotonic() - started < 2 + 3
        # Its stream is reset and a GOAWAY queued behind what waits; as it reads none of that
        # either, the connection is cut off after a further send timeout.
        time.sleep(2 + 1)
        attacker.receive_for(0.5)
        assert not attacker.responses[sid].ended
        assert attacker.closed


# -- 5. Stream limits ------------------------------------------------------------------------------------


def test_streams_beyond_the_limit_are_refused_and_refusal_churn_is_calmed(big_server, big_file, ca_file):
    proc = big_server("--max-concurrent-streams", "5")
    with Siege(proc, ca_file), RawH2.tls(proc.port, ca_file, settings={
            SettingCodes.INITIAL_WINDOW_SIZE: 0}) as attacker:
        block = hpack_request(big_file.url_path.encode())
        attacker.send_frames(*[HeadersFrame(1 + 2 * i, block, flags=["END_HEADERS", "END_STREAM"])
                               for i in range(5)])
        assert attacker.read_until(lambda: len(attacker.of(HeadersFrame)) == 5)
        attacker.send_frames(HeadersFrame(11, block, flags=["END_HEADERS", "END_STREAM"]))
        assert attacker.read_until(lambda: bool(attacker.resets(11)))
        assert attacker.resets(11) == [ErrorCodes.REFUSED_STREAM]
        assert not attacker.responses(11) and not attacker.goaways
        # Opening stream after stream only to have each refused is Rapid Reset by other means.
        sid = 13
        for _ in bounded(100, 15):
            attacker.send_frames(*[HeadersFrame(sid + 2 * i, block, flags=["END_HEADERS", "END_STREAM"])
                                   for i in range(10)])
            sid += 20
            attacker.read_for(0.005)
            if attacker.closed:
                break
        goaway = _raw_goaway(attacker, 5)
    # Refusals spend the reset budget (ENHANCE_YOUR_CALM); when the machine is busy, several batches
    # arrive in one read and h2 parses past its own stream limit (advertised + slack) before any
    # refusal: it ends the connection with PROTOCOL_ERROR. Either way the churn is stopped early.
    assert goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR)
    assert sid < 2 * 1000


def test_the_last_stream_id_is_answered_and_a_lower_one_after_it_is_a_protocol_error(server, ca_file):
    with RawH2.tls(server.port, ca_file) as client:
        client.send_frames(HeadersFrame(MAX_WINDOW, hpack_request(SMALL_PATH.encode()),
                                        flags=["END_HEADERS", "END_STREAM"]))
        assert client.read_until(lambda: any("END_STREAM" in f.flags for f in client.frames
                                             if f.stream_id == MAX_WINDOW))
        assert client.responses(MAX_WINDOW)
        client.send_frames(HeadersFrame(1, hpack_request(), flags=["END_HEADERS", "END_STREAM"]))
        goaway = _raw_goaway(client, 5)
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway.last_stream_id == MAX_WINDOW


def test_a_stalled_stream_is_reset_while_the_connection_goes_on(make_server, big_file, ca_file):
    srv = make_server(send_timeout=1, **big_file.server_options())
    with H2Client.tls(srv.port, ca_file, flow_control="manual", connection_window=1 << 30) as client:
        stalled = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received[stalled] == 65535)
        started = time.monotonic()
        served = 0
        for _ in bounded(1000, 10):  # requests keep the connection busy; the stalled stream is not
            sid = client.request(SMALL_PATH)
            client.grant(sid, 65535, connection=False)
            client.receive_until(lambda s=sid: client.responses[s].done)
            served += client.responses[sid].status == 200
            if client.responses[stalled].reset_code is not None:
                break
            time.sleep(0.05)
        assert client.responses[stalled].reset_code == ErrorCodes.CANCEL
        assert 1 <= time.monotonic() - started < 3
        assert served >= 5
        assert not client.goaways and not client.closed


def test_a_protocol_error_is_answered_with_goaway_before_the_close(big_server, ca_file):
    """receive_data raises: what h2 queued (the GOAWAY) still goes out, even behind a large write."""
    proc = big_server()
    with Siege(proc, ca_file):
        for _ in range(20):
            with RawH2.tls(proc.port, ca_file) as client:
                bad = DataFrame(1, b"x")
                bad.stream_id = 0
                client.send_frames(PingFrame(0, opaque_data=b"12345678"), bad)
                goaway = _raw_goaway(client, 5)
                assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
                assert [f.opaque_data for f in client.of(PingFrame)] == [b"12345678"]


# -- RFC 9113: what the server itself must do ---------------------------------------------------------------


def test_server_preface_is_settings_and_client_settings_are_acknowledged(server, ca_file):
    """3.4: the server's first frame is SETTINGS; 6.5.3: every SETTINGS is acknowledged."""
    with RawH2.tls(server.port, ca_file, settings={SettingCodes.MAX_FRAME_SIZE: 20000}) as client:
        client.send_frames(SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000}))
        assert client.read_until(lambda: len([f for f in client.of(SettingsFrame) if "ACK" in f.flags]) == 2)
        first = client.frames[0]
    assert isinstance(first, SettingsFrame) and "ACK" not in first.flags
    assert all(f.settings == {} for f in client.of(SettingsFrame) if "ACK" in f.flags)


def test_ping_ack_echoes_the_payload_and_an_ack_is_not_answered(server, ca_file):
    """6.7"""
    with RawH2.tls(server.port, ca_file) as client:
        client.send_frames(PingFrame(0, opaque_data=b"\x00\xffabc\x01\x02\x03"),
                           PingFrame(0, opaque_data=b"noanswer", flags=["ACK"]))
        assert client.ping(b"lastping")
        pings = client.of(PingFrame)
    assert [(p.opaque_data, "ACK" in p.flags) for p in pings] == [
        (b"\x00\xffabc\x01\x02\x03", True), (b"lastping", True)]


def test_unknown_frame_types_settings_and_flags_are_ignored(server, ca_file):
    """4.1 and 5.5: unknown frame types and flags are ignored; 6.5.2: so are unknown settings."""
    with RawH2.tls(server.port, ca_file) as client:
        client.send_frames(frame_bytes(0xBB, 0xFF, 0, b"whatever"), frame_bytes(0xBB, 0, 1, b"x" * 100),
                           frame_bytes(0x4, 0, 0, b"\x7f\x7f\x00\x00\x00\x01"),  # setting 0x7f7f
                           frame_bytes(0x1, 0x05 | 0xD0, 1, hpack_request(SMALL_PATH.encode())))
        assert client.read_until(lambda: any("END_STREAM" in f.flags for f in client.of(DataFrame, 1)))
        assert not client.goaways
        assert client.data_received[1] == len(SMALL_BODY)


def test_no_frame_exceeds_the_clients_max_frame_size(make_server, big_file, ca_file):
    """4.2"""
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, connection_window=1 << 30,
                      settings={SettingCodes.INITIAL_WINDOW_SIZE: 8 << 20}) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received.get(sid, 0) >= 4 << 20)
        client.reset(sid)
        sizes = [w.length for w in client.frames]
    assert max(sizes) == 16384


def test_a_window_made_negative_by_settings_is_respected_and_recovers(make_server, big_file, ca_file):
    """6.9.2: after SETTINGS_INITIAL_WINDOW_SIZE shrinks, a window can be negative; nothing is sent
    until WINDOW_UPDATEs (or a larger setting) make it positive, then exactly what it allows."""
    srv = make_server(**big_file.server_options())
    with H2Client.tls(srv.port, ca_file, flow_control="manual", connection_window=1 << 30) as client:
        sid = client.request(big_file.url_path, keep_body=False)
        client.receive_until(lambda: client.stream_received[sid] == 65535)
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 16384})  # window: -49151
        client.grant(sid, 49151, connection=False)                         # window: 0
        client.receive_for(0.5)
        assert client.stream_received[sid] == 65535
        client.grant(sid, 1000, connection=False)                          # window: 1000
        client.receive_until(lambda: client.stream_received[sid] == 65535 + 1000)
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 16384 + 5000})  # window: 5000
        client.receive_until(lambda: client.stream_received[sid] == 65535 + 6000)
        client.receive_for(0.3)
        assert client.stream_received[sid] == 65535 + 6000
        assert client.flow_violations == []


@pytest.mark.parametrize("where", ["connection", "stream"])
def test_window_update_overflow_is_a_flow_control_error(make_server, big_file, ca_file, where):
    """6.9.1: a window above 2^31-1 is FLOW_CONTROL_ERROR: of the connection, or of the stream."""
    srv = make_server(**big_file.server_options())
    with RawH2.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client:
        client.send_frames(HeadersFrame(1, hpack_request(big_file.url_path.encode()),
                                        flags=["END_HEADERS", "END_STREAM"]))
        assert client.read_until(lambda: bool(client.responses(1)))
        # The stream's window is 0 and the connection's 65535: the second increment overflows.
        sid = 0 if where == "connection" else 1
        client.send_frames(WindowUpdateFrame(sid, window_increment=MAX_WINDOW - 65535),
                           WindowUpdateFrame(sid, window_increment=65536))
        if where == "connection":
            assert _raw_goaway(client, 5).error_code == ErrorCodes.FLOW_CONTROL_ERROR
        else:
            assert client.read_until(lambda: bool(client.resets(1)))
            assert client.resets(1) == [ErrorCodes.FLOW_CONTROL_ERROR]
            assert client.ping() and not client.goaways


def test_settings_that_overflow_an_open_window_is_a_flow_control_error(make_server, big_file, ca_file):
    """6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes a window past 2^31-1."""
    srv = make_server(**big_file.server_options())
    with RawH2.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client:
        client.send_frames(HeadersFrame(1, hpack_request(big_file.url_path.encode()),
                                        flags=["END_HEADERS", "END_STREAM"]))
        assert client.read_until(lambda: bool(client.responses(1)))
        client.send_frames(WindowUpdateFrame(1, window_increment=MAX_WINDOW - 65535))
        client.send_frames(SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW}))
        assert _raw_goaway(client, 5).error_code == ErrorCodes.FLOW_CONTROL_ERROR


def _request(sid: int, flags: tuple[str, ...] = ("END_HEADERS", "END_STREAM")) -> HeadersFrame:
    return HeadersFrame(sid, hpack_request(SMALL_PATH.encode()), flags=list(flags))


def _raw(sid: int, kind: int, payload: bytes, flags: int = 0) -> bytes:
    return frame_bytes(kind, flags, sid, payload)


CONNECTION_ERRORS = {
    # 6.1 - 6.10: frames on the wrong stream, of the wrong length, with wrong values
    "data-on-stream-0": ([_raw(0, 0x0, b"hello")], ErrorCodes.PROTOCOL_ERROR),
    "headers-on-stream-0": ([_raw(0, 0x1, hpack_request(), 0x5)], ErrorCodes.PROTOCOL_ERROR),
    "priority-on-stream-0": ([_raw(0, 0x2, b"\x00\x00\x00\x01\x10")], ErrorCodes.PROTOCOL_ERROR),
    "rst-stream-on-stream-0": ([_raw(0, 0x3, b"\x00\x00\x00\x08")], ErrorCodes.PROTOCOL_ERROR),
    "rst-stream-of-5-bytes": ([_request(1), _raw(1, 0x3, b"\x00\x00\x00\x08\x00")],
                              ErrorCodes.FRAME_SIZE_ERROR),
    "rst-stream-on-idle-stream": ([_raw(1, 0x3, b"\x00\x00\x00\x08")], ErrorCodes.PROTOCOL_ERROR),
    "settings-on-stream-1": ([_raw(1, 0x4, b"")], ErrorCodes.PROTOCOL_ERROR),
    "settings-of-7-bytes": ([_raw(0, 0x4, b"\x00\x03\x00\x00\x00\x64\x00")], ErrorCodes.FRAME_SIZE_ERROR),
    "settings-ack-with-payload": ([_raw(0, 0x4, b"\x00\x03\x00\x00\x00\x64", 0x1)],
                                  ErrorCodes.FRAME_SIZE_ERROR),
    "settings-enable-push-2": ([SettingsFrame(0, settings={SettingCodes.ENABLE_PUSH: 2})],
                               ErrorCodes.PROTOCOL_ERROR),
    "settings-initial-window-2^31": ([SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 2**31})],
                                     ErrorCodes.FLOW_CONTROL_ERROR),
    "settings-max-frame-size-too-small": ([SettingsFrame(0, settings={SettingCodes.MAX_FRAME_SIZE: 16383})],
                                          ErrorCodes.PROTOCOL_ERROR),
    "settings-max-frame-size-too-large": ([SettingsFrame(0, settings={SettingCodes.MAX_FRAME_SIZE: 2**24})],
                                          ErrorCodes.PROTOCOL_ERROR),
    "push-promise-from-client": ([_request(1, flags=("END_HEADERS",)),
                                 PushPromiseFrame(1, promised_stream_id=2, data=hpack_request(),
                                                  flags=["END_HEADERS"])], ErrorCodes.PROTOCOL_ERROR),
    "ping-on-stream-1": ([_raw(1, 0x6, b"12345678")], ErrorCodes.PROTOCOL_ERROR),
    "ping-of-7-bytes": ([_raw(0, 0x6, b"1234567")], ErrorCodes.FRAME_SIZE_ERROR),
    "goaway-on-stream-1": ([_raw(1, 0x7, b"\x00\x00\x00\x00\x00\x00\x00\x00")], ErrorCodes.PROTOCOL_ERROR),
    "window-update-0-on-connection": ([WindowUpdateFrame(0, window_increment=0)], ErrorCodes.PROTOCOL_ERROR),
    "window-update-of-3-bytes": ([_raw(0, 0x8, b"\x00\x00\x01")], ErrorCodes.FRAME_SIZE_ERROR),
    "window-update-on-idle-stream": ([WindowUpdateFrame(1, window_increment=10)], ErrorCodes.PROTOCOL_ERROR),
    "data-on-idle-stream": ([DataFrame(1, b"x")], ErrorCodes.PROTOCOL_ERROR),
    "continuation-without-headers": ([ContinuationFrame(1, hpack_request(), flags=["END_HEADERS"])],
                                     ErrorCodes.PROTOCOL_ERROR),
    "headers-interrupted-by-ping": ([_request(1, flags=("END_STREAM",)), PingFrame(0)],
                                    ErrorCodes.PROTOCOL_ERROR),
    "continuation-on-another-stream": ([_request(1, flags=("END_STREAM",)),
                                        ContinuationFrame(3, b"", flags=["END_HEADERS"])],
                                       ErrorCodes.PROTOCOL_ERROR),
    "data-padding-too-long": ([_request(1, flags=("END_HEADERS",)), _raw(1, 0x0, b"\x05abc", 0x8)],
                              ErrorCodes.PROTOCOL_ERROR),
    # 5.1.1: stream ids
    "even-stream-id": ([_request(2)], ErrorCodes.PROTOCOL_ERROR),
    "decreasing-stream-id": ([_request(5), _request(3)], ErrorCodes.PROTOCOL_ERROR),
    # 4.3: a header block that cannot be decoded
    "bad-hpack-index": ([_raw(1, 0x1, b"\xff\xff\xff\xff\x0f", 0x5)], ErrorCodes.COMPRESSION_ERROR),
}


@pytest.mark.parametrize("name", list(CONNECTION_ERRORS))
def test_connection_errors_get_the_rfc_error_code(server, ca_file, name):
    frames, code = CONNECTION_ERRORS[name]
    with RawH2.tls(server.port, ca_file) as client:
        client.read_until(lambda: bool(client.of(SettingsFrame)))
        client.send_frames(*frames)
        goaway = _raw_goaway(client, 5)
    assert goaway.error_code == code, error_name(goaway.error_code)


def _stream_or_connection_error(client: RawH2, sid: int, code: int) -> None:
    """The RFC's stream error, or (RFC 9113 section 5.4.1 allows it) the same code for the whole
    connection."""
    client.read_until(lambda: bool(client.resets(sid)) or client.closed)
    if client.resets(sid):
        assert client.resets(sid)[-1] == code, error_name(client.resets(sid)[-1])
    else:
        assert client.goaways, "closed without GOAWAY"
        assert client.goaways[-1].error_code == code, error_name(client.goaways[-1].error_code)


def _parked(client: RawH2, path: bytes) -> None:
    """Stream 1: a request whose answer waits at a zero window (the request itself has ended)."""
    client.send_frames(HeadersFrame(1, hpack_request(path), flags=["END_HEADERS", "END_STREAM"]))
    assert client.read_until(lambda: bool(client.responses(1)))


def test_headers_on_a_half_closed_stream_is_stream_closed(make_server, big_file, ca_file):
    """5.1: half-closed (remote): frames other than WINDOW_UPDATE, PRIORITY, RST_STREAM are
    STREAM_CLOSED."""
    srv = make_server(**big_file.server_options())
    with RawH2.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client:
        _parked(client, big_file.url_path.encode())
        client.send_frames(HeadersFrame(1, hpack_request(), flags=["END_HEADERS", "END_STREAM"]))
        _stream_or_connection_error(client, 1, ErrorCodes.STREAM_CLOSED)
        assert len(client.responses(1)) == 1  # the first request's answer, and nothing more


def test_data_on_a_half_closed_stream_is_stream_closed(make_server, big_file, ca_file):
    srv = make_server(**big_file.server_options())
    with RawH2.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client:
        _parked(client, big_file.url_path.encode())
        client.send_frames(DataFrame(1, b"late"))
        _stream_or_connection_error(client, 1, ErrorCodes.STREAM_CLOSED)


def test_window_update_of_zero_on_a_stream_is_a_protocol_error(make_server, big_file, ca_file):
    """6.9: a zero increment on a stream is a stream error PROTOCOL_ERROR."""
    srv = make_server(**big_file.server_options())
    with RawH2.tls(srv.port, ca_file, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client:
        _parked(client, big_file.url_path.encode())
        client.send_frames(WindowUpdateFrame(1, window_increment=0))
        _stream_or_connection_error(client, 1, ErrorCodes.PROTOCOL_ERROR)


def test_a_stream_depending_on_itself_is_a_protocol_error(server, ca_file):
    """5.3.1"""
    with RawH2.tls(server.port, ca_file) as client:
        client.send_frames(PriorityFrame(1, depends_on=1, stream_weight=16))
        _stream_or_connection_error(client, 1, ErrorCodes.PROTOCOL_ERROR)
        assert not client.responses(1)


def test_content_length_that_disagrees_with_data_is_a_protocol_error(server, ca_file):
    """8.1.1"""
    with RawH2.tls(server.port, ca_file) as client:
        block = hpack_request(b"/", method=b"POST", extra=[(b"content-length", b"10")])
        client.send_frames(HeadersFrame(1, block, flags=["END_HEADERS"]),
                           DataFrame(1, b"12345", flags=["END_STREAM"]))
        client.read_until(lambda: bool(client.resets(1)) or client.closed)
        codes = client.resets(1) + [g.error_code for g in client.goaways]
        assert ErrorCodes.PROTOCOL_ERROR in codes, [error_name(c) for c in codes]


BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/")]
MALFORMED = {
    "missing-method": BASE[1:],
    "missing-scheme": [BASE[0], *BASE[2:]],
    "missing-path": BASE[:3],
    "empty-path": [*BASE[:3], (b":path", b"")],
    "unknown-pseudo-header": [*BASE, (b":foo", b"bar")],
    "response-pseudo-header": [*BASE, (b":status", b"200")],
    "pseudo-after-regular": [*BASE[:3], (b"accept", b"*/*"), BASE[3]],
    "duplicate-method": [*BASE, (b":method", b"GET")],
    "uppercase-name": [*BASE, (b"Accept", b"*/*")],
    "connection": [*BASE, (b"connection", b"keep-alive")],
    "keep-alive": [*BASE, (b"keep-alive", b"timeout=5")],
    "proxy-connection": [*BASE, (b"proxy-connection", b"keep-alive")],
    "transfer-encoding": [*BASE, (b"transfer-encoding", b"chunked")],
    "upgrade": [*BASE, (b"upgrade", b"h2c")],
    "te-gzip": [*BASE, (b"te", b"gzip")],
    "newline-in-value": [*BASE, (b"x-a", b"a\r\nx-b: b")],
    "nul-in-value": [*BASE, (b"x-a", b"a\x00b")],
    "space-in-name": [*BASE, (b"x a", b"b")],
    "connect-without-authority": [(b":method", b"CONNECT")],
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_is_a_protocol_error(server, ca_file, name):
    """8.2 and 8.3: a malformed request is a stream error (or connection error) PROTOCOL_ERROR."""
    headers = MALFORMED[name]
    block = hpack_block(headers)
    with RawH2.tls(server.port, ca_file) as client:
        client.send_frames(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
        client.read_until(lambda: bool(client.resets(1)) or client.closed)
        codes = client.resets(1) + [g.error_code for g in client.goaways]
        assert codes and codes[0] == ErrorCodes.PROTOCOL_ERROR, [error_name(c) for c in codes]
        assert not client.responses(1)


def test_te_trailers_is_allowed(server, ca_file):
    with RawH2.tls(server.port, ca_file) as client:
        client.send_frames(HeadersFrame(1, hpack_block([*BASE, (b"te", b"trailers")]),
                                        flags=["END_HEADERS", "END_STREAM"]))
        assert client.read_until(lambda: bool(client.responses(1)))
        assert not client.goaways


def test_trailers_with_a_pseudo_header_are_a_protocol_error(server, ca_file):
    with RawH2.tls(server.port, ca_file) as client:
        client.send_frames(HeadersFrame(1, hpack_request(method=b"POST"), flags=["END_HEADERS"]),
                           HeadersFrame(1, hpack_block([(b":path", b"/x")]),
                                        flags=["END_HEADERS", "END_STREAM"]))
        client.read_until(lambda: bool(client.resets(1)) or client.closed)
        codes = client.resets(1) + [g.error_code for g in client.goaways]
        assert ErrorCodes.PROTOCOL_ERROR in codes, [error_name(c) for c in codes]
