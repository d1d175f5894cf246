"""`--reload`: the push map read again when the files it comes from change.

`Server` (server.py) calls these: they follow the push map's sources (the manifest, or with
--auto-push the site's HTML and CSS) through the file watcher (site/watch.py), or by their times
where it cannot watch them, and swap the new map into the running services. They live here, not in
server.py, because they are one feature with its own timer, watcher subscription and worker-thread
reads, apart from the listeners' lifetime server.py holds (and server.py stays under the project's
~500 lines). Each reload goes through `Server.reload_push_map`, the API's method, which calls
`reload_push_map` here. SIGHUP's reload of everything is reload.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import ConfigError
from .push.manifest import default_manifest_path, describe_map, push_map_for, push_map_sources
from .vhosts import site_config

if TYPE_CHECKING:
    from .server import Server
    from .site.handler import Site
    from .site.watch import Watcher

log = logging.getLogger("h2serve")

RELOAD_DELAY = 0.2  # seconds from the last change to a push map file to the reload


def reload_push_map(server: Server) -> bool:
    """Read the push map again (--reload; SIGHUP reloads everything, reload.py); a broken one
    is reported and the old kept. It reads files: --reload calls it in a worker thread (the new
    map is one assignment)."""
    assert server.services is not None
    try:
        new = push_map_for(server.config, server.services.site)
        others = [(pusher, push_map_for(site_config(server.config, spec), site))
                  for spec, site, pusher in server.services.others]  # [[site]]: theirs too
    except ConfigError as e:
        log.error("push map not reloaded, keeping the old one: %s", e)
        return False
    server.services.pusher.map = new
    for pusher, their in others:
        pusher.map = their
    log.info("push map reloaded: %s", describe_map(new))
    return True


async def watch_push_map(server: Server, interval: float = 1.0) -> None:
    """Reload the push map whenever the files it comes from change (--reload).

    The file watcher (inotify) says when: RELOAD_DELAY seconds after the last change reported
    to one of them (the manifest; with --auto-push any .html or .css of the site, or a folder
    of it), their folders being watched for that (with --auto-push every folder of the site,
    within the watcher's MAX_WATCHES). Where the watcher is not running, or cannot watch them
    all, their times are compared every `interval` seconds instead. The files are read, and
    the site walked, in worker threads."""
    assert server.services is not None
    site = server.services.site
    if server._watcher is not None:
        await _follow_push_map(server, server._watcher, site)
        log.info("--reload: cannot watch every folder the push map comes from; checking "
                 "them every %gs", interval)
    seen = await asyncio.to_thread(push_map_sources, server.config, site)
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(push_map_sources, server.config, site)
        if now != seen:
            seen = now
            await asyncio.to_thread(server.reload_push_map)


async def _follow_push_map(server: Server, watcher: Watcher, site: Site) -> None:
    """Reload the push map as the watcher reports changes to its sources; returns when their
    folders cannot all be watched (after reloading, if a change was reported)."""
    loop = asyncio.get_running_loop()
    due = asyncio.Event()
    timer: asyncio.TimerHandle | None = None
    folders, affects = await asyncio.to_thread(_push_map_sources, server, site)

    def on_change(path: str, folder: bool) -> None:
        nonlocal timer
        if affects(path, folder):  # an editor saves in several steps: reload after the last
            if timer is not None:
                timer.cancel()
            timer = loop.call_later(RELOAD_DELAY, due.set)

    def watch_all(folders: list[str]) -> bool:
        return all(watcher.add(folder) for folder in folders)

    unsubscribe = watcher.subscribe(on_change)
    try:
        watching = await asyncio.to_thread(watch_all, folders)
        while watching:
            await due.wait()
            due.clear()
            # New folders are watched before the files are read: nothing written falls between.
            folders, affects = await asyncio.to_thread(_push_map_sources, server, site)
            watching = await asyncio.to_thread(watch_all, folders)
            await asyncio.to_thread(server.reload_push_map)
    finally:
        unsubscribe()
        if timer is not None:
            timer.cancel()


def _push_map_sources(server: Server, site: Site) -> tuple[list[str], Callable[[str, bool], bool]]:
    """The folders to watch for the push map's sources, and the test of a change the watcher
    reports (its real path, whether a folder) for whether it may change the map. Blocking:
    resolves paths, and with --auto-push walks the whole site."""
    sep = os.sep
    if server.config.auto_push:
        roots = [str(m.root) for m in site.mounts]  # resolved already, as the watcher's paths are
        folders = [d for r in roots for d, _, _ in os.walk(r)]

        def affects(path: str, folder: bool) -> bool:
            return (folder or path.endswith((".html", ".css"))) and any(
                path == r or path.startswith(r + sep) or r.startswith(path.rstrip(sep) + sep)
                for r in roots)

        return folders, affects
    given = os.path.abspath(server.config.push_manifest or default_manifest_path(server.config))
    # The watcher names a file by its folder's real path: the link itself, and what it leads to.
    names = {os.path.join(os.path.realpath(os.path.dirname(given)), os.path.basename(given)),
             os.path.realpath(given)}

    def affects_manifest(path: str, folder: bool) -> bool:
        # A folder above it renamed or removed, or events lost ("/"), may change it too.
        return path in names or (folder and any(n.startswith(path.rstrip(sep) + sep) for n in names))

    return sorted({os.path.dirname(n) for n in names}), affects_manifest
