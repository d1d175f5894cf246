"""Keep-alive HTTP/1.1 connections to the application, a bounded pool per worker.

Each connection is an `h11.Connection` (client side) over an asyncio stream, so no HTTP/1.1 is
parsed by hand. At most `--upstream-connections` are open at once (a request beyond that waits
for one); an idle one is kept `--upstream-idle-timeout` seconds, and one the application has closed
meanwhile is noticed when it is taken (EOF already read) and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import typing

import h11

from .target import Target

READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024  # the largest response head taken from the application


class UpstreamClosed(OSError):
    """The application closed the connection before answering in full."""


class UpstreamConnection:
    """One connection to the application."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.idle_since = 0.0
        self.reused = False

    def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def next_event(self, timeout: float) -> h11.Event:
        """The application's next event; TimeoutError if no byte came for `timeout`."""
        while True:
            event = self.h11.next_event()
            if event is h11.PAUSED:
                raise UpstreamClosed("sent more than its answer")
            if event is not h11.NEED_DATA:
                return typing.cast(h11.Event, event)
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            self.h11.receive_data(data)

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def alive(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Pool:
    """The connections of one worker to one application."""

    def __init__(self, target: Target, *, size: int, connect_timeout: float,
                 idle_timeout: float) -> None:
        self.target = target
        self.size = size
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self._slots: asyncio.Semaphore | None = None
        self._sweep: asyncio.TimerHandle | None = None

    async def acquire(self) -> UpstreamConnection:
        """A connection, kept alive or new; waits while `size` are in use. OSError if the
        application cannot be reached, asyncio.TimeoutError if connecting takes too long."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        await self._slots.acquire()
        try:
            now = time.monotonic()
            while self.idle:
                conn = self.idle.pop()
                if conn.alive() and now - conn.idle_since < self.idle_timeout:
                    conn.reused = True
                    return conn
                self._discard(conn)
            conn = await asyncio.wait_for(self._connect(), self.connect_timeout)
            self.open += 1
            return conn
        except BaseException:
            self._slots.release()
            raise

    async def _connect(self) -> UpstreamConnection:
        t = self.target
        if t.unix is not None:
            reader, writer = await asyncio.open_unix_connection(t.unix, limit=READ_SIZE)
        else:
            reader, writer = await asyncio.open_connection(t.host, t.port, limit=READ_SIZE)
        return UpstreamConnection(reader, writer)

    def release(self, conn: UpstreamConnection) -> None:
        """Done with `conn`: kept for the next request if its exchange ended cleanly."""
        assert self._slots is not None
        self._slots.release()
        if conn.reusable and conn.alive():
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire)
        else:
            self._discard(conn)

    def _discard(self, conn: UpstreamConnection) -> None:
        self.open -= 1
        conn.close()

    def _expire(self) -> None:
        """Close the connections idle for longer than the timeout (their sockets, not just later)."""
        self._sweep = None
        now = time.monotonic()
        keep = []
        for conn in self.idle:
            if now - conn.idle_since >= self.idle_timeout or not conn.alive():
                self._discard(conn)
            else:
                keep.append(conn)
        self.idle = keep
        if keep:
            self._sweep = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire)

    def close(self) -> None:
        for conn in self.idle:
            self._discard(conn)
        self.idle = []
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
