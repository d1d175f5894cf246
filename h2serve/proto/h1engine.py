"""HTTP/1.1 without sockets: `H1Engine` around one `h11.Connection`.

Requests on a keep-alive connection are answered one at a time, in order: while a response is
being sent (or waits for the disk), h11 holds any pipelined requests behind it (it answers PAUSED)
and they are taken up when the response ends. Bodies are produced chunk by chunk at `output()` time
while the transport takes them (`writable`), and no further pipelined request is taken up while it
does not. `wants_read` turns False while more than INPUT_BUFFER_MAX bytes of input wait behind a
response in flight or a full transport, so a client that pipelines without reading cannot make the
server buffer without bound, even when every answer is small enough to go out in one write.

Beyond what h11 checks, a request head larger than max_header_list_size is refused with 431 (h11
only limits a head that arrives incomplete), or 414 when the request line alone is over it; a
request with both Content-Length and Transfer-Encoding, or with a header folded over two lines
(obs-fold, which h11 would unfold), is refused with 400 and the connection closed (RFC 9112
sections 6.1 and 5.2: such a message is a smuggling attempt or broken).
"""

from __future__ import annotations

import contextlib
import logging
import typing
from http import HTTPStatus

import h11

from ..push.plan import Client
from ..site.body import Body, Response
from ..upstream.pipe import RequestBody, declared, has_body
from .compat import h11_unparsed
from .exchange import Deferred, Exchange, Host, Proxied, Services
from .h1upload import pull_body
from .lifecycle import ABORT, CLOSE, H1_TABLE, IDLE, LOST, OPEN, SHUTDOWN, Lifecycle
from .proxied import H1Proxied

log = logging.getLogger("h2serve")

# h11 writes an empty reason phrase unless given one; some clients (h2load among them) count
# `HTTP/1.1 200 ` as a failure, so every response says its standard phrase.
REASON_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}
CHUNK = 64 * 1024
INPUT_BUFFER_MAX = 256 * 1024  # unparsed input held behind a response in flight before reading stops
CLOSE_AFTER = frozenset({413, 414, 431})  # answers after which the connection closes
_PROTOCOLS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}


