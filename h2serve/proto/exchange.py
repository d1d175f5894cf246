"""What both protocols do per request, once: request facts, the answer, the push gate, the log record.

Each engine turns its protocol's request into an `Exchange` and carries out what `answer()` returns:
a `Response` (with the push plan for a page in `plan`) or a `Deferred`, when answering needs
blocking work (a cold file, a listing, a compression). The engine hands a Deferred to its `Host`,
which runs `work` in a worker thread and calls back on the event loop; the engine then asks
`answer()` again, which goes on from where it stopped. So no engine ever touches the disk, and a
request waiting for the disk holds up no other.

`Host` is all an engine knows of the world outside: a clock, a way to defer blocking work, and a way
to say that output is waiting outside a call into the engine (a file chunk came in from a thread).
The asyncio adapter (net/adapter.py) is one host; the engine tests use another, in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..metrics import Meter
from ..site.blocking import WouldBlock
from ..site.body import Response
from ..site.rules import Request, SiteRules, request_host
from ..upstream.pipe import declared, has_body

if TYPE_CHECKING:
    from ..accesslog import AccessLog
    from ..config import Config
    from ..push.plan import Client, Pusher, PushPlan
    from ..site.handler import Site
    from ..site.rulespec import SiteSpec
    from ..site.workpool import WorkPool
    from ..upstream.pipe import RequestBody
    from ..upstream.proxy import Listener, ProxyCall, Upstream
    from .lifecycle import Lifecycle

log = logging.getLogger("h2serve")

Headers = list[tuple[bytes, bytes]]


class Host(Protocol):
    """What an engine needs of the I/O around it."""

    def now(self) -> float:
        """The monotonic clock, in seconds."""

    def defer(self, kind: str, work: Callable[[], None],
              done: Callable[[BaseException | None], None]) -> None:
        """Run `work` off the event loop (`kind` "io" or "cpu"); then `done(error or None)` on it."""

    def wake(self) -> None:
        """Output is waiting: pull it (called only outside the engine's own calls)."""


class Engine(Protocol):
    """What the adapter drives: bytes in, bytes out, `tick(now)` for timeouts."""

    life: Lifecycle
    deadline: float | None   # when `tick` must run next at the latest (None: the sweep will do)
    writable: bool           # the transport takes more output (set by the adapter)

    def start(self) -> None: ...
    def receive(self, data: bytes) -> None: ...
    def receive_eof(self) -> bool: ...
    def output(self) -> bytes: ...
    def resume(self) -> None: ...
    def tick(self, now: float) -> None: ...
    def shutdown(self) -> None: ...
    def connection_lost(self) -> None: ...

    @property
    def wants_read(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Served:
    """One site as a request sees it: its files, its push map and its rules."""

    site: Site
    pusher: Pusher
    rules: SiteRules


@dataclass
class Services:
    """What every connection of one server shares: settings, the sites, their rules and push maps,
    the access log, and the worker threads for blocking work.

    `site` and `pusher` are the default site's (the only one without `[[site]]`); `others` the
    other virtual hosts' (their spec, site and pusher). The site rules are compiled from `config`
    here, and each pusher told which paths they keep from its push plans (a path that redirects or
    needs credentials is neither pushed nor hinted)."""

    config: Config
    site: Site
    pusher: Pusher
    access_log: AccessLog
    work: WorkPool | None = None
    others: tuple[tuple[SiteSpec, Site, Pusher], ...] = ()
    upstream: Upstream | None = None  # --upstream: the application behind the files
    metrics: Meter = field(default_factory=Meter)  # --metrics-bind: what the engines count
    rules: SiteRules = field(init=False)
    default: Served = field(init=False)
    hosts: dict[str, Served] = field(init=False)

    def __post_init__(self) -> None:
        specs = self.config.site
        self.rules = SiteRules(self.config, self.site, specs[0] if specs else None)
        self.default = Served(self.site, self.pusher, self.rules)
        self.hosts = dict.fromkeys(specs[0].host, self.default) if specs else {}
        for spec, site, pusher in self.others:
            served = Served(site, pusher, SiteRules(self.config, site, spec))
            self.hosts.update(dict.fromkeys(spec.host, served))
        for served in {id(s): s for s in (self.default, *self.hosts.values())}.values():
            rules = served.rules
            served.pusher.allow = rules.pushable if rules.blocks_push else None

    def pick(self, authority: bytes) -> Served:
        """The site a request is for: the one whose `host` names its :authority or Host (port
        ignored, case-insensitive), else the default (the first)."""
        if not self.hosts:
            return self.default
        return self.hosts.get(request_host(authority), self.default)


@dataclass(slots=True)
class Deferred:
    """Blocking work to run in a worker thread before `Exchange.answer()` can go on."""

    kind: str
    work: Callable[[], None]


@dataclass(slots=True)
class Proxied:
    """The answer comes from the application (--upstream): the engine `start`s the call with a
    listener of its own (proto/proxied.py), and the call tells it the hints, then the answer."""

    call: ProxyCall

    def start(self, listener: Listener) -> None:
        self.call.start(listener)


_UNSET: object = object()


@dataclass(slots=True, eq=False)
class Exchange:
    """One request and its answer, whichever protocol carried it.

    `facts(exchange)` gives the push plan the facts of the connection (`Client`); it is called only
    for a page the push map has something for, since gathering them costs more than most answers.
    `facts` None (a pushed response, a refused request) means no push plan.
    """

    services: Services
    client: str                     # the client's address, for the log
    protocol: str                   # the request line's protocol, for the log: HTTP/2.0, HTTP/1.1
    method: str
    target: bytes                   # as sent
    headers: Headers
    referer: str | None = None
    user_agent: str | None = None
    authority: bytes = b""          # :authority, or Host
    facts: Callable[[Exchange], Client] | None = None
    status: int = 0
    sent: int = 0                   # body bytes sent
    response: Response | None = None
    plan: PushPlan | None = field(default=_UNSET)  # type: ignore[assignment]  # _UNSET: not asked yet
    body: RequestBody | None = None  # the request body, when it may go to the upstream
    proxy: ProxyCall | None = None
    upstream_status: int = 0        # for the log: the application's status, and how long it took
    upstream_time: float | None = None
    pushed: bool = False            # a pushed response (for the log)
    started: float = field(default_factory=time.monotonic)
    _logged: bool = False
    _gated: bool = False            # the rules let this request through to the application
    _request: Request | None = None
    _served: Served | None = None

    def answer(self) -> Response | Deferred | Proxied:
        """The response (its push plan in `plan`), or the blocking work that must run first, or
        (with --upstream) the call to the application; errors propagate (the engine answers them
        as its protocol does: 500, or RST_STREAM INTERNAL_ERROR)."""
        response = self.response
        served = self.served()
        upstream = self.services.upstream
        if response is None and upstream is not None and self.proxy is None and (
                self.method not in ("GET", "HEAD") or self.declares_body()):
            # The site's files answer GET and HEAD alone; the rules' redirects, [[auth]] and
            # preflights still stand in front of the application.
            if not self._gated and served.rules.active:
                try:
                    response = self.response = served.rules.gate(self.ruled(), block=False)
                except WouldBlock as e:
                    return Deferred(e.kind, self._gate_blocking)
                self._gated = True
            if response is None:
                return self._forward(upstream)
        if response is None:
            try:
                response = self.response = served.rules.respond(self.ruled(), block=False)
            except WouldBlock as e:
                return Deferred(e.kind, self._respond_blocking)
        if upstream is not None and response.status == 404 and response.file is None:
            if response.body is not None:
                response.body.close()
            self.response = None
            return self._forward(upstream)  # no file: the application's
        if self.body is not None:
            self.body.drop()  # answered from the files: the body is read and let go
        if self.plan is _UNSET:
            self.plan = None
            file = response.file
            if (self.facts is not None and file is not None and response.status == 200
                    and self.method in ("GET", "HEAD") and served.pusher.wants(file)):
                client = self.facts(self)
                try:
                    self.plan = served.pusher.plan(file, client, block=False)
                except WouldBlock as e:
                    self.plan = _UNSET
                    return Deferred(e.kind, lambda: self._plan_blocking(client))
        if (self.plan is not None and self.services.work is not None and self.method == "GET"
                and response.file is not None):
            served.pusher.warm(response.file, self.headers, self.services.work.submit)
        self.status = response.status
        return response

    def declares_body(self) -> bool:
        """The request says it has a body (Content-Length above 0, or Transfer-Encoding)."""
        if has_body(self.headers):
            return True
        return self.body is not None and (self.body.received > 0 or not self.body.ended)

    def _forward(self, upstream: Upstream) -> Response | Proxied:
        """The call to the application; 413 instead for a body declared over --max-body-size."""
        from ..upstream.proxy import ProxyCall

        length = declared(self.headers)
        if length is not None and length > self.services.config.max_body_size:
            if self.body is not None:
                self.body.drop()
            response = self.response = self.served().site.error(413, self.method)
            self.plan = None
            self.status = 413
            return response
        self.proxy = ProxyCall(self, upstream, self.body)
        self.plan = None
        return Proxied(self.proxy)

    def served(self) -> Served:
        """The site this request is for (a pushed one's :authority is its page's)."""
        if self._served is None:
            authority = self.authority
            if not authority and self.services.hosts:
                authority = next((v for n, v in self.headers if n == b":authority"), b"")
            self._served = self.services.pick(authority)
        return self._served

    def _gate_blocking(self) -> None:
        self.response = self.served().rules.gate(self.ruled(), block=True)
        self._gated = True

    def _respond_blocking(self) -> None:
        self.response = self.served().rules.respond(self.ruled(), block=True)

    def ruled(self) -> Request:
        """The request as the site rules see it. Whether it came over TLS (for HSTS) is asked of the
        connection only when it matters; a pushed response's `:scheme` is the server's own."""
        if self._request is None:
            secure = False
            if self.served().rules.hsts:
                if self.facts is not None:
                    secure = self.facts(self).scheme == "https"
                else:
                    secure = (b":scheme", b"https") in self.headers
            self._request = Request(self.method, self.target, self.headers, self.authority,
                                    self.client, secure)
        return self._request

    def _plan_blocking(self, client: Client) -> None:
        assert self.response is not None and self.response.file is not None
        self.plan = self.served().pusher.plan(self.response.file, client, block=True)

    def discard(self) -> None:
        """The answer will not be sent (the stream was reset, the connection is gone): release its
        body (an open file)."""
        if self.response is not None and self.response.body is not None:
            self.response.body.close()
        if self.proxy is not None:
            self.proxy.cancel()
        elif self.body is not None:
            self.body.drop()

    @property
    def path(self) -> str:
        """The target as text, for logs."""
        return self.target.decode("latin-1")

    def finish(self) -> None:
        """Log and count the request, once, however its answer ended."""
        if not self._logged:
            self._logged = True
            services = self.services
            log, meter = services.access_log, services.metrics
            seconds = time.monotonic() - self.started
            if meter.enabled:
                meter.request(self.protocol == "HTTP/2.0", self.status, self.sent, seconds)
            if log.enabled:
                upstream = (None if self.proxy is None else
                            (self.upstream_status, self.upstream_time))
                log.log(self.client, self.method, self.path, self.protocol, self.status, self.sent,
                        self.referer, self.user_agent, upstream, host=self.authority,
                        seconds=seconds, pushed=self.pushed)
