"""HTTP/2 without sockets: `H2Engine` holds one connection's `H2Connection`, its streams, the send
scheduler, push execution (h2push.py), the abuse policy and the lifecycle.

Bytes in (`receive`), bytes out (`output`), timeouts by `tick(now)`; the clock, the worker threads
and the wake-up when a file chunk arrives come from a `Host` (exchange.py). Nothing here imports
asyncio or touches a socket, so every decision can be tested in memory against a real client
`H2Connection`.

Bodies are pulled chunk by chunk at `output()` time, as far as the peer's stream and connection
windows allow (h2sched.py decides the order), so memory per connection stays bounded and the
order is decided as late as it can be. Abuse is charged frame by frame before h2 parses anything
(h2guard.py); a header block over the advertised SETTINGS_MAX_HEADER_LIST_SIZE is refused before h2
buffers it. The connection's life is the table in lifecycle.py.
"""

from __future__ import annotations

import contextlib
import logging
import typing
from collections.abc import Callable
from functools import partial
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import ExtensionFrame

from ..metrics import flood_reason
from ..push.plan import Client
from ..site.body import Response
from ..upstream.pipe import RequestBody, declared
from . import lifecycle as lc
from .compat import ServerConnection
from .exchange import Deferred, Exchange, Host, Proxied, Services
from .h2guard import PRIORITY_UPDATE, FrameBudgets, FrameGuard, Refusal
from .h2priority import NO_RFC7540_PRIORITIES, PrioritySignals
from .h2push import push_slots, send_with_plan
from .h2sched import SendScheduler, Stream
from .h2upload import credit, on_data, on_stream_ended, stop_upload
from .hpackcache import CachedEncoder
from .proxied import H2Proxied

log = logging.getLogger("h2serve")

FLUSH_BYTES = 64 * 1024           # DATA produced per output() call before the adapter writes it
RUN_BYTES = 64 * 1024             # DATA one stream sends in its turn (frames of the peer's size)
SHUTDOWN_PING = b"h2s-shut"
SHUTDOWN_PING_WAIT = 2.0          # seconds to wait for the PING ACK before the final GOAWAY
STREAM_SLACK = 16                 # streams h2 itself accepts beyond the advertised limit (refused)
STATUS_BYTES = {code: str(code).encode() for code in range(100, 600)}


