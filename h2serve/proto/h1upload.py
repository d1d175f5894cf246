"""HTTP/1.1 request bodies on their way to the application (--upstream): `H1Engine`'s part that
takes h11's Data events into the exchange's `RequestBody` pipe as it has room, and refuses a body
over --max-body-size.

Only a proxied request has a body worth reading (a static server drops it, h1engine.py), so this
is a part of the engine apart from the request and response loop it sits beside, and is kept here
for that (and so h1engine.py stays under the project's ~500 lines). These functions are the
engine's own code: they use its state and private methods as its methods do.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h11

from .lifecycle import CLOSE

if TYPE_CHECKING:
    from .h1engine import H1Engine

log = logging.getLogger("h2serve")


def pull_body(engine: H1Engine) -> None:
    """Take the request body's events from h11 into its pipe while the pipe has room; stop
    reading from the client while it has none (the application holds it back)."""
    exchange = engine.exchange
    upload = exchange.body if exchange is not None else None
    if upload is None or upload.ended or engine.life.ended:
        if exchange is None:
            engine._upload = None  # its exchange is over
        return
    conn = engine.conn
    while conn.their_state is h11.SEND_BODY and (upload.dropped or not upload.full):
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            upload.drop()
            engine._protocol_error(e)
            return
        if event is h11.NEED_DATA:
            engine._reading = True
            return
        if isinstance(event, h11.Data):
            upload.feed(bytes(event.data))
            if upload.received > engine.services.config.max_body_size:
                too_large(engine)
                return
        elif isinstance(event, h11.EndOfMessage):
            upload.end()
            return
        else:
            return
    if conn.their_state is h11.SEND_BODY:
        engine._reading = False  # the pipe is full: the client waits for the application


def too_large(engine: H1Engine) -> None:
    """A request body over --max-body-size (no Content-Length said so before): 413 and close
    if the application has not answered yet, else the connection is closed."""
    exchange = engine.exchange
    assert exchange is not None and exchange.body is not None
    exchange.body.drop()
    call = exchange.proxy
    log.info("request body from %s over --max-body-size", engine.client)
    if call is not None and not call.responded and engine.conn.our_state is h11.SEND_RESPONSE:
        call.responded = True
        call.cancel()
        engine._send_error_and_close(413)
    else:
        engine.life.fire(CLOSE)
