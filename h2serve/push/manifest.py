"""Push manifests: reading `push_manifest.json`, and deriving one from the site's own HTML.

Two shapes are in use (flask-http2-push, the http2-push-manifest tool):

    flat:     {"/static/app.css": {"type": "style", "weight": 1}, ...}
    by page:  {"index.html": {...flat map...}, "/about.html": {...}}

A flat map belongs to the index page (and to every page with `--push-all-pages`). Page keys may
have a leading slash or not, and name the page by URL or by file (`index.html` is `/`). Both pages
and resources are resolved through the site itself, so a key means exactly what a request for it
would be answered with, and a resource that does not exist is an error at startup, not a broken push.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, ConfigError
from ..site.filecache import FileEntry
from ..site.handler import Site
from ..site.paths import BadTarget, split_target

# Manifest `type` -> preload `as=` value.
TYPES = {"script": "script", "style": "style", "font": "font", "image": "image",
         "document": "document", "fetch": "fetch"}
# What a derived manifest gives each type: render-blocking first, images last. A script that does
# not block rendering (defer, async, type=module, modulepreload) runs after the page is parsed, while
# Chromium holds first paint for a preloaded font, and asks for preloaded fonts and scripts at one
# priority (`u=1, i`; stylesheets `u=0, i`, seen from Chromium 156), so in the order the Links name
# them: such scripts rank below fonts (DEFERRED_SCRIPT_WEIGHT), and the 103/Link order and the push
# order follow.
DEFAULT_WEIGHTS = {"style": 256, "script": 192, "font": 128, "fetch": 64, "document": 64, "image": 32}
DEFERRED_SCRIPT_WEIGHT = 96
EXTENSION_TYPES = {".css": "style", ".js": "script", ".mjs": "script", ".woff2": "font",
                   ".woff": "font", ".ttf": "font", ".otf": "font", ".json": "fetch",
                   ".html": "document", ".png": "image", ".jpg": "image", ".jpeg": "image",
                   ".gif": "image", ".svg": "image", ".webp": "image", ".avif": "image"}


# Types announced with Link: rel=preload (and so in the 103) unless an entry says otherwise. Not
# images: Chromium's parser finds an <img> as soon as the page arrives and ranks the large ones in
# view above the rest (a hero image came at `u=2, i`), while every preloaded image comes at the
# lowest image urgency (`i`, u=3), so a hinted hero image shares the line with every thumbnail and
# paints later (benchmarks/README.md). An entry's own `"preload": true` (an image only CSS names,
# the page's largest) still hints it.
PRELOAD_TYPES = frozenset({"style", "script", "font", "fetch", "document"})


@dataclass(frozen=True, slots=True)
class PushEntry:
    """One resource to push, and, when `preload`, to announce with Link: rel=preload (and 103)."""

    path: str
    type: str
    weight: int
    preload: bool = True

    @property
    def link(self) -> bytes:
        """The Link header value; fonts and fetches are CORS requests, so they say crossorigin."""
        cors = "; crossorigin" if self.type in ("font", "fetch") else ""
        return f"<{self.path}>; rel=preload; as={TYPES[self.type]}{cors}".encode()


@dataclass(frozen=True)
class PushMap:
    """Entries per page, keyed by the page's file; `fallback` applies to every other HTML page."""

    pages: dict[str, tuple[PushEntry, ...]]
    fallback: tuple[PushEntry, ...] = ()
    source: str = ""

    def entries_for(self, page: FileEntry) -> tuple[PushEntry, ...]:
        found = self.pages.get(page.path)
        if found is not None:
            return found
        return self.fallback if page.path.endswith((".html", ".htm")) else ()

    def __len__(self) -> int:
        return len({e.path for entries in self.pages.values() for e in entries}
                   | {e.path for e in self.fallback})


EMPTY = PushMap({})


def load_manifest(path: str | Path, site: Site, *, all_pages: bool = False) -> PushMap:
    """Read and check a manifest; raises ConfigError naming the file, the key and the fault."""
    name = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"{name}: cannot read push manifest ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}: not valid JSON ({e})") from None
    return build_map(data, site, name, all_pages=all_pages)


