"""Listeners, signals and graceful shutdown: the embedding API.

    server = Server(Config(bind=["127.0.0.1:0"]))
    await server.start()          # binds; server.port is the port the OS chose
    ...
    await server.stop()           # GOAWAY, drain within the grace period, close

`run()` is what the command line calls: start, print where it serves, wait for SIGINT/SIGTERM, stop.
With `--workers N` (workers.py) a supervisor calls `Server.preflight()` to check everything and bind
the sockets once, and each worker process calls `run()` with those sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .accesslog import AccessLog
from .config import Config, ConfigError, parse_address
from .metrics import PrometheusMeter, make_meter
from .net.activation import forget_passed_fds, inherited, is_inherited
from .net.adapter import Adapter, Registry
from .net.listener import Acceptor, bind
from .net.opslistener import OpsListener, bind_ops
from .net.tls import event_loop_factory, make_ssl_context
from .proto.exchange import Services
from .push.manifest import PushMap, describe_map, push_map_for
from .push.plan import Pusher
from .pushreload import reload_push_map, watch_push_map
from .reload import reload
from .site.handler import Policy, Site
from .site.watch import Watcher
from .site.workpool import WorkPool
from .vhosts import add_sni, other_sites

if TYPE_CHECKING:
    from .upstream.proxy import Upstream

log = logging.getLogger("h2serve")

SWEEP_INTERVAL = 1.0  # seconds between timeout checks of all connections

Sockets = list[list[socket.socket]]  # listening sockets per address: every --bind, then every --h2c-bind


@dataclass(frozen=True)
class Listener:
    """One bound socket: `scheme` is https (TLS, ALPN) or http (cleartext h2c and HTTP/1.1)."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"


