"""The static site: from a request to a `Response`, with no sockets in sight.

One handler answers every request, whichever protocol carried it, and every pushed one, so the same
path always gets the same status, headers and bytes. For a file it picks the representation (a
content coding the client accepts: a precompressed sibling, or compressed here and cached), then
evaluates the preconditions against that representation's validators (304, 412), then the range
(206, 416), and says how long caches may keep it.

Containment is decided twice, on purpose: the target is decoded and checked segment by segment
(no `.`/`..`, no encoded slash, backslash, NUL or control characters; no dotfiles unless asked),
and the file finally opened must resolve, symlinks followed, to a place inside the root it was
looked up in, and still be the very file (device and inode) that lookup vetted (`filecache.py`).

Answering may block: a file not loaded yet (stat, realpath, a read, watches), a listing (scandir),
compressing. The event loop asks with `block=False` and gets the answer only when everything it
needs is in memory, else `WouldBlock("io")` or `WouldBlock("cpu")`; it then asks again with
`block=True` in a worker thread (`workpool.WorkPool`). Those calls may run in several threads at
once, beside the loop's (`filecache.py` and `coding.py` say how that stays safe).
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..config import Config, ConfigError, default_of
from . import coding
from .blocking import WouldBlock
from .body import BytesBody, FileBody, Headers, Response, http_date
from .conditional import UNSATISFIABLE, Validators, byte_range, evaluate
from .dictionary import Dictionaries, Pattern
from .filecache import FileCache, FileEntry, open_entry, within
from .paths import BadTarget, content_type, split_target
from .precompress import ETAG_SUFFIX, Precompressor

if TYPE_CHECKING:
    from .rulespec import DictionaryRule

ALLOW = b"GET, HEAD"
# Request headers the handler reads; everything else is passed over.
CONSULTED = frozenset({b"accept-encoding", b"range", b"if-range", b"if-match", b"if-none-match",
                       b"if-modified-since", b"if-unmodified-since", b"available-dictionary",
                       b"sec-fetch-dest"})
MIB = 1024 * 1024
# A content hash in the file name (app.3f9a1c2e.js, main-8c1d2e3f4a.css): the name changes with
# the content, so caches may keep it for good.
FINGERPRINT = re.compile(r"[.-](?=[0-9A-Za-z_]*[0-9])[0-9A-Za-z_]{8,}\.[0-9A-Za-z]+$")
# On every answer unless --no-security-headers (issue 16): the handler adds them itself, so the
# answers the engines make with `error()` (a malformed request, a 500) carry them too. HSTS depends
# on the connection and the certificate: site/rules.py adds it.
SECURITY_HEADERS: Headers = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"SAMEORIGIN"),
]

@dataclass(frozen=True, slots=True)
class Mount:
    """A folder served under a URL prefix; `pages` mounts also answer `/name` with `name.html`."""

    prefix: tuple[str, ...]
    root: Path
    pages: bool


@dataclass(frozen=True, slots=True)
class Policy:
    """How files are served beyond finding them: caching headers, listings, dotfiles.

    The server builds it with `from_config`; the defaults, for a `Site` built without one, are
    Config's own (`default_of`), so they cannot drift from what `--help` says."""

    html_cache: str = default_of("html_cache_control")
    static_cache: str = default_of("static_cache_control")
    immutable_cache: str = default_of("immutable_cache_control")
    list_dirs: bool = default_of("list_dirs")
    dotfiles: bool = default_of("serve_dotfiles")
    security_headers: bool = default_of("security_headers")
    precompress_dir: str | None = default_of("precompress_dir")
    precompress_size: int = default_of("precompress_size")  # MiB
    dictionaries: tuple[DictionaryRule, ...] = ()
    max_target: int = 8192  # longest request target answered; longer ones get 414 (not an option)

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        """The policy `config` asks for: --*-cache-control, --list-dirs, --serve-dotfiles,
        --security-headers."""
        return cls(html_cache=config.html_cache_control, static_cache=config.static_cache_control,
                   immutable_cache=config.immutable_cache_control, list_dirs=config.list_dirs,
                   dotfiles=config.serve_dotfiles, security_headers=config.security_headers,
                   precompress_dir=config.precompress_dir, precompress_size=config.precompress_size,
                   dictionaries=config.dictionary)


