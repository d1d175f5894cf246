"""RFC 9218 priorities in the HTTP/2 engine, in memory (proto/h2priority.py, h2sched.py, h2engine.py):
the order of DATA under each rule, PRIORITY_UPDATE before and after a stream opens, malformed
signals, the frame's connection errors and its flood budget, and `--priorities off`."""

from __future__ import annotations

from typing import Any

from conftest import MEMORY_BIG, EngineEnv, H2Pair
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import SettingsFrame
from test_h2engine import BIG, assert_calm, body, data_runs, flood, goaways

from h2serve.proto.h2priority import MAX_EARLY, NO_RFC7540_PRIORITIES
from h2serve.proto.lifecycle import CLOSING, OPEN


def priority_update(stream_id: int, value: bytes, frame_stream: int = 0) -> bytes:
    """A PRIORITY_UPDATE frame (type 0x10) as bytes: the prioritized stream id, then the value."""
    payload = stream_id.to_bytes(4, "big") + value
    return len(payload).to_bytes(3, "big") + b"\x10\x00" + frame_stream.to_bytes(4, "big") + payload


def order_of_completion(frames: list[Any], streams: list[int]) -> list[int]:
    """The streams in the order their last DATA frame went out."""
    last = {}
    for i, (sid, _) in enumerate(data_runs(frames)):
        last[sid] = i
    return sorted((s for s in streams if s in last), key=last.__getitem__)


def held_pair(engine_env: EngineEnv, **options: Any) -> H2Pair:
    """A pair whose stream windows start shut (SETTINGS_INITIAL_WINDOW_SIZE 0), so requests queue
    up with their headers sent and no DATA; `release` opens them all at once."""
    pair = engine_env.h2(settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}, **options)
    pair.open_window(BIG)
    return pair


def release(pair: H2Pair) -> list[Any]:
    """Open every stream's window at once (a SETTINGS change): the scheduler picks the order."""
    pair.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: BIG})
    events = pair.exchange()
    events += pair.exchange()  # the SETTINGS ACK round
    return events


