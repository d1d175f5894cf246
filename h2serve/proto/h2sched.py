"""Which HTTP/2 stream's DATA goes out next.

Streams with a body to send are served round-robin, one run (at most `RUN_BYTES`, and never more
than the stream's and the connection's flow-control windows) per turn. A stream whose window is
shut waits aside, blocked, until a WINDOW_UPDATE (or a larger SETTINGS_INITIAL_WINDOW_SIZE) opens
it, so the others go on: the scheduler is work-conserving. The decision is made as late as it can
be: each time the adapter asks the engine for output, not when a response is queued.

This module decides order only; the engine (h2engine.py) reads the bodies and frames the DATA.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Sendable(Protocol):
    """What the scheduler knows of a stream."""

    id: int
    blocked_at: float


S = TypeVar("S", bound=Sendable)


class SendScheduler(Generic[S]):
    """The order in which streams with data to send get their turns."""

    __slots__ = ("blocked", "ready")

    def __init__(self) -> None:
        self.ready: deque[S] = deque()    # data to send and, last we knew, window
        self.blocked: dict[int, S] = {}   # waiting for a WINDOW_UPDATE

    def add(self, stream: S) -> None:
        """`stream` has data to send (again): it takes its turn after those already waiting."""
        self.ready.append(stream)

    def next(self) -> S | None:
        """The stream whose turn it is, taken off the queue (the engine adds it back if it has more);
        a stream may come out that has ended meanwhile: the engine skips it."""
        return self.ready.popleft() if self.ready else None

    def block(self, stream: S, now: float) -> None:
        """`stream` has no window left: aside until `opened()` names it."""
        if stream.id not in self.blocked:
            stream.blocked_at = now
            self.blocked[stream.id] = stream

    def opened(self, stream_id: int) -> None:
        """A window opened: the stream's own, or with 0 the connection's (every blocked stream)."""
        if stream_id == 0:
            if self.blocked:
                self.ready.extend(self.blocked.values())
                self.blocked.clear()
            return
        stream = self.blocked.pop(stream_id, None)
        if stream is not None:
            self.ready.append(stream)

    def discard(self, stream_id: int) -> None:
        """Forget a blocked stream that ended; one in the ready queue is skipped when it comes up."""
        self.blocked.pop(stream_id, None)

    def stalled(self, now: float, timeout: float) -> list[S]:
        """Streams that have waited for window longer than `timeout` seconds."""
        return [s for s in self.blocked.values() if now - s.blocked_at > timeout]

    def clear(self) -> None:
        self.ready.clear()
        self.blocked.clear()

    def __iter__(self) -> Iterator[S]:
        return iter([*self.ready, *self.blocked.values()])
