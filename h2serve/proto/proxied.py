"""How each engine carries out a proxied exchange (upstream/proxy.py's `Listener`), kept beside the
engines rather than in them: hints before the answer, the application's own 103, the answer.

The call runs on the event loop outside the engine's own calls, so each step ends with the
host's `wake()`, which makes the adapter pull the engine's output.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import h11
from h2.exceptions import ProtocolError

from ..push.plan import PushPlan
from ..site.body import Response
from .h2push import promise_all, push_promised

if TYPE_CHECKING:
    from .h1engine import H1Engine
    from .h2engine import H2Engine
    from .h2sched import Stream

Headers = list[tuple[bytes, bytes]]


class H2Proxied:
    """An HTTP/2 stream answered by the application."""

    def __init__(self, engine: H2Engine, stream: Stream) -> None:
        self.engine = engine
        self.stream = stream

    def _open(self) -> bool:
        e = self.engine
        return e.streams.get(self.stream.id) is self.stream and not e.life.ended

    def hints(self, plan: PushPlan) -> None:
        """A 103 with the links (unless every one is promised), then the promises and the pushed
        answers (through the same static handler as any request): all before the page's HEADERS."""
        if not self._open():
            return
        e = self.engine
        if plan.early_hints and plan.links:
            with contextlib.suppress(ProtocolError):
                e.conn.send_headers(self.stream.id, [(b":status", b"103"), *plan.links])
                e.services.metrics.early_hint()
        push_promised(e, self.stream, promise_all(e, self.stream, plan))
        e.host.wake()

    def interim(self, status: int, headers: Headers) -> None:
        if self._open():
            with contextlib.suppress(ProtocolError):
                self.engine.conn.send_headers(self.stream.id, [(b":status", str(status).encode()),
                                                               *headers])
            self.engine.host.wake()

    def respond(self, response: Response) -> None:
        if not self._open():
            if response.body is not None:
                response.body.close()
            return
        self.stream.exchange.status = response.status
        self.engine.send_proxied(self.stream, response)
        self.engine.host.wake()

    def flush(self) -> None:
        self.engine.host.wake()


class H1Proxied:
    """An HTTP/1.1 request answered by the application."""

    def __init__(self, engine: H1Engine, exchange: object, version: bytes) -> None:
        self.engine = engine
        self.exchange = exchange
        self.version = version

    def _open(self) -> bool:
        return self.engine.exchange is self.exchange and not self.engine.life.ended

    def hints(self, plan: PushPlan) -> None:
        """A 103 only if --early-hints all (HTTP/1.1 clients may choke on one) and never to an
        HTTP/1.0 client (RFC 9110 section 15.2); nothing is pushed over HTTP/1.1."""
        e = self.engine
        if (self._open() and plan.early_hints and plan.links and self.version == b"1.1"
                and e.conn.our_state is h11.SEND_RESPONSE):
            e.queue(e.conn.send(h11.InformationalResponse(status_code=103, headers=plan.links)))
            e.services.metrics.early_hint()
            e.host.wake()

    def interim(self, status: int, headers: Headers) -> None:
        """The application's own 103 is passed on over HTTP/2 only (as nginx does)."""

    def respond(self, response: Response) -> None:
        if not self._open():
            if response.body is not None:
                response.body.close()
            return
        self.engine.send_proxied(response)
        self.engine.host.wake()

    def flush(self) -> None:
        self.engine.host.wake()
