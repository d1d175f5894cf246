"""The static site: from a request target to a `Response`, with no sockets in sight.

One handler answers every request, whichever protocol carried it (and, later, every pushed one), so
the same path always gets the same status, headers and bytes.

Containment is decided twice, on purpose: the target is decoded and checked segment by segment
(no `.`/`..`, no encoded slash, backslash, NUL or control characters), and the file finally opened
must resolve (symlinks followed) to a place inside the root it was looked up in. A file is opened by
name and then checked to be the very file (device and inode) that lookup vetted, so a file swapped
for a symlink to the outside after its lookup was cached is never served.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

from .config import ConfigError
from .response import BytesBody, FileBody, Headers, Response, http_date

ALLOW = b"GET, HEAD"
SMALL_FILE = 64 * 1024          # files up to this size are kept in memory
CACHE_BYTES = 32 * 1024 * 1024  # total bytes of small files kept
REVALIDATE = 1.0                # seconds a cached stat is trusted before looking again

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


class BadTarget(Exception):
    """A request target that cannot name a file: answered 400."""


def content_type(path: str) -> bytes:
    """The Content-Type for a file name, from its extension (text types say charset=utf-8)."""
    return CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), DEFAULT_TYPE)


def split_target(target: bytes) -> tuple[str, ...]:
    """Decode a request target's path into safe segments, or raise BadTarget.

    Accepts origin-form (`/a/b?q`) and absolute-form (`https://host/a/b`). Empty segments are
    dropped (`//a` is `/a`); a trailing slash is kept as a final empty segment so `/dir/` can map
    to `dir/index.html`.
    """
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


def _valid_escapes(raw: bytes) -> bool:
    """Whether every `%` in a segment starts a two-hex-digit escape."""
    i = raw.find(b"%")
    while i != -1:
        pair = raw[i + 1:i + 3]
        if len(pair) != 2 or not all(c in HEXDIGITS for c in pair):
            return False
        i = raw.find(b"%", i + 3)
    return True


@dataclass(frozen=True, slots=True)
class Mount:
    """A folder served under a URL prefix; `pages` mounts also answer `/name` with `name.html`."""

    prefix: tuple[str, ...]
    root: Path
    pages: bool


@dataclass(slots=True)
class FileEntry:
    """What the cache knows of one resolved file."""

    path: str
    size: int
    mtime_ns: int
    dev: int
    ino: int
    checked: float
    data: bytes | None  # the contents, for small files

    @property
    def etag(self) -> str:
        """A strong validator: changes whenever the file's size or modification time does."""
        return f'"{self.size:x}-{self.mtime_ns:x}"'


