"""FrameGuard, FrameBudgets and TokenBucket (proto/h2guard.py) alone, on a fake clock: what each
frame costs, how many bytes of a read h2 may have, frames split across reads."""

from __future__ import annotations

import pytest
from conftest import FakeClock
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2serve.proto.h2guard import MAX_CONTINUATIONS, PREFACE_SIZE, FrameBudgets, FrameGuard, TokenBucket

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PING = PingFrame(0, opaque_data=b"12345678").serialize()


def guard(open_streams: set[int] | None = None, max_block: int = 32768,
          clock: FakeClock | None = None) -> FrameGuard:
    """A guard past the preface, over budgets on `clock`; `open_streams` are the streams whose
    answers are not complete."""
    budgets = FrameBudgets(clock or FakeClock())
    g = FrameGuard(budgets, max_block, (open_streams or set()).__contains__)
    assert g.admit(PREFACE) == (PREFACE_SIZE, None)
    return g


# -- TokenBucket -----------------------------------------------------------------------------------


def test_token_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert all(bucket.take() for _ in range(5))
    assert not bucket.take()  # the sixth
    assert bucket.tokens == pytest.approx(-1)

    clock.advance(0.25)       # two and a half tokens earned
    assert bucket.take() and bucket.tokens == pytest.approx(0.5)
    clock.advance(10)         # long idle: capped at the burst
    assert bucket.take() and bucket.tokens == pytest.approx(4)


def test_token_bucket_give_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(rate=1, burst=3, clock=FakeClock())
    bucket.take(3)
    bucket.give(1.5)
    assert bucket.tokens == 1.5
    bucket.give(100)
    assert bucket.tokens == 3


def test_budgets_earn_back_for_useful_work() -> None:
    budgets = FrameBudgets(FakeClock())
    budgets.window_updates.take(budgets.window_updates.burst)
    budgets.rst_frames.take(budgets.rst_frames.burst)
    budgets.resets.take(budgets.resets.burst)
    budgets.data_sent(16384 * 4)
    assert budgets.window_updates.tokens == 16
    assert budgets.rst_frames.tokens == 4
    budgets.stream_completed()
    assert budgets.resets.tokens == 1


# -- FrameGuard ------------------------------------------------------------------------------------


def test_the_preface_is_passed_unexamined_even_split() -> None:
    g = FrameGuard(FrameBudgets(FakeClock()), 32768, lambda sid: False)
    assert g.admit(PREFACE[:10]) == (10, None)
    assert g.admit(PREFACE[10:] + PING) == (PREFACE_SIZE - 10 + len(PING), None)
    assert g.budgets.pings.tokens == g.budgets.pings.burst - 1


def test_admits_up_to_the_first_frame_over_budget() -> None:
    g = guard()
    burst = int(g.budgets.pings.burst)
    data = WindowUpdateFrame(0, window_increment=5).serialize() + PING * (burst + 10)
    admitted, refusal = g.admit(data)
    assert admitted == 13 + burst * len(PING)  # everything before the refused PING
    assert refusal is not None and refusal.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert "PING" in refusal.reason


def test_a_frame_header_split_across_reads_is_charged_once() -> None:
    g = guard()
    bucket = g.budgets.pings
    data = PING * 3
    for i in range(len(data)):
        assert g.admit(data[i:i + 1]) == (1, None)
    assert bucket.tokens == bucket.burst - 3


def test_refusal_of_a_frame_whose_header_began_in_the_previous_read() -> None:
    g = guard()
    g.budgets.pings.tokens = 0  # the next PING is over the budget
    assert g.admit(PING[:4]) == (4, None)
    admitted, refusal = g.admit(PING[4:])
    assert admitted == 0 and refusal is not None


def test_payloads_are_skipped_not_read_as_frames() -> None:
    g = guard()
    # A DATA payload that looks like PING frames must not be charged as PINGs.
    data = DataFrame(1, data=PING * 10).serialize()
    assert g.admit(data[:50]) == (50, None)
    assert g.admit(data[50:]) == (len(data) - 50, None)
    assert g.budgets.pings.tokens == g.budgets.pings.burst


