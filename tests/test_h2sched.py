"""SendScheduler (proto/h2sched.py) alone: round-robin turns, streams set aside at a zero window,
woken by their own WINDOW_UPDATE or the connection's, and the stalled ones found by age."""

from __future__ import annotations

from dataclasses import dataclass

from h2serve.proto.h2sched import SendScheduler


@dataclass(eq=False)
class S:
    id: int
    blocked_at: float = 0.0


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
    sched: SendScheduler[S] = SendScheduler()
    for sid in (1, 3, 5):
        sched.add(S(sid))
    assert turns(sched, 7) == [1, 3, 5, 1, 3, 5, 1]


def test_empty_scheduler_gives_none() -> None:
    sched: SendScheduler[S] = SendScheduler()
    assert sched.next() is None
    assert list(sched) == []


def test_blocked_stream_waits_for_its_own_window_update() -> None:
    sched: SendScheduler[S] = SendScheduler()
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
    sched: SendScheduler[S] = SendScheduler()
    streams = [S(1), S(3), S(5)]
    for s in streams:
        sched.block(s, 1.0)
    assert sched.next() is None
    sched.opened(0)
    assert turns(sched, 3) == [1, 3, 5]
    assert sched.blocked == {}


def test_blocking_twice_keeps_the_first_time() -> None:
    sched: SendScheduler[S] = SendScheduler()
    one = S(1)
    sched.block(one, 5.0)
    sched.block(one, 9.0)
    assert one.blocked_at == 5.0
    assert list(sched) == [one]


def test_stalled_streams_by_age() -> None:
    sched: SendScheduler[S] = SendScheduler()
    old, young = S(1), S(3)
    sched.block(old, 100.0)
    sched.block(young, 120.0)
    assert sched.stalled(130.0, 30.0) == []  # exactly the timeout: not yet
    assert sched.stalled(130.5, 30.0) == [old]
    assert sched.stalled(151.0, 30.0) == [old, young]


def test_discard_forgets_a_blocked_stream() -> None:
    sched: SendScheduler[S] = SendScheduler()
    one = S(1)
    sched.block(one, 1.0)
    sched.discard(1)
    sched.opened(0)
    assert sched.next() is None
    assert sched.stalled(1000.0, 1.0) == []


def test_clear() -> None:
    sched: SendScheduler[S] = SendScheduler()
    sched.add(S(1))
    sched.block(S(3), 1.0)
    sched.clear()
    assert list(sched) == [] and sched.next() is None
