"""Deriving a push map from the site's own HTML: what each page links to, and the fonts of its
local stylesheets (`h2serve manifest`, `--auto-push`).

Everything found is pushed; what is also hinted (Link: rel=preload, 103) is what the page itself
would have Chromium fetch first anyway: its stylesheets, scripts and its own preloads. Not its
images (manifest.py PRELOAD_TYPES says why), and not a font that only a stylesheet's `@font-face`
names: it may never be used, and a preloaded font holds Chromium's first paint until it arrives
(RenderBlockingFonts: up to 100 ms after the stylesheets), which a page with an unused second
font paid on every load (target30: first paint 412 -> 372 ms at 2 Mbit/s without it and the images).
A page that wants a font hinted preloads it, as is the advice for fonts anyway."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..site.handler import Site
from .manifest import (
    DEFAULT_WEIGHTS,
    DEFERRED_SCRIPT_WEIGHT,
    PRELOAD_TYPES,
    TYPES,
    PushEntry,
    PushMap,
    build_map,
    lookup,
)


class _AssetParser(HTMLParser):
    """Collects (url, type, weight, preload) of what a page needs, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str, int, bool]] = []

    def _add(self, url: str, kind: str, deferred: bool = False, preload: bool | None = None) -> None:
        weight = DEFERRED_SCRIPT_WEIGHT if deferred else DEFAULT_WEIGHTS[kind]
        self.found.append((url, kind, weight, kind in PRELOAD_TYPES if preload is None else preload))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        rels = set(a.get("rel", "").lower().split())
        if tag == "link" and a.get("href"):
            if "stylesheet" in rels:
                self._add(a["href"], "style")
            elif "modulepreload" in rels:
                self._add(a["href"], "script", deferred=True)
            elif "preload" in rels and a.get("as", "").lower() in TYPES:
                self._add(a["href"], a["as"].lower(), preload=True)  # the page asks for it
        elif tag == "script" and a.get("src"):
            deferred = "defer" in a or "async" in a or a.get("type", "").lower() == "module"
            self._add(a["src"], "script", deferred)
        elif tag == "img" and a.get("src"):
            self._add(a["src"], "image")


FONT_FACE = re.compile(r"@font-face\s*{([^}]*)}", re.IGNORECASE)
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")


def scan_site(site: Site) -> dict[str, dict[str, dict[str, object]]]:
    """A manifest keyed by page URL, from every HTML page of the site (404.html aside)."""
    manifest: dict[str, dict[str, dict[str, object]]] = {}
    for url in _page_urls(site):
        entries = scan_page(site, url)
        if entries:
            manifest[url] = {e.path: _spec(e) for e in entries}
    return manifest


def _spec(entry: PushEntry) -> dict[str, object]:
    """An entry as the manifest file holds it; `preload` only where it differs from its type's."""
    spec: dict[str, object] = {"type": entry.type, "weight": entry.weight}
    if entry.preload != (entry.type in PRELOAD_TYPES):
        spec["preload"] = entry.preload
    return spec


def _page_urls(site: Site) -> list[str]:
    mount = next(m for m in site.mounts if not m.prefix)
    urls = []
    for file in sorted(mount.root.rglob("*.html")):
        rel = file.relative_to(mount.root).as_posix()
        if rel == "404.html" or any(part.startswith(".") for part in file.parts):
            continue
        urls.append("/" if rel == "index.html" else "/" + rel)
    return sorted(urls, key=lambda u: (u != "/", u))  # the index page first


def scan_page(site: Site, url: str) -> list[PushEntry]:
    """What one page needs: its stylesheets, scripts, preloads and images, plus the fonts of its
    local stylesheets, in document order, each once."""
    page = lookup(site, url)
    if page is None:
        return []
    parser = _AssetParser()
    parser.feed(Path(page.path).read_text(encoding="utf-8", errors="replace"))
    out: dict[str, PushEntry] = {}
    for ref, kind, weight, preload in parser.found:
        path = _local_path(url, ref)
        if path is None or lookup(site, path) is None:
            continue
        if path in out:  # named twice (a preload, then the script itself): the higher weight
            had = out[path]  # holds, and a preload of it anywhere hints it
            if weight > had.weight:
                had = PushEntry(path, kind, weight, had.preload)
            out[path] = PushEntry(path, had.type, had.weight, had.preload or preload)
            continue
        out[path] = PushEntry(path, kind, weight, preload)
        if kind == "style":
            for font in _css_fonts(site, path):
                out.setdefault(font, PushEntry(font, "font", DEFAULT_WEIGHTS["font"], preload=False))
    return list(out.values())


def _css_fonts(site: Site, css_path: str) -> list[str]:
    entry = lookup(site, css_path)
    if entry is None:
        return []
    text = Path(entry.path).read_text(encoding="utf-8", errors="replace")
    fonts = []
    for block in FONT_FACE.findall(text):
        for ref in CSS_URL.findall(block):
            path = _local_path(css_path, ref)
            if path is not None and lookup(site, path) is not None:
                fonts.append(path)
    return fonts


def _local_path(base: str, ref: str) -> str | None:
    """The same-origin path a reference names, or None (other origins, data: URLs)."""
    parts = urlsplit(urljoin(base, ref.strip()))
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    return parts.path


def derive_map(site: Site) -> PushMap:
    """The push map `--auto-push` uses: what `scan_site` would write, without the file."""
    return build_map(scan_site(site), site, "(derived from the site's HTML)")