@dataclass(slots=True)
class Redirect:
    """A folder asked for without its trailing slash."""

    location: str


@dataclass(slots=True)
class Listing:
    """A folder without index.html, listed because --list-dirs is on."""

    path: str
    root: Path


class Site:
    """The files of one site and the one handler that answers requests for them."""

    def __init__(self, mounts: list[Mount], server_name: str, not_found: Path | None,
                 policy: Policy | None = None) -> None:
        # Longest prefix first, so /static/... wins over the pages mount at /.
        self.mounts = sorted(mounts, key=lambda m: len(m.prefix), reverse=True)
        self.server = server_name.encode()
        self.not_found_page = not_found
        self.policy = policy or Policy()
        self.always = SECURITY_HEADERS if self.policy.security_headers else []
        self.cache = FileCache()
        self.compressed = coding.CompressionCache()
        # --precompress-dir: half its room for best-ratio encodings, a quarter each for the
        # dictionaries kept and the dcz deltas (site/precompress.py, site/dictionary.py).
        folder = Path(self.policy.precompress_dir) if self.policy.precompress_dir else None
        room = self.policy.precompress_size * MIB
        try:
            self.precompressed = Precompressor(folder, room // 2) if folder is not None else None
            self.dictionaries = Dictionaries(self.policy.dictionaries,
                                             [(m.prefix, m.root) for m in self.mounts], folder, room // 4)
        except OSError as e:
            raise ConfigError(f"--precompress-dir {folder}: {e.strerror} ({e.filename})") from None

    def close(self) -> None:
        """Stop the background threads (precompression, keeping dictionaries); work not started
        is dropped, and asked for again by the next request after a restart."""
        if self.precompressed is not None:
            self.precompressed.shutdown()
        self.dictionaries.shutdown()

    @classmethod
    def from_folders(cls, *, root: str | None, templates: str, static: str,
                     server_name: str = "h2serve", policy: Policy | None = None) -> Site:
        """The standard layouts: one `root` folder, or `templates/` at / and `static/` at /static/."""
        if root is not None:
            base = _existing_dir(root, "--root")
            return cls([Mount((), base, pages=True)], server_name, base / "404.html", policy)
        pages = _existing_dir(templates, "--templates")
        assets = _existing_dir(static, "--static")
        mounts = [Mount((), pages, pages=True), Mount(("static",), assets, pages=False)]
        return cls(mounts, server_name, pages / "404.html", policy)

    # -- the handler -----------------------------------------------------------------------

    def respond(self, method: str, target: bytes, headers: Headers | None = None, *,
                block: bool = True) -> Response:
        """Answer one request. Never raises for bad input: that is a 4xx answer.

        With `block=False` it answers only from memory and raises WouldBlock where it would touch
        the disk or compress: "io" for a file or 404 page not loaded (or due for a check), a folder
        not known, a listing, a file to read whole for compressing; "cpu" for compressing bytes in
        memory. Opening a loaded, vetted file that is not kept in memory (open + fstat) is done
        even then: it is what serving it from the loop costs anyway."""
        if method not in ("GET", "HEAD"):
            return self.error(405, method, extra=[(b"allow", ALLOW)])
        if len(target) > self.policy.max_target:
            return self.error(414, method)
        if _has_body(headers):
            return self.error(413, method)  # every route here is GET-only: a body is never read
        try:
            segments = split_target(target)
        except BadTarget:
            return self.error(400, method)
        if not self.policy.dotfiles and _hidden(segments):
            return self.error(404, method, block=block)
        consulted = _consulted(headers)
        path = _path_of(target) if self.dictionaries.patterns else ""  # [[dictionary]] matches it
        for _ in range(2):  # a file replaced since its lookup was cached is looked up again, once
            found = self.resolve(segments, target, block=block)
            if isinstance(found, Redirect):
                return self.redirect(found.location, method)
            if isinstance(found, Listing):
                if not block:
                    raise WouldBlock("io")
                return self.listing(found, target, method)
            if found is None:
                break
            response = self.file_response(found, method, consulted, block=block, path=path)
            if response is not None:
                return response
        return self.error(404, method, block=block)

    def file_response(self, entry: FileEntry, method: str, request: dict[bytes, bytes], *,
                      block: bool = True, path: str = "") -> Response | None:
        """The answer for a looked-up file; None if it is no longer the file `entry` describes.
        `path` is the request's (for `[[dictionary]]` patterns). `block=False`: see `respond`."""
        ctype, cache_control = self._kind(entry)
        pattern = self.dictionaries.pattern_for(path) if self.dictionaries.patterns and path else None
        chosen, data, etag = self._representation(entry, ctype, request, block, pattern)
        source = entry.siblings.get(chosen, entry) if chosen is not None else entry
        if data is None:
            data = source.data
        length = len(data) if data is not None else source.size
        headers = [(b"content-type", ctype)]
        if chosen is not None:
            headers.append((b"content-encoding", coding.TOKENS[chosen]))
        headers += [(b"etag", etag.encode()), (b"last-modified", entry.last_modified),
                    (b"cache-control", cache_control)]
        if pattern is not None:
            headers += [(b"use-as-dictionary", pattern.header),
                        (b"vary", b"accept-encoding, available-dictionary")]
        elif coding.compressible(ctype) or entry.siblings:
            headers.append((b"vary", b"accept-encoding"))
        validators = Validators(etag, entry.mtime)
        precondition = evaluate(method, request, validators)
        if precondition == 304:
            # RFC 9110 section 15.4.5: the validators and caching headers a 200 would carry.
            return Response(304, [*headers[1:], (b"date", http_date()), (b"server", self.server),
                                  *self.always],
                            None, entry)
        if precondition == 412:
            return self.error(412, method)
        headers.append((b"accept-ranges", b"bytes"))
        span = byte_range(request, length, validators) if method == "GET" else None
        if span == UNSATISFIABLE:
            return self.error(416, method, extra=[(b"content-range", f"bytes */{length}".encode())])
        status, start, size = 200, 0, length
        if span is not None:
            status, start, size = 206, span[0], span[1] - span[0] + 1
            headers.append((b"content-range", f"bytes {span[0]}-{span[1]}/{length}".encode()))
        headers += [(b"content-length", str(size).encode()), (b"date", http_date()),
                    (b"server", self.server), *self.always]
        if pattern is not None and status == 200:
            self.dictionaries.served(pattern, entry, lambda: self.cache.read_whole(entry, coding.MAX_SIZE))
        if method == "HEAD":
            return Response(status, headers, None, entry)
        if data is not None:
            return Response(status, headers, BytesBody(
                data if size == len(data) else data[start:start + size]), entry)
        fd = open_entry(source)
        if fd is None:
            self.cache.changed(source.path)
            return None
        return Response(status, headers, FileBody(fd, start, size), entry)

    def _representation(self, entry: FileEntry, ctype: bytes, request: dict[bytes, bytes],
                        block: bool = True, pattern: Pattern | None = None
                        ) -> tuple[str | None, bytes | None, str]:
        """(coding or None, bytes in memory or None, ETag) of what this client gets.

        Precompressed siblings serve any request; compressing here is offered only for
        compressible types of a moderate size, and not to range requests (their ranges would
        refer to bytes that exist nowhere on disk). So is a dcz delta, for a file matching a
        `[[dictionary]]` pattern when the client holds a dictionary the server holds too; and
        with --precompress-dir the best-ratio bytes once made, the fast ones until then."""
        available = list(entry.siblings)
        on_the_fly = (coding.compressible(ctype) and b"range" not in request
                      and coding.MIN_SIZE <= entry.size <= coding.MAX_SIZE)
        if on_the_fly:
            available += [c for c in coding.ON_THE_FLY if c not in available]
        digest = None
        if on_the_fly and pattern is not None:
            digest = self.dictionaries.offer(pattern, request, block=block)
            if digest is not None:
                available.append("dcz")
        chosen = coding.choose(request.get(b"accept-encoding"), tuple(available)) if available else None

        def read() -> bytes | None:  # files over SMALL_FILE are not in memory: read when needed
            return self.cache.read_whole(entry, coding.MAX_SIZE)

        cold = "cpu" if entry.data is not None else "io"
        if chosen == "dcz" and digest is not None:
            try:
                data = self.compressed.get(entry.path, entry.etag, "dcz-" + digest.hex(), read,
                                           block=block,
                                           encode=self.dictionaries.delta(entry.path, entry.etag, digest))
            except WouldBlock:
                raise WouldBlock(cold) from None
            if data is not None:
                return chosen, data, self.dictionaries.etag(entry.etag, digest)
            available.remove("dcz")  # the dictionary is gone after all: the ordinary coding
            chosen = coding.choose(request.get(b"accept-encoding"), tuple(available))
        if chosen is None:
            return None, entry.data, entry.etag
        if chosen in entry.siblings:
            sibling = entry.siblings[chosen]
            return chosen, sibling.data, f'"{sibling.size:x}-{sibling.mtime_ns:x}-{chosen}"'
        best = self.precompressed
        if best is not None and chosen in best.codings:
            name = best.ready(entry.path, entry.etag, chosen)
            if name is None:
                best.start(entry.path, entry.etag, read)
            else:
                try:
                    data = self.compressed.get(entry.path, entry.etag, chosen + "-best",
                                               lambda: best.disk.read(name), block=block,
                                               encode=lambda made: made)
                except WouldBlock:
                    raise WouldBlock("io") from None
                if data is not None:
                    return chosen, data, f'{entry.etag[:-1]}-{ETAG_SUFFIX[chosen]}"'
        try:
            data = self.compressed.get(entry.path, entry.etag, chosen, read, block=block)
        except WouldBlock:
            raise WouldBlock(cold) from None
        if data is None:
            return None, entry.data, entry.etag
        return chosen, data, f'{entry.etag[:-1]}-{chosen}"'

    def _kind(self, entry: FileEntry) -> tuple[bytes, bytes]:
        """(Content-Type, Cache-Control) of a file: fixed by its name (and the policy: a reload may
        bring another, while the file cache is kept), so worked out once per entry and policy."""
        kind = entry.kind
        if kind is None or kind[2] is not self.policy:
            ctype = content_type(entry.path)
            kind = entry.kind = (ctype, self.cache_control(entry.path, ctype), self.policy)
        return kind[0], kind[1]

    def cache_control(self, path: str, ctype: bytes) -> bytes:
        """The default policy: HTML revalidated every time, fingerprinted names kept for good."""
        if ctype.startswith(b"text/html"):
            return self.policy.html_cache.encode()
        if FINGERPRINT.search(os.path.basename(path)):
            return self.policy.immutable_cache.encode()
        return self.policy.static_cache.encode()

    def redirect(self, location: str, method: str) -> Response:
        response = self.error(301, method, extra=[(b"location", location.encode())])
        return response

    def listing(self, found: Listing, target: bytes, method: str) -> Response:
        """An HTML list of a folder's entries, names escaped, links percent-encoded."""
        title = html.escape(target.split(b"?", 1)[0].decode("utf-8", "replace"))
        rows = []
        try:
            with os.scandir(found.path) as it:
                names = sorted((not e.is_dir(), e.name) for e in it if _listable(e, found.root))
        except OSError:
            return self.error(404, method)
        for is_file, name in names:
            if name.startswith(".") and not self.policy.dotfiles:
                continue
            label = name + ("" if is_file else "/")
            rows.append(f'<li><a href="{quote(label)}">{html.escape(label)}</a></li>')
        page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n"
                f"<ul>\n<li><a href=\"../\">../</a></li>\n{chr(10).join(rows)}\n</ul></body></html>\n")
        body = page.encode()
        headers = [(b"content-type", b"text/html; charset=utf-8"),
                   (b"cache-control", self.policy.html_cache.encode()),
                   (b"content-length", str(len(body)).encode()), (b"date", http_date()),
                   (b"server", self.server), *self.always]
        return Response(200, headers, None if method == "HEAD" else BytesBody(body))

    def error(self, status: int, method: str, extra: Headers | None = None, *,
              block: bool = True) -> Response:
        """An error answer; 404 uses the site's own 404 page when it has one (WouldBlock("io")
        with `block=False` while that page is not loaded)."""
        body = None
        if status == 404 and self.not_found_page is not None:
            entry = self.cache.get(str(self.not_found_page), self.not_found_page.parent, block=block)
            if entry is not None and entry.data is not None:
                body = entry.data
        if body is None:
            body = ERROR_PAGE.format(status=status, reason=REASONS.get(status, "Error")).encode()
        headers = [(b"content-type", b"text/html; charset=utf-8"),
                   (b"content-length", str(len(body)).encode()), (b"date", http_date()),
                   (b"server", self.server), *self.always, *(extra or [])]
        return Response(status, headers, None if method == "HEAD" else BytesBody(body))

    # -- lookup ------------------------------------------------------------------------------

    def url_path(self, entry: FileEntry) -> str | None:
        """The URL path naming a looked-up file itself (`/docs/index.html` for what `/docs/`
        serves, `/about.html` for `/about`), for rules that must hold whichever name reached it."""
        for mount in self.mounts:
            root = str(mount.root) + os.sep
            if entry.path.startswith(root):
                rest = entry.path[len(root):].replace(os.sep, "/")
                return "/" + "/".join((*mount.prefix, rest))
        return None

    def lookup(self, segments: tuple[str, ...], *, block: bool = True) -> FileEntry | None:
        """The file a decoded path names, or None. Only regular files inside a mount qualify.
        `block=False`: from memory only, else WouldBlock("io")."""
        found = self.resolve(segments, b"", block=block)
        return found if isinstance(found, FileEntry) else None

    def resolve(self, segments: tuple[str, ...], target: bytes, *,
                block: bool = True) -> FileEntry | Redirect | Listing | None:
        """What a decoded path names: a file, a folder to redirect to or list, or nothing.
        `block=False`: from memory only, else WouldBlock("io")."""
        cache = self.cache
        for mount in self.mounts:
            n = len(mount.prefix)
            if segments[:n] != mount.prefix:
                continue
            rest = segments[n:]
            if not rest and n and target:
                return Redirect(_with_slash(target))  # /static is a folder too: /static/
            if not rest or rest[-1] == "":
                folder = os.path.join(mount.root, *rest[:-1])
                entry = cache.get(os.path.join(folder, "index.html"), mount.root, block=block)
                if (entry is None and self.policy.list_dirs
                        and cache.is_dir(folder, mount.root, block=block)):
                    return Listing(folder, mount.root)
                return entry
            path = os.path.join(mount.root, *rest)
            entry = cache.get(path, mount.root, block=block)
            if entry is None and mount.pages and not os.path.splitext(rest[-1])[1]:
                entry = cache.get(path + ".html", mount.root, block=block)
            if entry is None and target and cache.is_dir(path, mount.root, block=block):
                return Redirect(_with_slash(target))
            return entry
        return None


def _path_of(target: bytes) -> str:
    """The path of a request target, as sent (percent-encoded), without its query; an
    absolute-form target's path."""
    path = target.split(b"?", 1)[0].decode("latin-1")
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    return path


def _consulted(headers: Headers | None) -> dict[bytes, bytes]:
    """The request headers the handler reads, repeated ones joined with commas."""
    out: dict[bytes, bytes] = {}
    for name, value in headers or ():
        if name in CONSULTED:
            out[name] = out[name] + b", " + value if name in out else value
    return out


def _listable(entry: os.DirEntry[str], root: Path) -> bool:
    """Whether a listing shows an entry: only what a click on it could be served (a file or folder,
    symlinks followed, that stays inside the root), so a link pointing out does not show its name."""
    try:
        if not (entry.is_file() or entry.is_dir()):
            return False  # FIFOs, sockets, devices, dangling links
        return not entry.is_symlink() or within(os.path.realpath(entry.path), root)
    except OSError:
        return False


def _has_body(headers: Headers | None) -> bool:
    """Whether a request announces a body (Content-Length above 0, or any Transfer-Encoding)."""
    for name, value in headers or ():
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" \t0")):
            return True
    return False


def _hidden(segments: tuple[str, ...]) -> bool:
    """A dotfile or dot-folder anywhere in the path (/.well-known/ aside, which is meant to be
    public)."""
    return any(s.startswith(".") and s != ".well-known" for s in segments)


def _with_slash(target: bytes) -> str:
    """The target with a slash after its path, query kept. Runs of slashes are collapsed (as
    `split_target` does), or `//host/dir` would redirect to another host."""
    path, sep, query = target.decode("latin-1").partition("?")
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    return re.sub("/{2,}", "/", path + "/") + sep + query


def _existing_dir(path: str, option: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{option} {path}: no such folder")
    return p.resolve()


REASONS = {301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect",
           308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 412: "Precondition Failed", 413: "Content Too Large",
           414: "URI Too Long", 416: "Range Not Satisfiable", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}
ERROR_PAGE = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
              "<title>{status} {reason}</title></head>\n"
              "<body><h1>{status} {reason}</h1></body></html>\n")
