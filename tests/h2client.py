"""A small raw HTTP/2 client for tests: h2's state machine plus a frame-level record of the wire.

    client = H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0})
    sid = client.request("/static/big.bin")
    client.receive_until(lambda: client.responses[sid].done)
    assert client.responses[sid].status == 200

What it adds to a bare `H2Connection`:

* every frame in either direction is recorded (`frames` in, `sent_frames` out) as hyperframe
  objects with their wire length and arrival time; DATA payloads are not kept there;
* inbound bytes are fed to h2 one frame at a time, and after a GOAWAY the client's state machine is
  reopened, so streams still in flight can be read to their end (h2 alone refuses every frame after
  a GOAWAY) and new streams can be tried to see the server refuse them;
* flow control is a choice: `"auto"` (h2's own acknowledgement), `"consume"` (a WINDOW_UPDATE of
  exactly what was consumed, stream and connection, every `ack_every` bytes) or `"manual"`
  (nothing until the test calls `grant()`);
* what the client granted and what the server sent are tallied per stream and for the connection,
  and every DATA frame beyond a granted window is noted in `flow_violations`.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    PushedStreamReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
FLOW_CONTROL_MODES = ("auto", "consume", "manual")

Headers = list[tuple[bytes, bytes]]


class ConnectionClosed(Exception):
    """The server closed the connection before the awaited condition held."""


@dataclass
class StreamResponse:
    """What arrived on one stream."""

    stream_id: int
    keep_body: bool = True
    headers: Headers = field(default_factory=list)
    informational: list[Headers] = field(default_factory=list)
    trailers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    received: int = 0                 # DATA payload bytes delivered by h2
    ended: bool = False               # END_STREAM seen
    reset_code: int | None = None     # RST_STREAM error code, if the stream was reset
    request_headers: Headers = field(default_factory=list)  # ours, or for a pushed stream the promised one
    promised_on: int | None = None    # for a pushed stream: the stream its PUSH_PROMISE came on
    pushed: list[int] = field(default_factory=list)  # streams promised on this one
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def status(self) -> int | None:
        value = self.header(b":status")
        return int(value) if value is not None else None

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def sha256(self) -> str:
        return self.digest.hexdigest()


@dataclass
class WireFrame:
    """One frame as seen on the wire (DATA frames carry no payload here: see `length`)."""

    frame: Frame
    length: int   # payload length on the wire
    at: float     # time.monotonic() when it was read or written

    @property
    def type(self) -> str:
        return type(self.frame).__name__.removesuffix("Frame").upper()

    @property
    def stream_id(self) -> int:
        return self.frame.stream_id


class _FrameSplitter:
    """Cuts a byte stream into whole frames (header + payload), leaving partial ones buffered."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if len(buf) < end:
                break
            out.append(bytes(buf[pos:end]))
            pos = end
        del buf[:pos]
        return out


def parse_frame(raw: bytes, *, keep_data: bool = False) -> WireFrame:
    """A hyperframe object for one whole frame; DATA payloads are dropped unless `keep_data`."""
    frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
    if keep_data or not isinstance(frame, DataFrame):
        frame.parse_body(memoryview(raw[9:9 + length]))
    return WireFrame(frame, length, time.monotonic())


