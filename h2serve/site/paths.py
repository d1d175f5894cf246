"""Request targets and file names: decoding a target into safe path segments, and the media type
of a file name.

Both are pure functions of their input, used by the handler for every request and by the push map
to resolve its entries exactly as a request for them would be.
"""

from __future__ import annotations

import functools
import os
from urllib.parse import unquote_to_bytes

TEXT_TYPES = {
    ".html": "text/html", ".htm": "text/html", ".css": "text/css", ".txt": "text/plain",
    ".js": "text/javascript", ".mjs": "text/javascript", ".csv": "text/csv",
    ".md": "text/markdown", ".xml": "application/xml", ".json": "application/json",
    ".webmanifest": "application/manifest+json", ".map": "application/json",
    ".svg": "image/svg+xml",
}
BINARY_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".avif": "image/avif", ".ico": "image/x-icon", ".bmp": "image/bmp",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".pdf": "application/pdf", ".wasm": "application/wasm", ".zip": "application/zip",
    ".gz": "application/gzip", ".mp4": "video/mp4", ".webm": "video/webm",
    ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".wav": "audio/wav",
}
CONTENT_TYPES = {
    **{ext: f"{t}; charset=utf-8".encode() for ext, t in TEXT_TYPES.items()},
    **{ext: t.encode() for ext, t in BINARY_TYPES.items()},
}
DEFAULT_TYPE = b"application/octet-stream"
HEXDIGITS = b"0123456789abcdefABCDEF"
CACHED_TARGET = 512  # targets up to this long have their decoded segments cached


class BadTarget(Exception):
    """A request target that cannot name a file: answered 400."""


def content_type(path: str) -> bytes:
    """The Content-Type for a file name, from its extension (text types say charset=utf-8)."""
    return CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), DEFAULT_TYPE)


def split_target(target: bytes) -> tuple[str, ...]:
    """Decode a request target's path into safe segments, or raise BadTarget.

    The same few targets come again and again: short ones are decoded once (a bad one, raising,
    is never cached).

    Accepts origin-form (`/a/b?q`) and absolute-form (`https://host/a/b`). Empty segments are
    dropped (`//a` is `/a`); a trailing slash is kept as a final empty segment so `/dir/` can map
    to `dir/index.html`.
    """
    return _split_cached(target) if len(target) <= CACHED_TARGET else _split(target)


def _split(target: bytes) -> tuple[str, ...]:
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if path.startswith((b"http://", b"https://")):
        path = b"/" + path.split(b"/", 3)[3] if path.count(b"/") >= 3 else b"/"
    if not path.startswith(b"/"):
        raise BadTarget("path must start with /")
    raw_segments = path.split(b"/")[1:]
    segments: list[str] = []
    for raw in raw_segments:
        if b"%" in raw and not _valid_escapes(raw):
            raise BadTarget("bad percent-encoding")
        decoded = unquote_to_bytes(raw)
        if b"/" in decoded or b"\\" in decoded:
            raise BadTarget("encoded slash or backslash in path")
        if any(c < 0x20 or c == 0x7F for c in decoded):
            raise BadTarget("control character in path")
        try:
            segment = decoded.decode("utf-8")
        except UnicodeDecodeError:
            raise BadTarget("path is not UTF-8") from None
        if segment in (".", ".."):
            raise BadTarget("dot segment in path")
        if segment:
            segments.append(segment)
    if path.endswith(b"/") and segments:
        segments.append("")
    return tuple(segments)


_split_cached = functools.lru_cache(maxsize=4096)(_split)


def _valid_escapes(raw: bytes) -> bool:
    """Whether every `%` in a segment starts a two-hex-digit escape."""
    i = raw.find(b"%")
    while i != -1:
        pair = raw[i + 1:i + 3]
        if len(pair) != 2 or not all(c in HEXDIGITS for c in pair):
            return False
        i = raw.find(b"%", i + 3)
    return True
