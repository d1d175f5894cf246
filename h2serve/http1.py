"""HTTP/1.1: an `asyncio.Protocol` around one `h11.Connection`.

Requests on a keep-alive connection are answered one at a time, in order: while a response is
being sent, h11 holds any pipelined requests behind it (it answers PAUSED) and they are taken up
when the response ends. Bodies are written chunk by chunk while the transport is not paused, and no
further pipelined request is taken up while it is paused; reading stops while more than
INPUT_BUFFER_MAX bytes of input wait behind a response in flight or a paused transport, so a client
that pipelines without reading cannot make the server buffer without bound, even when every answer
is small enough to go out in one write.

Beyond what h11 checks, a request head larger than max_header_list_size is refused with 431 (h11
only limits a head that arrives incomplete), or 414 when the request line alone is over it; a
request with both Content-Length and Transfer-Encoding, or with a header folded over two lines
(obs-fold, which h11 would unfold), is refused with 400 and the connection closed (RFC 9112
sections 6.1 and 5.2: such a message is a smuggling attempt or broken).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11

from .accesslog import client_host
from .push.plan import Client
from .site.body import Body, Response
from .timeouts import SendTimeouts

if TYPE_CHECKING:
    from .protocol import Shared

log = logging.getLogger("h2serve")

# h11 writes an empty reason phrase unless given one; some clients (h2load among them) count
# `HTTP/1.1 200 ` as a failure, so every response says its standard phrase.
REASON_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}
CHUNK = 64 * 1024
WRITE_BUFFER_HIGH = 128 * 1024  # what a client that does not read can make us hold (see http2.py)
INPUT_BUFFER_MAX = 256 * 1024  # unparsed input held behind a response in flight before reading stops
CLOSE_AFTER = frozenset({413, 414, 431})  # answers after which the connection closes


class H1Protocol(SendTimeouts, asyncio.Protocol):
    """One HTTP/1.1 connection."""

    def __init__(self, shared: Shared, tls: bool) -> None:
        self.shared = shared
        self.tls = tls
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=shared.config.max_header_list_size)
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.paused = False
        self.reading_paused = False
        self.closed = False
        self.body: Body | None = None  # the response body being sent, if any
        self.entry: tuple[str, str, str, int, str | None, str | None] | None = None
        self.sent = 0
        self.last_active = time.monotonic()  # connection made, or last response finished
        self.head_started: float | None = None  # first byte of a request head not yet complete
        self.paused_at = 0.0
        self.closed_at = 0.0
        self._head_scanned = 0  # bytes at the front of h11's buffer known to hold no complete head

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods of asyncio.Transport but are not its subclasses.
        self.transport = transport = typing.cast(asyncio.Transport, transport)
        self.client = client_host(transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.shared.add(self)

    def data_received(self, data: bytes) -> None:
        self.shared.site.cache.catch_up()  # once per read: an edit made before these requests is seen
        if self.head_started is None and self.body is None:
            self.head_started = time.monotonic()  # cleared when the request head is complete
        self.conn.receive_data(data)
        self._next_requests()
        # Input left unparsed waits for the response in flight (or for the client to read what it
        # was sent); stop reading if it piles up.
        if ((self.body is not None or self.paused) and not self.reading_paused and not self.closed
                and self.transport is not None and len(_buffered(self.conn)) > INPUT_BUFFER_MAX):
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._next_requests()
        # Keep a plain TCP transport open while a response still goes out to a half-closed peer
        # (TLS transports close on EOF whatever we answer).
        return True if self.body is not None and not self.tls else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish_body()
        self.shared.remove(self)

    def pause_writing(self) -> None:
        self.paused = True
        self.paused_at = time.monotonic()

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()
        self._next_requests()

    # -- requests --------------------------------------------------------------------------------

    def _next_requests(self) -> None:
        """Take events from h11 until a response is in progress or more input is needed."""
        conn = self.conn
        while not self.closed and self.body is None and not self.paused:
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()  # the next pipelined request, if any, is now readable
            if conn.their_state is h11.IDLE and self._folded_head():
                self._protocol_error(h11.RemoteProtocolError(
                    "header folded over two lines (obs-fold)", error_status_hint=400))
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                self._protocol_error(e)
                return
            if isinstance(event, h11.Request):
                self._head_scanned = 0  # h11 took the head off the front of its buffer
            if event is h11.NEED_DATA:
                if not conn.trailing_data[0]:
                    self.head_started = None  # nothing of a next request yet: idle, not slow
                if self.reading_paused and self.transport is not None:
                    self.reading_paused = False  # all buffered input is parsed: read again
                    self.transport.resume_reading()
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.head_started = None
                self._on_request(event)
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
            # h11.Data and EndOfMessage: request bodies are not used by a static server; dropped.

    def _on_request(self, request: h11.Request) -> None:
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        # h11's Headers iterates by index, a Python call per pair: read it once, as a list.
        headers = list(request.headers)
        referer = user_agent = None
        for name, value in headers:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"referer":
                referer = value.decode("latin-1")
        protocol = "HTTP/" + request.http_version.decode()
        problem = _request_problem(request, headers, self.shared.config.max_header_list_size)
        if problem is not None:
            status, why = problem
            log.info("bad HTTP/1.1 request from %s: %s", self.client, why)
            self.entry = (method, target, protocol, status, referer, user_agent)
            self._send_error_and_close(status)
            return
        try:
            response = self.shared.site.respond(method, request.target, headers)
            hints = self._apply_plan(request, headers, response)
        except Exception:
            log.exception("error answering %s %s", method, target)
            response, hints = self.shared.site.error(500, method), b""
        if response.status in CLOSE_AFTER:
            # A request refused for its size: its body (or the rest of it) is not worth reading.
            response.headers.append((b"connection", b"close"))
        self.entry = (method, target, protocol, response.status, referer, user_agent)
        self.send_response(response, hints)

    def _apply_plan(self, request: h11.Request, headers: list[tuple[bytes, bytes]],
                    response: Response) -> bytes:
        """Add the push map's preload links to a page answer; return the 103 to send first, if
        Early Hints are on for HTTP/1.1 (never to an HTTP/1.0 client, RFC 9110 section 15.2)."""
        if (request.method not in (b"GET", b"HEAD") or response.status != 200
                or response.file is None or not self.shared.pusher.wants(response.file)):
            return b""
        host = next((v for n, v in headers if n == b"host"), b"")
        client = Client("http/1.1", "https" if self.tls else "http", host, headers,
                        method=request.method.decode())
        plan = self.shared.pusher.plan(response.file, client)
        if plan is None:
            return b""
        response.headers.extend(plan.links)
        if plan.early_hints and plan.links and request.http_version == b"1.1":
            return self.conn.send(h11.InformationalResponse(status_code=103, headers=plan.links))
        return b""

    def send_response(self, response: Response, hints: bytes = b"") -> None:
        """Send the head (and a small body) in one write, after `hints` (a 103) if given; a large
        body is pumped after."""
        headers = response.headers
        if self.shared.closing:
            headers = [*headers, (b"connection", b"close")]
        out = hints + self.conn.send(_response_head(response.status, headers))
        self.sent = 0
        body = response.body
        if body is not None and body.remaining <= CHUNK:
            chunk = body.read(body.remaining)  # a small body is in memory: never None here
            if chunk is not None:
                out += self.conn.send(h11.Data(data=chunk)) if chunk else b""
                self.sent = len(chunk)
                body.close()
                body = None
        if body is None:
            out += self.conn.send(h11.EndOfMessage())
            self._write(out)
            self._response_done()
            return
        self._write(out)
        self.body = body
        self._pump()

    def _pump(self) -> None:
        body = self.body
        while body is not None and not self.paused and not self.closed:
            try:
                chunk = body.read(min(CHUNK, body.remaining))
            except OSError as e:
                log.warning("reading %s for %s failed: %s", self.entry and self.entry[1], self.client, e)
                self.close()
                return
            if chunk is None:  # the next chunk is being read from disk; it calls back
                body.fill(self._pump)
                return
            data = self.conn.send(h11.Data(data=chunk))
            self.sent += len(chunk)
            if body.remaining == 0:
                data += self.conn.send(h11.EndOfMessage())
                self._write(data)
                self._response_done()
                self._next_requests()
                return
            self._write(data)

    def _response_done(self) -> None:
        self._finish_body()
        self.last_active = time.monotonic()
        if self.conn.our_state is h11.MUST_CLOSE or self.shared.closing:
            self.close()

    def _finish_body(self) -> None:
        """Close the body and log the request, once, however the response ended."""
        if self.body is not None:
            self.body.close()
            self.body = None
        if self.entry is not None:
            method, target, protocol, status, referer, user_agent = self.entry
            self.entry = None
            self.shared.access_log.log(
                self.client, method, target, protocol, status, self.sent, referer, user_agent)

    def _folded_head(self) -> bool:
        """Whether the complete request head at the front of h11's buffer has a line that begins
        with a space or tab: obs-fold, which h11 accepts (joining the lines) and RFC 9112 section
        5.2 lets a server refuse. An incomplete head is left to h11 (and to its size limit); the
        search for the head's end resumes where it stopped, so a head that trickles in is scanned
        once, not once per byte."""
        data = _buffered(self.conn)
        limit = self.shared.config.max_header_list_size + 4
        start = max(0, self._head_scanned - 3)
        ends = [i for i in (data.find(b"\n\r\n", start, limit), data.find(b"\n\n", start, limit)) if i >= 0]
        if not ends:
            self._head_scanned = min(len(data), limit)
            return False
        end = min(ends)
        return data.find(b"\n ", 0, end) >= 0 or data.find(b"\n\t", 0, end) >= 0

    def _protocol_error(self, error: h11.RemoteProtocolError) -> None:
        """A malformed request: answer with the status h11 suggests (400, 431, ...) and close."""
        log.info("bad HTTP/1.1 request from %s: %s", self.client, error)
        status = error.error_status_hint
        if status == 431 and self.conn.our_state is h11.IDLE and b"\n" not in _buffered(self.conn):
            status = 414  # the head is over the limit before its request line even ends
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.entry = ("-", "-", "HTTP/1.1", status, None, None)
        self._send_error_and_close(status)

    def _send_error_and_close(self, status: int) -> None:
        """Answer `status` with `connection: close` (if no response has begun), then close."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = self.shared.site.error(status, "GET")
            response.headers.append((b"connection", b"close"))
            with contextlib.suppress(h11.LocalProtocolError):
                self.send_response(response)
        self.close()

    # -- output and closing ----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.closed or self.transport is None:
            return
        self.closed = True
        self.closed_at = time.monotonic()
        self.transport.close()

    def shutdown(self) -> None:
        """Graceful close: an idle connection closes now, a busy one after its response."""
        if self.body is None and self.conn.our_state is not h11.SEND_BODY:
            self.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def check(self, now: float) -> None:
        """Timeouts: a client not reading, a request head sent too slowly, an idle connection, and a
        close that does not complete (the transport waits for the client to read what is left)."""
        cfg = self.shared.config
        if self.send_timed_out(now, cfg.send_timeout):
            return
        if self.body is not None:
            return
        if self.head_started is not None and now - self.head_started > cfg.header_timeout:
            # Slowloris: the head trickles in. Like nginx, log a 408 and close without answering,
            # and without waiting for the client's side of a TLS close (uvloop would wait for it).
            log.info("client %s sent no complete request head in %gs: closing", self.client,
                     cfg.header_timeout)
            self.shared.access_log.log(self.client, "-", "-", "HTTP/1.1", 408, 0, None, None)
            self.abort()
        elif self.head_started is None and now - self.last_active > cfg.idle_timeout:
            self.close()


