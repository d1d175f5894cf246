"""HTTP/2: an `asyncio.Protocol` around one `h2.connection.H2Connection`.

Everything here is callbacks, no task per stream: bytes in -> h2 events -> `Site.respond()` ->
frames out. Bodies are pulled chunk by chunk, each stream round-robin, only as far as the peer's
stream and connection windows allow and only while the transport is not paused, so memory per
connection stays bounded; a WINDOW_UPDATE (or a larger SETTINGS_INITIAL_WINDOW_SIZE) wakes the
blocked streams. All frames produced while handling one batch of input leave in one write.

Abuse is stopped frame by frame, inside h2's own parsing loop (`_FrameBuffer`): every frame that
costs the client nothing is charged to a budget (limits.py) before h2 acts on it, and a header
block is refused as soon as it grows past the advertised SETTINGS_MAX_HEADER_LIST_SIZE. Stopping
there, rather than at the events h2 returns, matters: h2 handles a whole read (up to 256 KiB, some
ten thousand PINGs) before returning any event, queueing an answer to each, and frames on closed
streams produce no event at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameDataMissingError,
    NoAvailableStreamIDError,
    ProtocolError,
    StreamClosedError,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream, StreamInputs
from hpack import Decoder, HPACKError, OversizedHeaderListError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from .accesslog import client_host
from .proto.hpackcache import CachedEncoder
from .proto.limits import FrameBudgets, TokenBucket
from .push.plan import Client, PushPlan
from .site.body import Body, Response
from .timeouts import SendTimeouts

if TYPE_CHECKING:
    from .protocol import Shared

log = logging.getLogger("h2serve")

# Our own response headers are lower-case and valid by construction, so h2 need not re-check or
# normalise them; what the client sends is always validated.
H2_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=True,
    normalize_inbound_headers=True,
)
# Memory per connection that does not read: what the transport holds above the kernel's socket
# buffer. It is what many slow readers multiply (2,000 of them at 512 KiB would be 1 GiB); the
# kernel's own buffer, autotuned to megabytes, is what keeps a fast reader's pipe full.
FLUSH_BYTES = 64 * 1024           # write out what is queued once this much has built up
RUN_BYTES = 64 * 1024             # DATA one stream sends in its turn (frames of the peer's size)
WRITE_BUFFER_HIGH = 128 * 1024    # transport buffer above which we stop producing frames
SHUTDOWN_PING = b"h2s-shut"
SHUTDOWN_PING_WAIT = 2.0          # seconds to wait for the PING ACK before the final GOAWAY
MAX_OUTPUT_BUFFER = 512 * 1024   # bytes waiting to be written before a client is cut off
STREAM_SLACK = 16                 # streams h2 itself accepts beyond the advertised limit (refused)
MAX_PUSHES_PER_PAGE = 100        # a bound of our own, whatever the client allows
MAX_CONTINUATIONS = 32           # CONTINUATION frames in one header block (h2 allows 64)
STATUS_BYTES = {code: str(code).encode() for code in range(100, 600)}
DATA, HEADERS, CONTINUATION = b"\x00", b"\x01", b"\x09"  # frame types (RFC 9113 section 6)
END_STREAM, END_HEADERS = 0x1, 0x4  # frame flags


class _StateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, except that the client's GOAWAY does not close it.

    RFC 9113 section 6.8: streams up to the GOAWAY's last stream id still complete, so the client
    goes on sending WINDOW_UPDATE, RST_STREAM, PING and SETTINGS, and we go on sending DATA. h2 would
    close its state machine on the GOAWAY and treat every later frame as a protocol error, even a
    WINDOW_UPDATE that arrived in the same read as the GOAWAY.
    """

    _transitions: ClassVar = {  # h2's own table, extended
        **H2ConnectionStateMachine._transitions,
        (ConnectionState.SERVER_OPEN, ConnectionInputs.RECV_GOAWAY):
            (None, ConnectionState.SERVER_OPEN),
    }


