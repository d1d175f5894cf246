"""The page-load client of benchmarks/: asset discovery as a browser does it (HTML, then the fonts of
the stylesheets; never the push map), and page loads in each mode against a real h2serve fetching
exactly the discovered set."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import STATIC, TEMPLATES, RunningServer

from benchmarks.pageload import (
    Asset,
    css_fonts,
    discover,
    html_assets,
    load_page,
    preload_links,
    same_origin_path,
)
from benchmarks.relay import Relay

DEMO_ASSETS = {
    "/static/css/site.css", "/static/js/site.js", "/static/fonts/h2demo.ttf", "/static/img/logo.svg",
    "/static/img/hero.png", "/static/img/icon-protocols.png", "/static/img/icon-push.png",
    "/static/img/icon-shield.png",
}


def read_static(path: str) -> str | None:
    if not path.startswith("/static/"):
        return None
    file = STATIC / path[len("/static/"):]
    return file.read_text(encoding="utf-8") if file.is_file() else None


def demo_discovery() -> list[Asset]:
    html = (TEMPLATES / "index.html").read_text(encoding="utf-8")
    return discover(html, "/", read_static)


def test_demo_page_discovery_finds_what_a_browser_loads() -> None:
    found = demo_discovery()
    paths = [a.path for a in found]
    assert set(paths) == DEMO_ASSETS
    assert len(paths) == len(set(paths))  # nothing twice (logo.svg is both icon link and <img>)
    assert all(p.startswith("/static/") and "//" not in p for p in paths)
    kinds = {a.path: a.kind for a in found}
    assert kinds["/static/css/site.css"] == "style"
    assert kinds["/static/js/site.js"] == "script"
    assert kinds["/static/fonts/h2demo.ttf"] == "font"
    assert kinds["/static/img/hero.png"] == "image"
    # Links to other pages and documents are not subresources.
    assert not {"/about", "/", "/static/docs.txt", "/static/data/sample.json"} & set(paths)


def test_the_font_is_found_through_the_stylesheet() -> None:
    css = read_static("/static/css/site.css")
    assert css is not None
    assert css_fonts(css, "/static/css/site.css") == [Asset("/static/fonts/h2demo.ttf", "font")]
    # Without the preload link in the HTML, the font is still found, through the CSS.
    html = (TEMPLATES / "index.html").read_text(encoding="utf-8")
    html = "\n".join(line for line in html.splitlines() if 'rel="preload"' not in line)
    assert "/static/fonts/h2demo.ttf" not in {a.path for a in html_assets(html, "/")}
    assert "/static/fonts/h2demo.ttf" in {a.path for a in discover(html, "/", read_static)}


def test_discovery_rules() -> None:
    html = """<!doctype html><html><head>
      <link rel="stylesheet" href="css/a.css"><link rel="STYLESHEET" href="/css/a.css">
      <link rel="stylesheet" href="https://cdn.example.com/x.css">
      <link rel="stylesheet" href="//cdn.example.com/y.css">
      <link rel="preload" href="/f/font.woff2" as="font" crossorigin>
      <link rel="preload" href="/v.mp4" as="video"><link rel="icon" href="/favicon.ico">
      <link rel="modulepreload" href="/m.js"><script src="/s.js?v=2"></script><script>inline()</script>
    </head><body><img src="data:image/gif;base64,R0lGOD"><img src="../img/i.png"><img src="">
      <img src="http://localhost/abs.png"><a href="/other.html">x</a><img src="/x.png#frag">
    </body></html>"""
    found = html_assets(html, "/blog/post.html")
    assert [(a.path, a.kind) for a in found] == [
        ("/blog/css/a.css", "style"), ("/css/a.css", "style"), ("/f/font.woff2", "font"),
        ("/m.js", "script"), ("/s.js?v=2", "script"), ("/img/i.png", "image"), ("/x.png", "image")]
    base = '<base href="/assets/"><img src="i.png">'
    assert [a.path for a in html_assets(base, "/")] == ["/assets/i.png"]
    css = """body{font-family:A} @font-face { font-family: A; src: url(../fonts/a.woff2) format("woff2"),
      url('../fonts/a.woff') format("woff"); } @font-face{src:url("https://fonts.example/b.woff2")}
      .x { background: url(/img/bg.png) }"""
    assert [a.path for a in css_fonts(css, "/css/site.css")] == ["/fonts/a.woff2", "/fonts/a.woff"]
    assert same_origin_path("/", "mailto:x@example.com") is None


def test_link_headers_of_early_hints() -> None:
    values = ["</static/css/site.css>; rel=preload; as=style",
              "</static/fonts/h2demo.ttf>; rel=preload; as=font; crossorigin, </x.js>; rel=modulepreload",
              "<https://cdn.example.com/a.js>; rel=preload; as=script", '</p.png>; rel="preload"; as=image']
    assert preload_links(values) == [Asset("/static/css/site.css", "style"),
                                     Asset("/static/fonts/h2demo.ttf", "font"), Asset("/p.png", "image")]


def _load(port: int, ca_file: str, mode: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return asyncio.run(load_page("127.0.0.1", port, "/", mode=mode, ca_file=ca_file, timeout=20,
                                 **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["push", "nopush", "hints", "h1"])
def test_page_load_fetches_exactly_the_discovered_set(
        mode: str, make_server: Callable[..., RunningServer], ca_file: str) -> None:
    running = make_server()  # the demo site with the repo's push_manifest.json
    result = _load(running.port, ca_file, mode)
    expected = {a.path for a in demo_discovery()}
    assert result.page.status == 200
    assert result.fetched == expected
    assert {a.path for a in result.discovered} == expected
    assert not result.extra
    assert all(f.status == 200 and f.size > 0 for f in result.assets.values())
    sizes = {p: (STATIC / p[len("/static/"):]).stat().st_size for p in expected}
    assert {p: f.size for p, f in result.assets.items()} == sizes
    if mode == "push":
        assert result.pushed == expected  # every asset arrived pushed: nothing was requested
        assert result.requested == set()
        assert result.connections == 1
    else:
        assert result.pushed == set()
        assert result.requested == expected
    if mode == "hints":
        assert result.early_hints == 1
        # The 103's Link headers name all but the images (Chromium ranks those better itself).
        assert {p for p, f in result.assets.items() if f.hinted} == {
            p for p in expected if not p.startswith("/static/img/")}
    if mode == "h1":
        assert 2 <= result.connections <= 6
    assert 0 < result.handshake < result.elapsed


def test_push_accepts_only_what_was_promised_once(make_server: Callable[..., RunningServer],
                                                  ca_file: str, tmp_path: Path) -> None:
    """A push map naming more than the page uses: the extra push is received and counted apart."""
    manifest = tmp_path / "push.json"
    manifest.write_text('{"/static/css/site.css": {"type": "style"}, '
                        '"/static/data/sample.json": {"type": "fetch"}}')
    running = make_server(push_manifest=str(manifest))
    result = _load(running.port, ca_file, "push")
    assert result.fetched == {a.path for a in demo_discovery()}
    assert result.pushed == {"/static/css/site.css", "/static/data/sample.json"}
    assert set(result.extra) == {"/static/data/sample.json"}
    assert "/static/css/site.css" not in result.requested


def test_round_trips_through_the_relay(make_server: Callable[..., RunningServer], ca_file: str) -> None:
    """With push the page and its assets take the 3-RTT floor (TCP, TLS 1.3, request); without,
    at least one round trip more: the assets are asked for once the HTML is read."""
    running = make_server()
    rtt = 0.020

    async def go() -> dict[str, float]:
        async with Relay(running.port, rtt * 1000) as relay:
            out = {}
            for mode in ("push", "nopush", "h1"):
                result = await load_page("127.0.0.1", relay.port, "/", mode=mode, ca_file=ca_file,
                                         timeout=20)
                out[mode] = result.elapsed
                out[mode + "_handshake"] = result.handshake
            return out

    times = asyncio.run(go())
    assert times["push_handshake"] >= 2 * rtt
    assert times["push"] >= 3 * rtt
    assert times["nopush"] >= 4 * rtt
    assert times["h1"] >= 4 * rtt
