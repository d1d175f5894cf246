"""Forwarding one request to the application, and its answer back: `ProxyCall`.

A call runs as an asyncio task beside the engine that asked for it, and speaks to that engine only
through a `Listener` (proto/proxied.py has one per protocol), on the event loop:

1. learned hints first: if the application's last 200 for this GET path carried preloads, the
   listener gets their plan (103 and/or PUSH_PROMISEs) at once, before the application is asked;
2. the request head goes out on a pooled connection, the body streams behind it from the
   `RequestBody` pipe (each chunk acknowledged to the client once the upstream socket took it);
3. the application's own 103 is passed on (HTTP/2 only); its final head's preload Links give a
   plan for what was not hinted yet, and are learned for the next request;
4. the answer goes to the client as the application sent it (less hop-by-hop fields), with the
   site rules' response headers (security headers and HSTS where it sent none, `[[headers]]`,
   `Cache-Control: private` behind `[[auth]]`; site/rules.py `proxied`), its body streaming
   through `UpstreamBody`, its trailers after it.

Failures before the answer began give the client a 502 (refused, reset, broken answer) or a 504
(no connection or no answer in time), with one log line; after, the client's answer is cut off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Protocol

import h11

from ..site.blocking import WouldBlock
from ..site.body import Response
from .headers import request_headers, response_headers
from .hints import Hint, LearnedHints, preloads
from .pipe import RequestBody, UpstreamBody
from .pool import Pool, UpstreamClosed, UpstreamConnection
from .target import parse_upstream

if TYPE_CHECKING:
    from ..config import Config
    from ..proto.exchange import Exchange
    from ..push.plan import Client, PushPlan

log = logging.getLogger("h2serve")

Headers = list[tuple[bytes, bytes]]
NO_BODY_STATUS = frozenset({204, 304})
# The application's own 103s passed on per request. Each is a HEADERS frame written outside the
# body's flow control and back-pressure, so an application sending them without end would grow
# the client's output without bound; the rest are read and dropped.
MAX_INTERIM = 8


class Listener(Protocol):
    """What a call tells the engine that carries its exchange (always on the event loop)."""

    def hints(self, plan: PushPlan) -> None:
        """Hints before the answer: a 103 with `plan.links` if `plan.early_hints`, promises."""

    def interim(self, status: int, headers: Headers) -> None:
        """An informational answer of the application's own (103)."""

    def respond(self, response: Response) -> None:
        """The final answer (its body an UpstreamBody, pulled as flow control allows)."""

    def flush(self) -> None:
        """Something changed outside the engine's own calls (credit given for the upload, bytes
        arrived): let it write."""


class Upstream:
    """One worker's application: where it is, the connection pool, the learned hints."""

    def __init__(self, config: Config) -> None:
        assert config.upstream is not None
        self.config = config
        self.target = parse_upstream(config.upstream)
        self.pool = Pool(self.target, size=config.upstream_connections,
                         connect_timeout=config.upstream_connect_timeout,
                         idle_timeout=config.upstream_idle_timeout)
        self.learned: LearnedHints | None = LearnedHints() if config.learn_hints == "on" else None

    def close(self) -> None:
        self.pool.close()


