"""A page-load client that behaves like a browser loading one page on a fresh connection.

    result = await load_page("127.0.0.1", port, mode="push", ca_file="certs/ca.pem")
    result.elapsed, result.fetched, result.pushed

It opens a new TCP connection and does the TLS handshake (both inside the measured time), GETs the
page, finds what the page needs by parsing its HTML (stylesheets, scripts, images, preloads) and the
fonts of its stylesheets (`@font-face { src: url(...) }`), the way a browser discovers them (it never
reads the server's push map), fetches all of it, and stops the clock at the last byte of the last
asset. Modes:

* `push`:  HTTP/2 with SETTINGS_ENABLE_PUSH=1. A promised resource counts as fetched and is not
  requested; the load waits for every pushed stream to end.
* `nopush`: HTTP/2 with SETTINGS_ENABLE_PUSH=0.
* `hints`: HTTP/2 with SETTINGS_ENABLE_PUSH=0 that acts on `103 Early Hints`: each `Link:
  <...>; rel=preload` of the 103 is requested at once, before the page's 200 arrives.
* `h1`:    HTTP/1.1 over up to 6 keep-alive connections per origin, each opened (TCP + TLS) only when
  a request is waiting and no open connection is idle, as browsers do.

Like Chrome, the HTTP/2 client opens its windows at once: SETTINGS_INITIAL_WINDOW_SIZE 6 MiB per
stream and a connection WINDOW_UPDATE to 15 MiB, sent with the preface, before the first request.
With h2's default windows (65,535 bytes for the whole connection) a server could push only 64 KiB
before waiting a round trip for the client's WINDOW_UPDATE, and no browser loads a page like that.

Requests carry `accept-encoding: identity` by default so that every server sends the same bytes;
a gzip answer is decoded all the same when asked for (`accept_encoding="gzip"`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import ssl
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import h11
import hpack.hpack
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PushedStreamReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes, Settings
from hpack.huffman_table import decode_huffman

MODES = ("push", "nopush", "hints", "h1")
USER_AGENT = "h2serve-bench/1.0 (page-load client)"
ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
# Chrome's HTTP/2 settings: 6 MiB per stream, the connection window raised to 15 MiB at once.
STREAM_WINDOW = 6 * 1024 * 1024
CONNECTION_WINDOW = 15 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 1000
HEADER_TABLE_SIZE = 65536
H1_CONNECTIONS = 6
READ_SIZE = 256 * 1024
# The client's own CPU time is inside every measurement, so h2 is spared work a browser does in C++
# anyway: headers stay bytes, and neither side's headers are re-validated or normalised in Python.
H2_CONFIG = H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=False,
                            normalize_inbound_headers=False, validate_outbound_headers=False,
                            normalize_outbound_headers=False)


@functools.lru_cache(maxsize=65536)
def _huffman(encoded: bytes) -> bytes:
    return decode_huffman(encoded)


def _decode_huffman(encoded: bytes | bytearray | memoryview | None) -> bytes:
    return _huffman(bytes(encoded)) if encoded else b""


def fast_hpack() -> None:
    """Give hpack's Huffman decoder (pure Python, a loop per nibble) a memory, in this process.

    The same header strings come back in every load of a page, and the client's CPU time is inside
    every measurement: a browser decodes HPACK in C++, and this keeps ours from weighing on the
    servers' times. Same results (an invalid string still raises, errors are not cached). The
    benchmark runner calls it; importing this module does not."""
    hpack.hpack.decode_huffman = _decode_huffman  # type: ignore[assignment]


# -- asset discovery -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    """One subresource a page needs: its same-origin path and what it is (the preload `as=`)."""

    path: str
    kind: str  # style, script, image, font, fetch


PRELOAD_KINDS = {"style", "script", "image", "font", "fetch"}


class _PageParser(HTMLParser):
    """Collects (reference, kind) in document order, as a browser's preload scanner meets them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]
        elif tag == "link" and a.get("href"):
            rels = set(a.get("rel", "").lower().split())
            kind = a.get("as", "").lower()
            if "stylesheet" in rels:
                self.found.append((a["href"], "style"))
            elif "modulepreload" in rels:
                self.found.append((a["href"], "script"))
            elif "preload" in rels and kind in PRELOAD_KINDS:
                self.found.append((a["href"], kind))
        elif tag == "script" and a.get("src"):
            self.found.append((a["src"], "script"))
        elif tag == "img" and a.get("src"):
            self.found.append((a["src"], "image"))

    handle_startendtag = handle_starttag