class Server:
    """One h2serve instance; see the module docstring."""

    def __init__(self, config: Config, sockets: Sockets | None = None,
                 ops_sockets: list[socket.socket] | None = None) -> None:
        """`sockets`: listening sockets bound already (a worker's, from its supervisor); without
        them `start()` binds its own. `ops_sockets`: the same for --metrics-bind."""
        self.config = config
        self.listeners: list[Listener] = []
        self.services: Services | None = None
        self.registry = Registry()
        self.ca_file: Path | None = None  # the dev CA, when serving a dev certificate
        self.push_map: PushMap | None = None  # what preflight() found, for describe()
        self._sockets = sockets
        self.ops_sockets = ops_sockets
        self.ops: OpsListener | None = None  # --metrics-bind
        self.reloading = asyncio.Lock()  # SIGHUP reloads, one at a time (reload.py)
        self._acceptors: list[Acceptor] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._watcher: Watcher | None = None

    @property
    def port(self) -> int:
        """The first TLS port (or, with no TLS listener, the first cleartext one)."""
        tls = [x for x in self.listeners if x.scheme == "https"]
        return (tls or self.listeners)[0].port

    @property
    def h2c_port(self) -> int:
        return next(x.port for x in self.listeners if x.scheme == "http")

    async def start(self) -> None:
        """Check the configuration, then bind every listener; raises ConfigError saying what to fix."""
        cfg = self.config
        site = self._site()
        watcher = Watcher(site.cache.changed, site.cache.clear)
        if watcher.start(asyncio.get_running_loop()):
            site.cache.watch, site.cache.sync = watcher.add, watcher.drain
            self._watcher = watcher
        ssl_ctx = self._ssl_context()
        access_log = self._access_log()
        pusher = Pusher.from_config(cfg, site, push_map_for(cfg, site))
        meter = make_meter(cfg.metrics_bind is not None)
        self.services = Services(cfg, site, pusher, access_log, WorkPool(), other_sites(cfg, site),
                                 upstream=upstream_for(cfg), metrics=meter)
        self.registry.room_made = self._room_made
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)
        try:
            bound = self._sockets if self._sockets is not None else bind_all(cfg)
            if cfg.metrics_bind is not None and self.ops_sockets is None:
                self.ops_sockets = bind_ops(cfg)
        except ConfigError:
            await self.stop(0)
            raise
        for (addr, tls), sockets in zip(addresses(cfg), bound, strict=True):
            self._listen(addr, sockets, ssl_ctx if tls else None)
        if self.ops_sockets:
            assert isinstance(meter, PrometheusMeter)  # ops sockets come only with --metrics-bind
            self.ops = OpsListener(self.ops_sockets, meter, lambda: self.registry.closing, self._sample)
            await self.ops.start()

    def preflight(self) -> Sockets:
        """Everything `start()` checks, with no event loop and nothing started: the site, the
        certificate (a development one is made here), the access log, the push map; then bind.

        A supervisor calls this before forking its workers, so a bad setting is one error and exit
        status 2 before any worker exists, and the workers serve on the sockets returned."""
        cfg = self.config
        site = self._site()
        self._ssl_context()
        self._access_log().close()
        self.push_map = push_map_for(cfg, site)
        other_sites(cfg, site)  # [[site]]: their folders and push maps
        if cfg.metrics_bind is not None and importlib.util.find_spec("prometheus_client") is None:
            make_meter(True)  # the error saying what to install (nothing imported: it is not there)
        bound = bind_all(cfg)
        if cfg.metrics_bind is not None:
            try:
                self.ops_sockets = bind_ops(cfg)
            except ConfigError:
                for sock in (s for sockets in bound for s in sockets):
                    sock.close()
                raise
        for (addr, tls), sockets in zip(addresses(cfg), bound, strict=True):
            self.listeners += _listeners(addr, sockets, tls)
        return bound

    def _site(self, config: Config | None = None) -> Site:
        cfg = config or self.config
        return Site.from_folders(root=cfg.root, templates=cfg.templates, static=cfg.static,
                                 server_name=cfg.server_name, policy=Policy.from_config(cfg))

    def _ssl_context(self, config: Config | None = None) -> ssl.SSLContext | None:
        cfg = config or self.config
        if not cfg.bind:
            return None
        ctx = make_ssl_context(*self._certificate(cfg), cfg.alpn)
        add_sni(ctx, cfg)  # [[site]]: each site's own certificate, by the name the client asks for
        return ctx

    def _access_log(self) -> AccessLog:
        try:
            return AccessLog.open(self.config.access_log, self.config.access_log_format)
        except OSError as e:
            raise ConfigError(f"--access-log {self.config.access_log}: {e.strerror}") from None

    def _certificate(self, config: Config | None = None) -> tuple[str, str]:
        cfg = config or self.config
        if cfg.cert is not None and cfg.key is not None:
            return cfg.cert, cfg.key
        # Imported here: `cryptography` adds some 14 MiB to every process that loads it, and a
        # server given its certificate never needs it.
        from .net.certs import ensure_dev_certs, trust_hint

        try:
            certs, made = ensure_dev_certs(cfg.certs_dir)
        except OSError as e:
            raise ConfigError(f"--certs-dir {cfg.certs_dir}: cannot write certificates ({e.strerror})"
                              ) from None
        if made:
            log.warning("%s", trust_hint(certs))
        self.ca_file = certs.ca
        return str(certs.cert), str(certs.key)

    def _listen(self, addr: str, sockets: list[socket.socket], ssl_ctx: ssl.SSLContext | None) -> None:
        assert self.services is not None
        registry, tls, meter = self.registry, ssl_ctx is not None, self.services.metrics
        for sock in sockets:
            # self.services, not a copy: a reload (SIGHUP) gives new connections new services.
            acceptor = Acceptor(sock, lambda: Adapter(self.services, registry, tls=tls),  # type: ignore[arg-type]
                                ssl_ctx, self.config.handshake_timeout, self._room)
            if meter.enabled:
                acceptor.handshake_failed = meter.tls_failure
            acceptor.start()
            self._acceptors.append(acceptor)
        self.listeners += _listeners(addr, sockets, tls)

    def _room(self) -> bool:
        """Whether another connection may be accepted (handshakes under way count)."""
        busy = len(self.registry.connections) + sum(a.handshakes for a in self._acceptors)
        return busy < self.config.max_connections and not self.registry.closing

    def _room_made(self) -> None:
        for acceptor in self._acceptors:
            if not acceptor.accepting and self._room():
                acceptor.start()

    def _sweep(self) -> None:
        """Once a second: let every connection enforce its timeouts (idle, slow headers, stalls)."""
        now = time.monotonic()
        for conn in list(self.registry.connections):
            conn.check(now)
        self._sample()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sample(self) -> None:
        """Carry the caches' counts into the metrics (once a second, and before a scrape)."""
        services = self.services
        if services is not None and services.metrics.enabled:
            services.metrics.sample(services.site.cache, services.site.compressed)

    def reload_push_map(self) -> bool:
        """Read the push map again (pushreload.py); False, the old one kept, if it is broken."""
        return reload_push_map(self)

    async def watch_push_map(self, interval: float = 1.0) -> None:
        """Reload the push map whenever the files it comes from change (--reload, pushreload.py)."""
        await watch_push_map(self, interval)

    async def stop(self, timeout: float | None = None, force: asyncio.Event | None = None) -> None:
        """Stop accepting, send GOAWAY, give in-flight responses `timeout` seconds, then close.

        `force`, when set meanwhile, cuts the grace period short (a second Ctrl-C).
        """
        timeout = self.config.graceful_timeout if timeout is None else timeout
        for acceptor in self._acceptors:
            acceptor.close()
        registry = self.registry
        if self.services is not None:
            registry.closing = True
            for conn in list(registry.connections):
                conn.shutdown()
            if registry.connections:
                await _wait_any(registry.drained, force, timeout)
            for conn in list(registry.connections):
                conn.abort()
            self.services.access_log.close()
            if self.services.upstream is not None:
                self.services.upstream.close()
            if self.services.work is not None:
                self.services.work.shutdown()
            for site in (self.services.site, *(other[1] for other in self.services.others)):
                site.close()  # precompression and dictionary threads (issue 18)
        if self.ops is not None:  # last: /healthz says 503 while the connections drain
            self.ops.close()
        self._acceptors.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._watcher is not None:
            self._watcher.close()

    def describe(self, loop: str | None = None, workers: int = 1) -> str:
        """The startup line: version, what is served, where, over which protocols, on which event
        loop (`loop`, else the running one's), and with how many worker processes."""
        cfg = self.config
        what = cfg.root if cfg.root is not None else f"{cfg.templates}/ and {cfg.static}/"
        seen: dict[str, str] = {}
        for x in self.listeners:
            protocols = ", ".join(cfg.alpn) if x.scheme == "https" else "h2c, http/1.1"
            seen.setdefault(x.url, protocols)
        where = "; ".join(f"{url} ({protocols})" for url, protocols in seen.items())
        pmap = self.services.pusher.map if self.services else self.push_map
        pushes = describe_map(pmap) if pmap is not None else "no push map"
        line = f"h2serve {__version__} serving {what} on {where}; {pushes}"
        if cfg.upstream is not None:
            line += f"; other requests to {cfg.upstream}"
        for sock in self.ops_sockets or ():  # --metrics-bind
            host, port = sock.getsockname()[:2]
            line += f"; metrics on http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
        loop = loop or _running_loop_name()
        if loop:
            line += f"; {loop} event loop"
        return line + (f"; {workers} workers" if workers > 1 else "")


