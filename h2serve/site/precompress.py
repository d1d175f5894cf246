"""Best-ratio encodings made once per file version, in the background, kept on disk (--precompress-dir).

brotli at quality 11 and zstd at level 19 take 50 to 100 times the CPU of the on-the-fly levels
(about half a second for a 400 KiB script), too much per request but nothing once per version. So
the first request for a compressible file version gets the fast on-the-fly coding as before and
queues the version here; one background thread makes both encodings, one version after another,
and writes them to the folder. Requests after that get the best bytes (read from the folder once,
then from the in-memory compression cache), with an ETag of their own (`"...-br11"`), for they
are other bytes than the fast coding's.

Files are named by the SHA-256 of (path, validator, coding), so a restarted server finds its work
again, and an edited file (another validator) is a new version. The folder is bounded: least
recently used files go first (at start-up, the oldest by modification time). A version is encoded
once: a second request while it is queued or running adds nothing, and a lock file made with
O_EXCL keeps two worker processes (--workers) from encoding the same version at once.

`DiskCache` is the bounded folder; site/dictionary.py keeps dictionaries and dcz deltas in two more.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from . import coding, zstdcodec

log = logging.getLogger("h2serve")

SUFFIX = {"br": ".br", "zstd": ".zst"}
ETAG_SUFFIX = {"br": "br11", "zstd": "zstd19"}  # the coding and its level: other bytes, other ETag
MAX_QUEUED = 1024      # versions waiting at once; more are dropped and asked for again later
MAX_UNKEPT = 4096      # versions remembered as not kept (encoded once, not again)
STALE_LOCK = 600.0     # seconds after which another process's lock is taken as abandoned


def encode_best(data: bytes, coding_name: str) -> bytes:
    """The best-ratio encoding of `data` (tests replace this to count encodings)."""
    if coding_name == "br":
        assert coding.brotli is not None
        return bytes(coding.brotli.compress(data, quality=11))
    return zstdcodec.compress(data, zstdcodec.BEST_LEVEL)


def best_codings() -> tuple[str, ...]:
    """The codings precompressed here: those of brotli and zstd whose package is installed."""
    return tuple(c for c in ("br", "zstd") if c in coding.ON_THE_FLY)


class DiskCache:
    """Files in one folder by name, at most `limit` bytes, least recently used removed first.

    The index (name -> size) is in memory, read from the folder once at start-up; a lookup
    (`has`) costs no system call. Writes go to a temporary name and are renamed into place, so a
    reader or a restarted server never sees half a file."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.size = 0
        self._files: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        found = []
        for entry in os.scandir(folder):
            if entry.name.startswith(".") or not entry.is_file():
                if entry.name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)  # a write cut short by a crash
                continue
            st = entry.stat()
            found.append((st.st_mtime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._files[name] = size
            self.size += size
        self._evict()

    def names(self) -> list[str]:
        return list(self._files)

    def has(self, name: str) -> bool:
        if name not in self._files:
            return False
        with contextlib.suppress(KeyError):
            self._files.move_to_end(name)
        return True

    def read(self, name: str) -> bytes | None:
        try:
            with open(self.folder / name, "rb") as f:
                return f.read()
        except OSError:
            with self._lock:
                self.size -= self._files.pop(name, 0)
            return None

    def adopt(self, name: str) -> bool:
        """Index a file another process wrote (--workers share the folder); False if none."""
        try:
            size = os.stat(self.folder / name).st_size
        except OSError:
            return False
        with self._lock:
            self.size += size - self._files.pop(name, 0)
            self._files[name] = size
            self._evict()
        return True

    def put(self, name: str, data: bytes) -> bool:
        """Keep `data` as `name`; False when it is not kept: not written, or larger than the whole
        folder's room (it would only push everything else out, then go itself)."""
        if len(data) > self.limit:
            return False
        tmp = self.folder / f".tmp-{os.getpid()}-{threading.get_ident()}-{name}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.folder / name)
        except OSError as e:
            log.warning("--precompress-dir: cannot write %s: %s", self.folder / name, e.strerror)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        with self._lock:
            self.size += len(data) - self._files.pop(name, 0)
            self._files[name] = len(data)
            self._evict()
        return True

    def _evict(self) -> None:
        while self.size > self.limit and self._files:
            name, size = self._files.popitem(last=False)
            self.size -= size
            with contextlib.suppress(OSError):
                os.unlink(self.folder / name)


class Background:
    """One background thread for work done once per key (a file version): `run` while the same
    key is queued or running adds nothing, and at most MAX_QUEUED keys wait (more are dropped, to
    be asked for again by a later request). Threads start with the first task."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._keys: set[object] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False  # shut down before its thread started: it never starts (a reload's old site)

    def run(self, key: object, work: Callable[[], None]) -> None:
        with self._lock:
            if self._closed or key in self._keys or len(self._keys) >= MAX_QUEUED:
                return
            self._keys.add(key)
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
            executor = self._executor
        try:
            executor.submit(self._run, key, work)
        except RuntimeError:  # shut down
            with self._lock:
                self._keys.discard(key)

    def _run(self, key: object, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # a background failure must not pass silently, nor stop the thread
            log.exception("%s: background work for %s failed", self.name, key)
        finally:
            with self._lock:
                self._keys.discard(key)

    def wait(self, timeout: float = 30.0) -> None:
        """Until nothing is queued or running (for tests and the benchmark)."""
        deadline = time.monotonic() + timeout
        while self._keys and time.monotonic() < deadline:
            time.sleep(0.01)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def version_name(path: str, etag: str, what: str) -> str:
    """A file name for one version of `path` in one coding (or against one dictionary)."""
    return hashlib.sha256(f"{path}\0{etag}\0{what}".encode()).hexdigest()


class Precompressor:
    """The best-ratio encodings of file versions, made in one background thread."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.disk = DiskCache(folder / "best", limit)
        self.codings = best_codings()
        self.background = Background("h2serve-precompress")
        # Versions whose encoding the folder did not take (too big for it, or a failed write):
        # encoded again on every request they would keep the thread busy for nothing.
        self._unkept: OrderedDict[tuple[str, str], None] = OrderedDict()

    def ready(self, path: str, etag: str, coding_name: str) -> str | None:
        """The file name of a version's best encoding when it is on disk (no system call)."""
        name = version_name(path, etag, coding_name) + SUFFIX[coding_name]
        return name if self.disk.has(name) else None

    def start(self, path: str, etag: str, read: Callable[[], bytes | None]) -> None:
        """Queue a version's encodings, unless they are made, queued or running already."""
        if (path, etag) not in self._unkept and not all(self.ready(path, etag, c) for c in self.codings):
            self.background.run((path, etag), lambda: self._encode(path, etag, read))

    def wait(self, timeout: float = 30.0) -> None:
        self.background.wait(timeout)

    def shutdown(self) -> None:
        self.background.shutdown()

    def _encode(self, path: str, etag: str, read: Callable[[], bytes | None]) -> None:
        lock = self.folder / f".lock-{version_name(path, etag, 'best')}"
        if not _take_lock(lock):
            return  # another worker process is encoding this version
        try:
            data = read()
            for name in self.codings:
                if data is None or self.ready(path, etag, name):
                    continue
                file = version_name(path, etag, name) + SUFFIX[name]
                if not self.disk.adopt(file) and not self.disk.put(file, encode_best(data, name)):
                    self._unkept[(path, etag)] = None  # (adopted: made by another worker process)
                    while len(self._unkept) > MAX_UNKEPT:
                        self._unkept.popitem(last=False)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)


def _take_lock(lock: Path) -> bool:
    """Make `lock` (O_EXCL); one older than STALE_LOCK is a crashed process's, taken over."""
    for _ in range(2):
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime < STALE_LOCK:
                    return False
                os.unlink(lock)
            except OSError:
                return False
    return False
