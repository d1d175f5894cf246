"""The one asyncio protocol: it picks an engine for each connection and does all of its I/O.

Over TLS, ALPN has already decided by the time the connection is made. On a cleartext (h2c) port
the first bytes decide: the HTTP/2 client preface means prior-knowledge HTTP/2, anything else is
HTTP/1.1. From then on the adapter only moves bytes: what arrives goes to `engine.receive()`; what
`engine.output()` gives is written while the transport takes it (asyncio calls `pause_writing`
from inside `write` once its buffer passes the high-water mark, which stops the loop); reading is
paused while the engine says so; the engine's lifecycle state says when to close or abort.

It is also the engines' `Host` (proto/exchange.py): the clock, worker threads for blocking work,
and a wake-up when a file chunk read in a thread is ready.

The send timeouts live here because they are about the transport, not the protocol: a client whose
transport stays paused (it asks for more than it reads), and one that reads neither our last bytes
nor the TLS close_notify after we closed, which would keep the transport open for good (asyncio has
no limit of its own on plain TCP, and uvloop waits for the client's close_notify).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ..accesslog import client_host
from ..proto.exchange import Engine, Services
from ..proto.h1engine import H1Engine
from ..proto.h2engine import H2Engine
from ..proto.lifecycle import CLOSED, CLOSING
from .records import RecordSizer
from .tls import negotiated_protocol

log = logging.getLogger("h2serve")
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # 25 on Linux; Python names it there

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Memory per connection that does not read: what the transport holds above the kernel's socket
# buffer. It is what many slow readers multiply (2,000 of them at 512 KiB would be 1 GiB); the
# kernel's own buffer, autotuned to megabytes, is what keeps a fast reader's pipe full.
# They also decide how late the HTTP/2 scheduler's choices stay (issue 14): bytes already in the
# transport or the kernel go out in the order they were written, whatever the browser asks for next,
# so while a connection carries a page (its first megabyte, or after a pause: net/records.py) both
# are kept small and refilled as they drain. TCP_NOTSENT_LOWAT keeps the kernel from taking more
# than NOTSENT_LOWAT bytes it has not sent yet (the socket turns unwritable above it, as in h2o's
# latency optimisation); bytes in flight are the congestion window's, which is the network's. A bulk
# transfer gets the wide limits back (BULK_*: 0 is the kernel's default, no limit), so that large
# files keep their rate.
WRITE_BUFFER_HIGH = 32 * 1024     # transport buffer above which the engine is not asked for more
NOTSENT_LOWAT = 16 * 1024         # unsent bytes the kernel takes before the socket turns unwritable
BULK_WRITE_BUFFER_HIGH = 128 * 1024
BULK_NOTSENT_LOWAT = 0
MAX_OUTPUT_BUFFER = 512 * 1024    # bytes waiting to be written before a client is cut off


@dataclass
class Registry:
    """The live connections of one server, for the connection cap, shutdown and the sweep."""

    connections: set[Adapter] = field(default_factory=set)
    closing: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    room_made: Callable[[], None] | None = None  # a connection closed: the listeners may accept again

    def add(self, conn: Adapter) -> None:
        self.connections.add(conn)
        self.drained.clear()

    def remove(self, conn: Adapter) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.drained.set()
        if self.room_made is not None:
            self.room_made()


class Adapter(asyncio.Protocol):
    """One connection: a transport and the engine that speaks its protocol."""

    def __init__(self, services: Services, registry: Registry, *, tls: bool) -> None:
        self.services = services
        self.registry = registry
        self.tls = tls
        self.engine: Engine | None = None
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.paused = False
        self.paused_at = 0.0
        self.closed = False
        self.closed_at = 0.0
        self.reading = True
        self.started = time.monotonic()
        self._sniffed = b""
        self._draining = False
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shape = RecordSizer()  # record sizes over TLS; buffer limits on every connection
        self._bulk = False

    # -- Host --------------------------------------------------------------------------------------

    now = staticmethod(time.monotonic)

    def defer(self, kind: str, work: Callable[[], None],
              done: Callable[[BaseException | None], None]) -> None:
        assert self._loop is not None and self.services.work is not None
        future = asyncio.wrap_future(self.services.work.submit(kind, work), loop=self._loop)
        future.add_done_callback(partial(self._deferred, done))

    def _deferred(self, done: Callable[[BaseException | None], None], future: asyncio.Future[None]) -> None:
        if future.cancelled():
            done(asyncio.CancelledError())
        else:
            done(future.exception())
        self.wake()

    def wake(self) -> None:
        if self._draining:
            self._again = True  # called back from inside output(): the drain loop goes round again
        elif self.engine is not None:
            self._drain()

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods of asyncio.Transport but are not its subclasses.
        self.transport = transport = typing.cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.client = client_host(transport)
        self.registry.add(self)
        if self.registry.closing:
            self.abort()
            return
        self._limits(bulk=False)
        if self.tls:
            chosen = negotiated_protocol(transport.get_extra_info("ssl_object"))
            if chosen == "http/1.1" and "http/1.1" not in self.services.config.alpn:
                chosen = "h2"  # restricted to h2: a client without ALPN must speak h2 directly
            self._start(chosen == "h2")

    def data_received(self, data: bytes) -> None:
        engine = self.engine
        if engine is None:
            self._sniff(data)
            return
        if self.closed:
            return  # a TLS transport still delivers what arrives while it shuts down
        self.services.site.cache.catch_up()  # once per read: an edit made before these requests is seen
        engine.receive(data)
        self._drain()

    def eof_received(self) -> bool | None:
        if self.engine is None or self.closed:
            return None
        keep_open = self.engine.receive_eof()
        self._drain()
        return True if keep_open else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.engine is not None:
            self.engine.connection_lost()
            self.services.metrics.closed(self.h2)
        self.registry.remove(self)

    def pause_writing(self) -> None:
        self.paused = True
        self.paused_at = time.monotonic()
        if self.engine is not None:
            self.engine.writable = False

    def resume_writing(self) -> None:
        self.paused = False
        if self.engine is not None and not self.closed:
            self.engine.writable = True
            self.engine.resume()
            self._drain()

    # -- driving the engine ------------------------------------------------------------------------

    def _start(self, h2: bool, data: bytes = b"") -> None:
        kind = H2Engine if h2 else H1Engine
        self.engine = engine = kind(self.services, self, tls=self.tls, client=self.client)
        self.services.metrics.opened(h2)
        engine.start()
        if data:
            self.services.site.cache.catch_up()
            engine.receive(data)
        self._drain()

    def _sniff(self, data: bytes) -> None:
        """Cleartext: the HTTP/2 preface, or anything else for HTTP/1.1."""
        self._sniffed += data
        n = min(len(self._sniffed), len(H2_PREFACE))
        if self._sniffed[:n] != H2_PREFACE[:n]:
            self._start(False, self._sniffed)
        elif n == len(H2_PREFACE):
            self._start(True, self._sniffed)

    def _drain(self) -> None:
        """Write what the engine has while the transport takes it; then act on its state."""
        engine, transport = self.engine, self.transport
        if engine is None or transport is None or self.closed:
            return
        shape, split = self._shape, self.tls
        self._draining = True
        try:
            while True:
                self._again = False
                while not self.paused or engine.life.state == CLOSING:
                    data = engine.output()
                    if not data:
                        break
                    pieces = shape.pieces(data, time.monotonic(), split)
                    if shape.streaming != self._bulk:
                        self._limits(bulk=not self._bulk)
                    if pieces is None:
                        transport.write(data)
                    else:  # one TLS record each, in one socket write (net/records.py)
                        transport.writelines(pieces)
                    # Past the high-water mark (paused) the engine produces no DATA; what piles up
                    # beyond it is answers to a client that sends but does not read (floods of
                    # PINGs, SETTINGS, HEAD requests).
                    if self.paused and transport.get_write_buffer_size() > MAX_OUTPUT_BUFFER:
                        log.info("client %s does not read what it asks for: closing", self.client)
                        self.services.metrics.abuse("unread_output")
                        self.abort()
                        return
                if not self._again:
                    break
        finally:
            self._draining = False
        state = engine.life.state
        if state == CLOSING:
            self._close()
        elif state == CLOSED:
            self.abort()
        else:
            if engine.wants_read != self.reading:
                self.reading = engine.wants_read
                if self.reading:
                    transport.resume_reading()
                else:
                    transport.pause_reading()
            self._schedule(engine.deadline)

    def _limits(self, *, bulk: bool) -> None:
        """Narrow buffers while the connection carries a page, wide ones for a bulk transfer."""
        self._bulk = bulk
        transport = self.transport
        if transport is None:
            return
        transport.set_write_buffer_limits(high=BULK_WRITE_BUFFER_HIGH if bulk else WRITE_BUFFER_HIGH)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):  # Linux and macOS have it; elsewhere, the default
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT,
                                BULK_NOTSENT_LOWAT if bulk else NOTSENT_LOWAT)

    def _schedule(self, deadline: float | None) -> None:
        """Run `tick` at the engine's deadline when it is sooner than the next sweep."""
        if deadline is None or self._timer is not None or self._loop is None:
            return
        self._timer = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.check(time.monotonic())

    def _close(self) -> None:
        """Close after what is written (a GOAWAY, say)."""
        if self.closed or self.transport is None:
            return
        self.closed = True
        self.closed_at = time.monotonic()
        self.transport.close()

    # -- what the server calls ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Begin a graceful close: take no new requests, finish the ones in flight."""
        if self.engine is None:
            self.abort()  # no request has begun: nothing to finish
            return
        if not self.closed:
            self.engine.shutdown()
            self._drain()

    def abort(self) -> None:
        """Close now, whatever is in flight."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def check(self, now: float) -> None:
        """Timeouts, about once a second (and at the engine's deadline): the send timeouts here,
        then the engine's own."""
        cfg = self.services.config
        if self.closed:
            if self.transport is not None and now - self.closed_at > cfg.send_timeout:
                self.transport.abort()
            return
        engine = self.engine
        if engine is None:
            if now - self.started > cfg.handshake_timeout:
                log.debug("cleartext client sent no preface or request line in time")
                self.services.metrics.abuse("handshake_timeout")
                self.abort()
            return
        if self.paused and now - self.paused_at > cfg.send_timeout:
            log.info("client %s has read nothing for %gs: closing", self.client, cfg.send_timeout)
            self.services.metrics.abuse("send_timeout")
            if isinstance(engine, H2Engine):
                # Its streams are reset and a GOAWAY goes behind what waits, so that a client that
                # was only slow learns why; one that reads not even that is cut off after a
                # further send timeout (the closed branch above).
                engine.give_up_writing()
                self._drain()
            else:
                self.abort()
            return
        engine.tick(now)
        self._drain()

    @property
    def h2(self) -> bool:
        return isinstance(self.engine, H2Engine)