def upstream_for(config: Config) -> Upstream | None:
    """The application behind the files (--upstream), or None; ConfigError if the Link parser it
    needs (the `upstream` extra) is not installed."""
    if config.upstream is None:
        return None
    try:
        from .upstream.proxy import Upstream
    except ImportError as e:
        raise ConfigError(f"--upstream needs {e.name}: pip install 'h2serve[upstream]'") from None
    return Upstream(config)


def addresses(config: Config) -> list[tuple[str, bool]]:
    """Every address to listen on, with whether it is TLS: each --bind, then each --h2c-bind."""
    return [(a, True) for a in config.bind] + [(a, False) for a in config.h2c_bind]


def bind_all(config: Config) -> Sockets:
    """Listening sockets for every address of `addresses()`, in that order; ConfigError naming the
    address that failed (port in use, no such host), with the sockets bound so far closed."""
    bound: Sockets = []
    try:
        for addr, _ in addresses(config):
            if is_inherited(addr):
                bound.append(inherited(addr))
                continue
            host, port = parse_address(addr)
            try:
                bound.append(bind(host, port))
            except OSError as e:
                raise ConfigError(f"cannot listen on {addr}: {e.strerror or e}") from None
    except ConfigError:
        for sock in (s for sockets in bound for s in sockets):
            sock.close()
        raise
    forget_passed_fds()
    return bound


