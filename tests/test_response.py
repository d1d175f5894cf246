"""FileBody on real files: bytes from the page cache without a thread, from a worker thread when
the disk must be read, chunks that grow while the reader keeps up, read-ahead bounded to one chunk,
and a file that shrinks mid-way failing the body instead of sending short."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from h2serve.site.body import MAX_CHUNK, READ_CHUNK, FileBody

SIZE = 3 * 1024 * 1024 + 123


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


def _drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def _filled(body: FileBody) -> None:
    """What an adapter does when `read` has nothing yet: wait for `fill`'s call back."""
    ready = asyncio.get_running_loop().create_future()
    body.fill(lambda: ready.set_result(None))
    await asyncio.wait_for(ready, 10)


async def _drain(body: FileBody, frame: int = 16384) -> tuple[bytes, int, list[int]]:
    """Everything the body gives, as an adapter takes it; how many times it had to wait for a thread,
    and the size of each chunk it held."""
    out, waits, chunks = bytearray(), 0, []
    while body.remaining:
        chunk = body.read(frame)
        if chunk is None:
            waits += 1
            await _filled(body)
            continue
        if len(body._buffer) not in chunks[-1:]:
            chunks.append(len(body._buffer))
        out += chunk
    body.close()
    return bytes(out), waits, chunks


def test_cached_file_is_read_on_the_loop_in_growing_chunks(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    path.read_bytes()  # in the page cache
    fd = os.open(path, os.O_RDONLY)
    got, waits, chunks = asyncio.run(_drain(FileBody(fd, 0, SIZE)))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert waits == 0  # never a thread hop for cached bytes
    assert chunks[:3] == [READ_CHUNK, 2 * READ_CHUNK, 4 * READ_CHUNK]
    assert max(chunks) == MAX_CHUNK


def test_uncached_file_is_read_in_a_worker_thread(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    _drop_page_cache(path)
    fd = os.open(path, os.O_RDONLY)
    got, waits, _ = asyncio.run(_drain(FileBody(fd, 0, SIZE)))
    assert got == data
    assert waits >= 1  # the first chunk at least came from a thread: the loop never waited on disk


def test_a_range_is_read_exactly(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    fd = os.open(path, os.O_RDONLY)
    got, _, _ = asyncio.run(_drain(FileBody(fd, 1_000_001, 700_000), frame=5000))
    assert got == data[1_000_001:1_700_001]


def test_a_stalled_reader_holds_at_most_one_chunk_ahead(data_file: tuple[Path, bytes]) -> None:
    """A stream that stops taking bytes (no window) stops the reading too."""
    path, _ = data_file

    async def stall() -> tuple[int, int]:
        body = FileBody(os.open(path, os.O_RDONLY), 0, SIZE)
        taken = 0
        while taken < 2 * READ_CHUNK:  # the client's first windows' worth
            chunk = body.read(16384)
            if chunk is None:
                await _filled(body)
                continue
            taken += len(chunk)
        await asyncio.sleep(0.2)  # any read in flight lands
        offset = body._offset
        await asyncio.sleep(0.2)
        assert body._offset == offset and not body._pending  # nothing more is read
        held = len(body._buffer) - body._pos + len(body._next or b"")
        current = len(body._buffer)
        body.close()
        return held, current

    held, current = asyncio.run(stall())
    assert held <= current + MAX_CHUNK  # what is left of one chunk, and the one read ahead


def test_a_file_that_shrinks_fails_the_body(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    fd = os.open(path, os.O_RDONLY)
    os.truncate(path, 500_000)
    with pytest.raises(OSError, match="ended"):
        asyncio.run(_drain(FileBody(fd, 0, SIZE)))
