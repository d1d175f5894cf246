"""Budgets against abusive clients, as plain counters: no sockets, no timers.

HTTP/2 lets a client make the server work for frames that cost the client nothing: PINGs and
SETTINGS the server must acknowledge, empty DATA, WINDOW_UPDATE and PRIORITY frames, and streams
opened only to be reset at once (Rapid Reset, CVE-2023-44487). The h2 library counts none of these.
Each connection keeps a token bucket per kind of frame, charged as each frame is parsed (http2.py,
`_FrameBuffer`); a client that exhausts one is told ENHANCE_YOUR_CALM and disconnected.
Well-behaved clients stay far below every rate here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take()` is False once they run out."""

    __slots__ = ("_clock", "_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._last = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        self.tokens -= n
        return self.tokens >= 0

    def give(self, n: float) -> None:
        """Earn tokens back for useful work (a completed stream, data sent)."""
        self.tokens = min(self.burst, self.tokens + n)


@dataclass
class FrameBudgets:
    """The per-connection budgets of one HTTP/2 connection.

    - resets: each stream the client resets before its answer is complete, and each stream the
      server refuses for going over SETTINGS_MAX_CONCURRENT_STREAMS, spends one; each completed
      answer earns one back (the model that stopped Rapid Reset elsewhere).
    - rst_frames: every RST_STREAM frame spends one, those on streams already closed too (h2
      drops them without a word); a client may answer each DATA frame still in flight to a stream
      it cancelled with one, so every 16 KiB of DATA sent earns one back.
    - window_updates: each spends one; every 4 KiB of DATA sent earns one, since a client that
      is receiving data legitimately opens windows in proportion to it.
    """

    resets: TokenBucket = field(default_factory=lambda: TokenBucket(rate=20, burst=200))
    rst_frames: TokenBucket = field(default_factory=lambda: TokenBucket(rate=100, burst=1000))
    pings: TokenBucket = field(default_factory=lambda: TokenBucket(rate=20, burst=100))
    settings: TokenBucket = field(default_factory=lambda: TokenBucket(rate=10, burst=50))
    empty_data: TokenBucket = field(default_factory=lambda: TokenBucket(rate=20, burst=100))
    window_updates: TokenBucket = field(default_factory=lambda: TokenBucket(rate=100, burst=1000))
    priorities: TokenBucket = field(default_factory=lambda: TokenBucket(rate=100, burst=500))
    # frames of unknown types (to be ignored, RFC 9113 section 4.1) and GOAWAY
    other: TokenBucket = field(default_factory=lambda: TokenBucket(rate=10, burst=100))

    def data_sent(self, n: int) -> None:
        self.window_updates.give(n / 4096)
        self.rst_frames.give(n / 16384)

    def stream_completed(self) -> None:
        self.resets.give(1)
