"""HTTP/2 server push, carried out: `H2Engine`'s part that sends a page with its push plan (the
103, every PUSH_PROMISE, the page, then the pushed answers), and counts the pushes the client has
room for.

The plan itself (what to push, Link headers, the cookie) is decided in push/plan.py and the push
gate in exchange.py; this is how the engine executes one, and it is the engine's own code: the
functions use its state and private methods (`_send_response`, `_run`, `_answer`) as its methods
do. It lives apart because push is one feature with its own rules (RFC 9113 section 8.4), used by
the engine and by proxied.py for the application's pages, and so h2engine.py stays under the
project's ~500 lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.exceptions import NoAvailableStreamIDError

from . import lifecycle as lc
from .exchange import Exchange
from .h2sched import Stream

if TYPE_CHECKING:
    from ..push.plan import Promise, PushPlan
    from ..site.body import Response
    from .h2engine import H2Engine

MAX_PUSHES_PER_PAGE = 100  # a bound of our own, whatever the client allows


def push_slots(engine: H2Engine) -> int:
    """How many pushes the client takes now: none if it refuses push or the connection is
    closing; otherwise what its SETTINGS_MAX_CONCURRENT_STREAMS leaves room for."""
    remote = engine.conn.remote_settings
    if not remote.enable_push or engine.life.state != lc.OPEN:
        return 0
    return max(0, min(remote.max_concurrent_streams, MAX_PUSHES_PER_PAGE)
               - engine.conn.open_outbound_streams)


def send_with_plan(engine: H2Engine, stream: Stream, response: Response, plan: PushPlan) -> None:
    """103 (if hinted), every PUSH_PROMISE, the page's HEADERS, then the pushed responses
    (RFC 9113 section 8.4: promises precede the frames that refer to the promised resources)."""
    sid = stream.id
    meter = engine.services.metrics
    if plan.early_hints and plan.links:
        engine.conn.send_headers(sid, [(b":status", b"103"), *plan.links])
        meter.early_hint()
    promised = promise_all(engine, stream, plan)
    response.headers.extend(plan.links)
    if plan.set_cookie is not None:
        response.headers.append((b"set-cookie", plan.set_cookie))
    # The page's first run of DATA goes right behind its HEADERS, ahead of the pushed responses'
    # HEADERS (and of other streams' turns): the client can parse the page while the pushed bytes
    # are still arriving.
    if engine._send_response(stream, response, queue=False):
        engine._run(stream)
    push_promised(engine, stream, promised)


def promise_all(engine: H2Engine, stream: Stream, plan: PushPlan) -> list[tuple[int, Promise]]:
    """A PUSH_PROMISE for each of the plan's promises the client has room for."""
    promised = []
    slots = push_slots(engine)  # again: the plan may have waited for the disk
    for promise in plan.promises[:slots]:
        if promise.entry.path in engine.pushed:
            continue
        try:
            pid = engine.conn.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            break  # every server stream id is used up: the page goes out without pushes
        engine.conn.push_stream(stream.id, pid, promise.headers)
        engine.services.metrics.push()
        engine.pushed.add(promise.entry.path)
        promised.append((pid, promise))
    return promised


def push_promised(engine: H2Engine, stream: Stream, promised: list[tuple[int, Promise]]) -> None:
    """Answer the promised requests as any request for their paths is answered."""
    sid = stream.id
    page = stream.exchange
    for rank, (pid, promise) in enumerate(promised, 1):
        path = promise.entry.path
        # The same handler as any request for that path: same status, headers and bytes. Sent
        # after the page, in the push map's order (highest weight first: styles, scripts, fonts,
        # then images), at the page's urgency.
        pushed = Exchange(engine.services, engine.client, "HTTP/2.0", "GET", path.encode(),
                          promise.headers, page.path, page.user_agent, page.authority, pushed=True)
        engine.streams[pid] = Stream(pid, pushed, stream.priority, (sid, rank))
        engine._answer(engine.streams[pid])
