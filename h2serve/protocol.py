"""Picking HTTP/2 or HTTP/1.1 for each connection, and what all connections share.

Over TLS, ALPN has already decided by the time the connection is made. On a cleartext (h2c) port
the first bytes decide: the HTTP/2 client preface means prior-knowledge HTTP/2, anything else is
HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .accesslog import AccessLog
from .config import Config
from .http1 import H1Protocol
from .http2 import H2Protocol
from .net.tls import negotiated_protocol
from .push.plan import Pusher
from .site.handler import Site

log = logging.getLogger("h2serve")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Connection(Protocol):
    """What the server needs of a live connection of either protocol."""

    def shutdown(self) -> None:
        """Begin a graceful close: take no new requests, finish the ones in flight."""

    def abort(self) -> None:
        """Close now, whatever is in flight."""

    def check(self, now: float) -> None:
        """Enforce timeouts (called about once a second with `time.monotonic()`)."""


@dataclass
class Shared:
    """State every connection of one server sees."""

    config: Config
    site: Site
    access_log: AccessLog
    pusher: Pusher
    connections: set[Connection] = field(default_factory=set)
    closing: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    room_made: Callable[[], None] | None = None  # a connection closed: the listeners may accept again

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.drained.clear()

    def remove(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.drained.set()
        if self.room_made is not None:
            self.room_made()


class Dispatcher(asyncio.Protocol):
    """The protocol a listener starts every connection with; it hands over to h2 or h11."""

    def __init__(self, shared: Shared, *, tls: bool) -> None:
        self.shared = shared
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.started = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods of asyncio.Transport but are not its subclasses.
        self.transport = transport = typing.cast(asyncio.Transport, transport)
        if self.shared.closing:
            transport.abort()
            return
        if self.tls:
            chosen = negotiated_protocol(transport.get_extra_info("ssl_object"))
            if chosen == "http/1.1" and "http/1.1" not in self.shared.config.alpn:
                chosen = "h2"  # restricted to h2: a client without ALPN must speak h2 directly
            self._hand_over(chosen == "h2", b"")
        else:
            self.shared.add(self)  # until its first bytes say which protocol, so stop() sees it

    def data_received(self, data: bytes) -> None:
        # Cleartext only: sniff the preface.
        self.buffer += data
        n = min(len(self.buffer), len(H2_PREFACE))
        if self.buffer[:n] != H2_PREFACE[:n]:
            self._hand_over(False, self.buffer)
        elif n == len(H2_PREFACE):
            self._hand_over(True, self.buffer)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.remove(self)

    def shutdown(self) -> None:
        self.abort()  # no request has begun: nothing to finish

    def check(self, now: float) -> None:
        if now - self.started > self.shared.config.handshake_timeout:
            log.debug("cleartext client sent no preface or request line in time")
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _hand_over(self, h2: bool, data: bytes) -> None:
        assert self.transport is not None
        proto: asyncio.Protocol = H2Protocol(self.shared, self.tls) if h2 else H1Protocol(
            self.shared, self.tls)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)  # registers itself before this one leaves
        self.shared.remove(self)
        if data:
            proto.data_received(data)
