"""Flood budgets, metered on the raw 9-byte frame headers before h2 parses anything.

HTTP/2 lets a client make the server work for frames that cost the client nothing: PINGs and
SETTINGS the server must acknowledge, empty DATA, WINDOW_UPDATE and PRIORITY frames, and streams
opened only to be reset at once (Rapid Reset, CVE-2023-44487). The h2 library counts none of these.
Each connection keeps a token bucket per kind of frame; a client that exhausts one is told
ENHANCE_YOUR_CALM and disconnected. Well-behaved clients stay far below every rate here.

Where the charge is made matters: h2 handles a whole read (up to 256 KiB, some ten thousand
PINGs) before returning any event, queueing an answer to each, and frames on closed streams produce
no event at all. So `FrameGuard.admit()` walks the frame headers of each read first, charging every
frame, and says how many bytes h2 may have: everything before the first frame over a budget. The
frame layout (RFC 9113 section 4.1) is public and fixed; this needs no part of h2's internals. A
header block is refused as soon as it grows past the advertised SETTINGS_MAX_HEADER_LIST_SIZE, or
past MAX_CONTINUATIONS frames, before h2 buffers it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from h2.errors import ErrorCodes


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


class FrameBudgets:
    """The per-connection budgets of one HTTP/2 connection, all on one clock.

    - resets: each stream the client resets before its answer is complete, and each stream the
      server refuses for going over SETTINGS_MAX_CONCURRENT_STREAMS, spends one; each completed
      answer earns one back (the model that stopped Rapid Reset elsewhere).
    - rst_frames: every RST_STREAM frame spends one, those on streams already closed too (h2
      drops them without a word); a client may answer each DATA frame still in flight to a stream
      it cancelled with one, so every 16 KiB of DATA sent earns one back.
    - window_updates: each spends one; every 4 KiB of DATA sent earns one, since a client that
      is receiving data legitimately opens windows in proportion to it.
    - priority_updates: RFC 9218 PRIORITY_UPDATE frames, which a browser sends as it reorders.
    - other: frames of unknown types (to be ignored, RFC 9113 section 4.1) and GOAWAY.
    """

    __slots__ = ("empty_data", "other", "pings", "priorities", "priority_updates", "resets", "rst_frames",
                 "settings", "window_updates")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.resets = TokenBucket(rate=20, burst=200, clock=clock)
        self.rst_frames = TokenBucket(rate=100, burst=1000, clock=clock)
        self.pings = TokenBucket(rate=20, burst=100, clock=clock)
        self.settings = TokenBucket(rate=10, burst=50, clock=clock)
        self.empty_data = TokenBucket(rate=20, burst=100, clock=clock)
        self.window_updates = TokenBucket(rate=100, burst=1000, clock=clock)
        self.priorities = TokenBucket(rate=100, burst=500, clock=clock)
        self.priority_updates = TokenBucket(rate=100, burst=500, clock=clock)
        self.other = TokenBucket(rate=10, burst=100, clock=clock)

    def data_sent(self, n: int) -> None:
        self.window_updates.give(n / 4096)
        self.rst_frames.give(n / 16384)

    def stream_completed(self) -> None:
        self.resets.give(1)


PREFACE_SIZE = 24       # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": passed to h2, which checks it
MAX_CONTINUATIONS = 32  # CONTINUATION frames in one header block (h2 allows 64)
# Frame types (RFC 9113 section 6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
PRIORITY_UPDATE = 0x10  # RFC 9218 section 7.1
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the guard stopped a client's input: the GOAWAY error code and a line for the log."""

    error_code: ErrorCodes
    reason: str


