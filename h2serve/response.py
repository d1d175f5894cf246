"""What a handler answers: a status, headers and a body *source*, independent of the protocol.

A body is never a whole file read into memory to send it. The adapter pulls `read(n)` as far as its
flow-control window and transport buffer allow. Small hot files come from the cache as `BytesBody`,
always ready. A `FileBody` holds at most one chunk: when it has none, `read` answers None and the
adapter calls `fill(on_ready)`, which reads the next chunk with `pread` in a worker thread, so a
slow disk never stalls the event loop, and calls back when the chunk is in. Memory per stream is
one chunk at most, whatever the file size.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .filecache import FileEntry

Headers = list[tuple[bytes, bytes]]
READ_CHUNK = 64 * 1024


class Body(Protocol):
    """A source of response bytes, pulled by the adapter as flow control allows."""

    remaining: int

    def read(self, n: int) -> bytes | None:
        """Up to `n` of the next bytes, or None when none are ready (then call `fill`).
        Raises OSError if the file fails."""

    def fill(self, on_ready: Callable[[], None]) -> None:
        """Fetch the next bytes; `on_ready()` is called on the event loop when `read` can go on."""

    def close(self) -> None:
        """Release what the body holds (a file descriptor); safe to call twice."""


class BytesBody:
    """A body already in memory (cached small files, error pages, compressed bytes)."""

    __slots__ = ("_data", "_pos", "remaining")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.remaining = len(data)

    def read(self, n: int) -> bytes | None:
        if self._pos == 0 and n >= self.remaining:
            chunk = self._data  # the common case: a small file in one frame, no copy
        else:
            chunk = self._data[self._pos:self._pos + n]
        self._pos += len(chunk)
        self.remaining -= len(chunk)
        return chunk

    def fill(self, on_ready: Callable[[], None]) -> None:
        on_ready()  # always ready

    def close(self) -> None:
        self.remaining = 0


class FileBody:
    """`length` bytes of an open file from `offset`, read a chunk at a time in a worker thread."""

    __slots__ = ("_buffer", "_closed", "_error", "_fd", "_offset", "_pending", "_pos", "remaining")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset          # where the next chunk is read from
        self.remaining = length        # bytes not yet handed out by read()
        self._buffer = b""
        self._pos = 0
        self._pending = False
        self._closed = False
        self._error: OSError | None = None

    def read(self, n: int) -> bytes | None:
        if self._error is not None:
            raise self._error
        if self._pos >= len(self._buffer):
            return None if self.remaining else b""
        chunk = self._buffer[self._pos:self._pos + n]
        self._pos += len(chunk)
        self.remaining -= len(chunk)
        return chunk

    def fill(self, on_ready: Callable[[], None]) -> None:
        if self._pending or self._closed:
            return
        unread = self.remaining - (len(self._buffer) - self._pos)
        size = min(READ_CHUNK, unread)
        self._pending = True
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, os.pread, self._fd, size, self._offset)
        future.add_done_callback(lambda f: self._filled(f, size, on_ready))

    def _filled(self, future: Future[bytes] | asyncio.Future[bytes], size: int,
                on_ready: Callable[[], None]) -> None:
        self._pending = False
        if self._closed:  # closed while the read was in flight: the fd can be closed now
            self._release()
            return
        try:
            chunk = future.result()
        except OSError as e:
            self._error = e
        else:
            if len(chunk) < size:
                # The file shrank under us: sending fewer bytes than Content-Length promised would
                # corrupt the response, so fail it instead.
                self._error = OSError(f"file ended {self.remaining - len(chunk)} bytes early")
            self._buffer, self._pos = chunk, 0
            self._offset += len(chunk)
        on_ready()

    def close(self) -> None:
        self.remaining = 0
        self._buffer = b""
        self._closed = True
        if not self._pending:  # else a worker still reads the fd: closing it now could hit a reused one
            self._release()

    def _release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


EMPTY = BytesBody(b"")


@dataclass(slots=True)
class Response:
    """A complete answer: the adapter adds nothing but framing."""

    status: int
    headers: Headers = field(default_factory=list)
    body: Body | None = None
    file: FileEntry | None = None  # the file answered with, for what depends on it (push plans)

    @property
    def content_length(self) -> int:
        for name, value in self.headers:
            if name == b"content-length":
                return int(value)
        return 0


class DateCache:
    """The Date header value, formatted once per second rather than per response."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


http_date = DateCache()
