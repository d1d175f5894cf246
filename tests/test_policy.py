"""Serving policy (h2serve/files.py): Cache-Control by kind of file, folders (redirects, index
pages, listings) and dotfiles, over real TLS on HTTP/2 and HTTP/1.1, with httpx and curl.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import h11
import httpx
import pytest
from conftest import STATIC, TEMPLATES, RunningServer, ServerProcess, open_tls
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded

PROTOCOLS = ["h2", "http/1.1"]
HTTPX_VERSION = {"h2": "HTTP/2", "http/1.1": "HTTP/1.1"}
HTML = "text/html; charset=utf-8"
NOT_FOUND = (TEMPLATES / "404.html").read_bytes()
DEFAULTS = {"html": "no-cache", "static": "public, max-age=3600",
            "immutable": "public, max-age=31536000, immutable"}


def get(client: httpx.Client, proto: str, url: str, method: str = "GET", **headers: str) -> httpx.Response:
    r = client.request(method, url, headers={k.replace("_", "-"): v for k, v in headers.items()})
    assert r.http_version == HTTPX_VERSION[proto]
    return r


def serve(make_server: Callable[..., RunningServer], site: Path, **options: object) -> RunningServer:
    return make_server(templates=str(site / "templates"), static=str(site / "static"), **options)


def raw_get(proto: str, port: int, ca_file: str, target: bytes) -> tuple[int, dict[bytes, bytes]]:
    """Status and headers of one GET whose target is sent verbatim (httpx would normalise it)."""
    if proto == "h2":
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        with open_tls(port, ca_file, alpn=["h2"]) as sock:
            conn.initiate_connection()
            conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                                  (b":path", target)], end_stream=True)
            sock.sendall(conn.data_to_send())
            headers: dict[bytes, bytes] = {}
            while True:
                data = sock.recv(65536)
                assert data, "connection closed early"
                for event in conn.receive_data(data):
                    if isinstance(event, ResponseReceived):
                        headers = dict(event.headers)
                    elif isinstance(event, DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded):
                        return int(headers[b":status"]), headers
                sock.sendall(conn.data_to_send())
    conn = h11.Connection(h11.CLIENT)
    with open_tls(port, ca_file, alpn=["http/1.1"]) as sock:
        sock.sendall(conn.send(h11.Request(method=b"GET", target=target, headers=[(b"host", b"localhost")])))
        sock.sendall(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                return event.status_code, dict(event.headers)


# -- Cache-Control -----------------------------------------------------------------------------------

@pytest.fixture
def fingerprinted(site: Path) -> Path:
    """The demo site plus files with a content hash in their names, and look-alikes without one."""
    (site / "static" / "app.3f9a1c2e.js").write_text("console.log('app');\n")
    (site / "static" / "main-8c1d2e3f4a.css").write_text("body { margin: 0 }\n")
    (site / "static" / "jquery-3.7.1.min.js").write_text("/* not a content hash */\n")
    (site / "static" / "abcdefghij.txt").write_text("no digit: not a hash\n")
    return site


def expected_cache(kind: str, overrides: dict[str, str]) -> str:
    return overrides.get(f"{kind}_cache_control", DEFAULTS[kind])


CACHE_KINDS = {"/": "html", "/about": "html", "/about.html": "html", "/static/css/site.css": "static",
               "/static/img/hero.png": "static", "/static/jquery-3.7.1.min.js": "static",
               "/static/abcdefghij.txt": "static", "/static/app.3f9a1c2e.js": "immutable",
               "/static/main-8c1d2e3f4a.css": "immutable"}


@pytest.mark.parametrize("overrides", [
    {},
    {"html_cache_control": "no-store", "static_cache_control": "public, max-age=60",
     "immutable_cache_control": "public, max-age=600, immutable"},
], ids=["defaults", "overridden"])
def test_cache_control(fingerprinted: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
                       proto: str, overrides: dict[str, str]) -> None:
    """HTML `no-cache`, fingerprinted names `immutable` for a year, other files an hour; each as
    configured. A 304 repeats it; gzip answers too."""
    server = serve(make_server, fingerprinted, **overrides)
    for path, kind in CACHE_KINDS.items():
        r = get(client, proto, server.url + path)
        assert r.status_code == 200, path
        assert r.headers["cache-control"] == expected_cache(kind, overrides), path
        r304 = get(client, proto, server.url + path, if_none_match=r.headers["etag"])
        assert r304.status_code == 304
        assert r304.headers["cache-control"] == expected_cache(kind, overrides), path
    r = get(client, proto, server.url + "/static/css/site.css", accept_encoding="gzip")
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["cache-control"] == expected_cache("static", overrides)


def test_cache_control_command_line(fingerprinted: Path, spawn_server: Callable[..., ServerProcess],
                                    ca_file: str, verify) -> None:
    """The three options on the command line, seen with httpx and curl on both protocols."""
    proc = spawn_server("--templates", str(fingerprinted / "templates"), "--static",
                        str(fingerprinted / "static"), "--static-cache-control", "public, max-age=60",
                        "--html-cache-control", "private, no-cache",
                        "--immutable-cache-control", "public, max-age=86400, immutable")
    overrides = {"static_cache_control": "public, max-age=60", "html_cache_control": "private, no-cache",
                 "immutable_cache_control": "public, max-age=86400, immutable"}
    base = f"https://localhost:{proc.port}"
    for http2, version in ((True, "HTTP/2"), (False, "HTTP/1.1")):
        with httpx.Client(http2=http2, verify=verify, timeout=15) as c:
            for path, kind in CACHE_KINDS.items():
                r = c.get(base + path)
                assert r.http_version == version
                assert r.headers["cache-control"] == expected_cache(kind, overrides), path
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        out = subprocess.run(["curl", "-sS", flag, "--cacert", ca_file, "-o", "/dev/null", "-w",
                              "%{http_version} %header{cache-control}", base + "/static/css/site.css"],
                             capture_output=True, timeout=15, check=True, text=True).stdout
        assert out == f"{version} public, max-age=60"


# -- folders -----------------------------------------------------------------------------------------

def test_folder_redirects_to_slash(site: Path, make_server: Callable[..., RunningServer],
                                   client: httpx.Client, proto: str, ca_file: str) -> None:
    """A folder without its slash: 301 to the slash form, query string kept, at any depth, the
    /static mount itself included; the redirect is never to another host (`//x`)."""
    (site / "templates" / "blog").mkdir()
    server = serve(make_server, site)
    for path, location in (("/static/css", "/static/css/"), ("/static/css?x=1", "/static/css/?x=1"),
                           ("/static/img?a=b&c=%20d", "/static/img/?a=b&c=%20d"), ("/blog", "/blog/"),
                           ("/static", "/static/"), ("/static?v=2", "/static/?v=2")):
        r = get(client, proto, server.url + path)
        assert r.status_code == 301, path
        assert r.headers["location"] == location, path
    for target, location in ((b"//static//css?x=1", b"/static/css/?x=1"), (b"//static", b"/static/"),
                             (b"/static///img", b"/static/img/")):
        status, headers = raw_get(proto, server.port, ca_file, target)
        assert (status, headers[b"location"]) == (301, location), target
    # Following it lands on the folder (404 here: no index.html, no listing).
    r = client.get(server.url + "/static/css?x=1", follow_redirects=True)
    assert r.status_code == 404 and r.content == NOT_FOUND
    assert str(r.url).endswith("/static/css/?x=1")


def test_folder_without_index_404(server: RunningServer, client: httpx.Client, proto: str) -> None:
    for path in ("/static/css/", "/static/", "/static/img/"):
        r = get(client, proto, server.url + path)
        assert r.status_code == 404, path
        assert r.content == NOT_FOUND


def test_folder_with_index_served(site: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
                                  proto: str) -> None:
    """`/dir/` serves dir/index.html, in the pages folder and in static/, listings on or off."""
    (site / "templates" / "blog").mkdir()
    (site / "templates" / "blog" / "index.html").write_text("<h1>blog</h1>\n")
    (site / "static" / "docs").mkdir()
    (site / "static" / "docs" / "index.html").write_text("<h1>docs</h1>\n")
    for list_dirs in (False, True):
        server = serve(make_server, site, list_dirs=list_dirs)
        for path, content in (("/blog/", b"<h1>blog</h1>\n"), ("/static/docs/", b"<h1>docs</h1>\n")):
            r = get(client, proto, server.url + path)
            assert (r.status_code, r.content) == (200, content), path
            assert r.headers["content-type"] == HTML
            assert r.headers["cache-control"] == "no-cache"
            assert "etag" in r.headers


def listing_links(body: str) -> list[str]:
    return re.findall(r'<a href="([^"]*)">', body)


def test_listing(site: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
                 proto: str) -> None:
    """With list_dirs: an HTML page listing folders first (with a slash), then files; its relative
    links lead to the entries; HEAD has the same head; Cache-Control as for HTML pages."""
    server = serve(make_server, site, list_dirs=True)
    r = get(client, proto, server.url + "/static/css/")
    assert r.status_code == 200
    assert r.headers["content-type"] == HTML
    assert r.headers["cache-control"] == "no-cache"
    assert "Index of /static/css/" in r.text
    assert listing_links(r.text) == ["../", "site.css"]
    r = get(client, proto, server.url + "/static/")
    names = sorted(p.name for p in STATIC.iterdir())
    dirs = [n + "/" for n in names if (STATIC / n).is_dir()]
    assert listing_links(r.text) == ["../", *dirs, *[n for n in names if not (STATIC / n).is_dir()]]
    for link in listing_links(r.text)[1:]:
        target = get(client, proto, server.url + "/static/" + link)
        assert target.status_code == 200, link
    head = get(client, proto, server.url + "/static/", "HEAD")
    assert head.content == b""
    assert head.headers["content-length"] == r.headers["content-length"] == str(len(r.content))
    # The /static mount itself, asked for without its slash, redirects: relative links then work.
    r = get(client, proto, server.url + "/static")
    assert (r.status_code, r.headers["location"]) == (301, "/static/")
    other = serve(make_server, site, list_dirs=True, html_cache_control="no-store")
    assert get(client, proto, other.url + "/static/css/").headers["cache-control"] == "no-store"


def test_listing_escapes_names(site: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
                               proto: str) -> None:
    """A file named `<b>&"x.txt` is listed HTML-escaped with a percent-encoded link that serves it."""
    odd = site / "static" / "odd"
    odd.mkdir()
    name = '<b>&"x.txt'
    (odd / name).write_text("odd file\n")
    (odd / "a b#c?.txt").write_text("spaces\n")
    (odd / "<script>").mkdir()
    server = serve(make_server, site, list_dirs=True)
    r = get(client, proto, server.url + "/static/odd/")
    assert r.status_code == 200
    assert "&lt;b&gt;&amp;&quot;x.txt" in r.text
    assert name not in r.text and "<script>" not in r.text and "<b>" not in r.text
    assert "&lt;script&gt;/" in r.text
    links = listing_links(r.text)
    assert links == ["../", "%3Cscript%3E/", "%3Cb%3E%26%22x.txt", "a%20b%23c%3F.txt"]
    for link, content in ((links[2], "odd file\n"), (links[3], "spaces\n")):
        f = get(client, proto, server.url + "/static/odd/" + link)
        assert (f.status_code, f.text) == (200, content), link


def test_listing_off_by_default(site: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
                                proto: str) -> None:
    server = serve(make_server, site)
    r = get(client, proto, server.url + "/static/css/")
    assert (r.status_code, r.content) == (404, NOT_FOUND)
    assert b"Index of" not in r.content


# -- dotfiles ------------------------------------------------------------------------------------------

@pytest.fixture
def dotted(site: Path) -> Path:
    (site / "static" / ".secret").write_text("static secret\n")
    (site / "static" / ".git").mkdir()
    (site / "static" / ".git" / "config").write_text("[core]\n")
    (site / "templates" / ".env").write_text("PASSWORD=hunter2\n")
    (site / "templates" / ".well-known").mkdir()
    (site / "templates" / ".well-known" / "x.txt").write_text("well known\n")
    (site / "templates" / ".well-known" / ".hidden").write_text("hidden\n")
    return site


DOTFILES = {"/static/.secret": "static secret\n", "/static/.git/config": "[core]\n",
            "/.env": "PASSWORD=hunter2\n", "/static/%2esecret": "static secret\n",
            "/.well-known/.hidden": "hidden\n"}


def test_dotfiles_hidden_by_default(dotted: Path, make_server: Callable[..., RunningServer],
                                    client: httpx.Client, proto: str) -> None:
    """Dotfiles and dot-folders: 404 (and not listed); /.well-known/ is served all the same."""
    server = serve(make_server, dotted, list_dirs=True)
    for path in DOTFILES:
        r = get(client, proto, server.url + path)
        assert r.status_code == 404, path
        assert r.content == NOT_FOUND
    r = get(client, proto, server.url + "/static/.git/")
    assert r.status_code == 404
    r = get(client, proto, server.url + "/.well-known/x.txt")
    assert (r.status_code, r.text) == (200, "well known\n")
    listing = get(client, proto, server.url + "/static/").text
    assert ".secret" not in listing and ".git" not in listing


def test_dotfiles_served_when_asked(dotted: Path, make_server: Callable[..., RunningServer],
                                    client: httpx.Client, proto: str) -> None:
    server = serve(make_server, dotted, list_dirs=True, serve_dotfiles=True)
    for path, content in DOTFILES.items():
        r = get(client, proto, server.url + path)
        assert (r.status_code, r.text) == (200, content), path
    assert get(client, proto, server.url + "/.well-known/x.txt").text == "well known\n"
    links = listing_links(get(client, proto, server.url + "/static/").text)
    assert ".git/" in links and ".secret" in links


def test_listing_shows_only_what_is_served(site: Path, make_server: Callable[..., RunningServer],
                                           client: httpx.Client, proto: str) -> None:
    """Symlinks that lead out of the folder, dangling ones and FIFOs are never served, so a listing
    does not show (and leak) their names; a symlink that stays inside is listed and served."""
    (site / "outside-secret.txt").write_text("secret\n")
    box = site / "static" / "box"
    box.mkdir()
    (box / "leak-file.txt").symlink_to(site / "outside-secret.txt")
    (box / "leak-folder").symlink_to(site)
    (box / "dangling.txt").symlink_to(box / "nothing-here")
    os.mkfifo(box / "pipe.txt")
    (box / "inside.css").symlink_to(site / "static" / "css" / "site.css")
    (box / "inside-folder").symlink_to(site / "static" / "img")
    (box / "plain.txt").write_text("plain\n")
    server = serve(make_server, site, list_dirs=True)
    r = get(client, proto, server.url + "/static/box/")
    assert listing_links(r.text) == ["../", "inside-folder/", "inside.css", "plain.txt"]
    for name in ("leak", "dangling", "pipe", "outside"):
        assert name not in r.text
    for link in listing_links(r.text)[1:]:
        assert get(client, proto, server.url + "/static/box/" + link).status_code == 200, link
    for name in ("leak-file.txt", "leak-folder/", "dangling.txt", "pipe.txt"):
        assert get(client, proto, server.url + "/static/box/" + name).status_code == 404, name