class CompressionError(ProtocolError):
    """A header block that cannot be decoded: RFC 9113 section 4.3 makes it a connection error of
    type COMPRESSION_ERROR (h2 reports PROTOCOL_ERROR)."""

    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder(Decoder):
    """hpack's decoder, with decoding errors raised as `CompressionError`.

    h2 turns every HPACK error into a plain ProtocolError; an h2 exception raised here passes
    through h2 unchanged, so the GOAWAY it sends carries COMPRESSION_ERROR."""

    def decode(self, data: bytes, raw: bool = False):  # type: ignore[no-untyped-def]
        try:
            return super().decode(data, raw)
        except OversizedHeaderListError:
            raise  # h2 makes it ENHANCE_YOUR_CALM
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise CompressionError(f"header block cannot be decoded: {e}") from e


class _FrameBuffer(FrameBuffer):
    """h2's frame splitter, charging each frame to the connection's budgets as h2 takes it.

    h2 iterates over this buffer and hands each frame to its state machine; an h2 ProtocolError
    raised here makes h2 queue a GOAWAY with that error's code (ENHANCE_YOUR_CALM for
    DenialOfServiceError) and re-raise to `H2Protocol.data_received`, which sends it and closes.
    Frames on closed streams, which h2 drops without an event, are charged too.
    """

    def __init__(self, budgets: FrameBudgets, max_header_block: int, streams: dict[int, H2Stream]) -> None:
        super().__init__(server=True)
        self.budgets = budgets
        self.max_header_block = max_header_block
        self.streams = streams  # h2's own table, to tell a Rapid Reset from a late RST_STREAM
        self._block_size = 0
        self._block_frames = 0

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9 and data[3] == 0x4 and data[4] & 0x1 and data[:3] != b"\0\0\0":
            # RFC 9113 section 6.5: FRAME_SIZE_ERROR (hyperframe's complaint would be PROTOCOL_ERROR).
            raise FrameDataMissingError("SETTINGS ACK with a payload")
        return super().__next__()

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if f is not None:
            budget = self._budget(f)
            if budget is not None and not budget[1].take():
                raise DenialOfServiceError(f"{budget[0]} flood")
            if isinstance(f, HeadersFrame | PushPromiseFrame) and not self._headers_buffer:
                self._block_size, self._block_frames = len(f.data), 0
                self._check_block()
            elif (isinstance(f, ContinuationFrame) and self._headers_buffer
                  and f.stream_id == self._headers_buffer[0].stream_id):
                self._block_size += len(f.data)
                self._block_frames += 1
                self._check_block()
        return super()._update_header_buffer(f)

    def _check_block(self) -> None:
        if self._block_size > self.max_header_block:
            raise DenialOfServiceError(
                f"header block over SETTINGS_MAX_HEADER_LIST_SIZE ({self.max_header_block} bytes)")
        if self._block_frames > MAX_CONTINUATIONS:
            raise DenialOfServiceError(f"header block in over {MAX_CONTINUATIONS} CONTINUATION frames")

    def _budget(self, f: Frame) -> tuple[str, TokenBucket] | None:
        b = self.budgets
        if isinstance(f, DataFrame):
            return ("empty DATA", b.empty_data) if not f.data and "END_STREAM" not in f.flags else None
        if isinstance(f, HeadersFrame | ContinuationFrame):
            return None
        if isinstance(f, RstStreamFrame):
            # h2 has already handled every frame before this one, the HEADERS that opened the
            # stream included: a stream still open is one whose answer is not complete (Rapid
            # Reset spends from the reset budget, which completed streams refill). A RST_STREAM
            # for a stream already closed costs a token of its own.
            stream = self.streams.get(f.stream_id)
            if stream is not None and not stream.closed:
                return "streams reset as fast as they are opened (Rapid Reset); RST_STREAM", b.resets
            return "RST_STREAM", b.rst_frames
        if isinstance(f, PingFrame):
            return "PING", b.pings
        if isinstance(f, SettingsFrame):
            return "SETTINGS", b.settings
        if isinstance(f, WindowUpdateFrame):
            return "WINDOW_UPDATE", b.window_updates
        if isinstance(f, PriorityFrame):
            return "PRIORITY", b.priorities
        if isinstance(f, ExtensionFrame | GoAwayFrame):
            return "unknown or GOAWAY frame", b.other
        return None