_HEADS: dict[tuple[object, ...], h11.Response] = {}
HEADS_CACHED = 256


def _response_head(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    """The h11 event for a response head. h11 validates every header list it is given, which was
    a tenth of the time of a small response; a file asked for many times a second is answered with
    the same list (its Date changes once a second), so each distinct head is validated once and its
    event reused (events are immutable). The cache is bounded: it starts over when full."""
    key = (status, *headers)
    event = _HEADS.get(key)
    if event is None:
        event = h11.Response(status_code=status, headers=headers, reason=REASON_PHRASES.get(status, b""))
        if len(_HEADS) >= HEADS_CACHED:
            _HEADS.clear()
        _HEADS[key] = event
    return event


def _buffered(conn: h11.Connection) -> bytes | bytearray:
    """The input h11 holds unparsed, without copying it (h11's `trailing_data` copies it all)."""
    data = getattr(getattr(conn, "_receive_buffer", None), "_data", None)
    return data if isinstance(data, bytearray) else conn.trailing_data[0]


def _request_problem(request: h11.Request, headers: list[tuple[bytes, bytes]],
                     max_head: int) -> tuple[int, str] | None:
    """What h11 lets through but the server refuses: (status, reason), or None if acceptable."""
    # The head as sent: request line, header lines, blank line.
    size = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n\r\n")
    framing = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"content-length":
            framing |= 1
        elif name == b"transfer-encoding":
            framing |= 2
    if framing == 3:
        return 400, "both Content-Length and Transfer-Encoding"
    if size > max_head:
        if len(request.method) + len(request.target) + 11 > max_head:
            return 414, f"request line over the {max_head}-byte limit"
        return 431, f"request head of {size} bytes is over the {max_head}-byte limit"
    return None
