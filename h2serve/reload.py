"""SIGHUP: read the configuration and the certificates again, without dropping a connection.

What is read again: the `--config` TOML file (with the command line's options on top, as at the
start), and so the site rules, virtual hosts, push maps, cache policies, timeouts, limits and the
log level; and
every certificate and key file (`--cert`/`--key` and each `[[site]]`'s). New connections get a new
TLS context and the new rules; connections already open keep theirs to the end (their TLS session
cannot change, and a request half answered should not change its mind).

What needs a restart: options tied to sockets or processes (RESTART_ONLY). A change to one of them
is reported in one line and the old value kept, with everything else reloaded.

A configuration or a certificate that fails to load is reported in one line, and the old one goes
on serving: a renewal script that copies a bad file cannot take the site down. The reading and
building runs in a worker thread; the switch, on the event loop, is a few assignments.

With `--workers N` the supervisor reads the configuration too (so that a worker it starts later
gets the new one, and the options needing a restart are reported once), then forwards SIGHUP to
every worker, each of which reloads as above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import Config, ConfigError
from .proto.exchange import Services
from .push.manifest import describe_map, push_map_for
from .push.plan import Pusher
from .site.dictionary import Dictionaries
from .site.precompress import Precompressor
from .vhosts import other_sites

if TYPE_CHECKING:

    from .server import Server

log = logging.getLogger("h2serve")

# Options that a running server cannot change: sockets, processes, the event loop, open files.
# The --upstream pool (and its learned hints) is built once, with its settings, and kept.
RESTART_ONLY = ("bind", "h2c_bind", "metrics_bind", "workers", "loop", "access_log",
                "access_log_format", "upstream", "upstream_connect_timeout", "upstream_timeout",
                "upstream_idle_timeout", "upstream_connections", "learn_hints")


def merge(old: Config, new: Config, *, level: int = logging.WARNING) -> Config:
    """`new`, with the old value of each option that needs a restart (reported at `level`)."""
    changed = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
    if not changed:
        return new
    flags = ", ".join("--" + name.replace("_", "-") for name in changed)
    log.log(level, "SIGHUP: %s changed; that takes a restart (still using the old value)", flags)
    return dataclasses.replace(new, **{name: getattr(old, name) for name in changed})


def reread_config(reread: Callable[[], Config], old: Config, *, level: int = logging.WARNING
                  ) -> Config | None:
    """The configuration read again and merged with `old` (see `merge`), or None (logged) if it
    cannot be read. Blocking."""
    try:
        return merge(old, reread(), level=level)
    except ConfigError as e:
        log.error("SIGHUP: configuration not reloaded, keeping the old one: %s", e)
        return None


async def reload(server: Server, reread: Callable[[], Config] | None, *,
                 level: int = logging.WARNING) -> bool:
    """Reload `server` from `reread()` (without it: the same configuration, so the certificates,
    push maps and rule files are read again); whether it worked. `level`: that of the line about
    options needing a restart (a worker leaves it to its supervisor)."""
    assert server.services is not None
    meter = server.services.metrics

    def build() -> tuple[Config, Services, ssl.SSLContext | None] | None:
        config = server.config if reread is None else reread_config(reread, server.config, level=level)
        if config is None:
            return None
        try:
            services, ctx = prepare(server, config)
        except (ConfigError, OSError) as e:
            log.error("SIGHUP: nothing reloaded, keeping the old one (configuration, certificates, "
                      "push maps): %s",
                      getattr(e, "strerror", None) or e)
            return None
        return config, services, ctx

    # One at a time: a second reload builds from what the first applied (built from the same old
    # services, it would share, and so serve, a background worker the first one stopped).
    async with server.reloading:
        prepared = await asyncio.to_thread(build)
        if prepared is None:
            meter.reloaded(False)
            return False
        config, services, ctx = prepared
        if reread is not None and config.log_level != server.config.log_level:
            logging.getLogger().setLevel(config.log_level.upper())  # the command line's logging (cli.py)
        apply(server, config, services, ctx)
    meter.reloaded(True)
    log.info("SIGHUP: reloaded the configuration and certificates; %s",
             describe_map(server.services.pusher.map))
    return True


def prepare(server: Server, config: Config) -> tuple[Services, ssl.SSLContext | None]:
    """Everything `config` serves with, built beside what serves now (blocking: files are read,
    certificates loaded; a reload runs it in a worker thread); ConfigError for a broken part.
    The new site shares the file and compression caches (and so the file watcher), the access
    log, the worker threads and the metrics of the old one."""
    assert server.services is not None
    old = server.services
    site = server._site(config)
    site.cache, site.compressed = old.site.cache, old.site.compressed
    # The background threads (precompression, dictionaries) go on where the settings are the same;
    # `apply` stops the old ones that are not (their work is asked for again by later requests).
    was, now = old.site.policy, site.policy
    if (was.precompress_dir, was.precompress_size) == (now.precompress_dir, now.precompress_size):
        site.precompressed = old.site.precompressed
        if was.dictionaries == now.dictionaries and site.mounts == old.site.mounts:
            site.dictionaries = old.site.dictionaries
    ctx = server._ssl_context(config)
    pusher = Pusher.from_config(config, site, push_map_for(config, site))
    services = Services(config, site, pusher, old.access_log, old.work, other_sites(config, site),
                        upstream=old.upstream, metrics=old.metrics)
    return services, ctx


def apply(server: Server, config: Config, services: Services, ctx: ssl.SSLContext | None) -> None:
    """Serve new connections with what `prepare` built (on the loop: a few assignments).
    Connections already open keep theirs: their rules, timeouts and TLS session go on. Except
    the push maps: they describe the site's files, which every connection sees as they are now
    (the file cache is shared), so open connections get the new maps too, as --reload gives them."""
    old = server.services
    if old is not None and len(old.others) == len(services.others):
        for was, now in zip((old.pusher, *(p for _, _, p in old.others)),
                            (services.pusher, *(p for _, _, p in services.others)), strict=True):
            was.map = now.map
    server.config, server.services = config, services
    if old is not None:
        kept = {id(x) for x in _background(services)}
        for x in _background(old):
            if id(x) not in kept:
                x.shutdown()
    for acceptor in server._acceptors:
        if acceptor.ssl_ctx is not None and ctx is not None:
            acceptor.ssl_ctx = ctx
        acceptor.handshake_timeout = config.handshake_timeout


def _background(services: Services) -> list[Precompressor | Dictionaries]:
    """The background workers of every site `services` serves."""
    sites = (services.site, *(site for _, site, _ in services.others))
    found: list[Precompressor | Dictionaries] = [s.dictionaries for s in sites]
    return found + [s.precompressed for s in sites if s.precompressed is not None]