def build_map(data: object, site: Site, name: str, *, all_pages: bool = False) -> PushMap:
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: a push manifest is a JSON object")
    index = _page_file(site, "/", name)
    if _is_flat(data):
        entries = _entries(data, site, name, "")
        return PushMap({index: entries} if index else {}, entries if all_pages else (), name)
    pages: dict[str, tuple[PushEntry, ...]] = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: key {key!r}: expected a map of resources")
        page = _page_file(site, key, name)
        if page is None:
            raise ConfigError(f"{name}: key {key!r}: no such page in the site")
        pages[page] = _entries(value, site, name, f"{key} -> ")
    return PushMap(pages, (), name)


def _is_flat(data: dict[str, object]) -> bool:
    """Flat when the values describe resources (`type`/`weight`) rather than pages' maps."""
    return any(isinstance(v, dict) and ("type" in v or "weight" in v) for v in data.values())


def _entries(data: dict[str, object], site: Site, name: str, where: str) -> tuple[PushEntry, ...]:
    entries = []
    for key, spec in data.items():
        at = f"{name}: key {where}{key!r}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{at}: expected {{\"type\": ..., \"weight\": ...}}")
        path = key if key.startswith("/") else "/" + key
        if lookup(site, path) is None:
            raise ConfigError(f"{at}: no such file in the site")
        kind = spec.get("type") or EXTENSION_TYPES.get(os.path.splitext(path)[1].lower(), "")
        if kind not in TYPES:
            raise ConfigError(f"{at}: type {spec.get('type')!r} is not one of {', '.join(TYPES)}")
        weight = spec.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 256:
            raise ConfigError(f"{at}: weight {weight!r} is not a whole number from 1 to 256")
        preload = spec.get("preload", kind in PRELOAD_TYPES)
        if not isinstance(preload, bool):
            raise ConfigError(f"{at}: preload {preload!r} is not true or false")
        entries.append(PushEntry(path, kind, weight, preload))
    return tuple(sorted(entries, key=lambda e: -e.weight))  # stable: manifest order within a weight


def _page_file(site: Site, key: str, name: str) -> str | None:
    url = key if key.startswith("/") else "/" + key
    if url == "/index.html":
        url = "/"
    entry = lookup(site, url)
    return entry.path if entry is not None else None


def lookup(site: Site, url: str) -> FileEntry | None:
    try:
        return site.lookup(split_target(url.encode()))
    except (BadTarget, UnicodeEncodeError):
        return None


def default_manifest_path(config: Config) -> Path:
    """push_manifest.json at the site root: the --root folder, or the folder holding --templates."""
    if config.root is not None:
        return Path(config.root) / "push_manifest.json"
    return Path(config.templates).resolve().parent / "push_manifest.json"


def push_map_for(config: Config, site: Site) -> PushMap:
    """The push map the configuration asks for; ConfigError if a manifest is broken.

    An explicit --push-manifest must exist; the default one is optional.
    """
    if config.auto_push:
        from .scan import derive_map  # scan imports this module

        return derive_map(site)
    if config.push_manifest is not None:
        return load_manifest(config.push_manifest, site, all_pages=config.push_all_pages)
    path = default_manifest_path(config)
    if not path.is_file():
        return EMPTY
    return load_manifest(path, site, all_pages=config.push_all_pages)


def push_map_sources(config: Config, site: Site) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of the files the push map is made from, to notice a change."""
    if config.auto_push:
        mount = next(m for m in site.mounts if not m.prefix)
        paths = [*mount.root.rglob("*.html"), *(m.root for m in site.mounts)]
        for m in site.mounts:
            paths.extend(m.root.rglob("*.css"))
    else:
        paths = [Path(config.push_manifest) if config.push_manifest else default_manifest_path(config)]
    out = []
    for path in sorted(paths):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def describe_map(pmap: PushMap) -> str:
    """For the startup line: where the push map came from and how much it holds."""
    if not pmap.pages and not pmap.fallback:
        return "no push map"
    return f"push map {pmap.source} ({len(pmap.pages)} pages, {len(pmap)} resources)"