FONT_FACE = re.compile(r"@font-face\s*{([^}]*)}", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]+)\1\s*\)""", re.IGNORECASE)


def same_origin_path(base: str, ref: str) -> str | None:
    """The path a reference names on the page's own origin, or None (another origin, data:, ...).

    `base` is a path (`/about.html`) or a full URL of the page's origin."""
    ref = ref.strip()
    if not ref or ref.startswith("#"):
        return None
    joined = urlsplit(urljoin(base, ref))
    origin = urlsplit(base)
    if joined.scheme != origin.scheme or joined.netloc != origin.netloc:
        return None
    if not joined.path.startswith("/"):
        return None
    return joined.path + (f"?{joined.query}" if joined.query else "")


def html_assets(html: str, page_path: str = "/") -> list[Asset]:
    """What a page's HTML asks for, each path once, in document order: stylesheets, scripts
    (`src`, `modulepreload`), images and `<link rel=preload>`. Other origins and `data:` are left
    out; so are links to other pages (`<a href>`), which a browser does not load."""
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    base = page_path
    if parser.base is not None:
        base = urljoin(page_path, parser.base)
        if urlsplit(base).scheme:  # an absolute <base>: only same-origin paths count, none here
            return []
    seen: dict[str, Asset] = {}
    for ref, kind in parser.found:
        path = same_origin_path(base, ref)
        if path is not None and path not in seen:
            seen[path] = Asset(path, kind)
    return list(seen.values())


def css_fonts(css: str, css_path: str) -> list[Asset]:
    """The fonts a stylesheet's `@font-face` rules name, resolved against the stylesheet, each once.

    A browser fetches a font only when text uses it; the benchmark pages use every font they
    declare, so every one is fetched."""
    seen: dict[str, Asset] = {}
    for block in FONT_FACE.findall(css):
        for _, ref in CSS_URL.findall(block):
            path = same_origin_path(css_path, ref)
            if path is not None and path not in seen:
                seen[path] = Asset(path, "font")
    return list(seen.values())


def discover(html: str, page_path: str, read_css: Callable[[str], str | None]) -> list[Asset]:
    """Everything a page needs: `html_assets`, then the fonts of each stylesheet (`read_css(path)`
    returns its text, or None when it cannot be had), each path once."""
    seen: dict[str, Asset] = {}
    for asset in html_assets(html, page_path):
        seen.setdefault(asset.path, asset)
        if asset.kind == "style":
            text = read_css(asset.path)
            if text is not None:
                for font in css_fonts(text, asset.path):
                    seen.setdefault(font.path, font)
    return list(seen.values())


LINK_PRELOAD = re.compile(r"<([^>]*)>\s*((?:;[^,<]*)*)")


def preload_links(values: Iterable[str], page_path: str = "/") -> list[Asset]:
    """The `rel=preload` targets of Link header values (as in a 103 Early Hints), same-origin only."""
    seen: dict[str, Asset] = {}
    for value in values:
        for ref, params in LINK_PRELOAD.findall(value):
            attrs = {}
            for param in params.split(";"):
                name, _, val = param.strip().partition("=")
                attrs[name.strip().lower()] = val.strip().strip('"').lower()
            if "preload" not in attrs.get("rel", "").split():
                continue
            path = same_origin_path(page_path, ref)
            if path is not None and path not in seen:
                seen[path] = Asset(path, attrs.get("as", "fetch"))
    return list(seen.values())


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Fetched:
    """One response the load received."""

    path: str
    status: int = 0
    size: int = 0                 # body bytes on the wire (before decoding)
    pushed: bool = False
    hinted: bool = False          # requested because a 103 named it
    done_at: float = 0.0          # seconds since the connect started
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    done: bool = False
    reset: bool = False

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def text(self) -> str:
        data = bytes(self.body)
        if (self.header("content-encoding") or "").lower() == "gzip":
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        return data.decode("utf-8", errors="replace")