def _listeners(addr: str, sockets: list[socket.socket], tls: bool) -> list[Listener]:
    return [Listener("https" if tls else "http",
                     str(s.getsockname()[0]) if is_inherited(addr) else parse_address(addr)[0],
                     s.getsockname()[1]) for s in sockets]


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _running_loop_name() -> str | None:
    try:
        return loop_name(asyncio.get_running_loop())
    except RuntimeError:
        return None


def event_loop(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop `--loop` asks for: its name and a factory. `auto` takes uvloop when it can be
    imported (the `fast` extra): its loop and TLS layer cost less per read and per connection than
    asyncio's (HTTP/1.1 +10-25% requests/s, an idle TLS connection 42 KiB instead of 71; HTTP/2
    about even, h2's own work per request dominating). Asking for uvloop without it is a ConfigError.

    The asyncio choice is h2serve's own loop (net/tls.py `SmallTLSBufferLoop`): 32 KiB of TLS read
    buffer per connection instead of 256 KiB. Only loops made by this factory are; an application
    that embeds `Server` on its own loop is left as it is."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed (pip install "
                                  "'h2serve[fast]'), or use --loop asyncio or auto") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", event_loop_factory()


async def _wait_any(event: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
    waits = [asyncio.ensure_future(event.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()


async def serve(config: Config, sockets: Sockets | None = None,
                ready: Callable[[], None] | None = None, *,
                ops_sockets: list[socket.socket] | None = None,
                reread: Callable[[], Config] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; a second signal cuts it short.
    SIGHUP reloads (reload.py): `reread()` reads the configuration again (the command line's).

    A worker gets its supervisor's `sockets` (and `ops_sockets`, for --metrics-bind) and says it
    serves by calling `ready()` instead of printing the startup line (the supervisor prints it,
    once); it logs stopping at debug level."""
    server = Server(config, sockets, ops_sockets)
    await server.start()
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()
    level = logging.INFO if ready is None else logging.DEBUG

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.log(logging.WARNING if ready is None else logging.DEBUG,
                    "second %s: closing connections now", signal.Signals(signum).name)
            force.set()
        else:
            log.log(level, "%s: stopping, in-flight responses get %gs", signal.Signals(signum).name,
                    config.graceful_timeout)
            stop.set()

    # Handlers first, then the startup line: whoever waits for that line may signal at once.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    # SIGHUP reads the configuration, certificates and push maps in a worker thread, off the loop.
    reloads: set[asyncio.Future[bool]] = set()

    def on_hup() -> None:
        future = asyncio.ensure_future(
            reload(server, reread, level=logging.WARNING if ready is None else logging.DEBUG))
        reloads.add(future)
        future.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watcher = asyncio.ensure_future(server.watch_push_map()) if config.reload else None
    if ready is not None:
        ready()
    else:
        log.info("%s", server.describe())
        if server.ca_file is not None:
            log.info("clients can verify the development certificate with %s", server.ca_file)
    try:
        await stop.wait()
        await server.stop(force=force)
    finally:
        if watcher is not None:
            watcher.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    log.log(level, "stopped")


def run(config: Config, sockets: Sockets | None = None, ready: Callable[[], None] | None = None, *,
        ops_sockets: list[socket.socket] | None = None, reread: Callable[[], Config] | None = None
        ) -> int:
    """Run `serve` on a fresh event loop of the kind `--loop` asks for; the exit status of the
    command line (2: a setting that cannot work, said in one line)."""
    try:
        _, factory = event_loop(config.loop)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, sockets, ready, ops_sockets=ops_sockets, reread=reread))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    return 0
