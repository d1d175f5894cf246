"""HTTP/2 request bodies: `H2Engine`'s part that takes DATA on a request stream. A body for the
application (--upstream) is fed to the exchange's `RequestBody` pipe and credited to the client as
the application takes it, with 413 (or a reset) over --max-body-size; any other body has its window
given straight back, and the client is asked to stop sending it once its answer is complete.

These are the engine's own handlers (its event table calls `on_data` and `on_stream_ended`): they
use its state and private methods as its methods do. They live apart because request bodies are
one concern beside the requests and answers h2engine.py is about, grown with the reverse proxy,
and so h2engine.py stays under the project's ~500 lines. HTTP/1.1's counterpart is h1upload.py.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

if TYPE_CHECKING:
    from h2.events import DataReceived, StreamEnded

    from .h2engine import H2Engine
    from .h2sched import Stream

log = logging.getLogger("h2serve")


def on_data(engine: H2Engine, event: DataReceived) -> None:
    """Request bodies are not used by a static server: the window goes straight back. A
    client that sends a body is asked to stop once its answer is complete: RST_STREAM with
    NO_ERROR (RFC 9113 section 8.1). Not before it sends one: until then the stream stays
    half-closed, and whatever else the client sends on it (trailers, WINDOW_UPDATE) is checked
    by h2 as on any open stream, with the error code the RFC names."""
    sid = event.stream_id
    stream = engine.streams.get(sid)
    upload = stream.exchange.body if stream is not None else None
    if upload is not None and not upload.dropped:
        # For the application: credited to the client once the upstream socket takes it.
        assert stream is not None
        upload.feed(event.data, event.flow_controlled_length)
        if upload.received > engine.services.config.max_body_size:
            too_large(engine, stream)
        return
    if event.flow_controlled_length:
        engine.conn.acknowledge_received_data(event.flow_controlled_length, sid)
    if stream is not None:  # the answer is still going out: stop the body when it is complete
        stream.uploading = event.stream_ended is None
    elif event.stream_ended is None:
        stop_upload(engine, sid)


def on_stream_ended(engine: H2Engine, event: StreamEnded) -> None:
    stream = engine.streams.get(event.stream_id)
    if stream is not None:
        stream.uploading = False
        if stream.exchange.body is not None:
            stream.exchange.body.end()


def credit(engine: H2Engine, stream_id: int, n: int) -> None:
    """Flow-control credit for `n` bytes of a request body the application has taken."""
    if n and not engine.life.ended:
        with contextlib.suppress(ProtocolError):
            engine.conn.acknowledge_received_data(n, stream_id)


def too_large(engine: H2Engine, stream: Stream) -> None:
    """A request body over --max-body-size (no Content-Length said so before): 413 if the
    application has not answered yet (its call abandoned), else the stream is reset."""
    exchange = stream.exchange
    call = exchange.proxy
    if call is not None and not call.responded:
        call.responded = True
        call.cancel()
        log.info("request body from %s over --max-body-size: 413", engine.client)
        engine._send_response(stream, exchange.served().site.error(413, exchange.method))
        exchange.status = 413
    else:
        if exchange.body is not None:
            exchange.body.drop()
        engine._reset(stream, ErrorCodes.CANCEL)


def stop_upload(engine: H2Engine, stream_id: int) -> None:
    with contextlib.suppress(ProtocolError):
        engine.conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)