class H2Engine:
    """One HTTP/2 connection, server side."""

    def __init__(self, services: Services, host: Host, *, tls: bool, client: str = "-") -> None:
        self.services = services
        self.host = host
        self.client = client
        self.scheme = "https" if tls else "http"
        cfg = services.config
        self.budgets = FrameBudgets(host.now)
        self.conn = ServerConnection(cfg.max_header_list_size, CachedEncoder())
        self.guard = FrameGuard(self.budgets, cfg.max_header_list_size, self.conn.stream_open)
        self.life = lc.Lifecycle(lc.H2_TABLE)
        self.streams: dict[int, Stream] = {}  # answers awaited or being sent
        self.sched: SendScheduler[Stream] = SendScheduler(cfg.priorities == "on")
        self.signals = PrioritySignals()
        self.pushed: set[str] = set()          # paths pushed on this connection: never twice
        self.last_stream: int | None = None    # set by our final GOAWAY: streams above are refused
        self.deadline: float | None = None     # the end of the wait for the shutdown PING's ACK
        self.writable = True
        self.last_active = host.now()          # last input, or last stream finished
        self._facts = self._client_facts
        self._handlers: dict[type, Callable[[Any], None]] = {
            RequestReceived: self._on_request,
            DataReceived: partial(on_data, self),
            StreamEnded: partial(on_stream_ended, self),
            StreamReset: self._on_reset,
            WindowUpdated: self._on_window_update,
            RemoteSettingsChanged: self._on_settings,
            ConnectionTerminated: self._on_goaway,
            PingAckReceived: self._on_ping_ack,
            UnknownFrameReceived: self._on_extension_frame,
        }

    # -- what the adapter calls --------------------------------------------------------------------

    def start(self) -> None:
        """Queue the server's preface: its SETTINGS."""
        cfg = self.services.config
        settings = {SettingCodes.MAX_CONCURRENT_STREAMS: cfg.max_concurrent_streams,
                    SettingCodes.INITIAL_WINDOW_SIZE: cfg.initial_window_size,
                    SettingCodes.MAX_HEADER_LIST_SIZE: cfg.max_header_list_size,
                    # RFC 9218 section 2.1; h2 sends settings it has no name for as they are.
                    typing.cast(SettingCodes, NO_RFC7540_PRIORITIES): 1}
        self.conn.local_settings = Settings(client=False, initial_values=settings)
        self.conn.initiate_connection()
        # The SETTINGS just queued advertise max_concurrent_streams. Let h2 itself take a few more,
        # so that a stream over the limit is refused alone (RST_STREAM REFUSED_STREAM, RFC 9113
        # section 5.1.2) instead of h2 ending the connection.
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] += STREAM_SLACK
        self.conn.local_settings = Settings(client=False, initial_values=settings)

    @property
    def wants_read(self) -> bool:
        return True  # flow control bounds what a client may send

    def receive(self, data: bytes) -> None:
        """Take bytes from the client: charge each frame, hand them to h2, act on its events."""
        if self.life.ended:
            return  # a TLS transport still delivers what arrives while it shuts down
        admitted, refusal = self.guard.admit(data)
        try:
            events = self.conn.receive_data(data if admitted == len(data) else data[:admitted])
        except ProtocolError as e:
            # h2 has queued a GOAWAY with the right error code (unless it failed on the preface,
            # before anything: RFC 9113 section 3.4 makes one optional; a clear answer costs nothing).
            log.info("h2 protocol error from %s: %s", self.client, e)
            self._goaway(e.error_code)
            return
        if refusal is not None:
            if refusal.error_code == ErrorCodes.ENHANCE_YOUR_CALM:
                log.info("%s from %s: GOAWAY ENHANCE_YOUR_CALM", refusal.reason, self.client)
                self.services.metrics.abuse(flood_reason(refusal.reason))
            else:
                log.info("h2 protocol error from %s: %s", self.client, refusal.reason)
            self._goaway(refusal.error_code)
            return
        if any(type(event) is ConnectionTerminated for event in events):
            # A request read with the client's GOAWAY is still answered, but the GOAWAY already names
            # the last of our streams the client will take (RFC 9113 section 6.8): promise none.
            self.life.fire(lc.GOAWAY_READ)
        self.last_active = self.host.now()
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
                if self.life.ended:
                    return
        self._check_idle()

    def receive_eof(self) -> bool:
        """The client closed its side: nothing more can be asked; let the transport close."""
        return False

    def output(self) -> bytes:
        """What is to be written now: frames queued, then DATA as windows allow, up to about
        FLUSH_BYTES (the adapter calls again while its transport takes more)."""
        if not self.life.ended and self.sched.ready:
            self._pump(FLUSH_BYTES)
        return self.conn.data_to_send()

    def resume(self) -> None:
        """The transport takes output again: nothing to do, `output()` is pulled."""

    def tick(self, now: float) -> None:
        """Timeouts: the wait for the shutdown PING, streams stalled at a zero window, an idle
        connection."""
        if self.life.ended:
            return
        if self.deadline is not None and now >= self.deadline:
            self._drained()
            if self.life.ended:
                return
        cfg = self.services.config
        stalled = self.sched.stalled(now, cfg.send_timeout)
        if stalled:
            # A client that has sent nothing since its streams stalled is gone or hostile: once its
            # last stream is reset, the connection ends too. One that is busy keeps it.
            silent = self.last_active <= min(s.blocked_at for s in stalled)
            for stream in stalled:
                self._reset(stream, ErrorCodes.CANCEL)
            log.info("client %s left %d streams at a zero window for %gs: reset", self.client,
                     len(stalled), cfg.send_timeout)
            if not self.streams and silent:
                self.services.metrics.abuse("send_timeout")
                self._goaway(ErrorCodes.NO_ERROR)
        elif not self.streams and now - self.last_active > cfg.idle_timeout:
            self._goaway(ErrorCodes.NO_ERROR)

    def give_up_writing(self) -> None:
        """The transport took nothing for the send timeout: reset every stream and end with a
        GOAWAY, as for streams stalled at a zero window (the adapter then closes)."""
        for stream in list(self.streams.values()):
            self._reset(stream, ErrorCodes.CANCEL)
        self._goaway(ErrorCodes.NO_ERROR)

    def shutdown(self) -> None:
        """Graceful close, the two-step GOAWAY of RFC 9113 section 6.8.

        First a GOAWAY with the largest stream id and a PING: requests already on their way are
        still taken. When the PING comes back (or after SHUTDOWN_PING_WAIT) a second GOAWAY names
        the last stream taken; the connection closes once those streams are answered.
        """
        was = self.life.state
        if self.life.fire(lc.SHUTDOWN) == lc.DRAINING and was == lc.OPEN:
            self.conn.queue_goaway(2**31 - 1)
            self.conn.ping(SHUTDOWN_PING)
            self.deadline = self.host.now() + SHUTDOWN_PING_WAIT

    def connection_lost(self) -> None:
        """The transport is gone: every answer ends here (logged), and h2's cycles are broken so the
        connection is freed at once."""
        self.life.fire(lc.LOST)
        for stream in list(self.streams.values()):
            self._end_stream(stream)
        self.sched.clear()
        self._handlers = {}
        self.conn.release()

    # -- the lifecycle -----------------------------------------------------------------------------

    def _goaway(self, error_code: ErrorCodes) -> None:
        """End the connection with a GOAWAY naming the last stream taken, sent after what is queued."""
        with contextlib.suppress(ProtocolError):  # h2 has already closed itself (it sent one)
            self.conn.close_connection(error_code, last_stream_id=self.conn.highest_inbound_stream_id)
        self.life.fire(lc.CLOSE)

    def _drained(self) -> None:
        """The shutdown PING came back, or the wait for it ran out: the final GOAWAY."""
        self.deadline = None
        if self.life.state == lc.DRAINING:
            self.life.fire(lc.DRAINED)
            self.last_stream = self.conn.highest_inbound_stream_id
            self.conn.queue_goaway(self.last_stream)
            self._check_idle()

    def _check_idle(self) -> None:
        if not self.streams and self.life.state == lc.FINISHING:
            self.life.fire(lc.IDLE)

    # -- requests ----------------------------------------------------------------------------------

    def _on_request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        self.services.metrics.stream()
        if not self.conn.stream_open(sid):
            # Reset by the client in the same read as its request: h2 has closed the stream, and any
            # frame on it (a 103, a PUSH_PROMISE, the answer) would raise and end the connection.
            # (The RST_STREAM was charged to the reset budget as it was read.)
            return
        if self.last_stream is not None and sid > self.last_stream:
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        limit = self.services.config.max_concurrent_streams
        # h2's table holds every open stream (and some closed ones): counting the open ones walks
        # it, so only when it is big enough to hold too many.
        if len(self.conn.streams) > limit and self.conn.open_inbound_streams > limit:
            # RFC 9113 section 5.1.2. A refused stream is one opened only to be reset: it spends
            # from the same budget as the client's own resets.
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            if not self.budgets.resets.take():
                log.info("streams opened beyond SETTINGS_MAX_CONCURRENT_STREAMS, again and again from "
                         "%s: GOAWAY ENHANCE_YOUR_CALM", self.client)
                self.services.metrics.abuse("stream_flood")
                self._goaway(ErrorCodes.ENHANCE_YOUR_CALM)
            return
        headers = event.headers or []
        method = ""
        target = authority = b""
        referer = user_agent = None
        for name, value in headers:
            if name == b":method":
                method = value.decode("latin-1")
            elif name == b":path":
                target = value
            elif name == b":authority" or (name == b"host" and not authority):
                authority = value
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"referer":
                referer = value.decode("latin-1")
        exchange = Exchange(self.services, self.client, "HTTP/2.0", method, target, headers,
                            referer, user_agent, authority, self._facts)
        if self.services.upstream is not None and event.stream_ended is None:
            # A body may follow, for the application: credited to the client as it is forwarded.
            exchange.body = RequestBody(partial(credit, self, sid), declared(headers))
        stream = self.streams[sid] = Stream(sid, exchange, self.signals.for_request(sid, headers))
        self._answer(stream)

    def _answer(self, stream: Stream) -> None:
        """Send the answer, or defer the blocking work it needs and come back when it is done."""
        try:
            result = stream.exchange.answer()
        except Exception:
            log.exception("error answering %s %s", stream.exchange.method, stream.exchange.path)
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        if isinstance(result, Deferred):
            self.host.defer(result.kind, result.work, partial(self._deferred_done, stream))
        elif isinstance(result, Proxied):
            result.start(H2Proxied(self, stream))
        elif stream.exchange.plan is None:
            self._send_response(stream, result)
        else:
            send_with_plan(self, stream, result, stream.exchange.plan)

    def _deferred_done(self, stream: Stream, error: BaseException | None) -> None:
        if self.streams.get(stream.id) is not stream or self.life.ended:
            stream.exchange.discard()  # reset, or the connection is gone: the answer is not wanted
            return
        if error is not None:
            log.error("error answering %s %s", stream.exchange.method, stream.exchange.path,
                      exc_info=error)
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        self._answer(stream)
        self._check_idle()

    def _client_facts(self, exchange: Exchange) -> Client:
        return Client("h2", self.scheme, exchange.authority, exchange.headers, push_slots(self),
                      self.pushed, exchange.method)

    # -- sending -----------------------------------------------------------------------------------

    def _send_response(self, stream: Stream, response: Response, queue: bool = True) -> bool:
        """Send the HEADERS now and (with `queue`) give the body to the scheduler, to go out as
        windows allow; whether there is a body to send."""
        body = response.body
        headers = [(b":status", STATUS_BYTES[response.status]), *response.headers]
        stream.body = body
        if body is None or body.remaining == 0:
            self.conn.send_response_headers(stream.id, headers, end_stream=True)
            self._end_stream(stream)
            return False
        self.conn.send_response_headers(stream.id, headers, end_stream=False)
        if queue:
            self.sched.add(stream)
        return True

    def send_proxied(self, stream: Stream, response: Response) -> None:
        """The application's answer (proto/proxied.py): HEADERS now, the body as it arrives."""
        self._send_response(stream, response)

    def _pump(self, budget: int) -> None:
        """DATA in scheduler order while windows allow, until about `budget` bytes are queued."""
        sched, streams = self.sched, self.streams
        queued = 0
        while queued < budget:
            stream = sched.next()
            if stream is None:
                break
            if stream.body is not None and streams.get(stream.id) is stream:  # else ended meanwhile
                queued += self._run(stream)

    def _run(self, stream: Stream) -> int:
        """One turn of `stream`: a run of DATA as far as its windows allow; back to the scheduler
        if it has more, aside if its window is shut, or waiting for the disk. The bytes queued."""
        body = stream.body
        assert body is not None
        window = self.conn.local_flow_control_window(stream.id)
        if window <= 0:
            self.sched.block(stream, self.host.now())
            return 0
        try:
            chunk = body.read(min(window, RUN_BYTES, body.remaining))
        except OSError as e:
            log.warning("reading %s for %s failed: %s", stream.exchange.path, self.client, e)
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return 0
        if chunk is None:  # the next chunk is being read from disk; it wakes the stream
            body.fill(partial(self._filled, stream))
            return 0
        end = body.remaining == 0
        trailers = getattr(body, "trailers", None) if end else None
        if trailers:  # an application's answer's trailers close the stream
            self.conn.send_data_run(stream.id, chunk, False)
            self.conn.send_headers(stream.id, trailers, end_stream=True)
        else:
            self.conn.send_data_run(stream.id, chunk, end)
        stream.exchange.sent += len(chunk)
        self.budgets.data_sent(len(chunk))
        if end:
            self._end_stream(stream)
        else:
            self.sched.add(stream)
        return len(chunk)

    def _filled(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            self.sched.add(stream)
            self.host.wake()

    def _reset(self, stream: Stream, code: ErrorCodes) -> None:
        with contextlib.suppress(ProtocolError):
            self.conn.reset_stream(stream.id, code)
        self._end_stream(stream)

    def _end_stream(self, stream: Stream) -> None:
        """Forget a stream whose response is complete, reset, or cut off; log it once."""
        if self.streams.pop(stream.id, None) is None:
            return
        self.sched.discard(stream)
        exchange = stream.exchange
        body = stream.body
        complete = exchange.status != 0 and (body is None or body.remaining == 0)
        if body is not None:
            body.close()
        else:
            exchange.discard()  # ended while its answer was awaited: release what was made
        if complete:
            self.budgets.stream_completed()
        self.last_active = self.host.now()
        if complete and stream.uploading and not self.life.ended:
            stop_upload(self, stream.id)
        exchange.finish()
        self._check_idle()

    # -- other events ------------------------------------------------------------------------------

    def _on_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:  # an answer not yet complete (the reset was charged as it was read)
            if stream.exchange.pushed:
                self.services.metrics.push_refused()
            self._end_stream(stream)

    def _on_window_update(self, event: WindowUpdated) -> None:
        self.sched.opened(event.stream_id)

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        if SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed:
            self.sched.opened(0)

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        # RFC 9113 section 6.8: the responses in flight may still complete (the connection stays
        # open for them, see compat._StateMachine) and it closes when the last one does.
        if event.error_code != ErrorCodes.NO_ERROR:
            self.life.fire(lc.CLOSE)

    def _on_extension_frame(self, event: UnknownFrameReceived) -> None:
        """PRIORITY_UPDATE (RFC 9218 section 7.1); other frames of unknown types are ignored."""
        frame = event.frame
        if not isinstance(frame, ExtensionFrame) or frame.type != PRIORITY_UPDATE:
            return
        result = self.signals.update(frame.stream_id, frame.body)
        if isinstance(result, Refusal):
            log.info("h2 protocol error from %s: %s", self.client, result.reason)
            self._goaway(result.error_code)
        elif result is not None:
            stream = self.streams.get(result[0])
            if stream is not None and stream.priority != result[1]:
                stream.priority = result[1]
                self.sched.reprioritize(stream)

    def _on_ping_ack(self, event: PingAckReceived) -> None:
        if event.ping_data == SHUTDOWN_PING:
            self._drained()