@dataclass
class PageLoad:
    """The outcome of one page load."""

    mode: str
    elapsed: float                       # seconds from connect start to the last byte of the last asset
    page: Fetched
    assets: dict[str, Fetched]           # what the page needed (discovered), by path
    extra: dict[str, Fetched]            # what came that the page did not need (unneeded pushes)
    discovered: list[Asset]
    connections: int
    handshake: float                     # seconds until the first connection's TLS was up
    early_hints: int = 0                 # 103 responses seen

    @property
    def fetched(self) -> set[str]:
        """Paths of the page's assets that arrived complete (requested or pushed)."""
        return {p for p, f in self.assets.items() if f.done and not f.reset}

    @property
    def pushed(self) -> set[str]:
        return {p for p, f in {**self.assets, **self.extra}.items() if f.pushed and f.done}

    @property
    def requested(self) -> set[str]:
        return {p for p, f in self.assets.items() if not f.pushed}

    @property
    def bytes(self) -> int:
        return self.page.size + sum(f.size for f in self.assets.values()) + sum(
            f.size for f in self.extra.values())

    def summary(self) -> dict[str, object]:
        return {"mode": self.mode, "elapsed_ms": round(self.elapsed * 1000, 3),
                "assets": len(self.assets), "pushed": len(self.pushed), "extra": len(self.extra),
                "bytes": self.bytes, "connections": self.connections,
                "handshake_ms": round(self.handshake * 1000, 3), "early_hints": self.early_hints}


class LoadError(Exception):
    """The page could not be loaded completely (a status other than 200, a reset, a closed
    connection, a wrong protocol)."""


def client_context(ca_file: str | None, alpn: list[str]) -> ssl.SSLContext:
    """A verifying client context (the dev CA), offering `alpn`."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(alpn)
    return ctx


async def _open(host: str, port: int, ctx: ssl.SSLContext, server_name: str, alpn: str
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname=server_name, limit=READ_SIZE)
    chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    if chosen != alpn:
        writer.close()
        raise LoadError(f"ALPN chose {chosen!r}, not {alpn!r}")
    return reader, writer


async def load_page(host: str, port: int, path: str = "/", *, mode: str = "push",
                    ca_file: str | None = None, server_name: str = "localhost",
                    accept_encoding: str = "identity", assets: bool = True,
                    browser_windows: bool = True, timeout: float = 60.0) -> PageLoad:
    """Load `path` and everything it needs over fresh connection(s) to `host:port`; see the module
    docstring for the modes. Raises LoadError when anything the page needs cannot be had.

    `assets=False` fetches `path` alone (a probe of the floor: connect, handshake, one request).
    `browser_windows=False` keeps h2's default flow-control windows (65,535 bytes per stream and for
    the connection) instead of Chrome's, to show what they cost."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    authority = server_name if port == 443 else f"{server_name}:{port}"
    if mode == "h1":
        loader: _H1Load | _H2Load = _H1Load(host, port, path, ca_file, server_name, authority,
                                            accept_encoding)
    else:
        loader = _H2Load(host, port, path, mode, ca_file, server_name, authority, accept_encoding)
    loader.subresources = assets
    loader.browser_windows = browser_windows
    return await asyncio.wait_for(loader.run(), timeout)


