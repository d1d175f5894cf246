"""H1Engine in memory: an h11 client wired to the engine (conftest's `H1Pair`), a fake clock,
deferred work run when the test says. No socket, no event loop, no sleep."""

from __future__ import annotations

import h11
from conftest import MEMORY_BIG, EngineEnv

from h2serve.proto.h1engine import CHUNK, INPUT_BUFFER_MAX
from h2serve.proto.lifecycle import CLOSED, CLOSING, DRAINING, OPEN

PIPELINED = ["/static/app.css", "/about", "/static/app.js", "/static/medium.bin"]


def response_body(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, h11.Data))


def test_pipelined_requests_are_answered_in_order(engine_env: EngineEnv) -> None:
    pair = engine_env.h1()
    pair.engine.receive(b"".join(pair.request_bytes(t) for t in PIPELINED))
    answers = pair.responses(PIPELINED)
    files = engine_env.site.files
    assert answers == [(200, files[t]) for t in PIPELINED]
    logged = [line.split('"')[1] for line in engine_env.log_lines()]
    assert logged == [f"GET {t} HTTP/1.1" for t in PIPELINED]
    assert pair.engine.life.state == OPEN


def test_pipelined_requests_wait_in_order_behind_deferred_answers(engine_env: EngineEnv) -> None:
    pair = engine_env.h1(queue=True)  # every file is cold: each answer waits for the disk
    pair.engine.receive(b"".join(pair.request_bytes(t) for t in PIPELINED))
    assert pair.drain() == b""
    assert len(pair.host.deferred) == 1  # one at a time: the others wait in h11

    assert pair.host.run_deferred() == len(PIPELINED)  # each answer lets the next request in
    files = engine_env.site.files
    assert pair.responses(PIPELINED) == [(200, files[t]) for t in PIPELINED]


def test_large_body_is_produced_only_while_the_transport_takes_it(engine_env: EngineEnv) -> None:
    pair = engine_env.h1()
    pair.send("/static/one.bin")
    engine = pair.engine
    first = engine.output()
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert CHUNK <= len(first) < MEMORY_BIG  # the head and one chunk, not the whole body

    engine.writable = False  # the transport is full
    assert engine.output() == b""
    assert engine.output() == b""

    engine.writable = True
    rest = bytearray()
    while chunk := engine.output():
        assert len(chunk) <= 2 * CHUNK
        rest += chunk
    pair.client.receive_data(first + bytes(rest))
    events = pair.server_send()
    assert isinstance(events[0], h11.Response) and events[0].status_code == 200
    assert response_body(events) == engine_env.site.files["/static/one.bin"]
    assert isinstance(events[-1], h11.EndOfMessage)


def test_reading_stops_while_too_much_pipelined_input_waits_and_resumes_after(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h1()
    pad = [(b"x-pad", b"p" * 30_000)]  # under the header limit, each
    count = INPUT_BUFFER_MAX // 30_000 + 2
    waiting = b"".join(pair.request_bytes("/static/app.css", pad) for _ in range(count))
    assert len(waiting) > INPUT_BUFFER_MAX
    engine = pair.engine
    assert engine.wants_read

    engine.receive(pair.request_bytes("/static/one.bin") + waiting)  # all behind a large response
    assert not engine.wants_read

    targets = ["/static/one.bin"] + ["/static/app.css"] * count
    answers = pair.responses(targets)  # the large body goes out, then the rest are answered
    assert [status for status, _ in answers] == [200] * len(targets)
    assert answers[0][1] == engine_env.site.files["/static/one.bin"]
    assert engine.wants_read


def test_request_head_sent_too_slowly_is_aborted_with_a_408_in_the_log(engine_env: EngineEnv) -> None:
    pair = engine_env.h1(header_timeout=10.0)
    clock, engine = engine_env.clock, pair.engine
    start = clock.now
    engine.receive(b"GET / HTTP/1.1\r\n")
    clock.advance(5)
    engine.receive(b"Host: localhost\r\n")  # trickling in does not restart the clock
    clock.advance(5)
    engine.receive(b"X-Slow: 1\r\n")
    engine.tick(start + 10.0)
    assert engine.life.state == OPEN

    engine.tick(start + 10.5)
    assert engine.life.state == CLOSED  # abort: nothing more is written
    assert engine.output() == b""
    [line] = engine_env.log_lines()
    assert '"- - HTTP/1.1" 408 ' in line


def test_idle_keep_alive_connection_closes_by_tick(engine_env: EngineEnv) -> None:
    pair = engine_env.h1(idle_timeout=60.0)
    pair.send("/about")
    assert pair.server_send()[0].status_code == 200
    done = engine_env.clock.now
    pair.engine.tick(done + 60.0)
    assert pair.engine.life.state == OPEN
    pair.engine.tick(done + 60.5)
    assert pair.engine.life.state == CLOSING


def test_shutdown_of_an_idle_connection_closes_at_once(engine_env: EngineEnv) -> None:
    pair = engine_env.h1()
    pair.send("/about")
    pair.server_send()
    pair.engine.shutdown()
    assert pair.engine.life.state == CLOSING


def test_shutdown_of_a_busy_connection_closes_after_its_response(engine_env: EngineEnv) -> None:
    pair = engine_env.h1()
    pair.send("/static/one.bin")
    engine = pair.engine
    first = engine.output()
    engine.shutdown()
    assert engine.life.state == DRAINING

    rest = pair.drain()
    assert engine.life.state == CLOSING
    pair.client.receive_data(first + rest)
    events = pair.server_send()
    assert response_body(events) == engine_env.site.files["/static/one.bin"]


def test_shutdown_while_the_answer_is_deferred_sends_it_with_connection_close(
        engine_env: EngineEnv) -> None:
    pair = engine_env.h1(queue=True)
    pair.send("/static/app.css")
    engine = pair.engine
    engine.shutdown()
    assert engine.life.state == DRAINING and pair.drain() == b""

    pair.host.run_deferred()
    events = pair.server_send()
    response = events[0]
    assert isinstance(response, h11.Response) and (b"connection", b"close") in response.headers
    assert response_body(events) == engine_env.site.files["/static/app.css"]
    assert engine.life.state == CLOSING