def test_the_first_settings_say_rfc7540_priorities_are_not_used(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    (first,) = [f for f in pair.frames if isinstance(f, SettingsFrame)][:1]
    assert first.settings.get(NO_RFC7540_PRIORITIES) == 1


def test_lower_urgency_goes_first_whatever_the_order_asked(engine_env: EngineEnv) -> None:
    """Images asked for first at u=5, the stylesheet last at u=0: its DATA is complete before
    any image DATA once the windows open."""
    pair = held_pair(engine_env)
    one = pair.request("/static/one.bin", headers=[(b"priority", b"u=5, i")])
    two = pair.request("/static/two.bin", headers=[(b"priority", b"u=5, i")])
    css = pair.request("/static/app.css", headers=[(b"priority", b"u=0")])
    pair.exchange()
    events = release(pair)
    runs = data_runs(pair.frames)
    first_image = next(i for i, (sid, _) in enumerate(runs) if sid in (one, two))
    assert [sid for sid, _ in runs[:first_image]] == [css]
    assert body(events, css) == engine_env.site.files["/static/app.css"]
    assert body(events, one) == engine_env.site.files["/static/one.bin"]


def test_non_incremental_one_at_a_time_in_stream_order_incremental_in_turns(engine_env: EngineEnv) -> None:
    pair = held_pair(engine_env)
    a = pair.request("/static/one.bin", headers=[(b"priority", b"u=2")])
    b = pair.request("/static/two.bin", headers=[(b"priority", b"u=2")])
    c = pair.request("/static/one.bin", headers=[(b"priority", b"u=2, i")])
    d = pair.request("/static/two.bin", headers=[(b"priority", b"u=2, i")])
    pair.exchange()
    release(pair)
    runs = data_runs(pair.frames)  # consecutive DATA frames of one stream count as one run
    # Each non-incremental response whole, in stream order; then the incremental ones take turns.
    assert runs[:2] == [(a, MEMORY_BIG), (b, MEMORY_BIG)]
    assert [sid for sid, _ in runs[2:6]] == [c, d, c, d]


def test_priority_update_of_an_open_stream_moves_it_ahead(engine_env: EngineEnv) -> None:
    pair = held_pair(engine_env)
    one = pair.request("/static/one.bin")
    two = pair.request("/static/two.bin")
    pair.exchange()
    pair.send_raw(priority_update(two, b"u=0"))
    release(pair)
    assert order_of_completion(pair.frames, [one, two]) == [two, one]


def test_priority_update_before_the_stream_opens_is_kept_and_wins_over_its_header(
        engine_env: EngineEnv) -> None:
    pair = held_pair(engine_env)
    pair.send_raw(priority_update(3, b"u=0"))  # stream 3 is the second request below
    one = pair.request("/static/one.bin", headers=[(b"priority", b"u=1")])
    three = pair.request("/static/two.bin", headers=[(b"priority", b"u=7")])
    assert three == 3
    pair.exchange()
    release(pair)
    assert order_of_completion(pair.frames, [one, three]) == [three, one]
    assert pair.engine.life.state == OPEN


def test_updates_for_streams_not_open_are_bounded(engine_env: EngineEnv) -> None:
    pair = held_pair(engine_env)
    pair.send_raw(b"".join(priority_update(2 * i + 1, b"u=0") for i in range(3 * MAX_EARLY)))
    assert len(pair.engine.signals._early) == MAX_EARLY
    assert pair.engine.life.state == OPEN


def test_malformed_priorities_fall_back_to_the_default(engine_env: EngineEnv) -> None:
    """`u=9`, `u=x` and garbage are the default u=3, non-incremental: stream order."""
    pair = held_pair(engine_env)
    one = pair.request("/static/one.bin", headers=[(b"priority", b"u=9")])
    two = pair.request("/static/two.bin", headers=[(b"priority", b"\x01\xffgarbage;;")])
    three = pair.request("/static/one.bin", headers=[(b"priority", b"u=4")])
    pair.exchange()
    pair.send_raw(priority_update(one, b"u=x, i=5"))
    release(pair)
    assert order_of_completion(pair.frames, [one, two, three]) == [one, two, three]
    assert pair.engine.life.state == OPEN


def test_rfc7540_priority_fields_are_ignored(engine_env: EngineEnv) -> None:
    """A HEADERS frame's RFC 7540 priority (exclusive, weight 256, on another stream) changes
    nothing: the RFC 9218 defaults apply, in stream order."""
    pair = held_pair(engine_env)
    one = pair.request("/static/one.bin")
    two = pair.client.get_next_available_stream_id()
    pair.client.send_headers(two, [(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", b"localhost"), (b":path", b"/static/two.bin")],
                             end_stream=True, priority_weight=256, priority_depends_on=0,
                             priority_exclusive=True)
    pair.client.prioritize(one, weight=1, depends_on=two)  # and a PRIORITY frame: ignored too
    pair.exchange()
    release(pair)
    assert order_of_completion(pair.frames, [one, two]) == [one, two]
    assert pair.engine.life.state == OPEN


def test_priority_update_on_a_stream_other_than_0_is_a_protocol_error(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    sid = pair.request("/static/app.css")
    pair.exchange()
    pair.send_raw(priority_update(sid, b"u=0", frame_stream=sid))
    pair.drain()
    assert [code for _, code in goaways(pair.frames)] == [ErrorCodes.PROTOCOL_ERROR]
    assert pair.engine.life.state == CLOSING


def test_priority_update_naming_a_pushed_stream_is_a_protocol_error(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    pair.send_raw(priority_update(2, b"u=0"))
    pair.drain()
    assert [code for _, code in goaways(pair.frames)] == [ErrorCodes.PROTOCOL_ERROR]


def test_priority_update_shorter_than_a_stream_id_is_a_frame_size_error(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    pair.send_raw(b"\x00\x00\x02\x10\x00\x00\x00\x00\x00" + b"\x00\x01")
    pair.drain()
    assert [code for _, code in goaways(pair.frames)] == [ErrorCodes.FRAME_SIZE_ERROR]


def test_a_flood_of_priority_updates_is_told_to_calm_down(engine_env: EngineEnv) -> None:
    pair = engine_env.h2()
    sid = pair.request("/static/app.css")
    pair.exchange()
    burst = pair.engine.budgets.priority_updates.burst
    update = priority_update(sid, b"u=1")
    assert_calm(pair, flood(pair, update))
    assert pair.fed[-1] <= (burst + 1) * len(update)  # h2 got the budget's worth, not 10,000


def test_priorities_off_is_round_robin(engine_env: EngineEnv) -> None:
    pair = held_pair(engine_env, priorities="off")
    one = pair.request("/static/one.bin", headers=[(b"priority", b"u=7")])
    two = pair.request("/static/two.bin", headers=[(b"priority", b"u=0")])
    pair.exchange()
    release(pair)
    assert [sid for sid, _ in data_runs(pair.frames)][:4] == [one, two, one, two]