class _Load:
    """What both protocols share: the discovered set, and deciding when the load is complete."""

    def __init__(self, host: str, port: int, path: str, mode: str, server_name: str,
                 authority: str, accept_encoding: str) -> None:
        self.host, self.port, self.path, self.mode = host, port, path, mode
        self.server_name, self.authority = server_name, authority
        self.accept_encoding = accept_encoding
        self.start = 0.0
        self.handshake = 0.0
        self.page = Fetched(path)
        self.needed: dict[str, Asset] = {}      # discovered so far
        self.got: dict[str, Fetched] = {}       # every response (requested, pushed, hinted) by path
        self.finished = asyncio.Event()
        self.error: BaseException | None = None
        self.early_hints = 0
        self.subresources = True
        self.browser_windows = True

    def now(self) -> float:
        return time.perf_counter() - self.start

    def request_headers(self, asset: Asset | None) -> list[tuple[str, str]]:
        accept = ACCEPT_HTML if asset is None else {
            "style": "text/css,*/*;q=0.1", "image": "image/avif,image/webp,image/*,*/*;q=0.8",
        }.get(asset.kind, "*/*")
        return [("user-agent", USER_AGENT), ("accept", accept),
                ("accept-encoding", self.accept_encoding)]

    def completed(self, fetched: Fetched) -> list[Asset]:
        """A response ended: check it, and return what it newly makes the page need."""
        fetched.done = True
        fetched.done_at = self.now()
        if fetched is self.page:
            if fetched.status != 200:
                raise LoadError(f"{fetched.path}: status {fetched.status}")
            if not self.subresources:
                return []
            return self._need(html_assets(fetched.text(), self.path))
        if fetched.path in self.needed and fetched.status != 200:
            raise LoadError(f"{fetched.path}: status {fetched.status}")
        asset = self.needed.get(fetched.path)
        if asset is not None and asset.kind == "style":
            return self._need(css_fonts(fetched.text(), fetched.path))
        return []

    def _need(self, assets: list[Asset]) -> list[Asset]:
        new = []
        for asset in assets:
            if asset.path not in self.needed and asset.path != self.path:
                self.needed[asset.path] = asset
                new.append(asset)
        # A stylesheet that arrived (pushed, hinted) before the page named it: read its fonts now.
        for asset in list(new):
            got = self.got.get(asset.path)
            if asset.kind == "style" and got is not None and got.done:
                new.extend(self._need(css_fonts(got.text(), asset.path)))
        return new

    def all_done(self) -> bool:
        if not self.page.done:
            return False
        if any(not (self.got.get(p) and self.got[p].done) for p in self.needed):
            return False
        return all(f.done for f in self.got.values())

    def result(self, elapsed: float, connections: int) -> PageLoad:
        assets = {p: self.got[p] for p in self.needed}
        extra = {p: f for p, f in self.got.items() if p not in self.needed}
        return PageLoad(self.mode, elapsed, self.page, assets, extra, list(self.needed.values()),
                        connections, self.handshake, self.early_hints)