class H1Engine:
    """One HTTP/1.1 connection, server side."""

    def __init__(self, services: Services, host: Host, *, tls: bool, client: str = "-") -> None:
        self.services = services
        self.host = host
        self.tls = tls
        self.client = client
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=services.config.max_header_list_size)
        self.life = Lifecycle(H1_TABLE)
        self.deadline: float | None = None
        self.writable = True
        self.exchange: Exchange | None = None  # the request being answered (or awaiting the disk)
        self.body: Body | None = None          # its body, while being sent
        self.last_active = host.now()          # connection made, or last response finished
        self.head_started: float | None = None  # first byte of a request head not yet complete
        self._reading = True
        self._out: list[bytes] = []
        self._queued = 0
        self._head_scanned = 0  # bytes at the front of h11's buffer known to hold no complete head
        self._head: list[tuple[bytes, bytes]] = []  # the response head being sent (for trailers)
        self._upload: RequestBody | None = None  # a request body on its way to the application
        self._facts = self._client_facts

    # -- what the adapter calls --------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to send first: the client speaks first."""

    @property
    def wants_read(self) -> bool:
        return self._reading

    def receive(self, data: bytes) -> None:
        if self.life.ended:
            return
        if self.head_started is None and self.exchange is None:
            self.head_started = self.host.now()  # cleared when the request head is complete
        self.conn.receive_data(data)
        self._next_requests()
        # Input left unparsed waits for the response in flight (or for the client to read what it
        # was sent); stop reading if it piles up.
        if ((self.exchange is not None or not self.writable) and self._reading and not self.life.ended
                and len(h11_unparsed(self.conn)) > INPUT_BUFFER_MAX):
            self._reading = False

    def receive_eof(self) -> bool:
        """The client closed its side. True keeps a plain TCP transport open while a response
        still goes out (or is awaited) to the half-closed peer (TLS transports close on EOF
        whatever we answer)."""
        self.conn.receive_data(b"")
        self._next_requests()
        return self.exchange is not None and not self.tls

    def output(self) -> bytes:
        """What is queued, then body chunks while the transport takes them, up to about CHUNK."""
        if self._upload is not None:
            pull_body(self)
        while (self.body is not None and self.writable and not self.life.ended
               and self._queued < CHUNK and self._pump_once()):
            pass
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._queued = 0
        return data

    def resume(self) -> None:
        """The transport takes output again: take up pipelined requests held back."""
        self._next_requests()

    def tick(self, now: float) -> None:
        """Timeouts: a request head sent too slowly, an idle connection."""
        if self.life.ended or self.exchange is not None:
            return
        cfg = self.services.config
        if self.head_started is not None and now - self.head_started > cfg.header_timeout:
            # Slowloris: the head trickles in. Like nginx, log a 408 and close without answering,
            # and without waiting for the client's side of a TLS close (uvloop would wait for it).
            log.info("client %s sent no complete request head in %gs: closing", self.client,
                     cfg.header_timeout)
            self.services.metrics.abuse("header_timeout")
            self._record("-", "-", "HTTP/1.1", 408).finish()
            self.life.fire(ABORT)
        elif self.head_started is None and now - self.last_active > cfg.idle_timeout:
            self.life.fire(CLOSE)

    def shutdown(self) -> None:
        """Graceful close: an idle connection closes now, a busy one after its response."""
        self.life.fire(SHUTDOWN)
        if self.exchange is None and self.conn.our_state is not h11.SEND_BODY:
            self.life.fire(IDLE)

    def connection_lost(self) -> None:
        self.life.fire(LOST)
        self._finish()

    # -- requests ----------------------------------------------------------------------------------

    def _next_requests(self) -> None:
        """Take events from h11 until a response is in progress or more input is needed."""
        conn = self.conn
        if self._upload is not None:
            pull_body(self)
        while not self.life.ended and self.exchange is None and self.writable:
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
            if event is h11.NEED_DATA:
                if not h11_unparsed(conn):
                    self.head_started = None  # nothing of a next request yet: idle, not slow
                self._reading = True  # all buffered input is parsed: read again
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._head_scanned = 0  # h11 took the head off the front of its buffer
                self.head_started = None
                self._on_request(event)
            elif isinstance(event, h11.ConnectionClosed):
                self.life.fire(CLOSE)
            # h11.Data and EndOfMessage: request bodies are not used by a static server; dropped.

    def _on_request(self, request: h11.Request) -> None:
        method = request.method.decode("latin-1")
        # h11's Headers iterates by index, a Python call per pair: read it once, as a list.
        headers = list(request.headers)
        referer = user_agent = None
        host = b""
        for name, value in headers:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"referer":
                referer = value.decode("latin-1")
            elif name == b"host":
                host = value
        version = request.http_version
        exchange = self.exchange = Exchange(
            self.services, self.client, _PROTOCOLS.get(version) or "HTTP/" + version.decode(), method,
            request.target, headers, referer, user_agent, host, self._facts)
        problem = _request_problem(request, headers, self.services.config.max_header_list_size)
        if problem is not None:
            status, why = problem
            log.info("bad HTTP/1.1 request from %s: %s", self.client, why)
            if status == 431:
                self.services.metrics.abuse("header_size")
            self._send_error_and_close(status)
            return
        if self.services.upstream is not None and has_body(headers):
            # A body follows, perhaps for the application: read on as it is forwarded.
            exchange.body = self._upload = RequestBody(self._credit, declared(headers))
        self._answer(exchange, version)

    def _client_facts(self, exchange: Exchange) -> Client:
        return Client("http/1.1", "https" if self.tls else "http", exchange.authority,
                      exchange.headers, method=exchange.method)

    def _answer(self, exchange: Exchange, version: bytes) -> None:
        """Send the answer, or defer the blocking work it needs and come back when it is done."""
        try:
            result = exchange.answer()
        except Exception:
            log.exception("error answering %s %s", exchange.method, exchange.path)
            self._send_response(self.services.site.error(500, exchange.method))
            return
        if isinstance(result, Deferred):
            self.host.defer(result.kind, result.work,
                            lambda error: self._deferred_done(exchange, version, error))
            return
        if isinstance(result, Proxied):
            if self.conn.they_are_waiting_for_100_continue:
                self._queue(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            result.start(H1Proxied(self, exchange, version))
            pull_body(self)
            return
        response, plan, hints = result, exchange.plan, b""
        if plan is not None:
            # The push map's preload links with a page answer; the 103 first if Early Hints are on
            # for HTTP/1.1 (never to an HTTP/1.0 client, RFC 9110 section 15.2).
            response.headers.extend(plan.links)
            if plan.early_hints and plan.links and version == b"1.1":
                hints = self.conn.send(h11.InformationalResponse(status_code=103, headers=plan.links))
                self.services.metrics.early_hint()
        if response.status in CLOSE_AFTER:
            # A request refused for its size: its body (or the rest of it) is not worth reading.
            response.headers.append((b"connection", b"close"))
        self._send_response(response, hints)

    def _deferred_done(self, exchange: Exchange, version: bytes, error: BaseException | None) -> None:
        if self.exchange is not exchange or self.life.ended:
            exchange.discard()  # the connection is gone or closing: the answer is not wanted
            return
        if error is not None:
            log.error("error answering %s %s", exchange.method, exchange.path, exc_info=error)
            self._send_response(self.services.site.error(500, exchange.method))
        else:
            self._answer(exchange, version)
        self._next_requests()

    # -- responses ---------------------------------------------------------------------------------

    def _send_response(self, response: Response, hints: bytes = b"") -> None:
        """Queue the head (and a small body) at once, after `hints` (a 103) if given; a large body
        is produced by `output()` as the transport takes it."""
        headers = response.headers
        if self.life.state != OPEN:
            headers = [*headers, (b"connection", b"close")]
        if self.exchange is not None:
            self.exchange.status = response.status
        self._head = headers
        out = hints + self.conn.send(_response_head(response.status, headers))
        body = response.body
        if body is not None and body.remaining <= CHUNK:
            chunk = body.read(body.remaining)  # a small body is in memory: never None here
            if chunk is not None:
                out += self.conn.send(h11.Data(data=_bytes(chunk))) if chunk else b""
                if self.exchange is not None:
                    self.exchange.sent = len(chunk)
                body.close()
                body = None
        if body is None:
            out += self.conn.send(h11.EndOfMessage())
            self._queue(out)
            self._response_done()
            return
        self._queue(out)
        self.body = body

    def send_proxied(self, response: Response) -> None:
        """The application's answer (proto/proxied.py); the connection closes after a 413."""
        if response.status in CLOSE_AFTER:
            response.headers.append((b"connection", b"close"))
        self._send_response(response)

    def queue(self, data: bytes) -> None:
        """Output made outside the engine's own calls (a 103 for a proxied request)."""
        self._queue(data)

    def _credit(self, n: int) -> None:
        """The application took `n` bytes of the request body: read on (at the next output)."""

    def _pump_once(self) -> bool:
        """Queue the next body chunk; False when none is ready (the disk calls back) or the body
        is done."""
        body = self.body
        assert body is not None
        try:
            chunk = body.read(min(CHUNK, body.remaining))
        except OSError as e:
            log.warning("reading %s for %s failed: %s", self.exchange and self.exchange.path,
                        self.client, e)
            self.life.fire(CLOSE)
            return False
        if chunk is None:  # the next chunk is being read from disk; it calls back
            body.fill(self.host.wake)
            return False
        data = self.conn.send(h11.Data(data=_bytes(chunk)))
        if self.exchange is not None:
            self.exchange.sent += len(chunk)
        if body.remaining == 0:
            data += self.conn.send(h11.EndOfMessage(headers=self._trailers(body)))
            self._queue(data)
            self._response_done()
            self._next_requests()
            return True
        self._queue(data)
        return True

    def _trailers(self, body: Body) -> list[tuple[bytes, bytes]]:
        """An application's answer's trailers, when the answer is chunked (an HTTP/1.1 client,
        no Content-Length): h11 can send them only then."""
        trailers: list[tuple[bytes, bytes]] = getattr(body, "trailers", None) or []
        if trailers and self.conn.their_http_version == b"1.1" and self.exchange is not None \
                and self.exchange.response is None \
                and not any(n == b"content-length" for n, _ in self._head):
            return trailers
        return []

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._queued += len(data)

    def _response_done(self) -> None:
        self._finish()
        self.last_active = self.host.now()
        if self.conn.our_state is h11.MUST_CLOSE:
            self.life.fire(CLOSE)
        else:
            self.life.fire(IDLE)  # after a shutdown: closes now

    def _finish(self) -> None:
        """Close the body and log the request, once, however the response ended."""
        if self.body is not None:
            self.body.close()
            self.body = None
        elif self.exchange is not None:
            self.exchange.discard()
        if self.exchange is not None:
            self.exchange.finish()
            self.exchange = None

    def _record(self, method: str, target: str, protocol: str, status: int) -> Exchange:
        """An exchange for the log only: a request too broken to answer as one."""
        return Exchange(self.services, self.client, protocol, method, target.encode(), [],
                        status=status)

    # -- errors ------------------------------------------------------------------------------------

    def _folded_head(self) -> bool:
        """Whether the complete request head at the front of h11's buffer has a line that begins
        with a space or tab: obs-fold, which h11 accepts (joining the lines) and RFC 9112 section
        5.2 lets a server refuse. An incomplete head is left to h11 (and to its size limit); the
        search for the head's end resumes where it stopped, so a head that trickles in is scanned
        once, not once per byte."""
        data = h11_unparsed(self.conn)
        limit = self.services.config.max_header_list_size + 4
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
        if status == 431 and self.conn.our_state is h11.IDLE and b"\n" not in h11_unparsed(self.conn):
            status = 414  # the head is over the limit before its request line even ends
        if status == 431:
            self.services.metrics.abuse("header_size")
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.exchange = self._record("-", "-", "HTTP/1.1", status)
        self._send_error_and_close(status)

    def _send_error_and_close(self, status: int) -> None:
        """Answer `status` with `connection: close` (if no response has begun), then close."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = self.services.site.error(status, "GET")
            response.headers.append((b"connection", b"close"))
            with contextlib.suppress(h11.LocalProtocolError):
                self._send_response(response)
        self._finish()
        self.life.fire(CLOSE)


def _bytes(chunk: bytes | memoryview) -> bytes:
    """A file chunk for h11, which declares `Data.data` as bytes but only takes its length and joins
    it into its output, as any bytes-like object can be: a memoryview is passed on without a copy."""
    return typing.cast(bytes, chunk)


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