class ProxyCall:
    """One request forwarded to the application."""

    def __init__(self, exchange: Exchange, upstream: Upstream, body: RequestBody | None) -> None:
        self.exchange = exchange
        self.upstream = upstream
        self.body = body
        self.answer: UpstreamBody | None = None
        self.responded = False
        self.set_cookie: bytes | None = None
        self.hinted: set[bytes] = set()       # Link values already hinted or promised
        self._task: asyncio.Task[None] | None = None
        self._space: asyncio.Event | None = None
        self._progress = 0.0                  # last time the upload moved
        self._started = 0.0
        self._conn: UpstreamConnection | None = None
        self._sender: asyncio.Task[None] | None = None
        self._listener: Listener | None = None

    def start(self, listener: Listener) -> None:
        self._listener = listener
        self._task = asyncio.get_running_loop().create_task(self._run(listener))

    def cancel(self) -> None:
        """The client is gone or reset the stream: abandon the upstream exchange."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.body is not None:
            self.body.drop()

    # -- the task ----------------------------------------------------------------------------------

    async def _run(self, listener: Listener) -> None:
        ex = self.exchange
        started = time.monotonic()
        up = self.upstream
        try:
            await self._forward(listener)
        except asyncio.CancelledError:
            self._abandon()
            raise
        except TimeoutError:
            self._failed(listener, 504, "did not answer in time")
        except UpstreamClosed as e:
            self._failed(listener, 502, str(e) or "closed the connection")
        except h11.ProtocolError as e:
            self._failed(listener, 502, f"sent a malformed answer ({e})")
        except OSError as e:
            self._failed(listener, 502, e.strerror or str(e))
        except Exception:
            log.exception("proxying %s %s to %s", ex.method, ex.path, up.target)
            self._failed(listener, 502, "failed (see the error above)")
        finally:
            if ex.upstream_time is None:
                ex.upstream_time = time.monotonic() - started

    def _failed(self, listener: Listener, status: int, why: str) -> None:
        ex = self.exchange
        self._abandon()
        if not self.responded:
            log.warning("upstream %s %s: %d for %s %s", self.upstream.target, why, status, ex.method,
                        ex.path)
            self._respond(listener, ex.served().site.error(status, ex.method))
        elif self.answer is not None:
            log.warning("upstream %s %s while answering %s %s: cut off", self.upstream.target, why,
                        ex.method, ex.path)
            self.answer.fail(UpstreamClosed(f"upstream {why}"))

    def _abandon(self) -> None:
        self._abandon_conn()
        self._stop_upload()

    def _stop_upload(self) -> None:
        """No more of the request body will be forwarded: the client gets credit for it all."""
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            sender.cancel()
        if self.body is not None:
            self.body.drop()

    async def _forward(self, listener: Listener) -> None:
        ex, up, cfg = self.exchange, self.upstream, self.upstream.config
        self._started = time.monotonic()
        get = ex.method == "GET"
        if get and up.learned is not None:
            learned = up.learned.get(ex.authority, ex.target)
            if learned:
                await self._hint(listener, learned)
        for attempt in (0, 1):
            conn = self._conn = await asyncio.wait_for(up.pool.acquire(), cfg.upstream_timeout)
            try:
                event = await self._ask(conn, listener)
                break
            except (UpstreamClosed, ConnectionError):
                # A kept-alive connection the application closed as we reused it: once more on a
                # new one, if nothing of the request body has been consumed.
                if attempt or not conn.reused or (self.body is not None and self.body.received):
                    raise
                self._abandon_conn()
        assert isinstance(event, h11.Response)
        ex.upstream_status = event.status_code
        ex.upstream_time = time.monotonic() - self._started
        headers = response_headers(event.headers)
        links = [v for n, v in headers if n == b"link"]
        hints = preloads(links, ex.authority, ex.target) if links else ()
        if get and event.status_code == 200 and up.learned is not None:
            up.learned.learn(ex.authority, ex.target, hints)
        fresh = tuple(h for h in hints if h.link not in self.hinted)
        if fresh:
            await self._hint(listener, fresh)
        if self.set_cookie is not None:
            headers.append((b"set-cookie", self.set_cookie))
        if ex.method == "HEAD" or event.status_code in NO_BODY_STATUS:
            body = None
        else:
            body = self.answer = UpstreamBody(self._space_made, self.cancel)
        self._respond(listener, Response(event.status_code, headers, body))
        await self._relay(conn, body)

    def _respond(self, listener: Listener, response: Response) -> None:
        """The one way an answer head leaves a call: the application's, or the 502/504 in its
        place, with the site rules' response headers on it."""
        ex = self.exchange
        ex.served().rules.proxied(ex.ruled(), response.headers)
        self.responded = True
        listener.respond(response)

    def _abandon_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            self.upstream.pool.release(conn)  # not reusable: its slot is freed, the socket closed

    async def _ask(self, conn: UpstreamConnection, listener: Listener) -> h11.Event:
        """Send the request (its body streaming behind it) and read up to the final head."""
        ex, cfg = self.exchange, self.upstream.config
        has_body = self.body is not None
        client = ex.facts(ex) if ex.facts is not None else None
        scheme = client.scheme if client is not None else "http"
        head = request_headers(ex.headers, authority=ex.authority, client=ex.client, scheme=scheme,
                               has_body=has_body)
        if has_body and self.body is not None and self.body.declared is None:
            head.append((b"transfer-encoding", b"chunked"))
        conn.send(h11.Request(method=ex.method, target=ex.target, headers=head))
        sender: asyncio.Task[None] | None = None
        if has_body:
            sender = self._sender = asyncio.get_running_loop().create_task(self._upload(conn))
            sender.add_done_callback(_quiet)
        else:
            conn.send(h11.EndOfMessage())
        await conn.drain()
        self._progress = time.monotonic()
        interim = 0
        try:
            while True:
                try:
                    event = await conn.next_event(cfg.upstream_timeout)
                except TimeoutError:
                    if sender is not None and not sender.done() and (
                            time.monotonic() - self._progress < cfg.upstream_timeout):
                        continue  # still uploading, and the upload moves: the wait starts after it
                    raise
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 103 and interim < MAX_INTERIM:
                        interim += 1
                        listener.interim(103, response_headers(event.headers))
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    raise UpstreamClosed("closed the connection without answering")
                return event
        except BaseException:
            if sender is not None:
                sender.cancel()
            raise

    async def _upload(self, conn: UpstreamConnection) -> None:
        """The request body, chunk by chunk as the client sends it; each acknowledged to the
        client once the socket has taken it."""
        body = self.body
        assert body is not None
        loop = asyncio.get_running_loop()
        while True:
            item = body.take()
            if item is None:
                if body.ended or body.dropped:
                    break
                ready: asyncio.Future[None] = loop.create_future()
                body.on_ready = partial(_set, ready)
                await ready
                continue
            data, flow = item
            if data:
                conn.send(h11.Data(data=data))
                await conn.drain()
            self._progress = time.monotonic()
            body.ack(flow)
            if self._listener is not None:
                self._listener.flush()
        if not body.dropped:
            conn.send(h11.EndOfMessage())
            await conn.drain()

    async def _relay(self, conn: UpstreamConnection, body: UpstreamBody | None) -> None:
        """The answer's body, read as fast as the client takes it; then the connection back to
        the pool (reusable if both messages ended cleanly)."""
        cfg = self.upstream.config
        trailers: Headers = []
        while True:
            event = await conn.next_event(cfg.upstream_timeout)
            if isinstance(event, h11.Data):
                if body is not None:
                    body.put(bytes(event.data))
                    while body.full and not body.closed:
                        self._space = asyncio.Event()
                        await self._space.wait()
            elif isinstance(event, h11.EndOfMessage):
                trailers = list(event.headers)
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise UpstreamClosed("closed the connection in the middle of its answer")
        self._conn = None
        if self._sender is not None and not self._sender.done():
            self._stop_upload()  # answered before the upload ended: the rest is not wanted
        self.upstream.pool.release(conn)
        self.exchange.upstream_time = time.monotonic() - self._started
        if body is not None:
            body.finish(response_headers(trailers))

    def _space_made(self) -> None:
        if self._space is not None:
            self._space.set()

    async def _hint(self, listener: Listener, hints: tuple[Hint, ...]) -> None:
        """The plan for `hints` (files looked up in a worker thread if need be), to the listener."""
        ex = self.exchange
        if ex.facts is None:
            return
        client = ex.facts(ex)
        if self.set_cookie is not None:  # what the first plan pushed counts for the second
            client = _with_cookie(client, self.set_cookie)
        pusher = ex.served().pusher
        try:
            plan = pusher.plan_hints(hints, client, block=False)
        except WouldBlock as e:
            work = ex.services.work
            if work is None:
                return
            plan = await asyncio.wrap_future(
                work.submit(e.kind, lambda: pusher.plan_hints(hints, client)))
        if plan is None:
            return
        self.hinted.update(h.link for h in hints)
        if plan.set_cookie is not None:
            self.set_cookie = plan.set_cookie
        if (plan.early_hints and plan.links) or plan.promises:
            listener.hints(plan)


def _quiet(task: asyncio.Task[None]) -> None:
    """An upload that failed (the application closed early) matters only through the answer."""
    if not task.cancelled():
        task.exception()


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _with_cookie(client: Client, set_cookie: bytes) -> Client:
    """`client` as if it had sent the push cookie just set (its digest comes first)."""
    from dataclasses import replace

    pair = set_cookie.split(b";", 1)[0]
    return replace(client, headers=[(b"cookie", pair), *client.headers])