class _H2Load(_Load):
    def __init__(self, host: str, port: int, path: str, mode: str, ca_file: str | None,
                 server_name: str, authority: str, accept_encoding: str) -> None:
        super().__init__(host, port, path, mode, server_name, authority, accept_encoding)
        self.ctx = client_context(ca_file, ["h2"])
        self.conn = H2Connection(H2_CONFIG)
        self.streams: dict[int, Fetched] = {}

    async def run(self) -> PageLoad:
        self.start = time.perf_counter()
        reader, writer = await _open(self.host, self.port, self.ctx, self.server_name, "h2")
        self.handshake = self.now()
        conn = self.conn
        conn.local_settings = Settings(client=True, initial_values={
            SettingCodes.HEADER_TABLE_SIZE: HEADER_TABLE_SIZE,
            SettingCodes.ENABLE_PUSH: 1 if self.mode == "push" else 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW if self.browser_windows else 65535,
        })
        # h2 applies a new local HEADER_TABLE_SIZE to its HPACK decoder only when the SETTINGS are
        # acknowledged, but the server may use the larger table as soon as it has read them.
        conn.decoder.max_allowed_table_size = HEADER_TABLE_SIZE
        conn.initiate_connection()
        if self.browser_windows:
            conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._request(self.page, None)
        try:
            writer.write(conn.data_to_send())
            while not self.all_done():
                data = await reader.read(READ_SIZE)
                if not data:
                    raise LoadError("the server closed the connection")
                self._received(data)
                out = conn.data_to_send()
                if out:
                    writer.write(out)
            elapsed = self.now()
            return self.result(elapsed, 1)
        finally:
            try:
                conn.close_connection()
                writer.write(conn.data_to_send())
            except Exception:
                pass
            writer.close()

    def _request(self, fetched: Fetched, asset: Asset | None) -> None:
        sid = self.conn.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", self.authority.encode()),
                   (b":path", fetched.path.encode()),
                   *((n.encode(), v.encode()) for n, v in self.request_headers(asset))]
        self.conn.send_headers(sid, headers, end_stream=True)
        self.streams[sid] = fetched
        if fetched is not self.page:
            self.got[fetched.path] = fetched

    def _want(self, assets: list[Asset]) -> None:
        for asset in assets:
            if asset.path not in self.got:  # neither pushed, hinted nor requested yet
                self._request(Fetched(asset.path), asset)

    def _received(self, data: bytes) -> None:
        conn = self.conn
        consumed: dict[int, int] = {}
        for event in conn.receive_data(data):
            if isinstance(event, DataReceived):
                fetched = self.streams.get(event.stream_id)
                if fetched is not None:
                    fetched.body += event.data
                    fetched.size += len(event.data)
                consumed[event.stream_id] = consumed.get(event.stream_id, 0) + event.flow_controlled_length
            elif isinstance(event, ResponseReceived):
                fetched = self.streams.get(event.stream_id)
                if fetched is not None:
                    fetched.headers = _str_headers(event.headers)
                    fetched.status = int(fetched.header(":status") or 0)
            elif isinstance(event, StreamEnded):
                fetched = self.streams.get(event.stream_id)
                if fetched is not None:
                    self._want(self.completed(fetched))
            elif isinstance(event, PushedStreamReceived):
                self._pushed(event)
            elif isinstance(event, InformationalResponseReceived):
                self._informational(event)
            elif isinstance(event, StreamReset):
                self._reset(event)
            elif isinstance(event, ConnectionTerminated) and (
                    event.error_code != ErrorCodes.NO_ERROR or not self.all_done()):
                raise LoadError(f"GOAWAY {event.error_code!r}")
        # Flow control as a browser does it: what was consumed is given back (h2 sends the
        # WINDOW_UPDATEs once a window is half used), counted once per read rather than per frame.
        for sid, n in consumed.items():
            with contextlib.suppress(StreamClosedError):
                conn.acknowledge_received_data(n, sid)

    def _pushed(self, event: PushedStreamReceived) -> None:
        path = next((v for n, v in _str_headers(event.headers) if n == ":path"), "")
        if self.mode != "push" or path in self.got or path == self.path:
            # Not asked for (h2 itself refuses pushes after ENABLE_PUSH=0), or already had: cancel.
            self.conn.reset_stream(event.pushed_stream_id, ErrorCodes.CANCEL)
            return
        fetched = Fetched(path, pushed=True)
        self.streams[event.pushed_stream_id] = fetched
        self.got[path] = fetched

    def _informational(self, event: InformationalResponseReceived) -> None:
        headers = _str_headers(event.headers)
        if dict(headers).get(":status") != "103":
            return
        self.early_hints += 1
        if self.mode != "hints":
            return
        for asset in preload_links((v for n, v in headers if n == "link"), self.path):
            if asset.path not in self.got and asset.path != self.path:
                fetched = Fetched(asset.path, hinted=True)
                self._request(fetched, asset)

    def _reset(self, event: StreamReset) -> None:
        fetched = self.streams.get(event.stream_id)
        if fetched is None:
            return
        if fetched is self.page:
            raise LoadError(f"{self.path}: stream reset ({event.error_code!r})")
        fetched.done = fetched.reset = True
        if fetched.path in self.needed:
            if not fetched.pushed:
                raise LoadError(f"{fetched.path}: stream reset ({event.error_code!r})")
            # A push the server gave up: fetch it as a browser would.
            del self.got[fetched.path]
            self._want([self.needed[fetched.path]])
        else:
            self.got.pop(fetched.path, None)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection and wait (briefly) until it is closed, after the clock has stopped, so
    that a load leaves nothing running into the next."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2.0)