@pytest.mark.parametrize("split", [10, 9])  # after the pad length byte; just before it
def test_padded_empty_data_is_charged_wherever_the_read_ends(split: int) -> None:
    g = guard()
    empty = DataFrame(1, data=b"", flags=["PADDED"], pad_length=3).serialize()
    full = DataFrame(1, data=b"abc", flags=["PADDED"], pad_length=3).serialize()
    for frame in (empty, full):
        assert g.admit(frame[:split]) == (split, None)
        assert g.admit(frame[split:]) == (len(frame) - split, None)
    assert g.budgets.empty_data.tokens == g.budgets.empty_data.burst - 1  # the empty one only


def test_data_with_end_stream_is_never_an_empty_data_flood() -> None:
    g = guard()
    end = DataFrame(1, data=b"", flags=["END_STREAM"]).serialize()
    assert g.admit(end * 1000) == (9000, None)
    assert g.budgets.empty_data.tokens == g.budgets.empty_data.burst


def test_rst_stream_on_a_stream_opened_in_the_same_read_is_a_rapid_reset() -> None:
    g = guard()
    pair = (HeadersFrame(1, data=b"\x82", flags=["END_HEADERS", "END_STREAM"]).serialize()
            + RstStreamFrame(1, error_code=8).serialize())
    g.admit(pair)
    assert g.budgets.resets.tokens == g.budgets.resets.burst - 1
    assert g.budgets.rst_frames.tokens == g.budgets.rst_frames.burst


def test_rst_stream_on_an_open_stream_closed_stream_and_twice() -> None:
    g = guard(open_streams={3})
    budgets = g.budgets
    rst3 = RstStreamFrame(3, error_code=8).serialize()
    g.admit(rst3 + rst3)  # the second one in the read finds it closed already
    g.admit(RstStreamFrame(5, error_code=8).serialize())  # never open: closed
    assert budgets.resets.tokens == budgets.resets.burst - 1
    assert budgets.rst_frames.tokens == budgets.rst_frames.burst - 2


def test_header_block_over_the_limit_is_refused_at_the_frame_that_crosses_it() -> None:
    g = guard(max_block=1000)
    head = HeadersFrame(1, data=b"\x00" * 600).serialize()
    more = ContinuationFrame(1, data=b"\x00" * 600, flags=["END_HEADERS"]).serialize()
    admitted, refusal = g.admit(head + more)
    assert admitted == len(head)
    assert refusal is not None and refusal.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_header_block_size_leaves_out_padding_and_priority() -> None:
    g = guard(max_block=1000)
    frame = HeadersFrame(1, data=b"\x00" * 1000, flags=["END_HEADERS", "PADDED", "PRIORITY"],
                         pad_length=200, depends_on=0, stream_weight=15).serialize()
    assert g.admit(frame) == (len(frame), None)


def test_continuation_count_is_bounded() -> None:
    g = guard()
    head = HeadersFrame(1, data=b"\x82").serialize()
    cont = ContinuationFrame(1, data=b"\x84").serialize()
    admitted, refusal = g.admit(head + cont * (MAX_CONTINUATIONS + 1))
    assert admitted == len(head) + MAX_CONTINUATIONS * len(cont)
    assert refusal is not None and "CONTINUATION" in refusal.reason


def test_a_block_ends_with_end_headers() -> None:
    g = guard()
    head = HeadersFrame(1, data=b"\x82").serialize()
    cont = ContinuationFrame(1, data=b"\x84").serialize()
    last = ContinuationFrame(1, data=b"\x84", flags=["END_HEADERS"]).serialize()
    block = head + cont * (MAX_CONTINUATIONS - 1) + last
    assert g.admit(block) == (len(block), None)
    # A CONTINUATION after the block ended continues nothing: left to h2, not counted.
    assert g.admit(cont * 100) == (len(cont) * 100, None)


def test_settings_ack_with_a_payload_is_a_frame_size_error() -> None:
    g = guard()
    ack = SettingsFrame(0, flags=["ACK"]).serialize()
    assert g.admit(ack) == (len(ack), None)
    bad = b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00\x04\x00\x01\x00\x00"
    admitted, refusal = g.admit(bad)
    assert admitted == 0
    assert refusal is not None and refusal.error_code == ErrorCodes.FRAME_SIZE_ERROR


def test_budgets_refill_on_the_clock() -> None:
    clock = FakeClock()
    g = guard(clock=clock)
    burst = int(g.budgets.pings.burst)
    assert g.admit(PING * burst) == (burst * len(PING), None)
    clock.advance(1.0)  # 20 PINGs a second
    rate = int(g.budgets.pings.rate)
    admitted, refusal = g.admit(PING * (rate + 1))
    assert admitted == rate * len(PING) and refusal is not None
