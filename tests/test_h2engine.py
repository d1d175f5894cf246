"""H2Engine in memory: a client H2Connection wired to the engine (conftest's `H2Pair`), a fake clock,
deferred work run when the test says. No socket, no event loop, no sleep.

Each test asserts the frames the server sends and their order: DATA runs across flow-control
windows, push order, the two-step GOAWAY, each flood budget, deferred answers.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from conftest import MEMORY_BIG, EngineEnv, H2Pair
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PushedStreamReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2serve.proto.h2engine import RUN_BYTES, SHUTDOWN_PING, SHUTDOWN_PING_WAIT
from h2serve.proto.h2guard import MAX_CONTINUATIONS
from h2serve.proto.lifecycle import CLOSING, DRAINING, FINISHING, OPEN

BIG = 1 << 20  # a window no response here fills
LAST_STREAM_MAX = 2**31 - 1
PUSH_MAP = {  # manifest order is not weight order: the map sorts by weight
    "/static/app.js": {"type": "script", "weight": 100},
    "/static/app.css": {"type": "style", "weight": 200},
    "/static/font.woff2": {"type": "font", "weight": 50},
}
PUSHED = ["/static/app.css", "/static/app.js", "/static/font.woff2"]  # weight order


# -- helpers ---------------------------------------------------------------------------------------


def data_runs(frames: list[Any]) -> list[tuple[int, int]]:
    """(stream, bytes) of each run of consecutive DATA frames on one stream."""
    runs: list[tuple[int, int]] = []
    for frame in frames:
        if not isinstance(frame, DataFrame):
            continue
        if runs and runs[-1][0] == frame.stream_id:
            runs[-1] = (frame.stream_id, runs[-1][1] + len(frame.data))
        else:
            runs.append((frame.stream_id, len(frame.data)))
    return runs


def sent(frames: list[Any], stream_id: int) -> int:
    return sum(len(f.data) for f in frames if isinstance(f, DataFrame) and f.stream_id == stream_id)


def body(events: list[Any], stream_id: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id)


def ended(events: list[Any], stream_id: int) -> bool:
    return any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in events)


def goaways(frames: list[Any]) -> list[tuple[int, int]]:
    """(last stream id, error code) of each GOAWAY."""
    return [(f.last_stream_id, f.error_code) for f in frames if isinstance(f, GoAwayFrame)]


def resets(frames: list[Any]) -> list[tuple[int, int]]:
    return [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)]


def outline(frames: list[Any]) -> list[tuple[str, int]]:
    """(kind, stream) per frame, a run of DATA on one stream as one entry; a HEADERS frame says its
    :status (the client decodes it: see `statuses`)."""
    out: list[tuple[str, int]] = []
    for frame in frames:
        kind = type(frame).__name__.removesuffix("Frame").upper()
        if kind == "PUSHPROMISE":
            out.append(("PUSH_PROMISE", frame.promised_stream_id))
        elif kind == "DATA" and out and out[-1] == ("DATA", frame.stream_id):
            continue
        else:
            out.append((kind, frame.stream_id))
    return out


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def status_of(event: Any) -> bytes:
    return dict(event.headers)[b":status"]


INCREMENTAL = [(b"priority", b"i")]  # RFC 9218: useful in pieces, so served in turns


# -- scheduling across windows ---------------------------------------------------------------------


def test_two_large_responses_interleave_in_runs(engine_env: EngineEnv) -> None:
    """Incremental responses of one urgency (RFC 9218 `i`) take turns."""
    pair = engine_env.h2(settings={SettingCodes.INITIAL_WINDOW_SIZE: BIG})
    pair.open_window(BIG)
    one, two = (pair.request("/static/one.bin", headers=INCREMENTAL),
                pair.request("/static/two.bin", headers=INCREMENTAL))
    events = pair.exchange()

    assert outline(pair.new_frames)[:2] == [("HEADERS", one), ("HEADERS", two)]
    runs = data_runs(pair.new_frames)
    # Round-robin: one run each in turn, RUN_BYTES at most, until both are done.
    assert [sid for sid, _ in runs] == [one, two] * (len(runs) // 2)
    assert all(size == RUN_BYTES for _, size in runs[:-2])
    assert runs[-2:] == [(one, MEMORY_BIG % RUN_BYTES), (two, MEMORY_BIG % RUN_BYTES)]
    files = engine_env.site.files
    assert body(events, one) == files["/static/one.bin"]
    assert body(events, two) == files["/static/two.bin"]
    assert ended(events, one) and ended(events, two)
    assert all(f.stream_id in (one, two) for f in pair.new_frames)


def test_stream_at_zero_window_lets_the_other_go_and_resumes_on_its_window_update(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h2()  # streams get the default 65,535-byte window
    pair.open_window(BIG)   # the connection's is wide open
    one, two = pair.request("/static/one.bin"), pair.request("/static/two.bin")
    pair.open_window(BIG, two)  # only stream `two` can take all of its body
    events = pair.exchange()

    # `one` sends its window's worth and waits; `two` is not held up behind it.
    assert sent(pair.new_frames, one) == 65535
    assert sent(pair.new_frames, two) == MEMORY_BIG and ended(events, two)
    assert not ended(events, one)
    assert data_runs(pair.new_frames)[0] == (one, 65535)
    assert pair.server_send() == []  # nothing more until `one` gets window

    pair.open_window(BIG, one)
    events += pair.exchange()
    assert data_runs(pair.new_frames) == [(one, MEMORY_BIG - 65535)]
    assert body(events, one) == engine_env.site.files["/static/one.bin"] and ended(events, one)


def test_connection_window_blocks_every_stream_and_its_update_wakes_them_all(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h2(settings={SettingCodes.INITIAL_WINDOW_SIZE: BIG})
    one, two = (pair.request("/static/one.bin", headers=INCREMENTAL),
                pair.request("/static/two.bin", headers=INCREMENTAL))
    events = pair.exchange()
    # The connection's window (65,535) is all `one`'s first run; then both wait.
    assert data_runs(pair.new_frames) == [(one, 65535)]
    assert pair.server_send() == []

    pair.open_window(100_000)  # the connection's window only
    events += pair.exchange()
    runs = data_runs(pair.new_frames)
    assert {sid for sid, _ in runs} == {one, two}  # both woke
    assert sum(size for _, size in runs) == 100_000
    assert pair.server_send() == []

    pair.open_window(BIG)
    events += pair.exchange()
    files = engine_env.site.files
    assert body(events, one) == files["/static/one.bin"] and ended(events, one)
    assert body(events, two) == files["/static/two.bin"] and ended(events, two)


def test_larger_initial_window_setting_unblocks_waiting_streams(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    pair.open_window(BIG)
    one, two = pair.request("/static/one.bin"), pair.request("/static/two.bin")
    events = pair.exchange()
    assert data_runs(pair.new_frames) == [(one, 65535), (two, 65535)]
    assert pair.server_send() == []

    pair.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: BIG})
    events += pair.exchange()
    assert isinstance(pair.new_frames[0], SettingsFrame) and "ACK" in pair.new_frames[0].flags
    files = engine_env.site.files
    assert body(events, one) == files["/static/one.bin"] and ended(events, one)
    assert body(events, two) == files["/static/two.bin"] and ended(events, two)


def test_stalled_streams_are_cancelled_after_send_timeout_and_a_silent_client_gets_goaway(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h2(send_timeout=30.0)
    pair.open_window(BIG)
    one, two = pair.request("/static/one.bin"), pair.request("/static/two.bin")
    pair.exchange()
    start = engine_env.clock.now
    engine = pair.engine

    engine.tick(start + 30.0)  # not yet: more than send_timeout
    assert pair.server_send() == [] and engine.life.state == OPEN

    engine.tick(start + 30.5)
    events = pair.server_send()
    assert sorted(resets(pair.new_frames)) == [(one, ErrorCodes.CANCEL), (two, ErrorCodes.CANCEL)]
    assert goaways(pair.new_frames) == [(two, ErrorCodes.NO_ERROR)]
    assert outline(pair.new_frames)[-1] == ("GOAWAY", 0)  # after the resets
    assert {e.stream_id for e in events if isinstance(e, StreamReset)} == {one, two}
    assert engine.life.state == CLOSING
    lines = engine_env.log_lines()
    assert len(lines) == 2 and all('HTTP/2.0" 200 65535 ' in line for line in lines)


def test_stalled_stream_of_a_busy_client_is_cancelled_but_the_connection_stays(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h2(send_timeout=30.0)
    pair.open_window(BIG)
    one = pair.request("/static/one.bin")
    pair.exchange()
    start = engine_env.clock.now

    engine_env.clock.advance(10)
    pair.client.ping(b"stillhr!")  # the client is active after its stream stalled
    pair.exchange()
    pair.engine.tick(start + 31)
    pair.server_send()
    assert resets(pair.new_frames) == [(one, ErrorCodes.CANCEL)]
    assert goaways(pair.new_frames) == []
    assert pair.engine.life.state == OPEN

    three = pair.request("/static/app.css")  # and it still answers
    events = pair.exchange()
    assert body(events, three) == engine_env.site.files["/static/app.css"]


# -- push order ------------------------------------------------------------------------------------


def test_push_order_promises_then_page_then_pushed_responses_in_weight_order(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h2(push_map=PUSH_MAP)
    page = pair.request("/")
    events = pair.exchange()

    # Everything hinted is promised: no 103 (it would tell the client nothing).
    assert not [e for e in events if isinstance(e, InformationalResponseReceived)]
    promised = [e for e in events if isinstance(e, PushedStreamReceived)]
    assert [dict(e.headers)[b":path"].decode() for e in promised] == PUSHED
    pushed = [e.pushed_stream_id for e in promised]
    assert pushed == [2, 4, 6] and all(e.parent_stream_id == page for e in promised)
    assert outline(pair.new_frames) == [
        *[("PUSH_PROMISE", sid) for sid in pushed],
        ("HEADERS", page), ("DATA", page),
        *[("HEADERS", sid) for sid in pushed],
        *[("DATA", sid) for sid in pushed],
    ]
    response = next(e for e in events if isinstance(e, ResponseReceived) and e.stream_id == page)
    assert len(header(response.headers, b"link")) == 3
    files = engine_env.site.files
    assert body(events, page) == files["/"]
    for sid, path in zip(pushed, PUSHED, strict=True):
        assert body(events, sid) == files[path] and ended(events, sid)
    assert len(engine_env.log_lines()) == 4


@pytest.mark.parametrize("early_hints", ["h2", "off"])
def test_push_with_early_hints_when_the_client_takes_fewer_pushes(
        engine_env: EngineEnv, early_hints: str) -> None:
    # Room for two pushes: the third resource is only hinted, so the 103 goes first (if on).
    pair = engine_env.h2(push_map=PUSH_MAP, settings={SettingCodes.MAX_CONCURRENT_STREAMS: 2},
                         early_hints=early_hints)
    page = pair.request("/")
    events = pair.exchange()

    hinted = [("HEADERS", page)] if early_hints != "off" else []  # the 103
    assert outline(pair.new_frames) == [
        *hinted,
        ("PUSH_PROMISE", 2), ("PUSH_PROMISE", 4),
        ("HEADERS", page), ("DATA", page),                 # the 200
        ("HEADERS", 2), ("HEADERS", 4), ("DATA", 2), ("DATA", 4),
    ]
    hints = [e for e in events if isinstance(e, InformationalResponseReceived)]
    assert len(hints) == len(hinted)
    if hints:
        assert status_of(hints[0]) == b"103" and len(header(hints[0].headers, b"link")) == 3
    promised = [dict(e.headers)[b":path"].decode() for e in events if isinstance(e, PushedStreamReceived)]
    assert promised == PUSHED[:2]


def test_page_data_goes_right_behind_its_headers_with_another_response_in_flight(
        engine_env: EngineEnv) -> None:
    # A large download is under way (and ready to send) when the page is asked for in the same
    # read: the page's DATA must still follow its HEADERS, ahead of the pushed responses' HEADERS
    # (h2push.send_with_plan).
    pair = engine_env.h2(push_map=PUSH_MAP, settings={SettingCodes.INITIAL_WINDOW_SIZE: BIG})
    pair.open_window(BIG)
    download = pair.request("/static/one.bin")
    page = pair.request("/")
    events = pair.exchange()

    kinds = outline(pair.new_frames)
    at = kinds.index(("HEADERS", page))
    assert kinds[at + 1] == ("DATA", page)
    assert kinds.index(("DATA", page)) < kinds.index(("HEADERS", 2))
    assert ended(events, download) and ended(events, page)


def test_no_push_when_the_client_disables_it_only_links(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(push_map=PUSH_MAP, settings={SettingCodes.ENABLE_PUSH: 0})
    page = pair.request("/")
    events = pair.exchange()

    assert outline(pair.new_frames) == [("HEADERS", page), ("HEADERS", page), ("DATA", page)]
    assert not [f for f in pair.new_frames if isinstance(f, PushPromiseFrame)]
    response = next(e for e in events if isinstance(e, ResponseReceived))
    links = header(response.headers, b"link")
    assert [link.split(b";")[0] for link in links] == [f"<{p}>".encode() for p in PUSHED]
    assert ended(events, page)


def test_no_push_once_shutdown_began(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(push_map=PUSH_MAP)
    pair.request("/")  # on its way when the server starts shutting down
    pair.engine.shutdown()
    events = pair.exchange()

    assert pair.engine.life.state == DRAINING
    assert outline(pair.new_frames) == [("GOAWAY", 0), ("PING", 0),
                                        ("HEADERS", 1), ("HEADERS", 1), ("DATA", 1)]  # 103, 200
    response = next(e for e in events if isinstance(e, ResponseReceived))
    assert len(header(response.headers, b"link")) == 3
    assert ended(events, 1)


# -- the GOAWAY lifecycle --------------------------------------------------------------------------


def test_shutdown_sends_goaway_with_the_largest_stream_id_and_a_ping(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    pair.engine.shutdown()
    events = pair.server_send()

    assert outline(pair.new_frames) == [("GOAWAY", 0), ("PING", 0)]
    goaway, ping = pair.new_frames
    assert (goaway.last_stream_id, goaway.error_code) == (LAST_STREAM_MAX, ErrorCodes.NO_ERROR)
    assert ping.opaque_data == SHUTDOWN_PING and "ACK" not in ping.flags
    assert next(type(e) for e in events) is ConnectionTerminated
    assert pair.engine.life.state == DRAINING
    assert pair.engine.deadline == engine_env.clock.now + SHUTDOWN_PING_WAIT


def test_ping_ack_brings_the_final_goaway_and_later_streams_are_refused(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    one = pair.request("/static/one.bin")  # stays in flight: its window fills
    pair.exchange()
    pair.engine.shutdown()
    pair.server_send()
    assert pair.engine.life.state == DRAINING

    pair.client_send()  # the client's PING ACK
    pair.server_send()
    assert goaways(pair.new_frames) == [(one, ErrorCodes.NO_ERROR)]
    assert pair.engine.life.state == FINISHING
    assert pair.engine.deadline is None

    three = pair.request("/static/app.css")  # above the last stream id
    events = pair.exchange()
    assert resets(pair.new_frames) == [(three, ErrorCodes.REFUSED_STREAM)]
    assert not [e for e in events if isinstance(e, ResponseReceived)]
    assert pair.engine.life.state == FINISHING

    pair.open_window(BIG)
    pair.open_window(BIG, one)
    events = pair.exchange()
    assert ended(events, one)
    assert pair.engine.life.state == CLOSING


def test_final_goaway_by_tick_when_the_ping_ack_never_comes(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    one = pair.request("/static/app.css")
    pair.exchange()
    pair.engine.shutdown()
    pair.drain()  # the client never reads the PING
    deadline = pair.engine.deadline
    assert deadline is not None

    pair.engine.tick(deadline - 0.1)
    pair.drain()
    assert pair.new_frames == [] and pair.engine.life.state == DRAINING

    pair.engine.tick(deadline)
    pair.drain()
    assert goaways(pair.new_frames) == [(one, ErrorCodes.NO_ERROR)]
    assert pair.engine.life.state == CLOSING  # nothing in flight


def test_final_goaway_by_tick_is_sent_once_on_a_connection_idle_before_the_shutdown(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h2(idle_timeout=60.0)
    engine_env.clock.advance(59.5)  # idle for most of idle_timeout when the shutdown comes
    pair.engine.shutdown()
    pair.drain()
    deadline = pair.engine.deadline
    assert deadline is not None

    pair.engine.tick(deadline)
    pair.drain()
    assert goaways(pair.new_frames) == [(0, ErrorCodes.NO_ERROR)]  # one final GOAWAY, not two
    assert pair.engine.life.state == CLOSING


def test_client_goaway_no_error_lets_the_response_in_flight_complete(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    one = pair.request("/static/one.bin")
    pair.exchange()
    # Raw, so the client's h2 stays open to go on reading and opening windows.
    pair.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR).serialize())
    assert pair.engine.life.state == FINISHING

    pair.open_window(BIG)
    pair.open_window(BIG, one)
    events = pair.exchange()
    assert body(events, one)[-10:] == engine_env.site.files["/static/one.bin"][-10:]
    assert ended(events, one)
    assert goaways(pair.new_frames) == []
    assert pair.engine.life.state == CLOSING


def test_client_goaway_with_an_error_closes_at_once(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    pair.request("/static/one.bin")
    pair.exchange()
    pair.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.PROTOCOL_ERROR).serialize())
    assert pair.engine.life.state == CLOSING

    pair.open_window(BIG)
    pair.open_window(BIG, 1)
    pair.exchange()
    assert not [f for f in pair.new_frames if isinstance(f, DataFrame)]


def test_idle_connection_gets_goaway_by_tick(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(idle_timeout=60.0)
    start = engine_env.clock.now
    pair.engine.tick(start + 60.0)
    pair.drain()
    assert pair.new_frames == [] and pair.engine.life.state == OPEN

    pair.engine.tick(start + 60.5)
    pair.drain()
    assert goaways(pair.new_frames) == [(0, ErrorCodes.NO_ERROR)]
    assert pair.engine.life.state == CLOSING


def test_a_stream_awaiting_its_answer_keeps_the_connection_from_idling(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(queue=True, idle_timeout=60.0)
    pair.request("/static/app.css")
    pair.exchange()
    pair.engine.tick(engine_env.clock.now + 600)
    assert pair.engine.life.state == OPEN


# -- flood budgets: one read, the engine stops at the budget ---------------------------------------


def flood(pair: H2Pair, frame: bytes, count: int = 10_000) -> list[Any]:
    """`count` copies of `frame` in one read; the frames the server answered with. The client's h2
    never saw the flood, so only the frames are read."""
    pair.send_raw(frame * count)
    pair.drain()
    return pair.new_frames


def assert_calm(pair: H2Pair, frames: list[Any]) -> None:
    assert [code for _, code in goaways(frames)] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert isinstance(frames[-1], GoAwayFrame)
    assert pair.engine.life.state == CLOSING


def acks(frames: list[Any], kind: type) -> int:
    return sum(1 for f in frames if isinstance(f, kind) and "ACK" in f.flags)


def test_ping_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    burst = pair.engine.budgets.pings.burst
    ping = PingFrame(0, opaque_data=b"floodpng").serialize()
    frames = flood(pair, ping)
    assert_calm(pair, frames)
    assert burst - 1 <= acks(frames, PingFrame) <= burst + 1  # not 10,000
    assert pair.fed[-1] <= (burst + 1) * len(ping)


def test_settings_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    burst = pair.engine.budgets.settings.burst
    settings = SettingsFrame(0).serialize()
    frames = flood(pair, settings)
    assert_calm(pair, frames)
    assert 0 < acks(frames, SettingsFrame) <= burst + 1
    assert pair.fed[-1] <= (burst + 1) * len(settings)


def test_settings_ack_with_a_payload_is_a_frame_size_error(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    # Length 6, type SETTINGS, flag ACK, stream 0, then a setting: hyperframe will not build one.
    pair.send_raw(b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00\x04\x00\x01\x00\x00")
    pair.drain()
    assert [code for _, code in goaways(pair.new_frames)] == [ErrorCodes.FRAME_SIZE_ERROR]
    assert pair.engine.life.state == CLOSING


def test_empty_data_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    one = pair.request("/static/one.bin", end_stream=False)  # in flight, its upload still open
    pair.exchange()
    burst = pair.engine.budgets.empty_data.burst
    empty = DataFrame(one, data=b"").serialize()
    frames = flood(pair, empty)
    assert_calm(pair, frames)
    assert pair.fed[-1] <= (burst + 1) * len(empty)


def test_window_update_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    burst = pair.engine.budgets.window_updates.burst
    update = WindowUpdateFrame(0, window_increment=1).serialize()
    frames = flood(pair, update)
    assert_calm(pair, frames)
    assert pair.fed[-1] <= (burst + 1) * len(update)


def test_priority_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    burst = pair.engine.budgets.priorities.burst
    priority = PriorityFrame(1, depends_on=0, stream_weight=15).serialize()
    frames = flood(pair, priority)
    assert_calm(pair, frames)
    assert pair.fed[-1] <= (burst + 1) * len(priority)


def test_unknown_frame_type_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    burst = pair.engine.budgets.other.burst
    unknown = b"\x00\x00\x01\xfa\x00\x00\x00\x00\x00" + b"x"  # type 0xfa: to be ignored, one by one
    frames = flood(pair, unknown)
    assert_calm(pair, frames)
    assert pair.fed[-1] <= (burst + 1) * len(unknown)


def test_rst_stream_flood_on_a_closed_stream(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    one = pair.request("/static/app.css")
    assert ended(pair.exchange(), one)
    burst = pair.engine.budgets.rst_frames.burst
    rst = RstStreamFrame(one, error_code=ErrorCodes.CANCEL).serialize()
    frames = flood(pair, rst)
    assert_calm(pair, frames)
    assert goaways(frames) == [(one, ErrorCodes.ENHANCE_YOUR_CALM)]
    assert pair.fed[-1] <= (burst + 1) * len(rst)


def test_rapid_reset_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    burst = int(pair.engine.budgets.resets.burst)
    for _ in range(1000):  # HEADERS then RST_STREAM, stream after stream, in one read
        sid = pair.request("/static/app.css")
        pair.client.reset_stream(sid, ErrorCodes.CANCEL)
    pair.client_send()
    pair.drain()
    assert_calm(pair, pair.new_frames)
    [(last, _)] = goaways(pair.new_frames)
    assert last <= 2 * (burst + 1) + 1  # the streams h2 was given: about the budget's, not 1,000
    assert not [f for f in pair.new_frames if isinstance(f, HeadersFrame)]
    assert engine_env.log_lines() == []


def test_continuation_flood(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    headers = HeadersFrame(1, data=b"\x82").serialize()  # no END_HEADERS: CONTINUATIONs follow
    continuation = ContinuationFrame(1, data=b"\x84").serialize()
    pair.send_raw(headers + continuation * (MAX_CONTINUATIONS + 100))
    pair.drain()
    assert_calm(pair, pair.new_frames)
    assert pair.fed[-1] <= len(headers) + MAX_CONTINUATIONS * len(continuation)
    assert not [f for f in pair.new_frames if isinstance(f, HeadersFrame)]


def test_header_block_over_max_header_list_size(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(max_header_list_size=32768)
    piece = b"\x00" * 16000  # three frames of the default 16 KiB: 48,000 bytes of header block
    blocks = (HeadersFrame(1, data=piece).serialize() + ContinuationFrame(1, data=piece).serialize()
              + ContinuationFrame(1, data=piece, flags=["END_HEADERS"]).serialize())
    pair.send_raw(blocks)
    pair.drain()
    assert_calm(pair, pair.new_frames)
    assert pair.fed[-1] <= 2 * (9 + len(piece))  # refused before h2 buffered the block past the limit


def test_frame_header_split_across_reads_is_charged_once(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    bucket = pair.engine.budgets.pings
    ping = PingFrame(0, opaque_data=b"splitpng").serialize()
    data = ping * 30
    for i in range(len(data)):  # byte by byte
        pair.send_raw(data[i:i + 1])
    pair.drain()
    assert acks(pair.new_frames, PingFrame) == 30
    assert bucket.tokens == bucket.burst - 30  # one token each, however the bytes came

    # Cut inside a frame header: the rest of the budget still admits exactly its own count.
    rest = int(bucket.tokens)
    data = ping * (rest + 50)
    cut = len(ping) * 10 + 4
    pair.send_raw(data[:cut])
    pair.send_raw(data[cut:])
    pair.drain()
    assert_calm(pair, pair.new_frames)
    assert acks(pair.new_frames, PingFrame) == rest


@pytest.mark.parametrize("pad_split", [True, False])
def test_padded_empty_data_is_charged_whether_or_not_its_pad_length_comes_later(
        engine_env: EngineEnv, pad_split: bool) -> None:
    pair = engine_env.h2()
    one = pair.request("/static/one.bin", end_stream=False)
    pair.exchange()
    bucket = pair.engine.budgets.empty_data
    padded = DataFrame(one, data=b"", flags=["PADDED"], pad_length=4).serialize()  # no data: empty
    for _ in range(3):
        if pad_split:
            pair.send_raw(padded[:9])
            pair.send_raw(padded[9:])
        else:
            pair.send_raw(padded)
    assert bucket.tokens == bucket.burst - 3
    assert pair.engine.life.state == OPEN


# -- deferred answers ------------------------------------------------------------------------------


def test_cold_file_is_answered_only_when_the_deferred_work_is_done(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(queue=True)
    one = pair.request("/static/app.css")
    assert pair.exchange() == []
    assert pair.new_frames == [] and pair.host.kinds == ["io"]

    assert pair.host.run_deferred() == 1
    events = pair.server_send()
    assert outline(pair.new_frames) == [("HEADERS", one), ("DATA", one)]
    assert body(events, one) == engine_env.site.files["/static/app.css"] and ended(events, one)
    assert len(engine_env.log_lines()) == 1


def open_fds() -> int:
    """Files this process holds open (Linux)."""
    return len(os.listdir("/proc/self/fd"))


def test_stream_reset_while_its_answer_is_deferred_releases_it(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(queue=True)
    one = pair.request("/static/one.bin")  # a file answered from an open descriptor
    pair.exchange()
    pair.client.reset_stream(one, ErrorCodes.CANCEL)
    pair.exchange()
    before = open_fds()

    assert pair.host.run_deferred() == 1  # opens the file, then finds the stream gone
    assert pair.server_send() == []
    assert pair.new_frames == []
    assert open_fds() == before
    lines = engine_env.log_lines()
    assert len(lines) == 1 and '"GET /static/one.bin HTTP/2.0"' in lines[0]
    assert pair.engine.life.state == OPEN


def test_deferred_answer_completing_after_a_flood_closed_the_connection(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(queue=True)
    pair.request("/static/app.css")
    pair.exchange()
    frames = flood(pair, PingFrame(0, opaque_data=b"floodpng").serialize())
    assert_calm(pair, frames)

    pair.host.run_deferred()  # the answer is not wanted any more: no error, nothing sent
    pair.drain()
    assert not [f for f in pair.new_frames if isinstance(f, HeadersFrame | DataFrame)]
    pair.engine.connection_lost()
    assert len(engine_env.log_lines()) == 1


def test_deferred_answer_completing_after_the_clients_goaway_with_an_error(engine_env: EngineEnv) -> None:
    pair = engine_env.h2(queue=True)
    pair.request("/static/app.css")
    pair.exchange()
    pair.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.PROTOCOL_ERROR).serialize())
    assert pair.engine.life.state == CLOSING

    pair.host.run_deferred()  # the connection is closing: the answer is not sent
    pair.drain()
    assert pair.new_frames == []
    pair.engine.connection_lost()
    assert len(engine_env.log_lines()) == 1
