"""Every use of a private part of h2, hpack, hyperframe and h11, in one place.

Why a fence: a private attribute can be renamed in any release (h2 4.3 renamed `FrameBuffer._data`,
and every HTTP/2 connection of an earlier h2serve died on it). Each use below says why no public
route does the job, and it was checked on the versions the pins in pyproject.toml admit:

    h2 4.3.0 and 4.4.1; hpack 4.1.0 and 4.2.0; hyperframe 6.1.0; h11 0.16.0

CI runs the HTTP/2 tests against the lowest of these as well as the newest (.ci/run), and
`versions.check_versions()` refuses to start on a version outside the pins. Changing a pin means
reading this module against the new release first.

What is private here, and why:
- `_StateMachine`: h2's connection state table (`_transitions`), extended so that the client's GOAWAY
  does not close it (RFC 9113 section 6.8: streams in flight still complete).
- `ServerConnection.decoder` / `encoder`: h2 has no option to bound the header list size it decodes
  before a SETTINGS ACK, nor to choose its encoder; both are replaced (plain attributes of h2).
- `send_response_headers` and `send_data_run`: h2's state machines driven with the inputs its own
  send_headers and send_data give them, and frames written as bytes into `_data_to_send`: h2's
  per-frame objects were a tenth of a small response's time and most of a large file's.
- `_handle_data_on_closed_stream` / `_stream_is_closed_by_end`: RFC 9113 section 5.1 makes DATA on a
  stream closed by END_STREAM a connection error; h2 answers it with a stream error.
- `clear_outbound_data_buffer`: h2 drops what it queued before a GOAWAY it reads (ACKs that must go).
- `queue_goaway`: a GOAWAY that leaves the connection sending, which h2's close_connection() does not.
- `release`: breaks the cycle h2 makes of itself through `_frame_dispatch_table`.
- `encode_field` / `table_size_update`: hpack's literal encoders and its pending table-size change,
  used to encode fields without a dynamic table (hpackcache.py says why).
- `h11_unparsed`: the input h11 holds, without the copy `trailing_data` makes of it.
"""

from __future__ import annotations

from typing import Any

import h11
from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import FlowControlError, ProtocolError, StreamClosedError
from h2.frame_buffer import FrameBuffer
from h2.stream import StreamInputs
from hpack import Decoder, Encoder, HPACKError, OversizedHeaderListError
from hpack.hpack import INDEX_NONE
from hpack.table import HeaderTable
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

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
DATA, HEADERS, CONTINUATION = b"\x00", b"\x01", b"\x09"  # frame types (RFC 9113 section 6)
END_STREAM, END_HEADERS = 0x1, 0x4  # frame flags


_TRANSITIONS = {  # h2's own table, extended
    **H2ConnectionStateMachine._transitions,
    (ConnectionState.SERVER_OPEN, ConnectionInputs.RECV_GOAWAY): (None, ConnectionState.SERVER_OPEN),
}


