"""Which HTTP/2 stream's DATA goes out next: RFC 9218 priorities, decided as late as they can be.

Browsers say what they need first: a `priority` request header (urgency `u` 0..7, lower first, and
`i` for a response that is useful in pieces) and PRIORITY_UPDATE frames that change it later. Among
the streams that have data to send and window to send it in, the scheduler serves:

- the lowest urgency first;
- within one urgency, the non-incremental streams one at a time, in order (a request's stream id;
  a pushed response right after its page, in the push map's order), each until it is complete,
  then the incremental ones round-robin, one run each per turn;
- work-conserving: a stream whose window is shut waits aside (blocked) until a WINDOW_UPDATE, or a
  larger SETTINGS_INITIAL_WINDOW_SIZE, opens it, and the next one goes meanwhile.

With priorities off every stream is incremental at one urgency: plain round-robin, as before.

The decision is made each time the adapter asks the engine for output, not when a response is
queued: a stylesheet asked for after twenty images still goes first. This module decides order only;
the engine (h2engine.py) reads the bodies and frames the DATA. A queued stream whose priority changes
is queued again under its new one; the entry it leaves behind is skipped (entries carry the stream's
queue generation).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from .priority import DEFAULT, Priority

if TYPE_CHECKING:
    from ..site.body import Body
    from .exchange import Exchange

URGENCIES = 8


class Sendable(Protocol):
    """What the scheduler knows of a stream."""

    id: int
    blocked_at: float
    priority: Priority
    order: tuple[int, int]   # (stream id, 0) for a request; (page's id, 1 + rank) for a push
    queued: int              # generation of its entry in the queue; 0 when not queued


S = TypeVar("S", bound=Sendable)


class Stream:
    """A request being answered on one stream: its exchange, the body being sent, and what the
    scheduler orders it by."""

    __slots__ = ("blocked_at", "body", "exchange", "id", "order", "priority", "queued", "uploading")

    def __init__(self, stream_id: int, exchange: Exchange, priority: Priority = DEFAULT,
                 order: tuple[int, int] | None = None) -> None:
        self.id = stream_id
        self.exchange = exchange
        self.priority = priority
        self.order = order or (stream_id, 0)  # a push: (its page's stream, 1 + its rank)
        self.queued = 0         # the scheduler's entry for it (h2sched.py)
        self.uploading = False  # the client sends a body (DATA seen, END_STREAM not yet)
        self.body: Body | None = None
        self.blocked_at = 0.0   # when it last ran out of flow-control window


class SendScheduler(Generic[S]):
    """The order in which streams with data to send get their turns."""

    __slots__ = ("_count", "_gen", "_incremental", "_sequential", "blocked", "priorities")

    def __init__(self, priorities: bool = True) -> None:
        self.priorities = priorities
        # Per urgency: non-incremental streams by order (a heap), incremental ones in turn (a deque).
        self._sequential: list[list[tuple[tuple[int, int], int, S]]] = [[] for _ in range(URGENCIES)]
        self._incremental: list[deque[tuple[int, S]]] = [deque() for _ in range(URGENCIES)]
        self._gen = itertools.count(1)
        self._count = 0  # entries queued, stale ones included
        self.blocked: dict[int, S] = {}  # waiting for a WINDOW_UPDATE

    @property
    def ready(self) -> bool:
        """Whether any stream may be waiting for its turn (stale entries count: `next` skips them)."""
        return self._count > 0

    def add(self, stream: S) -> None:
        """`stream` has data to send (again): queued under its priority now."""
        gen = stream.queued = next(self._gen)
        self._count += 1
        priority = stream.priority
        if not self.priorities:
            self._incremental[3].append((gen, stream))
        elif priority.incremental:
            self._incremental[priority.urgency].append((gen, stream))
        else:
            heapq.heappush(self._sequential[priority.urgency], (stream.order, gen, stream))

    def reprioritize(self, stream: S) -> None:
        """`stream`'s priority changed: if it is queued, queue it again where it belongs now."""
        if stream.queued:
            self.add(stream)

    def next(self) -> S | None:
        """The stream whose turn it is, taken off the queue (the engine adds it back if it has more);
        a stream may come out that has ended meanwhile: the engine skips it."""
        while self._count:
            for urgency in range(URGENCIES):
                sequential = self._sequential[urgency]
                if sequential:
                    _, gen, stream = heapq.heappop(sequential)
                    break
                incremental = self._incremental[urgency]
                if incremental:
                    gen, stream = incremental.popleft()
                    break
            else:  # pragma: no cover - _count says there is an entry
                return None
            self._count -= 1
            if gen == stream.queued:
                stream.queued = 0
                return stream
        return None

    def block(self, stream: S, now: float) -> None:
        """`stream` has no window left: aside until `opened()` names it."""
        if stream.id not in self.blocked:
            stream.blocked_at = now
            self.blocked[stream.id] = stream

    def opened(self, stream_id: int) -> None:
        """A window opened: the stream's own, or with 0 the connection's (every blocked stream)."""
        if stream_id == 0:
            blocked, self.blocked = self.blocked, {}
            for stream in blocked.values():
                self.add(stream)
            return
        woken = self.blocked.pop(stream_id, None)
        if woken is not None:
            self.add(woken)

    def discard(self, stream: S) -> None:
        """Forget a stream that ended: aside, or in the queue (its entry is skipped)."""
        self.blocked.pop(stream.id, None)
        stream.queued = 0

    def stalled(self, now: float, timeout: float) -> list[S]:
        """Streams that have waited for window longer than `timeout` seconds."""
        return [s for s in self.blocked.values() if now - s.blocked_at > timeout]

    def clear(self) -> None:
        for queue in self._sequential:
            queue.clear()
        for turns in self._incremental:
            turns.clear()
        self._count = 0
        self.blocked.clear()

    def __iter__(self) -> Iterator[S]:
        """The queued streams (in no particular order) and the blocked ones."""
        queued = [s for q in self._sequential for _, gen, s in q if gen == s.queued]
        queued += [s for q in self._incremental for gen, s in q if gen == s.queued]
        return iter([*queued, *self.blocked.values()])
