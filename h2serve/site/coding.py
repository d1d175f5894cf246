"""Content codings: which one a client gets, and compressed bytes made once per file version.

A file is served in a coding from one of two sources: a precompressed sibling on disk
(`app.css.br`, `app.css.gz`, `app.css.zst`), which may be any size and supports ranges, or the
file compressed here, on the fly, for compressible types between `MIN_SIZE` and `MAX_SIZE`. Those
bytes are kept in a bounded LRU cache keyed by (path, validator, coding), so each version of a file
is compressed once. On-the-fly codings are not offered for range requests: the client then gets
the identity bytes its ranges refer to.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from collections.abc import Callable

try:
    import brotli  # the optional `brotli` extra
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

# Server preference when the client's q-values tie: smallest output first.
PREFERENCE = ("br", "zstd", "gzip")
TOKENS = {"br": b"br", "zstd": b"zstd", "gzip": b"gzip"}  # Content-Encoding values
ON_THE_FLY = ("br", "gzip") if brotli is not None else ("gzip",)
MIN_SIZE = 1024                 # smaller files gain too little to be worth a coding
MAX_SIZE = 1024 * 1024          # larger ones are compressed ahead of time (siblings), not here
CACHE_BYTES = 32 * 1024 * 1024  # compressed bytes kept in memory
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
    if coding == "br":
        assert brotli is not None
        return brotli.compress(data, quality=5)
    return gzip.compress(data, compresslevel=6, mtime=0)


class CompressionCache:
    """Compressed bytes by (path, validator, coding), least recently used evicted first."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def get(self, path: str, etag: str, coding: str,
            source: Callable[[], bytes | None]) -> bytes | None:
        """The compressed bytes of one file version; `source()` (the file's contents, or None if
        they cannot be had) is called only when they are not cached yet."""
        key = (path, etag, coding)
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found
        data = source()
        if data is None:
            return None
        out = compress(data, coding)
        self._items[key] = out
        self.size += len(out)
        while self.size > self.limit and self._items:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)
        return out