class H2Client:
    """One HTTP/2 client connection over a connected socket (TLS with ALPN h2, or cleartext)."""

    def __init__(self, sock: socket.socket, *, authority: str, scheme: str,
                 settings: Mapping[int, int] | None = None, flow_control: str = "auto",
                 ack_every: int | None = None, connection_window: int | None = None,
                 start: bool = True, **config: Any) -> None:
        """`settings`: the client's SETTINGS (e.g. ENABLE_PUSH, INITIAL_WINDOW_SIZE,
        MAX_FRAME_SIZE); `connection_window`: grow the connection receive window to this size at
        once; `config`: extra `H2Configuration` options (e.g. validate_outbound_headers=False to
        send malformed requests)."""
        if flow_control not in FLOW_CONTROL_MODES:
            raise ValueError(f"flow_control must be one of {FLOW_CONTROL_MODES}")
        self.sock = sock
        self.authority = authority.encode()
        self.scheme = scheme.encode()
        self.flow_control = flow_control
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None, **config))
        initial = dict(settings or {})
        if initial:
            # Set before the preface goes out; h2 reads two of them only at construction.
            self.conn.local_settings = Settings(client=True, initial_values=initial)
            self.conn.max_inbound_frame_size = self.conn.local_settings.max_frame_size
            if SettingCodes.MAX_HEADER_LIST_SIZE in initial:
                self.conn.decoder.max_header_list_size = initial[SettingCodes.MAX_HEADER_LIST_SIZE]
        self.events: list[Event] = []
        self.frames: list[WireFrame] = []        # received
        self.sent_frames: list[WireFrame] = []   # sent (through h2 or send_frame; not send_raw)
        self.responses: dict[int, StreamResponse] = {}
        self.goaways: list[GoAwayFrame] = []
        self.server_settings: dict[int, int] = {}  # the server's first SETTINGS frame
        self.closed = False
        # Flow-control bookkeeping, all from frames actually written and read.
        self.initial_window = DEFAULT_WINDOW    # our SETTINGS_INITIAL_WINDOW_SIZE as last sent
        self.stream_granted: dict[int, int] = {}
        self.stream_received: dict[int, int] = {}
        self.conn_granted = DEFAULT_WINDOW
        self.conn_received = 0
        self.max_data_frame = 0
        self.flow_violations: list[str] = []
        window = initial.get(SettingCodes.INITIAL_WINDOW_SIZE, DEFAULT_WINDOW)
        self.ack_every = ack_every if ack_every is not None else max(1, min(8192, window // 2))
        self._pending: dict[int, int] = {}
        self._pending_conn = 0
        self._inbound = _FrameSplitter()
        self._outbound = _FrameSplitter()
        self._preface_sent = False
        if start:
            self.conn.initiate_connection()
            if connection_window is not None and connection_window > DEFAULT_WINDOW:
                self.conn.increment_flow_control_window(connection_window - DEFAULT_WINDOW)
            self.flush()

    # -- connecting ------------------------------------------------------------------------------

    @classmethod
    def tls(cls, port: int, ca_file: str, *, host: str = "localhost", timeout: float = 10,
            **kwargs: Any) -> H2Client:
        """Connect to 127.0.0.1:`port` with TLS verified against `ca_file`, ALPN h2 only."""
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock = ctx.wrap_socket(raw, server_hostname=host)
        if sock.selected_alpn_protocol() != "h2":
            sock.close()
            raise AssertionError(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
        kwargs.setdefault("authority", f"{host}:{port}")
        return cls(sock, scheme="https", **kwargs)

    @classmethod
    def h2c(cls, port: int, *, timeout: float = 10, **kwargs: Any) -> H2Client:
        """Connect to 127.0.0.1:`port` in cleartext with prior knowledge."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        kwargs.setdefault("authority", f"127.0.0.1:{port}")
        return cls(sock, scheme="http", **kwargs)

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------------

    def request(self, path: str, *, method: str = "GET", headers: Iterable[tuple[bytes, bytes]] = (),
                end_stream: bool = True, keep_body: bool = True, flush: bool = True) -> int:
        """Open a stream with a request for `path`; returns its stream id. With `flush=False` it
        waits for the next flush(), so that several requests leave in one write."""
        return self.send_headers([
            (b":method", method.encode()), (b":scheme", self.scheme),
            (b":authority", self.authority), (b":path", path.encode()), *headers,
        ], end_stream=end_stream, keep_body=keep_body, flush=flush)

    def send_headers(self, headers: Headers, *, end_stream: bool = True, keep_body: bool = True,
                     stream_id: int | None = None, flush: bool = True) -> int:
        """Open a stream with exactly `headers` (pseudo-headers included)."""
        sid = stream_id if stream_id is not None else self.conn.get_next_available_stream_id()
        self.responses[sid] = StreamResponse(sid, keep_body=keep_body, request_headers=list(headers))
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        if flush:
            self.flush()
        return sid

    def grant(self, stream_id: int, increment: int, *, connection: bool = True) -> None:
        """Send WINDOW_UPDATE for `stream_id` (0: the connection only), and by default the same
        increment for the connection too."""
        if stream_id:
            with contextlib.suppress(KeyError, StreamClosedError):  # unless the stream is over
                self.conn.increment_flow_control_window(increment, stream_id)
        if connection or not stream_id:
            self.conn.increment_flow_control_window(increment)
        self.flush()

    def update_settings(self, settings: Mapping[int, int]) -> None:
        self.conn.update_settings(dict(settings))
        self.flush()

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def ping(self, data: bytes = b"h2client") -> None:
        self.conn.ping(data)
        self.flush()

    def goaway(self, code: int = ErrorCodes.NO_ERROR, last_stream_id: int = 0) -> None:
        """Send GOAWAY as a frame of our own, so h2 still lets us read and acknowledge data."""
        self.send_frame(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code))

    def send_frame(self, *frames: Frame) -> None:
        """Write frames h2 knows nothing of, all in one write (recorded in `sent_frames`)."""
        self.flush()
        self.write(b"".join(frame.serialize() for frame in frames))

    def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes (not recorded: they need not be frames)."""
        self.flush()
        self._send(data)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.write(data)

    def write(self, data: bytes) -> None:
        """Write whole frames (h2's or our own), recording them in `sent_frames`."""
        view = data
        if not self._preface_sent and view.startswith(PREFACE):
            view = view[len(PREFACE):]
            self._preface_sent = True
        for raw in self._outbound.feed(view):
            try:
                wire = parse_frame(raw)
            except Exception:
                continue  # not a frame hyperframe accepts: a hostile one, sent on purpose
            self._note_sent(wire)
        self._send(data)

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the server has gone; reading will tell
            self.sock.sendall(data)

    def _note_sent(self, wire: WireFrame) -> None:
        self.sent_frames.append(wire)
        frame = wire.frame
        if isinstance(frame, WindowUpdateFrame):
            if frame.stream_id == 0:
                self.conn_granted += frame.window_increment
            elif frame.stream_id in self.stream_granted:
                self.stream_granted[frame.stream_id] += frame.window_increment
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            new = frame.settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
            if new is not None:
                delta = new - self.initial_window
                self.initial_window = new
                for sid in self.stream_granted:
                    self.stream_granted[sid] += delta
        elif isinstance(frame, HeadersFrame) and frame.stream_id not in self.stream_granted:
            self.stream_granted[frame.stream_id] = self.initial_window
            self.stream_received[frame.stream_id] = 0

    # -- receiving -------------------------------------------------------------------------------

    def receive_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read and handle frames until `predicate()` holds; TimeoutError or ConnectionClosed if
        it does not in time."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.closed:
                raise ConnectionClosed("connection closed before the condition held")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s")
            self._read(remaining)

    def receive_for(self, seconds: float) -> None:
        """Read and handle whatever arrives for `seconds` (or until the connection closes)."""
        deadline = time.monotonic() + seconds
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._read(remaining)

    def wait_closed(self, timeout: float = 10.0) -> None:
        self.receive_until(lambda: self.closed, timeout)

    def _read(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(256 * 1024)
        except TimeoutError:
            return
        except (ssl.SSLError, ConnectionError):
            data = b""
        if not data:
            self.closed = True
            return
        self.receive_bytes(data)

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Handle bytes from the server, one frame at a time; returns the h2 events."""
        out: list[Event] = []
        for raw in self._inbound.feed(data):
            wire = parse_frame(raw)
            self.frames.append(wire)
            self._note_received(wire)
            events = self.conn.receive_data(raw)
            for event in events:
                self._handle(event)
            out.extend(events)
            self.flush()
        return out

    def _note_received(self, wire: WireFrame) -> None:
        frame = wire.frame
        if isinstance(frame, DataFrame):
            sid = frame.stream_id
            self.max_data_frame = max(self.max_data_frame, wire.length)
            self.conn_received += wire.length
            got = self.stream_received.get(sid, 0) + wire.length
            self.stream_received[sid] = got
            granted = self.stream_granted.get(sid, 0)
            if got > granted:
                self.flow_violations.append(f"stream {sid}: {got} bytes received, {granted} granted")
            if self.conn_received > self.conn_granted:
                self.flow_violations.append(
                    f"connection: {self.conn_received} bytes received, {self.conn_granted} granted")
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append(frame)
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags and not self.server_settings:
            self.server_settings = dict(frame.settings)

    def _handle(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, ResponseReceived):
            self._response(event.stream_id).headers = list(event.headers)
        elif isinstance(event, InformationalResponseReceived):
            self._response(event.stream_id).informational.append(list(event.headers))
        elif isinstance(event, TrailersReceived):
            self._response(event.stream_id).trailers = list(event.headers)
        elif isinstance(event, DataReceived):
            self._on_data(event)
        elif isinstance(event, StreamEnded):
            self._response(event.stream_id).ended = True
            if self.flow_control == "consume" and self._pending_conn:
                self.conn.increment_flow_control_window(self._pending_conn)
                self._pending_conn = 0
        elif isinstance(event, StreamReset):
            self._response(event.stream_id).reset_code = int(event.error_code)
        elif isinstance(event, PushedStreamReceived):
            pushed = self._response(event.pushed_stream_id)
            pushed.request_headers = list(event.headers)
            pushed.promised_on = event.parent_stream_id
            self._response(event.parent_stream_id).pushed.append(event.pushed_stream_id)
            self.stream_granted.setdefault(event.pushed_stream_id, self.initial_window)
        elif isinstance(event, RemoteSettingsChanged):
            pass
        elif (isinstance(event, ConnectionTerminated)
              and self.conn.state_machine.state == ConnectionState.CLOSED):
            # Keep reading the streams in flight (and let tests open new ones to be refused).
            self.conn.state_machine.state = ConnectionState.CLIENT_OPEN

    def _response(self, stream_id: int) -> StreamResponse:
        response = self.responses.get(stream_id)
        if response is None:
            response = self.responses[stream_id] = StreamResponse(stream_id)
        return response

    def _on_data(self, event: DataReceived) -> None:
        response = self._response(event.stream_id)
        data = event.data
        response.received += len(data)
        response.digest.update(data)
        if response.keep_body:
            response.body += data
        n = event.flow_controlled_length
        if not n:
            return
        if self.flow_control == "auto":
            self.conn.acknowledge_received_data(n, event.stream_id)
        elif self.flow_control == "consume":
            sid = event.stream_id
            pending = self._pending.get(sid, 0) + n
            if pending >= self.ack_every and not event.stream_ended:
                with contextlib.suppress(KeyError, StreamClosedError):
                    self.conn.increment_flow_control_window(pending, sid)
                pending = 0
            self._pending[sid] = pending
            self._pending_conn += n
            if self._pending_conn >= self.ack_every:
                self.conn.increment_flow_control_window(self._pending_conn)
                self._pending_conn = 0

    # -- queries ---------------------------------------------------------------------------------

    def frames_of(self, kind: type[Frame], stream_id: int | None = None) -> list[Any]:
        """Received frames of one hyperframe class (optionally on one stream)."""
        return [w.frame for w in self.frames
                if isinstance(w.frame, kind) and (stream_id is None or w.frame.stream_id == stream_id)]

    def resets(self, stream_id: int) -> list[RstStreamFrame]:
        return self.frames_of(RstStreamFrame, stream_id)
