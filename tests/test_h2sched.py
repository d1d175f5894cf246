"""SendScheduler (proto/h2sched.py) alone: RFC 9218 order (urgency; non-incremental streams one
at a time in order, incremental ones in turn; reprioritized streams moved; pushes after their page),
round-robin with priorities off, streams set aside at a zero window, woken by their own
WINDOW_UPDATE or the connection's, and the stalled ones found by age."""

from __future__ import annotations

from dataclasses import dataclass, field

from h2serve.proto.h2sched import SendScheduler
from h2serve.proto.priority import Priority


@dataclass(eq=False)
class S:
    id: int
    blocked_at: float = 0.0
    priority: Priority = field(default_factory=Priority)
    order: tuple[int, int] = (0, 0)
    queued: int = 0

    def __post_init__(self) -> None:
        self.order = self.order if self.order != (0, 0) else (self.id, 0)


def P(sid: int, urgency: int = 3, incremental: bool = False, order: tuple[int, int] = (0, 0)) -> S:
    return S(sid, priority=Priority(urgency, incremental), order=order)


def turns(sched: SendScheduler[S], rounds: int) -> list[int]:
    """The ids of `rounds` turns, each stream put back after its turn (it has more to send)."""
    out = []
    for _ in range(rounds):
        stream = sched.next()
        if stream is None:
            break
        out.append(stream.id)
        sched.add(stream)
    return out


def test_round_robin_in_the_order_added() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    for sid in (1, 3, 5):
        sched.add(S(sid))
    assert turns(sched, 7) == [1, 3, 5, 1, 3, 5, 1]


def test_empty_scheduler_gives_none() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    assert sched.next() is None
    assert list(sched) == []


def test_blocked_stream_waits_for_its_own_window_update() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    one, three = S(1), S(3)
    sched.add(one)
    sched.add(three)
    assert sched.next() is one
    sched.block(one, 10.0)
    assert turns(sched, 3) == [3, 3, 3]  # work-conserving: 3 goes on alone

    sched.opened(5)  # some other stream's window: nothing
    assert turns(sched, 2) == [3, 3]
    sched.opened(1)
    assert turns(sched, 4) == [3, 1, 3, 1]
    assert sched.blocked == {}


def test_connection_window_update_wakes_every_blocked_stream() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    streams = [S(1), S(3), S(5)]
    for s in streams:
        sched.block(s, 1.0)
    assert sched.next() is None
    sched.opened(0)
    assert turns(sched, 3) == [1, 3, 5]
    assert sched.blocked == {}


def test_blocking_twice_keeps_the_first_time() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    one = S(1)
    sched.block(one, 5.0)
    sched.block(one, 9.0)
    assert one.blocked_at == 5.0
    assert list(sched) == [one]


def test_stalled_streams_by_age() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    old, young = S(1), S(3)
    sched.block(old, 100.0)
    sched.block(young, 120.0)
    assert sched.stalled(130.0, 30.0) == []  # exactly the timeout: not yet
    assert sched.stalled(130.5, 30.0) == [old]
    assert sched.stalled(151.0, 30.0) == [old, young]


def test_discard_forgets_a_blocked_stream() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    one = S(1)
    sched.block(one, 1.0)
    sched.discard(one)
    sched.opened(0)
    assert sched.next() is None
    assert sched.stalled(1000.0, 1.0) == []


def test_clear() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    sched.add(S(1))
    sched.block(S(3), 1.0)
    sched.clear()
    assert list(sched) == [] and sched.next() is None


# -- RFC 9218 order ---------------------------------------------------------------------------------


def drain(sched: SendScheduler[S], runs: dict[int, int]) -> list[int]:
    """Turns until every stream has had `runs[id]` turns (its body in that many runs)."""
    out = []
    while (stream := sched.next()) is not None:
        out.append(stream.id)
        runs[stream.id] -= 1
        if runs[stream.id]:
            sched.add(stream)
    return out


def test_lower_urgency_first_whatever_the_order_added() -> None:
    sched: SendScheduler[S] = SendScheduler()
    for stream in (P(1, 5), P(3, 3), P(5, 0), P(7, 3)):
        sched.add(stream)
    assert drain(sched, {1: 1, 3: 1, 5: 1, 7: 1}) == [5, 3, 7, 1]


def test_non_incremental_streams_one_at_a_time_in_stream_order() -> None:
    sched: SendScheduler[S] = SendScheduler()
    for stream in (P(5, 2), P(1, 2), P(3, 2)):
        sched.add(stream)
    assert drain(sched, {1: 3, 3: 2, 5: 2}) == [1, 1, 1, 3, 3, 5, 5]


def test_incremental_streams_take_turns_after_the_non_incremental_of_their_urgency() -> None:
    sched: SendScheduler[S] = SendScheduler()
    for stream in (P(1, 3, True), P(3, 3, True), P(5, 3), P(7, 4)):
        sched.add(stream)
    assert drain(sched, {1: 2, 3: 2, 5: 2, 7: 1}) == [5, 5, 1, 3, 1, 3, 7]


def test_a_stream_made_urgent_while_queued_goes_next_and_once() -> None:
    sched: SendScheduler[S] = SendScheduler()
    image, css = P(1, 5, True), P(3, 5, True)
    sched.add(image)
    sched.add(css)
    css.priority = Priority(0, False)
    sched.reprioritize(css)
    assert drain(sched, {1: 1, 3: 2}) == [3, 3, 1]  # its old entry is skipped


def test_reprioritizing_a_stream_not_queued_queues_nothing() -> None:
    sched: SendScheduler[S] = SendScheduler()
    one = P(1)
    sched.reprioritize(one)
    assert sched.next() is None


def test_pushes_follow_their_page_in_the_push_maps_order() -> None:
    sched: SendScheduler[S] = SendScheduler()
    page = P(1, 0)
    image, script, style = P(6, 0, order=(1, 3)), P(4, 0, order=(1, 2)), P(2, 0, order=(1, 1))
    later_page = P(3, 0)
    for stream in (image, later_page, style, page, script):
        sched.add(stream)
    assert drain(sched, {1: 2, 2: 1, 4: 1, 6: 1, 3: 1}) == [1, 1, 2, 4, 6, 3]


def test_a_blocked_stream_lets_the_next_urgency_go_and_returns_to_its_place() -> None:
    sched: SendScheduler[S] = SendScheduler()
    css, image = P(1, 0), P(3, 5, True)
    sched.add(css)
    sched.add(image)
    assert sched.next() is css
    sched.block(css, 1.0)
    assert sched.next() is image  # work-conserving
    sched.add(image)
    sched.opened(1)
    assert [sched.next(), sched.next()] == [css, image]


def test_priorities_off_is_round_robin_whatever_the_signals() -> None:
    sched: SendScheduler[S] = SendScheduler(priorities=False)
    for stream in (P(1, 7), P(3, 0), P(5, 0, True)):
        sched.add(stream)
    assert drain(sched, {1: 2, 3: 2, 5: 2}) == [1, 3, 5, 1, 3, 5]


def test_a_discarded_queued_stream_does_not_come_out() -> None:
    sched: SendScheduler[S] = SendScheduler()
    one, three = P(1), P(3)
    sched.add(one)
    sched.add(three)
    sched.discard(one)
    assert sched.next() is three and sched.next() is None