class _Connection(H2Connection):
    """An `H2Connection` that lives on after the client's GOAWAY (see `_StateMachine`), charges
    every frame it reads to `budgets` and enforces the header list size it advertises."""

    def __init__(self, config: H2Configuration, budgets: FrameBudgets, max_header_list_size: int) -> None:
        super().__init__(config=config)
        self.state_machine = _StateMachine()
        self.incoming_buffer = _FrameBuffer(budgets, max_header_list_size, self.streams)
        # h2 reads the header list limit into its HPACK decoder only at construction or on a
        # SETTINGS ACK of a change: enforce the limit we advertise, not h2's default of 64 KiB.
        self.decoder = _Decoder(max_header_list_size=max_header_list_size)
        self.encoder = CachedEncoder()
        self._blocks: list[bytes | bytearray] = []  # output queued after h2's own buffer (send_data_run)

    def release(self) -> None:
        """Break the reference cycle h2 makes of itself (a table of its own bound methods), so
        that a closed connection is freed at once rather than by the cyclic garbage collector,
        which under churn lets tens of megabytes of dead connections pile up between its runs."""
        self._frame_dispatch_table = {}
        self.streams.clear()
        self.incoming_buffer = FrameBuffer(server=True)
        self._blocks.clear()

    def send_response_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                              end_stream: bool) -> None:
        """`send_headers` for a final response (`headers` start with a :status of 200 or more).

        h2 re-encodes the headers as bytes, scans them for an informational status and builds a
        frame object per HEADERS and CONTINUATION frame: a tenth of a small response's time. Here
        the stream and connection state machines get the same inputs, the same encoder makes the
        block, and the frames are written as bytes into h2's output buffer (like send_data_run's
        DATA frames), cut at the peer's SETTINGS_MAX_FRAME_SIZE. A 1xx, or a stream h2 no longer
        holds (h2 raises the right error for it), goes through h2's own send_headers."""
        stream = self.streams.get(stream_id)
        if stream is None or headers[0][1][:1] == b"1":
            self.send_headers(stream_id, headers, end_stream=end_stream)
            return
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)  # after the state change, as h2 does: encoding is for good
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        step, sid, size = self.max_outbound_frame_size, stream_id.to_bytes(4, "big"), len(block)
        out = self._data_to_send
        for start in range(0, size, step) if size else (0,):
            piece = block[start:start + step]
            flags = (END_HEADERS if start + step >= size else 0) | (
                END_STREAM if end_stream and start == 0 else 0)
            out += _frame_header(len(piece), HEADERS if start == 0 else CONTINUATION, flags, sid)
            out += piece

    def send_data_run(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        """`send_data` for up to a flow-control window of bytes at once, cut into frames of the
        peer's SETTINGS_MAX_FRAME_SIZE.

        h2's own send_data takes one frame per call and builds, serializes and copies a frame
        object for each: for a large file most of the time went there. Here h2's state machines and
        windows are updated once for the run (the same inputs send_data gives them) and the DATA
        frames, plain 9-byte headers before the payload, are joined into one block that is queued
        after whatever h2 had queued before it: a large file's run is written out without being
        copied again."""
        size = len(data)
        if size > self.local_flow_control_window(stream_id):
            raise FlowControlError(f"{size} bytes over the flow-control window of stream {stream_id}")
        stream = self.streams[stream_id]
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        step, sid = self.max_outbound_frame_size, stream_id.to_bytes(4, "big")
        if size <= step:  # one frame (a small file): into h2's buffer, like its own frames
            self._data_to_send += _frame_header(size, DATA, END_STREAM if end_stream else 0, sid)
            self._data_to_send += data
            return
        frames: list[bytes | memoryview] = []
        for start in range(0, size, step):
            piece = data[start:start + step]
            last = end_stream and start + step >= size
            frames += (_frame_header(len(piece), DATA, END_STREAM if last else 0, sid), piece)
        if self._data_to_send:  # frames h2 queued before this run go out before it
            self._blocks.append(self._data_to_send)
            self._data_to_send = bytearray()
        self._blocks.append(b"".join(frames))

    def data_to_send(self, amount: int | None = None) -> bytes:
        """Everything queued, in order: h2's buffer and the DATA runs (not copied when there is
        only one of them)."""
        if amount is not None:  # h2's partial form: not used here, kept correct
            self._data_to_send[:0] = b"".join(self._blocks)
            self._blocks.clear()
            return super().data_to_send(amount)
        blocks = self._blocks
        if self._data_to_send:
            blocks.append(self._data_to_send)
            self._data_to_send = bytearray()
        if not blocks:
            return b""
        self._blocks = []
        return blocks[0] if len(blocks) == 1 else b"".join(blocks)  # type: ignore[return-value]

    def _handle_data_on_closed_stream(self, events: list[Event], exc: StreamClosedError,
                                      frame: DataFrame) -> tuple[list[Frame], list[Event]]:
        """DATA on a stream that both ends closed with END_STREAM is a connection error of type
        STREAM_CLOSED (RFC 9113 section 5.1, "closed"); h2 answers it with a stream error, which
        the RFC asks for only on a stream closed by a reset (that case is left to h2)."""
        if self._stream_is_closed_by_end(exc.stream_id):
            raise StreamClosedError(exc.stream_id)
        return super()._handle_data_on_closed_stream(events, exc, frame)

    def clear_outbound_data_buffer(self) -> None:
        # h2 calls this only on receiving a GOAWAY, dropping what it queued for the frames read just
        # before it (a SETTINGS or PING ACK): those must still go out.
        pass


def _frame_header(length: int, kind: bytes, flags: int, stream_id: bytes) -> bytes:
    """The 9 bytes before a frame's payload (RFC 9113 section 4.1); `stream_id` already as 4 bytes."""
    return length.to_bytes(3, "big") + kind + flags.to_bytes(1, "big") + stream_id


class _Stream:
    """A response being sent on one stream, and what the access log needs of its request."""

    __slots__ = ("blocked_at", "body", "id", "method", "referer", "sent", "status", "target",
                 "uploading", "user_agent")

    def __init__(self, stream_id: int, method: str, target: str, referer: str | None,
                 user_agent: str | None) -> None:
        self.id = stream_id
        self.method = method
        self.target = target
        self.referer = referer
        self.user_agent = user_agent
        self.uploading = False  # the client sends a body (DATA seen, END_STREAM not yet)
        self.status = 0
        self.sent = 0
        self.body: Body | None = None
        self.blocked_at = 0.0  # when it last ran out of flow-control window


class H2Protocol(SendTimeouts, asyncio.Protocol):
    """One HTTP/2 connection."""

    def __init__(self, shared: Shared, tls: bool) -> None:
        self.shared = shared
        self.tls = tls
        cfg = shared.config
        self.budgets = FrameBudgets()
        self.conn = _Connection(H2_CONFIG, self.budgets, cfg.max_header_list_size)
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: cfg.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: cfg.initial_window_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: cfg.max_header_list_size,
        })
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.streams: dict[int, _Stream] = {}
        self.ready: deque[_Stream] = deque()   # streams with data to send and, last we knew, window
        self.blocked: dict[int, _Stream] = {}  # streams waiting for a WINDOW_UPDATE
        self.paused = False
        self.closed = False
        self.peer_goaway = False
        self.goaway_read = False               # a GOAWAY is among the frames read: push no more
        self.shutting_down = False
        self.last_stream: int | None = None    # set by our final GOAWAY: streams above are refused
        self.pushed: set[str] = set()          # paths pushed on this connection: never twice
        self.scheme = "https" if tls else "http"
        self._shutdown_timer: asyncio.TimerHandle | None = None
        self._queued = 0
        self.closed_at = 0.0
        self.last_active = time.monotonic()     # last input, or last stream finished
        self.paused_at = 0.0
        self._handlers = {
            RequestReceived: self._on_request,
            DataReceived: self._on_data,
            StreamEnded: self._on_stream_ended,
            StreamReset: self._on_reset,
            WindowUpdated: self._on_window_update,
            RemoteSettingsChanged: self._on_settings,
            ConnectionTerminated: self._on_goaway,
            PingAckReceived: self._on_ping_ack,
        }

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods of asyncio.Transport but are not its subclasses.
        self.transport = transport = typing.cast(asyncio.Transport, transport)
        self.client = client_host(transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.shared.add(self)
        self.conn.initiate_connection()
        # The SETTINGS just queued advertise max_concurrent_streams. Let h2 itself take a few more,
        # so that a stream over the limit is refused alone (RST_STREAM REFUSED_STREAM, RFC 9113
        # section 5.1.2) instead of h2 ending the connection.
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: self.shared.config.max_concurrent_streams + STREAM_SLACK,
            SettingCodes.INITIAL_WINDOW_SIZE: self.shared.config.initial_window_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: self.shared.config.max_header_list_size,
        })
        self.flush()
        if self.shared.closing:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # a TLS transport still delivers what arrives while it shuts down
        self.shared.site.cache.catch_up()  # once per read: an edit made before these requests is seen
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            # h2 has queued a GOAWAY with the right error code: send it, then close.
            if isinstance(e, DenialOfServiceError):
                log.info("%s from %s: GOAWAY ENHANCE_YOUR_CALM", e, self.client)
            else:
                log.info("h2 protocol error from %s: %s", self.client, e)
            if self.conn.state_machine.state is not ConnectionState.CLOSED:
                # Raised before h2 began on the frames (a bad client preface): no GOAWAY is queued.
                # RFC 9113 section 3.4 makes it optional here; a clear answer costs nothing.
                with contextlib.suppress(ProtocolError):
                    self.conn.close_connection(e.error_code)
            self.close()
            return
        if not self.goaway_read and any(type(event) is ConnectionTerminated for event in events):
            # A request read with the client's GOAWAY is still answered, but the GOAWAY already names
            # the last of our streams the client will take (RFC 9113 section 6.8): promise none.
            self.goaway_read = True
        self.last_active = time.monotonic()
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
                if self.closed:
                    return
        self.pump()

    def eof_received(self) -> bool | None:
        return None  # the client is gone: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        for stream in list(self.streams.values()):
            self._end_stream(stream)
        self.ready.clear()
        self.blocked.clear()
        self.shared.remove(self)
        # Nothing will call us again: drop the cycles through our bound methods and h2's, so that
        # the connection, its transport and its TLS buffers go as soon as the last reference does.
        self._handlers = {}
        self.conn.release()

    def pause_writing(self) -> None:
        self.paused = True
        self.paused_at = time.monotonic()

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    # -- events ----------------------------------------------------------------------------------

    def _on_request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        h2_stream = self.conn.streams.get(sid)
        if h2_stream is None or h2_stream.closed:
            # Reset by the client in the same read as its request: h2 has closed the stream, and any
            # frame on it (a 103, a PUSH_PROMISE, the answer) would raise and end the connection.
            # (The RST_STREAM was charged to the reset budget as it was read.)
            return
        if self.last_stream is not None and sid > self.last_stream:
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        limit = self.shared.config.max_concurrent_streams
        # h2's table holds every open stream (and some closed ones): counting the open ones walks
        # it, so only when it is big enough to hold too many.
        if len(self.conn.streams) > limit and self.conn.open_inbound_streams > limit:
            # RFC 9113 section 5.1.2. A refused stream is one opened only to be reset: it spends
            # from the same budget as the client's own resets.
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            if not self.budgets.resets.take():
                self._calm("streams opened beyond SETTINGS_MAX_CONCURRENT_STREAMS, again and again")
            return
        headers = event.headers or []
        method = target = ""
        authority = b""
        referer = user_agent = None
        for name, value in headers:
            if name == b":method":
                method = value.decode("latin-1")
            elif name == b":path":
                target = value.decode("latin-1")
            elif name == b":authority" or (name == b"host" and not authority):
                authority = value
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"referer":
                referer = value.decode("latin-1")
        stream = _Stream(sid, method, target, referer, user_agent)
        try:
            response = self.shared.site.respond(method, target.encode("latin-1"), headers)
            plan = self._push_plan(method, response, authority, headers)
        except Exception:
            log.exception("error answering %s %s", method, target)
            self.conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            return
        if plan is None:
            self.send_response(stream, response)
        else:
            self._send_with_plan(stream, response, plan)

    # -- push ------------------------------------------------------------------------------------

    def _push_plan(self, method: str, response: Response, authority: bytes,
                   headers: list[tuple[bytes, bytes]]) -> PushPlan | None:
        """Ask push.py what goes with this answer: only a 200 to a GET or HEAD of a file can have
        a plan."""
        if (method not in ("GET", "HEAD") or response.status != 200 or response.file is None
                or not self.shared.pusher.wants(response.file)):
            return None
        return self.shared.pusher.plan(response.file, Client(
            "h2", self.scheme, authority, headers, self._push_slots(), self.pushed, method))

    def _push_slots(self) -> int:
        """How many pushes the client takes now: none if it refuses push or the connection is
        closing; otherwise what its SETTINGS_MAX_CONCURRENT_STREAMS leaves room for."""
        remote = self.conn.remote_settings
        if (not remote.enable_push or self.goaway_read or self.shutting_down
                or self.shared.closing):
            return 0
        return max(0, min(remote.max_concurrent_streams, MAX_PUSHES_PER_PAGE)
                   - self.conn.open_outbound_streams)

    def _send_with_plan(self, stream: _Stream, response: Response, plan: PushPlan) -> None:
        """103 (if hinted), every PUSH_PROMISE, the page's HEADERS, then the pushed responses
        (RFC 9113 section 8.4: promises precede the frames that refer to the promised resources)."""
        sid = stream.id
        if plan.early_hints and plan.links:
            self.conn.send_headers(sid, [(b":status", b"103"), *plan.links])
        promised = []
        for promise in plan.promises:
            try:
                pid = self.conn.get_next_available_stream_id()
            except NoAvailableStreamIDError:
                break  # every server stream id is used up: the page goes out without pushes
            self.conn.push_stream(sid, pid, promise.headers)
            self.pushed.add(promise.entry.path)
            promised.append((pid, promise))
        response.headers.extend(plan.links)
        if plan.set_cookie is not None:
            response.headers.append((b"set-cookie", plan.set_cookie))
        self.send_response(stream, response)
        # The page's DATA goes right behind its HEADERS, ahead of the pushed responses' HEADERS:
        # the client can parse the page while the pushed bytes are still arriving.
        self.pump()
        for pid, promise in promised:
            path = promise.entry.path
            pushed = _Stream(pid, "GET", path, stream.target, stream.user_agent)
            # The same handler as any request for that path: same status, headers and bytes.
            try:
                response = self.shared.site.respond("GET", path.encode(), promise.headers)
            except Exception:
                log.exception("error answering pushed %s", path)
                self.conn.reset_stream(pid, ErrorCodes.INTERNAL_ERROR)
                continue
            self.send_response(pushed, response)

    def send_response(self, stream: _Stream, response: Response) -> None:
        """Send the HEADERS now and queue the body to go out as windows allow."""
        stream.status = response.status
        body = response.body
        headers = [(b":status", STATUS_BYTES[response.status]), *response.headers]
        if body is None or body.remaining == 0:
            self.conn.send_response_headers(stream.id, headers, end_stream=True)
            stream.body = body
            self._end_stream(stream)
            return
        self.conn.send_response_headers(stream.id, headers, end_stream=False)
        stream.body = body
        self.streams[stream.id] = stream
        self.ready.append(stream)

    def _on_data(self, event: DataReceived) -> None:
        """Request bodies are not used by a static server: the window goes straight back. A
        client that sends a body is asked to stop once its answer is complete: RST_STREAM with
        NO_ERROR (RFC 9113 section 8.1). Not before it sends one: until then the stream stays
        half-closed, and whatever else the client sends on it (trailers, WINDOW_UPDATE) is checked
        by h2 as on any open stream, with the error code the RFC names."""
        sid = event.stream_id
        if event.flow_controlled_length:
            self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        stream = self.streams.get(sid)
        if stream is not None:  # the answer is still going out: stop the body when it is complete
            stream.uploading = event.stream_ended is None
        elif event.stream_ended is None and not self.closed:
            self._stop_upload(sid)

    def _on_stream_ended(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.uploading = False

    def _stop_upload(self, stream_id: int) -> None:
        with contextlib.suppress(ProtocolError):
            self.conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def _on_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:  # an answer not yet complete (the reset was charged as it was read)
            self._end_stream(stream)

    def _on_window_update(self, event: WindowUpdated) -> None:
        if event.stream_id == 0:
            self._unblock_all()
        else:
            stream = self.blocked.pop(event.stream_id, None)
            if stream is not None:
                self.ready.append(stream)

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        if SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed:
            self._unblock_all()

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        self.peer_goaway = True
        # RFC 9113 section 6.8: the responses in flight may still complete (the connection stays
        # open for them, see _StateMachine) and it closes when the last one does.
        if event.error_code != ErrorCodes.NO_ERROR or not self.streams:
            self.close()

    def _calm(self, what: str) -> None:
        """Cut off an abusive client: GOAWAY ENHANCE_YOUR_CALM, then close."""
        log.info("%s from %s: GOAWAY ENHANCE_YOUR_CALM", what, self.client)
        self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM,
                                   last_stream_id=self.conn.highest_inbound_stream_id)
        self.close()

    def _on_ping_ack(self, event: PingAckReceived) -> None:
        if event.ping_data == SHUTDOWN_PING:
            self._final_goaway()

    # -- sending bodies --------------------------------------------------------------------------

    def pump(self) -> None:
        """Send DATA round-robin across ready streams while windows and the transport allow."""
        conn = self.conn
        ready = self.ready
        while ready and not self.paused and not self.closed:
            stream = ready.popleft()
            body = stream.body
            if body is None or self.streams.get(stream.id) is not stream:
                continue  # finished or reset meanwhile
            window = conn.local_flow_control_window(stream.id)
            if window <= 0:
                if stream.id not in self.blocked:
                    stream.blocked_at = time.monotonic()
                    self.blocked[stream.id] = stream
                continue
            n = min(window, RUN_BYTES, body.remaining)
            try:
                chunk = body.read(n)
            except OSError as e:
                log.warning("reading %s for %s failed: %s", stream.target, self.client, e)
                conn.reset_stream(stream.id, ErrorCodes.INTERNAL_ERROR)
                self._end_stream(stream)
                continue
            if chunk is None:  # the next chunk is being read from disk; it wakes the stream
                body.fill(partial(self._filled, stream))
                continue
            end = body.remaining == 0
            conn.send_data_run(stream.id, chunk, end)
            stream.sent += len(chunk)
            self._queued += len(chunk)
            self.budgets.data_sent(len(chunk))
            if end:
                self._end_stream(stream)
            else:
                ready.append(stream)
            if self._queued >= FLUSH_BYTES:
                self.flush()
        self.flush()

    def _filled(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is stream:
            self.ready.append(stream)
            self.pump()

    def _unblock_all(self) -> None:
        if self.blocked:
            self.ready.extend(self.blocked.values())
            self.blocked.clear()

    def _end_stream(self, stream: _Stream) -> None:
        """Forget a stream whose response is complete, reset, or cut off; log it once."""
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if stream.body is not None:
            stream.body.close()
        complete = stream.body is None or stream.body.remaining == 0
        if complete:
            self.budgets.stream_completed()
        self.last_active = time.monotonic()
        if complete and stream.uploading and not self.closed:
            self._stop_upload(stream.id)
        self.shared.access_log.log(
            self.client, stream.method, stream.target, "HTTP/2.0", stream.status, stream.sent,
            stream.referer, stream.user_agent)
        if not self.streams and (self.peer_goaway or self.last_stream is not None):
            self.close()

    # -- output and closing ----------------------------------------------------------------------

    def flush(self) -> None:
        self._queued = 0
        data = self.conn.data_to_send()
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > MAX_OUTPUT_BUFFER:
                # DATA stops at the transport's high-water mark; what piles up beyond it is our
                # answers to a client that sends but does not read (PING and SETTINGS floods).
                log.info("client %s does not read what it asks for: closing", self.client)
                self.abort()

    def close(self) -> None:
        """Send what is queued (a GOAWAY, say) and close the connection."""
        if self.closed or self.transport is None:
            return
        self.flush()
        self.closed = True
        self.closed_at = time.monotonic()
        self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def check(self, now: float) -> None:
        """Timeouts: a client not reading, streams stalled at a zero window, an idle connection,
        and a close that does not complete (a client that reads neither our last frames nor the
        TLS close_notify keeps the transport open for good: asyncio has no limit on plain TCP)."""
        cfg = self.shared.config
        if self.send_timed_out(now, cfg.send_timeout):
            return
        stalled = [s for s in self.blocked.values() if now - s.blocked_at > cfg.send_timeout]
        if stalled:
            # A client that has sent nothing since its streams stalled is gone or hostile: once its
            # last stream is reset, the connection ends too. One that is busy keeps it.
            silent = self.last_active <= min(s.blocked_at for s in stalled)
            for stream in stalled:
                self.conn.reset_stream(stream.id, ErrorCodes.CANCEL)
                self._end_stream(stream)
            log.info("client %s left %d streams at a zero window for %gs: reset", self.client,
                     len(stalled), cfg.send_timeout)
            if not self.streams and silent:
                self.conn.close_connection(ErrorCodes.NO_ERROR,
                                           last_stream_id=self.conn.highest_inbound_stream_id)
                self.close()
            else:
                self.flush()
        elif not self.streams and now - self.last_active > cfg.idle_timeout:
            self.conn.close_connection(ErrorCodes.NO_ERROR,
                                       last_stream_id=self.conn.highest_inbound_stream_id)
            self.close()

    def shutdown(self) -> None:
        """Graceful close, the two-step GOAWAY of RFC 9113 section 6.8.

        First a GOAWAY with the largest stream id and a PING: requests already on their way are
        still taken. When the PING comes back (or after a short wait) a second GOAWAY names the
        last stream we took; the connection closes once those streams are answered.
        """
        if self.shutting_down or self.closed:
            return
        self.shutting_down = True
        self._write_goaway(2**31 - 1)
        self.conn.ping(SHUTDOWN_PING)
        self.flush()
        loop = asyncio.get_running_loop()
        self._shutdown_timer = loop.call_later(SHUTDOWN_PING_WAIT, self._final_goaway)

    def _final_goaway(self) -> None:
        if self.last_stream is not None or self.closed:
            return
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        self.last_stream = self.conn.highest_inbound_stream_id
        self._write_goaway(self.last_stream)
        if not self.streams:
            self.close()

    def _write_goaway(self, last_stream_id: int) -> None:
        # Written as a frame of our own rather than with conn.close_connection(): h2 refuses to
        # send anything after its own GOAWAY, and the streams in flight must still be answered.
        self.flush()
        if self.transport is not None and not self.closed:
            frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=ErrorCodes.NO_ERROR)
            self.transport.write(frame.serialize())
