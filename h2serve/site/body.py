"""What a handler answers: a status, headers and a body *source*, independent of the protocol.

A body is never a whole file read into memory to send it. The adapter pulls `read(n)` as far as its
flow-control window and transport buffer allow. Small hot files come from the cache as `BytesBody`,
always ready. A `FileBody` reads with `pread` in a worker thread, so a slow disk never stalls the
event loop: when it has no bytes ready, `read` answers None and the adapter calls `fill(on_ready)`,
which calls back when the next chunk is in. Memory per stream is two chunks at most (the one being
sent and the one read ahead), whatever the file size.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import partial
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .filecache import FileEntry

Headers = list[tuple[bytes, bytes]]
READ_CHUNK = 64 * 1024   # a file body's first read
MAX_CHUNK = 256 * 1024   # its largest, once the client keeps up
NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux: read only what is cached


class Body(Protocol):
    """A source of response bytes, pulled by the adapter as flow control allows."""

    remaining: int

    def read(self, n: int) -> bytes | memoryview | None:
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
    """`length` bytes of an open file from `offset`, read a chunk ahead of what is being sent.

    A chunk already in the page cache is read on the event loop (`preadv` with RWF_NOWAIT fails at
    once instead of waiting for the disk); any other goes to a worker thread, so a slow disk never
    stalls the loop. A thread hop costs about as much as sending a chunk, so chunks grow (64 KiB
    doubling up to `MAX_CHUNK`) while the client keeps taking them, and the next one is read once
    half of the current one is handed out. A stream that stops (no window, a paused transport)
    stops reading too, holding at most the chunk it has and the one read ahead.
    """

    __slots__ = ("_buffer", "_chunk", "_closed", "_error", "_fd", "_next", "_nowait", "_offset",
                 "_pending", "_pos", "_waiting", "remaining")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset          # where the next chunk is read from
        self.remaining = length        # bytes not yet handed out by read()
        self._buffer: bytes | memoryview = b""
        self._pos = 0
        self._next: bytes | memoryview | None = None  # the chunk read ahead, not yet in _buffer
        self._chunk = READ_CHUNK       # size of the next read
        self._nowait = NOWAIT is not None  # page-cache reads work on this file's filesystem
        self._pending = False          # a worker thread is reading
        self._waiting: Callable[[], None] | None = None  # fill()'s callback, while it reads
        self._closed = False
        self._error: OSError | None = None

    def read(self, n: int) -> bytes | memoryview | None:
        if self._error is None and self._pos >= len(self._buffer) and self._next is None:
            self._read_ahead()  # may complete at once, from the page cache
        if self._error is not None:
            raise self._error
        if self._pos >= len(self._buffer):
            if self._next is None:
                return None if self.remaining else b""
            self._buffer, self._pos, self._next = self._next, 0, None
        chunk = self._buffer[self._pos:self._pos + n]
        self._pos += len(chunk)
        self.remaining -= len(chunk)
        if self._pos * 2 >= len(self._buffer) and self._next is None:
            self._read_ahead()
        return chunk

    def fill(self, on_ready: Callable[[], None]) -> None:
        if not self._closed:
            self._waiting = on_ready  # read() has started the read that calls it

    def _read_ahead(self) -> None:
        unread = self.remaining - (len(self._buffer) - self._pos)
        if self._pending or self._closed or unread <= 0:
            return
        size = min(self._chunk, unread)
        self._chunk = min(self._chunk * 2, MAX_CHUNK)
        cached = self._read_cached(size)
        if cached is not None:
            self._took(cached, len(cached) or size)
            return
        self._pending = True
        _in_thread(partial(os.pread, self._fd, size, self._offset), lambda f: self._filled(f, size))

    def _read_cached(self, size: int) -> memoryview | None:
        """Up to `size` bytes if the page cache has them (some may be fewer), else None."""
        if not self._nowait:
            return None
        buffer = bytearray(size)
        try:
            n = os.preadv(self._fd, [buffer], self._offset, NOWAIT or 0)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                self._error = e
                return memoryview(b"")
            self._nowait = False  # a filesystem without RWF_NOWAIT: threads only
            return None
        return memoryview(buffer)[:n]

    def _filled(self, future: Future[bytes], size: int) -> None:
        self._pending = False
        if self._closed:  # closed while the read was in flight: the fd can be closed now
            self._release()
            return
        try:
            self._took(future.result(), size)
        except OSError as e:
            self._error = e
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting()

    def _took(self, chunk: bytes | memoryview, size: int) -> None:
        if len(chunk) < size:
            # The file shrank under us: sending fewer bytes than Content-Length promised would
            # corrupt the response, so fail it instead.
            self._error = self._error or OSError(f"file ended {self.remaining - len(chunk)} bytes early")
        self._next = chunk
        self._offset += len(chunk)

    def close(self) -> None:
        self.remaining = 0
        self._buffer = b""
        self._next = None
        self._closed = True
        if not self._pending:  # else a worker still reads the fd: closing it now could hit a reused one
            self._release()

    def _release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _in_thread(read: Callable[[], bytes], done: Callable[[Future[bytes]], None]) -> None:
    """Run `read` in the running event loop's default executor; `done(future)` on the loop.

    asyncio is imported here, when a file is first read from a thread under a loop, not when the
    module is: the engines that take bodies from here never import it (tests/test_engines_io.py)."""
    import asyncio

    future = asyncio.get_running_loop().run_in_executor(None, read)
    future.add_done_callback(done)  # type: ignore[arg-type]  # an asyncio.Future: result() alike


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