class _StateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, except that the client's GOAWAY does not close it.

    RFC 9113 section 6.8: streams up to the GOAWAY's last stream id still complete, so the client
    goes on sending WINDOW_UPDATE, RST_STREAM, PING and SETTINGS, and we go on sending DATA. h2 would
    close its state machine on the GOAWAY and treat every later frame as a protocol error, even a
    WINDOW_UPDATE that arrived in the same read as the GOAWAY.
    """

    def __init__(self) -> None:
        super().__init__()
        self._transitions = _TRANSITIONS


class CompressionError(ProtocolError):
    """A header block that cannot be decoded: RFC 9113 section 4.3 makes it a connection error of
    type COMPRESSION_ERROR (h2 reports PROTOCOL_ERROR)."""

    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder(Decoder):
    """hpack's decoder, with decoding errors raised as `CompressionError`.

    h2 turns every HPACK error into a plain ProtocolError; an h2 exception raised here passes
    through h2 unchanged, so the GOAWAY it sends carries COMPRESSION_ERROR."""

    def decode(self, data: bytes, raw: bool = False) -> Any:
        try:
            return super().decode(data, raw)
        except OversizedHeaderListError:
            raise  # h2 makes it ENHANCE_YOUR_CALM
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise CompressionError(f"header block cannot be decoded: {e}") from e


class ServerConnection(H2Connection):
    """The server's `H2Connection`: it lives on after the client's GOAWAY (see `_StateMachine`),
    enforces the header list size it advertises, encodes with `encoder`, and sends response
    headers and DATA runs as bytes."""

    def __init__(self, max_header_list_size: int, encoder: Encoder) -> None:
        super().__init__(config=H2_CONFIG)
        self.state_machine = _StateMachine()
        # h2 reads the header list limit into its HPACK decoder only at construction or on a
        # SETTINGS ACK of a change: enforce the limit we advertise, not h2's default of 64 KiB.
        self.decoder = _Decoder(max_header_list_size=max_header_list_size)
        self.encoder = encoder
        self._blocks: list[bytes | bytearray] = []  # output queued after h2's own buffer (send_data_run)

    def release(self) -> None:
        """Break the reference cycle h2 makes of itself (a table of its own bound methods), so
        that a closed connection is freed at once rather than by the cyclic garbage collector,
        which under churn lets tens of megabytes of dead connections pile up between its runs."""
        self._frame_dispatch_table = {}
        self.streams.clear()
        self.incoming_buffer = FrameBuffer(server=True)
        self._blocks.clear()

    def stream_open(self, stream_id: int) -> bool:
        """Whether h2 holds `stream_id` as a stream not yet closed (an answer not complete)."""
        stream = self.streams.get(stream_id)
        return stream is not None and not stream.closed

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
            out += frame_header(len(piece), HEADERS if start == 0 else CONTINUATION, flags, sid)
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
            self._data_to_send += frame_header(size, DATA, END_STREAM if end_stream else 0, sid)
            self._data_to_send += data
            return
        frames: list[bytes | memoryview] = []
        for start in range(0, size, step):
            piece = data[start:start + step]
            last = end_stream and start + step >= size
            frames += (frame_header(len(piece), DATA, END_STREAM if last else 0, sid), piece)
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

    def queue_goaway(self, last_stream_id: int) -> None:
        """A GOAWAY with NO_ERROR, queued as bytes behind what is queued. h2's close_connection()
        would close its state machine, after which h2 refuses to send anything at all; the streams
        in flight must still be answered (the two-step GOAWAY of RFC 9113 section 6.8)."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=ErrorCodes.NO_ERROR)
        self._data_to_send += frame.serialize()

    def clear_outbound_data_buffer(self) -> None:
        # h2 calls this only on receiving a GOAWAY, dropping what it queued for the frames read just
        # before it (a SETTINGS or PING ACK): those must still go out.
        pass


def frame_header(length: int, kind: bytes, flags: int, stream_id: bytes) -> bytes:
    """The 9 bytes before a frame's payload (RFC 9113 section 4.1); `stream_id` already as 4 bytes."""
    return length.to_bytes(3, "big") + kind + flags.to_bytes(1, "big") + stream_id


# -- hpack ---------------------------------------------------------------------------------------

_static = Encoder()  # only its stateless helpers are used, never its table


def encode_field(name: bytes, value: bytes) -> bytes:
    """The bytes of one field, independent of any connection's dynamic table: fully indexed in
    the static table, or a literal without indexing (RFC 7541 sections 6.1 and 6.2.2) naming the
    static table's entry where it has the name. hpack has no public call for one field."""
    names = HeaderTable.STATIC_TABLE_MAPPING.get(name)
    if names is None:
        return _static._encode_literal(name, value, INDEX_NONE, huffman=True)
    name_index, values = names
    index = values.get(value)
    if index is not None:
        return _static._encode_indexed(index)
    return _static._encode_indexed_literal(name_index, value, INDEX_NONE, huffman=True)


def table_size_update(encoder: Encoder) -> bytes:
    """The dynamic table size update the peer's SETTINGS_HEADER_TABLE_SIZE calls for, once (RFC
    7541 section 4.2: at the start of the next block), or b"" when there is none pending."""
    if not encoder.header_table.resized:
        return b""
    encoder.header_table.resized = False
    return bytes(encoder._encode_table_size_change())


# -- h11 -----------------------------------------------------------------------------------------


def h11_unparsed(conn: h11.Connection) -> bytes | bytearray:
    """The input h11 holds unparsed, without copying it (h11's `trailing_data` copies it all)."""
    data = getattr(getattr(conn, "_receive_buffer", None), "_data", None)
    return data if isinstance(data, bytearray) else conn.trailing_data[0]
