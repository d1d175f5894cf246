"""The `--metrics-bind` listener: plain HTTP/1.1 for Prometheus and health checks, nothing else.

    GET /metrics   the Prometheus text exposition format (h2serve/metrics.py)
    GET /healthz   200 "ok" while serving; 503 "stopping" once a graceful shutdown has begun, so a
                   load balancer stops sending new clients while the old ones drain

It is a listener of its own, on an address of its own (keep it private: loopback, or a management
network), so that a scrape never competes with the site for a connection slot and the site's
clients never see the metrics. HTTP/1.1 is parsed by h11, as on the site's ports; keep-alive works
(Prometheus keeps its connection), one request at a time per connection.

A scrape never blocks the serving loop: the exposition text is made in a worker thread (with
`--workers` it reads every worker's metric files), and the answer is written when it is ready.
Connections are few and capped (MAX_CONNECTIONS); one idle for IDLE_TIMEOUT seconds is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

import h11

from ..config import Config, ConfigError, parse_address
from ..metrics import PrometheusMeter
from .listener import bind

log = logging.getLogger("h2serve")

MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 60.0
MAX_HEAD = 8192
TEXT = b"text/plain; charset=utf-8"


class OpsListener:
    """Serves /metrics and /healthz on listening sockets bound already."""

    def __init__(self, sockets: list[socket.socket], meter: PrometheusMeter, stopping: Callable[[], bool],
                 before_scrape: Callable[[], None]) -> None:
        self.sockets = sockets
        self.meter = meter
        self.stopping = stopping            # whether a graceful shutdown has begun
        self.before_scrape = before_scrape  # on the loop: carry counts kept elsewhere into `meter`
        self.connections: set[OpsConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            self._servers.append(await loop.create_server(lambda: OpsConnection(self), sock=sock))

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close()

    async def metrics(self) -> tuple[int, bytes, bytes]:
        """Status, content type and body of /metrics, made in a worker thread."""
        self.before_scrape()
        body, ctype = await asyncio.to_thread(self.meter.exposition)
        return 200, ctype.encode(), body


class OpsConnection(asyncio.Protocol):
    """One client of the ops listener: h11, requests one at a time."""

    def __init__(self, listener: OpsListener) -> None:
        self.listener = listener
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.request: h11.Request | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.listener.connections) >= MAX_CONNECTIONS:
            self.transport.abort()
            return
        self.listener.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._idle()
        self._next()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._next()
        return True if self.busy else None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _idle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.close)

    def _next(self) -> None:
        """Handle the events h11 has, until it needs more data or an answer is being made."""
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self._answer(e.error_status_hint, TEXT, b"bad request\n", close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self.request = event
            elif isinstance(event, h11.EndOfMessage) and self.request is not None:
                self._route(self.request)
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _route(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            self._answer(405, TEXT, b"GET or HEAD only\n", extra=[(b"allow", b"GET, HEAD")])
        elif path == b"/healthz":
            if self.listener.stopping():
                self._answer(503, TEXT, b"stopping\n")
            else:
                self._answer(200, TEXT, b"ok\n")
        elif path == b"/metrics":
            self.busy = True
            self.transport.pause_reading()  # type: ignore[union-attr]
            task = asyncio.ensure_future(self.listener.metrics())
            task.add_done_callback(self._scraped)
        else:
            self._answer(404, TEXT, b"not found: try /metrics or /healthz\n")

    def _scraped(self, task: asyncio.Future[tuple[int, bytes, bytes]]) -> None:
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        if task.cancelled() or task.exception() is not None:
            log.error("metrics exposition failed: %r", None if task.cancelled() else task.exception())
            self._answer(500, TEXT, b"metrics exposition failed\n")
        else:
            self._answer(*task.result())
        self.transport.resume_reading()
        self._next()

    def _answer(self, status: int, ctype: bytes, body: bytes, *, close: bool = False,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
        assert self.transport is not None
        head = self.request is not None and self.request.method == b"HEAD"
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *(extra or [])]
        if close:
            headers.append((b"connection", b"close"))
        self.request = None
        try:
            data = self.conn.send(h11.Response(status_code=status, headers=headers))
            if not head:
                data += self.conn.send(h11.Data(data=body)) or b""
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(data or b"")
        if close or self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()


def bind_ops(config: Config) -> list[socket.socket]:
    """The --metrics-bind listening sockets; ConfigError naming the address if it fails."""
    assert config.metrics_bind is not None
    host, port = parse_address(config.metrics_bind)
    try:
        return bind(host, port)
    except OSError as e:
        raise ConfigError(f"--metrics-bind {config.metrics_bind}: cannot listen: {e.strerror or e}"
                          ) from None
