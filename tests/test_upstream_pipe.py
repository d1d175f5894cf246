"""upstream/pipe.py in memory: both bodies bounded, credit given only for what was taken."""

from __future__ import annotations

import pytest

from h2serve.upstream.pipe import HIGH_WATER, UNKNOWN, RequestBody, UpstreamBody


def test_request_body_credits_only_what_the_upstream_took() -> None:
    credited: list[int] = []
    body = RequestBody(credited.append, declared=10)
    woken: list[bool] = []
    body.on_ready = lambda: woken.append(True)
    body.feed(b"abcd", 9)  # 9: padding counts against flow control
    body.feed(b"efghij")
    assert woken == [True] and credited == [] and body.buffered == 10
    assert body.take() == (b"abcd", 9)
    body.ack(9)
    assert credited == [9] and body.buffered == 6
    body.end()
    assert body.ended and body.received == 10


def test_request_body_dropped_credits_everything_at_once_and_after() -> None:
    credited: list[int] = []
    body = RequestBody(credited.append)
    body.feed(b"x" * HIGH_WATER)
    assert body.full
    body.drop()
    assert credited == [HIGH_WATER] and not body.full and body.take() is None
    body.feed(b"yy")
    assert credited == [HIGH_WATER, 2]


def test_upstream_body_unknown_length_until_the_end_and_back_pressure() -> None:
    spaced: list[bool] = []
    closed: list[bool] = []
    body = UpstreamBody(lambda: spaced.append(True), lambda: closed.append(True))
    ready: list[bool] = []
    assert body.read(10) is None and body.remaining == UNKNOWN
    body.fill(lambda: ready.append(True))
    body.put(b"a" * HIGH_WATER)
    assert ready == [True] and body.full
    assert body.read(1000) == b"a" * 1000 and spaced == [True]  # below the mark: read on
    body.finish([(b"x-checksum", b"1")])
    assert body.remaining == HIGH_WATER - 1000
    assert body.read(HIGH_WATER) == b"a" * (HIGH_WATER - 1000) and body.remaining == 0
    assert body.read(10) == b"" and body.trailers == [(b"x-checksum", b"1")]
    body.close()
    assert closed == []  # complete: nothing to abandon


def test_upstream_body_cut_off() -> None:
    closed: list[bool] = []
    body = UpstreamBody(lambda: None, lambda: closed.append(True))
    body.put(b"abc")
    body.fail(OSError("upstream broke"))
    with pytest.raises(OSError, match="upstream broke"):
        body.read(10)
    body.close()
    assert closed == [True]  # the client side gave up before the end: the call is abandoned
