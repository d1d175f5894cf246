"""The sites the page-load benchmark serves: the demo site, and generated ones.

A `SiteSpec` says where a site's pages are (served at /) and its assets (served at /static/), and
which push map goes with it. The demo site is `templates/` + `static/` with the repo's
`push_manifest.json`. A generated site is one folder written by `generate()`: `index.html` naming
N assets of realistic sizes (stylesheets 5-40 KiB, scripts 10-80 KiB, images 5-60 KiB, a font or
two declared by the first stylesheet's `@font-face`, the first one also preloaded), and a
`push_manifest.json` made from that HTML by `python -m h2serve manifest SITE`, as a site author would.

`target30` is the page of the issue's targets: 30 assets, about 220 KiB in all.

`hero` is the page of the browser benchmark's largest contentful paint: a 40 KiB stylesheet and a
60 KiB script (neither deferred) in its head, then a 120 KiB hero image (a real, decodable PNG, so
that Chromium paints it and counts it as the LCP element) and 24 small images (3 KiB each).
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KIB = 1024


@dataclass(frozen=True)
class SiteSpec:
    """A site on disk: pages at /, assets at /static/, and its push map."""

    name: str
    pages: Path            # served at /
    static: Path           # served at /static/
    manifest: Path         # push_manifest.json for this site
    root: Path | None      # the one folder holding it all (generated sites), for --root
    description: str

    def h2serve_args(self) -> list[str]:
        where = (["--root", str(self.root)] if self.root is not None
                 else ["--templates", str(self.pages), "--static", str(self.static)])
        return [*where, "--push-manifest", str(self.manifest)]

    def index_pushes(self) -> list[tuple[str, str]]:
        """(path, type) the push map gives the index page, highest weight first (as h2serve
        orders them), for the peers that push the same assets."""
        data = json.loads(self.manifest.read_text())
        flat = any(isinstance(v, dict) and ("type" in v or "weight" in v) for v in data.values())
        entries = data if flat else next(
            (v for k, v in data.items() if k.lstrip("/") in ("", "index.html")), {})
        ordered = sorted(entries.items(), key=lambda kv: -int(kv[1].get("weight", 1)))
        return [(path, spec.get("type", "")) for path, spec in ordered]

    def files(self) -> tuple[int, int]:
        """(assets, bytes) of the index page and what its push map names."""
        pushes = self.index_pushes()
        total = (self.pages / "index.html").stat().st_size
        for path, _ in pushes:
            total += self.file_for(path).stat().st_size
        return len(pushes), total

    def file_for(self, url_path: str) -> Path:
        if url_path.startswith("/static/"):
            return self.static / url_path[len("/static/"):]
        return self.pages / url_path.lstrip("/")


def demo_site() -> SiteSpec:
    return SiteSpec("demo", REPO / "templates", REPO / "static", REPO / "push_manifest.json", None,
                    "the demo site (templates/ + static/, the repo's push_manifest.json)")


# (name, assets, css, js, fonts, total bytes to scale to or None)
GENERATED = {
    "gen10": (10, 2, 3, 1, None),
    "target30": (30, 3, 5, 2, 220 * KIB),
    "gen50": (50, 5, 12, 2, None),
    "gen100": (100, 8, 22, 2, None),
}
SIZE_RANGES = {"style": (5 * KIB, 40 * KIB), "script": (10 * KIB, 80 * KIB),
               "image": (5 * KIB, 60 * KIB), "font": (15 * KIB, 40 * KIB)}


HERO = "hero"


def site_names() -> list[str]:
    return ["demo", *GENERATED, HERO]


def make_site(name: str, workdir: Path) -> SiteSpec:
    """The named site, generating it under `workdir` when it is not the demo site."""
    if name == "demo":
        return demo_site()
    if name == HERO:
        return generate_hero(workdir / name)
    if name not in GENERATED:
        raise ValueError(f"unknown site {name!r}: one of {', '.join(site_names())}")
    count, css, js, fonts, total = GENERATED[name]
    return generate(workdir / name, count, css=css, js=js, fonts=fonts, total=total, name=name)


def _text(rng: random.Random, size: int, kind: str) -> bytes:
    """Text that looks like CSS or JavaScript (and compresses like it)."""
    words = ["container", "header", "button", "primary", "layout", "grid", "item", "active", "nav",
             "panel", "card", "title", "content", "footer", "media", "wrapper", "hidden", "list"]
    out: list[str] = []
    n = 0
    i = 0
    while n < size:
        a, b = rng.choice(words), rng.choice(words)
        if kind == "style":
            line = (f".{a}-{b}-{i} {{ margin: {rng.randint(0, 32)}px; padding: {rng.randint(0, 24)}px; "
                    f"color: #{rng.randrange(16**6):06x}; }}\n")
        else:
            line = (f"function {a}_{b}_{i}(x) {{ return x * {rng.randint(1, 999)} + "
                    f"\"{a}-{b}\".length; }}\n")
        out.append(line)
        n += len(line)
        i += 1
    return "".join(out).encode()[:size]


def _binary(rng: random.Random, size: int, kind: str) -> bytes:
    head = b"\x89PNG\r\n\x1a\n" if kind == "image" else b"wOF2"
    return (head + rng.randbytes(max(0, size - len(head))))[:size]


def generate(folder: Path, count: int, *, css: int, js: int, fonts: int, total: int | None = None,
             name: str | None = None, seed: int = 2024) -> SiteSpec:
    """Write a site of `count` assets (css + js + fonts + images) under `folder`, with its
    index.html and push_manifest.json; the same arguments always write the same bytes."""
    rng = random.Random(f"{seed}-{count}-{css}-{js}-{fonts}")
    images = count - css - js - fonts
    if images < 0:
        raise ValueError("more stylesheets, scripts and fonts than assets")
    plan: list[tuple[str, str]] = []  # (kind, path)
    plan += [("style", f"/static/css/style{i}.css") for i in range(css)]
    plan += [("script", f"/static/js/app{i}.js") for i in range(js)]
    plan += [("font", f"/static/fonts/font{i}.woff2") for i in range(fonts)]
    plan += [("image", f"/static/img/image{i}.png") for i in range(images)]
    sizes = [rng.randint(*SIZE_RANGES[kind]) for kind, _ in plan]
    html = _index_html(rng, plan, fonts)
    if total is not None:  # the page and its assets together make `total`
        scale = (total - len(html)) / sum(sizes)
        sizes = [max(1024, int(s * scale)) for s in sizes]
    folder.mkdir(parents=True, exist_ok=True)
    for (kind, path), size in zip(plan, sizes, strict=True):
        file = folder / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        if kind == "style" and path.endswith("style0.css"):
            faces = "".join(
                f'@font-face {{ font-family: "Bench{i}"; src: url("../fonts/font{i}.woff2") '
                f'format("woff2"); font-display: swap; }}\n' for i in range(fonts))
            body = faces.encode() + _text(rng, max(0, size - len(faces)), kind)
        elif kind in ("style", "script"):
            body = _text(rng, size, kind)
        else:
            body = _binary(rng, size, kind)
        file.write_bytes(body)
    manifest = _write_page(folder, html)
    label = name or folder.name
    return SiteSpec(label, folder, folder / "static", manifest, folder,
                    f"generated: {count} assets ({css} CSS, {js} JS, {fonts} fonts, {images} images)")


def _index_html(rng: random.Random, plan: list[tuple[str, str]], fonts: int) -> str:
    head = ['<!DOCTYPE html>', '<html lang="en">', "<head>", '  <meta charset="utf-8">',
            '  <meta name="viewport" content="width=device-width, initial-scale=1">',
            "  <title>Benchmark page</title>"]
    if fonts:
        head.append('  <link rel="preload" href="/static/fonts/font0.woff2" as="font" '
                    'type="font/woff2" crossorigin>')
    body = ["<body>", '  <header><a href="/">Home</a> <a href="/about">About</a> '
            '<a href="https://example.com/">elsewhere</a></header>', "  <main>"]
    for kind, path in plan:
        if kind == "style":
            head.append(f'  <link rel="stylesheet" href="{path}">')
        elif kind == "script":
            head.append(f'  <script src="{path}" defer></script>')
        elif kind == "image":
            body.append(f'    <figure><img src="{path}" width="320" height="200" alt="figure">'
                        f"<figcaption>{_sentence(rng)}</figcaption></figure>")
            body.append(f"    <p>{_sentence(rng)} {_sentence(rng)}</p>")
    body += ["  </main>", '  <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="">',
             "</body>", "</html>"]
    return "\n".join([*head, "</head>", *body]) + "\n"


def _sentence(rng: random.Random) -> str:
    words = ["streams", "frames", "latency", "bytes", "push", "window", "server", "browser", "page",
             "flight", "round", "trip", "handshake", "header", "priority", "cache"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(8, 16))).capitalize() + "."


def png(width: int, height: int, rng: random.Random) -> bytes:
    """A valid grayscale PNG of random pixels, stored without compression: about width x height
    bytes, and decodable, so that a browser paints it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\0" + rng.randbytes(width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0))
            + chunk(b"IEND", b""))


