"""The two bodies of a proxied exchange, as bounded queues between the client's engine and the
upstream connection, with back-pressure both ways and no asyncio (the engines import this).

`RequestBody`: the client's upload on its way to the application. The engine `feed`s what it
reads; the bytes are acknowledged to the client (`ack`: an HTTP/2 WINDOW_UPDATE, or reading on
for HTTP/1.1) only once the upstream socket has taken them, so an application that reads slowly
holds the client back instead of making the server buffer: at most one HTTP/2 stream window, or
`HIGH_WATER` bytes for HTTP/1.1, wait here.

`UpstreamBody`: the application's answer on its way to the client, a `Body` (site/body.py) the
engines pull from as flow control allows. The upstream reader stops reading while `HIGH_WATER`
bytes wait here, so a client that reads slowly holds the application back instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

HIGH_WATER = 256 * 1024
UNKNOWN = 1 << 62  # `remaining` of an answer whose end has not arrived yet


def declared(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A request's Content-Length, if it gave one."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """The request has a body: Transfer-Encoding, or a Content-Length above 0 (h11 reads an
    empty one for a request with neither)."""
    return any(n == b"transfer-encoding" or (n == b"content-length" and v.strip() != b"0")
               for n, v in headers)


class RequestBody:
    """The client's request body, queued for the upstream connection."""

    def __init__(self, ack: Callable[[int], None], declared: int | None = None) -> None:
        self.ack = ack                  # give the client credit for `n` more flow-controlled bytes
        self.declared = declared        # Content-Length, if the client sent one
        self.received = 0
        self.buffered = 0
        self.ended = False
        self.dropped = False            # not forwarded after all: acknowledged as it comes
        self._chunks: deque[tuple[bytes, int]] = deque()
        self.on_ready: Callable[[], None] | None = None  # the consumer waits for bytes

    def feed(self, data: bytes, flow: int | None = None) -> None:
        """Bytes of the body (`flow`: what they count against flow control, padding included)."""
        flow = len(data) if flow is None else flow
        self.received += len(data)
        if self.dropped:
            self.ack(flow)
            return
        self._chunks.append((data, flow))
        self.buffered += len(data)
        self._notify()

    def end(self) -> None:
        self.ended = True
        self._notify()

    @property
    def full(self) -> bool:
        return self.buffered >= HIGH_WATER

    def take(self) -> tuple[bytes, int] | None:
        """The next chunk and its flow-control count, or None when none waits."""
        if not self._chunks:
            return None
        data, flow = self._chunks.popleft()
        self.buffered -= len(data)
        return data, flow

    def drop(self) -> None:
        """The body will not be forwarded (answered otherwise, or the exchange ended): what waits,
        and all that comes later, is acknowledged at once."""
        if self.dropped:
            return
        self.dropped = True
        flow = sum(f for _, f in self._chunks)
        self._chunks.clear()
        self.buffered = 0
        if flow:
            self.ack(flow)

    def _notify(self) -> None:
        ready, self.on_ready = self.on_ready, None
        if ready is not None:
            ready()


class UpstreamBody:
    """The application's response body, pulled by an engine (the `Body` protocol)."""

    def __init__(self, on_space: Callable[[], None], on_close: Callable[[], None]) -> None:
        self.remaining = UNKNOWN
        self.trailers: list[tuple[bytes, bytes]] = []
        self.buffered = 0
        self.ended = False
        self.closed = False
        self._chunks: deque[bytes] = deque()
        self._error: OSError | None = None
        self._waiting: Callable[[], None] | None = None
        self._on_space = on_space       # the upstream reader may read on
        self._on_close = on_close       # the client side is done with this body

    # -- the engine's side (Body) ------------------------------------------------------------------

    def read(self, n: int) -> bytes | None:
        if self._error is not None:
            raise self._error
        if not self._chunks:
            return b"" if self.ended else None
        chunk = self._chunks[0]
        if len(chunk) <= n:
            self._chunks.popleft()
        else:
            chunk, self._chunks[0] = chunk[:n], chunk[n:]
        was_full = self.buffered >= HIGH_WATER
        self.buffered -= len(chunk)
        if self.ended:
            self.remaining -= len(chunk)
        if was_full and self.buffered < HIGH_WATER:
            self._on_space()
        return chunk

    def fill(self, on_ready: Callable[[], None]) -> None:
        if self._chunks or self.ended or self._error is not None:
            on_ready()
        else:
            self._waiting = on_ready

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.remaining = 0
        self._chunks.clear()
        self.buffered = 0
        if not self.ended:  # cut off before its end: the upstream exchange is abandoned
            self._on_close()

    # -- the upstream reader's side ----------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self.buffered >= HIGH_WATER

    def put(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def finish(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.closed:
            return
        self.ended = True
        self.remaining = self.buffered
        self.trailers = trailers or []
        self._wake()

    def fail(self, error: OSError) -> None:
        """The application broke off its answer: the engine cuts the client's off too."""
        if self.closed:
            return
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting()