class FrameGuard:
    """Walks the client's frames as bytes arrive and charges each to `budgets`.

    `stream_open(id)` says whether an answer on that stream is still incomplete (a RST_STREAM on it
    is then a Rapid Reset, not a late one). h2 sees a read only after the guard has walked all of it,
    so the guard keeps what the read itself changes: streams opened by HEADERS earlier in it count
    as open, and a stream reset earlier in it as closed.
    """

    __slots__ = ("_block", "_block_frames", "_block_size", "_fresh", "_head", "_pending", "_reset", "_skip",
                 "budgets", "max_header_block", "stream_open")

    def __init__(self, budgets: FrameBudgets, max_header_block: int,
                 stream_open: Callable[[int], bool]) -> None:
        self.budgets = budgets
        self.max_header_block = max_header_block
        self.stream_open = stream_open
        self._skip = PREFACE_SIZE   # bytes to pass without looking: the preface, then payloads
        self._head = b""            # a frame header split across reads
        # (type, flags, stream, length) of a PADDED frame whose pad length is in the next read
        self._pending: tuple[int, int, int, int] | None = None
        self._block = 0             # stream of a header block awaiting CONTINUATION, or 0
        self._block_size = 0
        self._block_frames = 0
        self._fresh: set[int] = set()   # streams opened by HEADERS in this read
        self._reset: set[int] = set()   # streams reset by RST_STREAM in this read

    def admit(self, data: bytes) -> tuple[int, Refusal | None]:
        """How many bytes of `data` h2 may have, and the refusal that stopped the rest (or None)."""
        self._fresh.clear()
        self._reset.clear()
        pos, size = 0, len(data)
        while pos < size:
            if self._pending is not None:  # a padded frame's first payload byte is here now
                kind, flags, sid, length = self._pending
                self._pending = None
                refusal = self._charge(kind, flags, sid, length, data[pos])
                if refusal is not None:
                    return pos, refusal
                self._skip = length
                continue
            if self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
                continue
            need = 9 - len(self._head)
            if size - pos < need:
                self._head += data[pos:]
                return size, None
            start = pos - len(self._head)
            header = self._head + data[pos:pos + need] if self._head else data[pos:pos + 9]
            self._head = b""
            pos += need
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            sid = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            if flags & PADDED and kind in (DATA, HEADERS) and length:
                if pos == size:
                    self._pending = (kind, flags, sid, length)
                    return size, None
                refusal = self._charge(kind, flags, sid, length, data[pos])
            else:
                refusal = self._charge(kind, flags, sid, length, 0)
            if refusal is not None:
                return max(start, 0), refusal
            self._skip = length
        return size, None

    def _charge(self, kind: int, flags: int, sid: int, length: int, pad: int) -> Refusal | None:
        """Charge one frame; `pad` is its pad length when it is PADDED."""
        b = self.budgets
        if kind == DATA:
            body = length - (pad + 1 if flags & PADDED else 0)
            if body <= 0 and not flags & END_STREAM and not b.empty_data.take():
                return _calm("empty DATA flood")
            return None
        if kind == HEADERS:
            self._fresh.add(sid)
            body = length - (pad + 1 if flags & PADDED else 0) - (5 if flags & PRIORITY_FLAG else 0)
            self._block, self._block_size, self._block_frames = sid, body, 0
            return self._block_check(flags)
        if kind == CONTINUATION:
            if self._block and sid == self._block:
                self._block_size += length
                self._block_frames += 1
                return self._block_check(flags)
            return None  # h2 refuses a CONTINUATION that continues nothing
        if kind == RST_STREAM:
            # A stream still open is one whose answer is not complete (Rapid Reset spends from the
            # reset budget, which completed streams refill). A RST_STREAM for a stream already
            # closed costs a token of its own.
            # One already reset in this read counts as closed, as h2 will have closed it by then.
            if sid not in self._reset and (sid in self._fresh or self.stream_open(sid)):
                self._reset.add(sid)
                if not b.resets.take():
                    return _calm("streams reset as fast as they are opened (Rapid Reset); "
                                 "RST_STREAM flood")
            elif not b.rst_frames.take():
                return _calm("RST_STREAM flood")
            return None
        if kind == SETTINGS:
            if flags & ACK and length:
                # RFC 9113 section 6.5: FRAME_SIZE_ERROR (hyperframe's complaint would be PROTOCOL_ERROR).
                return Refusal(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return None if b.settings.take() else _calm("SETTINGS flood")
        if kind == PING:
            return None if b.pings.take() else _calm("PING flood")
        if kind == WINDOW_UPDATE:
            return None if b.window_updates.take() else _calm("WINDOW_UPDATE flood")
        if kind == PRIORITY:
            return None if b.priorities.take() else _calm("PRIORITY flood")
        if kind == PRIORITY_UPDATE:
            return None if b.priority_updates.take() else _calm("PRIORITY_UPDATE flood")
        if kind == PUSH_PROMISE:
            return None  # a client may not send one: h2 makes it a PROTOCOL_ERROR
        return None if b.other.take() else _calm("unknown or GOAWAY frame flood")

    def _block_check(self, flags: int) -> Refusal | None:
        if self._block_size > self.max_header_block:
            return _calm(f"header block over SETTINGS_MAX_HEADER_LIST_SIZE ({self.max_header_block} bytes)")
        if self._block_frames > MAX_CONTINUATIONS:
            return _calm(f"header block in over {MAX_CONTINUATIONS} CONTINUATION frames")
        if flags & END_HEADERS:
            self._block = 0
        return None


def _calm(reason: str) -> Refusal:
    return Refusal(ErrorCodes.ENHANCE_YOUR_CALM, reason)