def generate_hero(folder: Path, *, small_images: int = 24, seed: int = 2024) -> SiteSpec:
    """The `hero` site under `folder` (see the module docstring); the same bytes every time."""
    rng = random.Random(f"{seed}-hero")
    folder.mkdir(parents=True, exist_ok=True)
    files = {"static/css/main.css": _text(rng, 40 * KIB, "style"),
             "static/js/app.js": _text(rng, 60 * KIB, "script"),
             "static/img/hero.png": png(480, 256, rng)}  # 120 KiB, 480 x 256 px
    for i in range(small_images):
        files[f"static/img/thumb{i}.png"] = png(64, 48, rng)  # 3 KiB each
    for path, body in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(body)
    thumbs = "\n".join(f'    <img src="/static/img/thumb{i}.png" width="64" height="48" alt="">'
                       for i in range(small_images))
    html = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Hero page</title>
  <link rel="stylesheet" href="/static/css/main.css">
  <script src="/static/js/app.js"></script>
</head>
<body>
  <header><a href="/">Home</a></header>
  <main>
    <img src="/static/img/hero.png" width="480" height="256" alt="hero">
    <h1>{_sentence(rng)}</h1>
    <p>{_sentence(rng)}</p>
{thumbs}
  </main>
</body>
</html>
"""
    manifest = _write_page(folder, html)
    return SiteSpec(HERO, folder, folder / "static", manifest, folder,
                    f"generated: render-blocking CSS (40 KiB) and JS (60 KiB), a 120 KiB hero "
                    f"image (the LCP element) and {small_images} small images")


def _write_page(folder: Path, html: str) -> Path:
    """The index page and a 404 page, and the push manifest `h2serve manifest` derives from them
    (run from this checkout); the manifest's path."""
    (folder / "index.html").write_text(html, encoding="utf-8")
    (folder / "404.html").write_text("<!DOCTYPE html><title>Not found</title><h1>Not found</h1>\n")
    manifest = folder / "push_manifest.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "h2serve", "manifest", str(folder), "-o", str(manifest)],
                   check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return manifest
