"""What a handler answers: a status, headers and a body *source*, independent of the protocol.

A body is never a whole file read into memory to send it: `FileBody` reads the next chunk when the
protocol adapter has room for it (flow-control window, transport buffer), so memory per stream stays
bounded whatever the file size. Small hot files come from the cache as `BytesBody`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .files import FileEntry

Headers = list[tuple[bytes, bytes]]


class Body(Protocol):
    """A source of response bytes, pulled by the adapter as flow control allows."""

    remaining: int

    def read(self, n: int) -> bytes:
        """Up to `n` of the next bytes; fewer only at the end. Raises OSError if the file fails."""

    def close(self) -> None:
        """Release what the body holds (a file descriptor); safe to call twice."""


class BytesBody:
    """A body already in memory (cached small files, error pages)."""

    __slots__ = ("_data", "_pos", "remaining")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.remaining = len(data)

    def read(self, n: int) -> bytes:
        if self._pos == 0 and n >= self.remaining:
            chunk = self._data  # the common case: a small file in one frame, no copy
        else:
            chunk = self._data[self._pos:self._pos + n]
        self._pos += len(chunk)
        self.remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        self.remaining = 0


class FileBody:
    """`length` bytes of an open file from `offset`, read chunk by chunk with `pread`."""

    __slots__ = ("_fd", "_offset", "remaining")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset
        self.remaining = length

    def read(self, n: int) -> bytes:
        n = min(n, self.remaining)
        chunk = os.pread(self._fd, n, self._offset)
        if len(chunk) < n:
            # The file shrank under us: sending fewer bytes than Content-Length promised would
            # corrupt the response, so fail it instead.
            raise OSError(f"file ended {self.remaining - len(chunk)} bytes early")
        self._offset += n
        self.remaining -= n
        return chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.remaining = 0


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
