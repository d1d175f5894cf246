"""Push manifests: both shapes load, every fault is one clear error, and the HTML scan finds assets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, STATIC, TEMPLATES

from h2serve.config import ConfigError
from h2serve.push.manifest import build_map, load_manifest, lookup
from h2serve.push.scan import scan_site
from h2serve.site.handler import Site


@pytest.fixture
def demo() -> Site:
    return Site.from_folders(root=None, templates=str(TEMPLATES), static=str(STATIC))


def _paths(entries) -> list[str]:
    return [e.path for e in entries]


def test_flat_map_belongs_to_the_index_page(demo: Site) -> None:
    data = {"/static/js/site.js": {"type": "script", "weight": 1},
            "static/css/site.css": {"type": "style", "weight": 200}}
    pmap = build_map(data, demo, "m.json")
    index = demo.lookup(("",)) or demo.lookup(())
    assert index is not None
    # Highest weight first; a key without a leading slash is the same path.
    assert _paths(pmap.entries_for(index)) == ["/static/css/site.css", "/static/js/site.js"]
    about = demo.lookup(("about",))
    assert about is not None and pmap.entries_for(about) == ()


def test_flat_map_with_all_pages(demo: Site) -> None:
    pmap = build_map({"/static/css/site.css": {"type": "style", "weight": 1}}, demo, "m.json",
                     all_pages=True)
    about = demo.lookup(("about",))
    assert about is not None and _paths(pmap.entries_for(about)) == ["/static/css/site.css"]


def test_map_keyed_by_page(demo: Site) -> None:
    data = {"index.html": {"/static/css/site.css": {"type": "style", "weight": 1}},
            "/about.html": {"/static/js/site.js": {"type": "script", "weight": 1}}}
    pmap = build_map(data, demo, "m.json")
    index, about = demo.lookup(()), demo.lookup(("about",))
    assert index is not None and about is not None
    assert _paths(pmap.entries_for(index)) == ["/static/css/site.css"]
    assert _paths(pmap.entries_for(about)) == ["/static/js/site.js"]


def test_link_values(demo: Site) -> None:
    data = {"/static/css/site.css": {"type": "style", "weight": 3},
            "/static/fonts/h2demo.ttf": {"type": "font", "weight": 2}}
    entries = build_map(data, demo, "m.json").entries_for(demo.lookup(()))  # type: ignore[arg-type]
    assert [e.link for e in entries] == [
        b"</static/css/site.css>; rel=preload; as=style",
        b"</static/fonts/h2demo.ttf>; rel=preload; as=font; crossorigin",
    ]


@pytest.mark.parametrize(("data", "message"), [
    ({"/static/css/site.css": {"type": "styel", "weight": 1}},
     "key '/static/css/site.css': type 'styel' is not one of"),
    ({"/static/css/site.css": {"type": "style", "weight": 0}},
     "key '/static/css/site.css': weight 0 is not a whole number from 1 to 256"),
    ({"/static/css/site.css": {"type": "style", "weight": 257}}, "weight 257"),
    ({"/static/css/site.css": {"type": "style", "weight": "1"}}, "weight '1'"),
    ({"/static/missing.css": {"type": "style", "weight": 1}},
     "key '/static/missing.css': no such file in the site"),
    ({"/static/css/site.css": {"type": "style", "weight": 1, "preload": "yes"}},
     "key '/static/css/site.css': preload 'yes' is not true or false"),
    ({"/nopage.html": {"/static/css/site.css": {"type": "style"}}},
     "key '/nopage.html': no such page in the site"),
    ([1, 2], "a push manifest is a JSON object"),
])
def test_bad_manifests_name_the_file_key_and_fault(demo: Site, data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_map(data, demo, "site/push_manifest.json")
    assert str(err.value).startswith("site/push_manifest.json: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_json(demo: Site, tmp_path: Path) -> None:
    bad = tmp_path / "push_manifest.json"
    bad.write_text('{"/static/css/site.css": {"type": "style",}}')
    with pytest.raises(ConfigError, match=r"push_manifest.json: not valid JSON"):
        load_manifest(bad, demo)


def test_scan_finds_css_js_font_and_images_in_order(demo: Site) -> None:
    manifest = scan_site(demo)
    assert next(iter(manifest)) == "/"
    index = manifest["/"]
    assert index["/static/css/site.css"]["type"] == "style"
    assert index["/static/js/site.js"]["type"] == "script"
    assert index["/static/fonts/h2demo.ttf"]["type"] == "font"
    assert index["/static/img/hero.png"]["type"] == "image"
    assert "/about.html" in manifest and "/404.html" not in manifest
    # Whatever the scan writes loads back without error.
    build_map(manifest, demo, "derived")


def test_preload_says_what_the_links_and_103_name(demo: Site) -> None:
    """Every type is hinted but images, unless an entry says otherwise either way."""
    data = {"/static/css/site.css": {"type": "style", "weight": 3},
            "/static/js/site.js": {"type": "script", "weight": 3, "preload": False},
            "/static/img/hero.png": {"type": "image", "weight": 2, "preload": True},
            "/static/img/logo.svg": {"type": "image", "weight": 1}}
    entries = build_map(data, demo, "m.json").entries_for(demo.lookup(()))  # type: ignore[arg-type]
    assert [(e.path, e.preload) for e in entries] == [
        ("/static/css/site.css", True), ("/static/js/site.js", False),
        ("/static/img/hero.png", True), ("/static/img/logo.svg", False)]


def test_scan_follows_document_order_and_css_fonts(tmp_path: Path) -> None:
    (tmp_path / "css").mkdir()
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="css/a.css"><script src="/b.js"></script>'
        '<link rel="modulepreload" href="/m.js"><img src="/c.png">'
        '<img src="https://elsewhere.example/x.png"><img src="data:image/png;base64,AA==">'
        '<link rel="preload" href="/d.json" as="fetch">')
    (tmp_path / "css" / "a.css").write_text(
        '@font-face { font-family: X; src: url("../f.woff2") format("woff2"); }')
    for name in ("b.js", "m.js", "c.png", "d.json", "f.woff2"):
        (tmp_path / name).write_bytes(b"x")
    site = Site.from_folders(root=str(tmp_path), templates="", static="")
    index = scan_site(site)["/"]
    assert list(index) == ["/css/a.css", "/f.woff2", "/b.js", "/m.js", "/c.png", "/d.json"]
    assert [v["type"] for v in index.values()] == ["style", "font", "script", "script", "image", "fetch"]
    # Written only where it differs from the type's: the font only the CSS names is not hinted.
    assert {path: v["preload"] for path, v in index.items() if "preload" in v} == {"/f.woff2": False}


def test_scan_hints_a_css_font_or_an_image_once_the_page_preloads_it(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="/a.css"><img src="/hero.png"><img src="/b.png">'
        '<link rel="preload" href="/f.woff2" as="font" crossorigin>'
        '<link rel="preload" href="/hero.png" as="image">')
    (tmp_path / "a.css").write_text('@font-face { font-family: X; src: url("/f.woff2"); }')
    for name in ("f.woff2", "hero.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    site = Site.from_folders(root=str(tmp_path), templates="", static="")
    manifest = scan_site(site)
    page = lookup(site, "/")
    assert page is not None
    entries = build_map(manifest, site, "derived").entries_for(page)
    assert {e.path: e.preload for e in entries} == {
        "/a.css": True, "/f.woff2": True, "/hero.png": True, "/b.png": False}


def test_scan_ranks_scripts_that_do_not_block_rendering_below_fonts(tmp_path: Path) -> None:
    """Chromium asks for every preload at one priority, in Link order, and holds first paint for a
    preloaded font: a deferred script must not go ahead of the font, a blocking one must."""
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="/a.css"><script src="/block.js"></script>'
        '<script src="/defer.js" defer></script><script async src="/async.js"></script>'
        '<script type="module" src="/mod.js"></script><link rel="modulepreload" href="/pre.js">'
        '<link rel="preload" href="/late.js" as="script"><script src="/late.js" defer></script>'
        '<img src="/c.png">')
    (tmp_path / "a.css").write_text('@font-face { font-family: X; src: url("/f.woff2"); }')
    for name in ("block.js", "defer.js", "async.js", "mod.js", "pre.js", "late.js", "c.png",
                 "f.woff2"):
        (tmp_path / name).write_bytes(b"x")
    site = Site.from_folders(root=str(tmp_path), templates="", static="")
    manifest = scan_site(site)
    weights = {path: v["weight"] for path, v in manifest["/"].items()}
    assert weights == {"/a.css": 256, "/f.woff2": 128, "/block.js": 192, "/defer.js": 96,
                       "/async.js": 96, "/mod.js": 96, "/pre.js": 96, "/late.js": 192, "/c.png": 32}
    # The map the server uses (and so its Link, 103 and push order): highest weight first,
    # document order within a weight.
    page = lookup(site, "/")
    assert page is not None
    order = [e.path for e in build_map(manifest, site, "derived").entries_for(page)]
    assert order == ["/a.css", "/block.js", "/late.js", "/f.woff2", "/defer.js", "/async.js",
                     "/mod.js", "/pre.js", "/c.png"]


def test_manifest_command_writes_the_demo_sites_map(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [sys.executable, "-m", "h2serve", "manifest", "--templates", str(TEMPLATES),
         "--static", str(STATIC), "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for path in ("/static/css/site.css", "/static/js/site.js", "/static/fonts/h2demo.ttf",
                 "/static/img/hero.png", "/static/img/logo.svg"):
        assert path in data["/"]
