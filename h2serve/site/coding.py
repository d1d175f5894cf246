"""Content codings: which one a client gets, and compressed bytes made once per file version.

A file is served in a coding from one of two sources: a precompressed sibling on disk
(`app.css.br`, `app.css.gz`, `app.css.zst`), which may be any size and supports ranges, or the
file compressed here, on the fly, for compressible types between `MIN_SIZE` and `MAX_SIZE`. Those
bytes are kept in a bounded LRU cache keyed by (path, validator, coding), so each version of a file
is compressed once. On-the-fly codings are not offered for range requests: the client then gets
the identity bytes its ranges refer to.

Compressing is CPU work, done off the event loop (`get(..., block=False)` raises WouldBlock("cpu")
instead): at most `MAX_COMPRESSIONS` at once, whatever the threads asking, and one version of a file
in one coding is compressed once, however many threads ask for it at the same time.
"""

from __future__ import annotations

import gzip
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

from . import zstdcodec
from .blocking import WouldBlock

try:
    import brotli  # the optional `brotli` extra
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

# Server preference when the client's q-values tie: smallest output first. `dcz` (a delta against a
# dictionary the client holds, RFC 9842) is a few percent of any other and is offered only when it
# applies (site/dictionary.py); then brotli, which for text beats zstd at the levels used here (on
# the fly, brotli 5 against zstd 3; precompressed, brotli 11 against zstd 19: see
# benchmarks/README.md), then zstd, then gzip.
PREFERENCE = ("dcz", "br", "zstd", "gzip")
TOKENS = {"br": b"br", "zstd": b"zstd", "gzip": b"gzip", "dcz": b"dcz"}  # Content-Encoding values
ON_THE_FLY = tuple(c for c, there in (("br", brotli is not None), ("zstd", zstdcodec.available()),
                                      ("gzip", True)) if there)
MIN_SIZE = 1024                 # smaller files gain too little to be worth a coding
MAX_SIZE = 1024 * 1024          # larger ones are compressed ahead of time (siblings), not here
CACHE_BYTES = 32 * 1024 * 1024  # compressed bytes kept in memory
# Compressions running at once: one per CPU (each holds one for up to ~20 ms at MAX_SIZE; more
# would only queue in the CPU), 2 where the count is unknown. Others wait for a turn, in a thread.
MAX_COMPRESSIONS = os.cpu_count() or 2
COMPRESSIBLE_PREFIXES = (b"text/", b"application/json", b"application/javascript",
                         b"application/xml", b"application/manifest+json", b"image/svg+xml",
                         b"application/wasm", b"font/ttf", b"font/otf", b"image/x-icon",
                         b"image/bmp")


def compressible(content_type: bytes) -> bool:
    return content_type.startswith(COMPRESSIBLE_PREFIXES)


def accepted(header: bytes | None) -> dict[str, float]:
    """The codings an Accept-Encoding value accepts, with their q-values (q=0 means refused).

    `*` stands for any coding not named; identity is acceptable unless refused (RFC 9110
    section 12.5.3)."""
    result: dict[str, float] = {}
    if header is None:
        return result
    for item in header.decode("latin-1").split(","):
        name, *params = (p.strip() for p in item.split(";"))
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        name = name.lower()
        result["gzip" if name == "x-gzip" else name] = q
    return result


def choose(header: bytes | None, available: tuple[str, ...]) -> str | None:
    """The best of `available` codings for this Accept-Encoding, or None for identity."""
    q = accepted(header)
    star = q.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in PREFERENCE:
        if coding not in available:
            continue
        value = q.get(coding, star)
        if value > best_q:
            best, best_q = coding, value
    # Identity is acceptable unless refused, but a client that names a coding wants it, whatever
    # its q-value (`gzip;q=0.5`): identity wins only where the header rates it, or `*`, higher.
    identity_q = q.get("identity", star)
    if best is not None and best_q >= identity_q:
        return best
    return None


def compress(data: bytes, coding: str) -> bytes:
    """The fast on-the-fly coding of `data` (the best ones are site/precompress.py's)."""
    if coding == "br":
        assert brotli is not None
        return brotli.compress(data, quality=5)
    if coding == "zstd":
        return zstdcodec.compress(data, zstdcodec.FAST_LEVEL)
    return gzip.compress(data, compresslevel=6, mtime=0)


class CompressionCache:
    """Compressed bytes by (path, validator, coding), least recently used evicted first.

    A hit takes no lock (a dict lookup); inserting and evicting take `_lock`, never held while
    compressing or reading. `concurrency` bounds the compressions running at once; a second thread
    asking for bytes being compressed waits for them instead of compressing them again."""

    def __init__(self, limit: int = CACHE_BYTES, concurrency: int = MAX_COMPRESSIONS) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._turns = threading.BoundedSemaphore(concurrency)
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self.compressions = 0  # compressions made, for the metrics (changed under `_lock`)

    def get(self, path: str, etag: str, coding: str, source: Callable[[], bytes | None], *,
            block: bool = True, encode: Callable[[bytes], bytes | None] | None = None) -> bytes | None:
        """The compressed bytes of one file version; `source()` (the file's contents, or None if
        they cannot be had) is called only when they are not cached yet. `block=False` answers
        only from the cache, and raises WouldBlock("cpu") where it would compress.

        `encode(contents)` replaces `compress(contents, coding)` for other kinds of bytes kept
        here: a dcz delta (`coding` then names the dictionary too), or best-ratio bytes read from
        the precompression folder (`source` reads them, `encode` passes them through)."""
        key = (path, etag, coding)
        found = self._items.get(key)
        if found is not None:
            try:
                self._items.move_to_end(key)
            except KeyError:  # evicted by another thread just now: still the right bytes
                return found
            return found
        if not block:
            raise WouldBlock("cpu")
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                return found
            pending = self._pending.get(key)
            first = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
        if not first:
            pending.done.wait()
            return pending.result
        try:
            pending.result = self._make(key, coding, source, encode)
        finally:
            with self._lock:
                del self._pending[key]
            pending.done.set()
        return pending.result

    def _make(self, key: tuple[str, str, str], coding: str, source: Callable[[], bytes | None],
              encode: Callable[[bytes], bytes | None] | None) -> bytes | None:
        data = source()
        if data is None:
            return None
        with self._turns:
            made = compress(data, coding) if encode is None else encode(data)
        if made is None:
            return None
        out = made
        with self._lock:
            self.compressions += 1
            if key not in self._items:
                self._items[key] = out
                self.size += len(out)
            while self.size > self.limit and self._items:
                _, dropped = self._items.popitem(last=False)
                self.size -= len(dropped)
        return out


class _Pending:
    """A compression under way, for the threads that wait for its result."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: bytes | None = None