class Site:
    """The files of one site and the one handler that answers requests for them."""

    def __init__(self, mounts: list[Mount], server_name: str, not_found: Path | None) -> None:
        # Longest prefix first, so /static/... wins over the pages mount at /.
        self.mounts = sorted(mounts, key=lambda m: len(m.prefix), reverse=True)
        self.server = server_name.encode()
        self.not_found_page = not_found
        self._entries: dict[str, FileEntry] = {}
        self._cached_bytes = 0

    @classmethod
    def from_folders(cls, *, root: str | None, templates: str, static: str,
                     server_name: str = "h2serve") -> Site:
        """The standard layouts: one `root` folder, or `templates/` at / and `static/` at /static/."""
        if root is not None:
            base = _existing_dir(root, "--root")
            return cls([Mount((), base, pages=True)], server_name, base / "404.html")
        pages = _existing_dir(templates, "--templates")
        assets = _existing_dir(static, "--static")
        mounts = [Mount((), pages, pages=True), Mount(("static",), assets, pages=False)]
        return cls(mounts, server_name, pages / "404.html")

    # -- the handler -----------------------------------------------------------------------

    def respond(self, method: str, target: bytes) -> Response:
        """Answer one request. Never raises for bad input: that is a 4xx answer."""
        if method not in ("GET", "HEAD"):
            return self.error(405, method, extra=[(b"allow", ALLOW)])
        try:
            segments = split_target(target)
        except BadTarget:
            return self.error(400, method)
        for _ in range(2):  # a file replaced since its lookup was cached is looked up again, once
            entry = self.lookup(segments)
            if entry is None:
                break
            response = self._file_response(entry, method, 200)
            if response is not None:
                return response
        return self.error(404, method)

    def file_response(self, entry: FileEntry, method: str, status: int = 200) -> Response:
        """The answer for a looked-up file; 404 if it is no longer the file `entry` describes."""
        return self._file_response(entry, method, status) or self.error(404, method)

    def _file_response(self, entry: FileEntry, method: str, status: int) -> Response | None:
        """None if the file on disk is no longer the one `entry` describes (replaced or removed
        since it was looked up); the entry is then forgotten, so a new lookup sees the change."""
        headers = self.base_headers(content_type(entry.path), entry.size)
        if method == "HEAD":
            return Response(status, headers, None, entry)
        if entry.data is not None:
            return Response(status, headers, BytesBody(entry.data), entry)
        fd = _open_same(entry.path, entry.dev, entry.ino)
        if fd is None:
            self._forget(entry.path)
            return None
        return Response(status, headers, FileBody(fd, 0, entry.size), entry)

    def base_headers(self, ctype: bytes, length: int) -> Headers:
        return [
            (b"content-type", ctype),
            (b"content-length", str(length).encode()),
            (b"date", http_date()),
            (b"server", self.server),
        ]

    def error(self, status: int, method: str, extra: Headers | None = None) -> Response:
        """An error answer; 404 uses the site's own 404 page when it has one."""
        body = None
        if status == 404 and self.not_found_page is not None:
            entry = self._entry(str(self.not_found_page))
            if entry is not None and entry.data is not None:
                body = entry.data
        if body is None:
            body = ERROR_PAGE.format(status=status, reason=REASONS.get(status, "Error")).encode()
        headers = self.base_headers(b"text/html; charset=utf-8", len(body)) + (extra or [])
        return Response(status, headers, None if method == "HEAD" else BytesBody(body))

    # -- lookup and cache --------------------------------------------------------------------

    def lookup(self, segments: tuple[str, ...]) -> FileEntry | None:
        """The file a decoded path names, or None. Only regular files inside a mount qualify."""
        for mount in self.mounts:
            n = len(mount.prefix)
            if segments[:n] != mount.prefix:
                continue
            rest = segments[n:]
            for candidate in self._candidates(mount, rest):
                entry = self._entry(candidate, mount.root)
                if entry is not None:
                    return entry
            return None
        return None

    @staticmethod
    def _candidates(mount: Mount, rest: tuple[str, ...]) -> list[str]:
        if not rest or rest[-1] == "":
            return [os.path.join(mount.root, *rest[:-1] if rest else (), "index.html")]
        path = os.path.join(mount.root, *rest)
        if mount.pages and not os.path.splitext(rest[-1])[1]:
            return [path, path + ".html"]
        return [path]

    def _entry(self, path: str, root: Path | None = None) -> FileEntry | None:
        now = time.monotonic()
        entry = self._entries.get(path)
        if entry is not None and now - entry.checked < REVALIDATE:
            return entry
        fresh = self._load(path, root, now, entry)
        if fresh is None:
            self._forget(path)
        return fresh

    def _load(self, path: str, root: Path | None, now: float,
              old: FileEntry | None) -> FileEntry | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if root is not None and not _inside(path, root, st):
            return None
        if old is not None and (old.size, old.mtime_ns, old.dev, old.ino) == (
                st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino):
            old.checked = now
            return old
        self._forget(path)
        data = _read_small(path, st) if st.st_size <= SMALL_FILE else None
        if data is not None and self._cached_bytes + len(data) > CACHE_BYTES:
            data = None
        entry = FileEntry(path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, now, data)
        self._entries[path] = entry
        self._cached_bytes += len(data or b"")
        return entry

    def _forget(self, path: str) -> None:
        old = self._entries.pop(path, None)
        if old is not None and old.data is not None:
            self._cached_bytes -= len(old.data)


def _inside(path: str, root: Path, st: os.stat_result) -> bool:
    """Whether `path`, symlinks resolved, lies inside `root` (itself already resolved) and is still
    the file `st` describes (not swapped between the two looks)."""
    real = os.path.realpath(path)
    if not (real == str(root) or real.startswith(str(root) + os.sep)):
        return False
    try:
        real_st = os.stat(real)
    except OSError:
        return False
    return (real_st.st_dev, real_st.st_ino) == (st.st_dev, st.st_ino)


def _open_same(path: str, dev: int, ino: int) -> int | None:
    """Open `path` for reading if it is still the file (`dev`, `ino`) that was vetted, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd


def _read_small(path: str, st: os.stat_result) -> bytes | None:
    fd = _open_same(path, st.st_dev, st.st_ino)
    if fd is None:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(st.st_size + 1)
    except OSError:
        return None
    return data if len(data) == st.st_size else None


def _existing_dir(path: str, option: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{option} {path}: no such folder")
    return p.resolve()


REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}
ERROR_PAGE = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
              "<title>{status} {reason}</title></head>\n"
              "<body><h1>{status} {reason}</h1></body></html>\n")
