"""Virtual hosts (`[[site]]`): the sites after the first, and the TLS certificate picked by SNI.

The first `[[site]]` is the default site, and Config mirrors its root, certificate, push map and
fallback into the top-level settings, so the server builds it as it builds the one site of a
configuration without `[[site]]`. This module builds the others (each a `Site` and its `Pusher`,
handed to `Services`, which picks one per request by :authority or Host) and gives the default
TLS context an SNI callback that switches a handshake to the certificate of the site it names.

The sites share the default site's file cache and compression cache: one inotify watcher and one
catch-up per read serve them all. That is safe because Config refuses a root inside another's:
the cache is keyed by path, and an entry is vetted against the root it was first looked up in.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import TYPE_CHECKING

from .net.tls import make_ssl_context
from .push.manifest import push_map_for
from .push.plan import Pusher
from .site.handler import Policy, Site

if TYPE_CHECKING:
    from .config import Config
    from .site.rulespec import SiteSpec


def site_config(config: Config, spec: SiteSpec) -> Config:
    """The settings of one site: the server's, with the site's root and push map."""
    return dataclasses.replace(config, site=(), redirect=(), headers=(), auth=(), root=spec.root,
                               push_manifest=spec.push_manifest, fallback=None)


def other_sites(config: Config, default: Site) -> tuple[tuple[SiteSpec, Site, Pusher], ...]:
    """The sites after the first, each with its pusher; ConfigError for a broken push map."""
    built = []
    for spec in config.site[1:]:
        own = site_config(config, spec)
        site = Site.from_folders(root=spec.root, templates=own.templates, static=own.static,
                                 server_name=config.server_name, policy=Policy.from_config(config))
        site.cache, site.compressed = default.cache, default.compressed
        # One precompression folder and thread, one deltas folder; dictionaries stay per site.
        site.precompressed, site.dictionaries.deltas = default.precompressed, default.dictionaries.deltas
        built.append((spec, site, Pusher.from_config(own, site, push_map_for(own, site))))
    return tuple(built)


def add_sni(context: ssl.SSLContext, config: Config) -> None:
    """Serve each `[[site]]` that has a certificate with it, chosen by the name the client sends
    (SNI); any other name, or none, gets `context`'s (the default site's)."""
    contexts = {}
    for spec in config.site[1:]:
        if spec.cert is not None and spec.key is not None:
            own = make_ssl_context(spec.cert, spec.key, config.alpn)
            contexts.update(dict.fromkeys(spec.host, own))
    if not contexts:
        return

    def choose(sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        if name is not None:
            chosen = contexts.get(name.lower().rstrip("."))
            if chosen is not None:
                sslobj.context = chosen

    context.sni_callback = choose