def _str_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


class _H1Load(_Load):
    """HTTP/1.1: a queue of requests served by up to 6 keep-alive connections."""

    def __init__(self, host: str, port: int, path: str, ca_file: str | None, server_name: str,
                 authority: str, accept_encoding: str) -> None:
        super().__init__(host, port, path, "h1", server_name, authority, accept_encoding)
        self.ctx = client_context(ca_file, ["http/1.1"])
        self.queue: asyncio.Queue[tuple[Fetched, Asset | None] | None] = asyncio.Queue()
        self.idle = 0
        self.opened = 0
        self.workers: list[asyncio.Task[None]] = []

    async def run(self) -> PageLoad:
        self.start = time.perf_counter()
        self._enqueue(self.page, None)
        try:
            await self.finished.wait()
            if self.error is not None:
                raise self.error
            return self.result(self.now(), self.opened)
        finally:
            for task in self.workers:
                task.cancel()
            await asyncio.gather(*self.workers, return_exceptions=True)

    def _enqueue(self, fetched: Fetched, asset: Asset | None) -> None:
        if fetched is not self.page:
            self.got[fetched.path] = fetched
        self.queue.put_nowait((fetched, asset))
        # A browser opens a connection for a request that finds no idle one, up to 6 per origin.
        if self.queue.qsize() > self.idle and self.opened < H1_CONNECTIONS:
            self.opened += 1
            self.workers.append(asyncio.create_task(self._worker()))

    async def _worker(self) -> None:
        writer = None
        try:
            reader, writer = await _open(self.host, self.port, self.ctx, self.server_name, "http/1.1")
            if not self.handshake:
                self.handshake = self.now()
            conn = h11.Connection(h11.CLIENT)
            while True:
                self.idle += 1
                try:
                    item = await self.queue.get()
                finally:
                    self.idle -= 1
                if item is None:
                    return
                fetched, asset = item
                await self._fetch(conn, reader, writer, fetched, asset)
                conn.start_next_cycle()
                for new in self.completed(fetched):
                    if new.path not in self.got:
                        self._enqueue(Fetched(new.path), new)
                if self.all_done():
                    self.finished.set()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.error = e if isinstance(e, LoadError) else LoadError(f"HTTP/1.1: {e!r}")
            self.finished.set()
        finally:
            if writer is not None:
                await _close(writer)

    async def _fetch(self, conn: h11.Connection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, fetched: Fetched, asset: Asset | None) -> None:
        headers = [("host", self.authority), *self.request_headers(asset)]
        writer.write(conn.send(h11.Request(method="GET", target=fetched.path, headers=headers))
                     + conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise LoadError(f"{fetched.path}: connection closed mid-response")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                fetched.status = event.status_code
                fetched.headers = [(n.decode().lower(), v.decode()) for n, v in event.headers]
            elif isinstance(event, h11.Data):
                fetched.body += event.data
                fetched.size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.InformationalResponse):
                if event.status_code == 103:
                    self.early_hints += 1
            elif isinstance(event, h11.ConnectionClosed):
                raise LoadError(f"{fetched.path}: connection closed mid-response")


# -- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pageload",
                                     description="Load one page and everything it needs, once.")
    parser.add_argument("url", help="https://HOST:PORT/PATH (HOST is the certificate's name)")
    parser.add_argument("--connect", metavar="HOST:PORT",
                        help="connect here instead (a relay), keeping the URL's name for TLS")
    parser.add_argument("--mode", choices=MODES, default="push")
    parser.add_argument("--cacert", default="certs/ca.pem", help="CA to verify the server with")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    name, port = url.hostname or "localhost", url.port or 443
    host, cport = name, port
    if args.connect:
        h, _, p = args.connect.rpartition(":")
        host, cport = h or "127.0.0.1", int(p)

    fast_hpack()

    async def go() -> None:
        for _ in range(args.runs):
            result = await load_page(host, cport, url.path or "/", mode=args.mode,
                                     ca_file=args.cacert, server_name=name)
            print(result.summary(), flush=True)

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
