"""Site rules (h2serve/site/rules.py): redirects, per-path headers, SPA fallback, security headers,
and the push plan keeping out what redirects or needs credentials; over HTTP/2 and HTTP/1.1 with
httpx and curl against the real server. CORS and basic auth have test_cors.py and test_auth.py;
the start-up checks of every rule, test_rulespec.py."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import REPO, RunningServer, ServerProcess
from h2.settings import SettingCodes
from h2client import H2Client
from rulesite import curl, htpasswd_file, make_site

from h2serve.site.rules import compile_glob, request_host

BLOG = {"from": "/blog/*", "to": "/posts/*", "status": 308}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_site(tmp_path / "site")


# -- globs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "matches", "misses"), [
    ("/static/**", ["/static", "/static/", "/static/a.css", "/static/a/b/c.js"], ["/staticx", "/x/static/a"]),
    ("/static/*", ["/static/a.css", "/static/"], ["/static/a/b.css", "/static"]),
    ("/*.html", ["/about.html", "/.html"], ["/a/about.html", "/about.htm"]),
    ("/a/**/b", ["/a/b", "/a/x/b", "/a/x/y/b"], ["/a/xb", "/a/b/c"]),
    ("/**", ["/", "/a", "/a/b/"], []),
    ("/exact", ["/exact"], ["/exact/", "/exactly"]),
    ("/a.b+c", ["/a.b+c"], ["/aXb+c", "/a.bbc"]),
])
def test_globs(pattern: str, matches: list[str], misses: list[str]) -> None:
    """`*` stays within a segment, a `**` segment spans any number of them (none too); the rest is
    literal (regular expression characters included)."""
    regex = compile_glob(pattern)
    assert [p for p in matches if not regex.match(p)] == []
    assert [p for p in misses if regex.match(p)] == []


def test_request_host() -> None:
    assert request_host(b"Example.COM:8443") == "example.com"
    assert request_host(b"example.com") == "example.com"
    assert request_host(b"[::1]:8443") == "[::1]"


# -- 1. redirects ----------------------------------------------------------------------------------


def test_redirect_prefix_with_star_and_query(make_server: Callable[..., RunningServer], root: Path,
                                             client: httpx.Client, proto: str, ca_file: str) -> None:
    """The issue's example: /blog/a/b?x=1 answers 308 with Location /posts/a/b?x=1."""
    server = make_server(root=str(root), redirect=[BLOG])
    r = client.get(server.url + "/blog/a/b?x=1")
    assert r.status_code == 308 and r.headers["location"] == "/posts/a/b?x=1"
    assert r.extensions["http_version"].decode().startswith("HTTP/2" if proto == "h2" else "HTTP/1.1")
    status, headers, _ = curl(server.url + "/blog/a/b?x=1", ca_file, proto)
    assert status == 308 and headers["location"] == ["/posts/a/b?x=1"]
    # HEAD too, with no body; and what the star matched keeps its percent-encoding.
    r = client.head(server.url + "/blog/a%20b/c")
    assert r.status_code == 308 and r.headers["location"] == "/posts/a%20b/c" and r.content == b""
    assert client.get(server.url + "/blog").status_code == 404  # the prefix is "/blog/"


def test_redirect_default_status_exact_path_absolute_url_first_match(
        make_server: Callable[..., RunningServer], root: Path, client: httpx.Client) -> None:
    server = make_server(root=str(root), redirect=[
        {"from": "/old", "to": "/about"},
        {"from": "/away/*", "to": "https://example.com/new/*", "status": 302},
        {"from": "/away/*", "to": "/never", "status": 307},  # the first match wins
        {"from": "/see", "to": "/about?from=see", "status": 303},
    ])
    r = client.get(server.url + "/old")
    assert r.status_code == 301 and r.headers["location"] == "/about"
    assert client.get(server.url + "/old/x").status_code == 404  # an exact path is exact
    r = client.get(server.url + "/away/x/y?q=1")
    assert r.status_code == 302 and r.headers["location"] == "https://example.com/new/x/y?q=1"
    r = client.get(server.url + "/see?a=b")
    assert r.status_code == 303 and r.headers["location"] == "/about?from=see&a=b"


def test_redirect_matches_the_path_as_the_files_are_looked_up(
        make_server: Callable[..., RunningServer], root: Path, client: httpx.Client) -> None:
    """Percent-encoding and doubled slashes do not slip past a rule."""
    server = make_server(root=str(root), redirect=[{"from": "/old", "to": "/about"}])
    for target in ("/%6fld", "//old"):
        r = client.get(server.url + target)
        assert r.status_code == 301 and r.headers["location"] == "/about", target


def test_redirect_comes_before_files(make_server: Callable[..., RunningServer], root: Path,
                                     client: httpx.Client) -> None:
    """An existing file can be moved away: the rule is asked before the file system."""
    server = make_server(root=str(root), redirect=[{"from": "/about", "to": "/", "status": 307}])
    r = client.get(server.url + "/about")
    assert r.status_code == 307 and r.headers["location"] == "/"


def test_redirect_over_h2c(make_server: Callable[..., RunningServer], root: Path) -> None:
    server = make_server(root=str(root), redirect=[BLOG])
    with httpx.Client(http2=True, http1=False) as c:
        r = c.get(server.h2c_url + "/blog/x?y")
    assert r.http_version == "HTTP/2" and r.status_code == 308 and r.headers["location"] == "/posts/x?y"


# -- 2. headers per path ---------------------------------------------------------------------------


STATIC_RULE = {"path": "/static/**",
               "set": {"X-Robots-Tag": "noindex", "Cache-Control": "public, max-age=60"}}


def test_headers_set_and_override(make_server: Callable[..., RunningServer], root: Path,
                                  client: httpx.Client, proto: str, ca_file: str) -> None:
    """The issue's example; the server's own Cache-Control is replaced, not doubled."""
    server = make_server(root=str(root), headers=[STATIC_RULE])
    for r in (client.get(server.url + "/static/app.css"), client.get(server.url + "/static/sub/deep.txt")):
        assert r.status_code == 200
        assert r.headers.get_list("cache-control") == ["public, max-age=60"]
        assert r.headers["x-robots-tag"] == "noindex"
    status, headers, _ = curl(server.url + "/static/app.css", ca_file, proto)
    assert status == 200 and headers["cache-control"] == ["public, max-age=60"]
    assert headers["x-robots-tag"] == ["noindex"]
    r = client.get(server.url + "/about")
    assert "x-robots-tag" not in r.headers and r.headers["cache-control"] == "no-cache"


def test_headers_later_entries_win_and_empty_removes(
        make_server: Callable[..., RunningServer], root: Path, client: httpx.Client) -> None:
    server = make_server(root=str(root), headers=[
        STATIC_RULE,
        {"path": "/static/sub/*", "set": {"x-robots-tag": "none", "Cache-Control": ""}},
        {"path": "/*.html", "set": {"Content-Security-Policy": "default-src 'self'"}},
    ])
    r = client.get(server.url + "/static/sub/deep.txt")
    assert r.headers["x-robots-tag"] == "none" and "cache-control" not in r.headers
    r = client.get(server.url + "/static/app.css")
    assert r.headers["x-robots-tag"] == "noindex" and r.headers["cache-control"] == "public, max-age=60"
    # A glob matches the request's path: /about.html, not /about (which serves the same file).
    assert client.get(server.url + "/about.html").headers["content-security-policy"] == "default-src 'self'"
    assert "content-security-policy" not in client.get(server.url + "/about").headers


def test_headers_on_304_and_head(make_server: Callable[..., RunningServer], root: Path,
                                 client: httpx.Client) -> None:
    """A 304 carries the caching headers a 200 would (RFC 9110 section 15.4.5): the rule's too."""
    server = make_server(root=str(root), headers=[STATIC_RULE])
    first = client.get(server.url + "/static/app.css")
    r = client.get(server.url + "/static/app.css", headers={"if-none-match": first.headers["etag"]})
    assert r.status_code == 304 and r.headers["cache-control"] == "public, max-age=60"
    assert client.head(server.url + "/static/app.css").headers["x-robots-tag"] == "noindex"


# -- 3. single-page app fallback -------------------------------------------------------------------


NAVIGATE = {"sec-fetch-dest": "document", "accept": "text/html,*/*;q=0.8"}


def test_fallback_answers_navigations(make_server: Callable[..., RunningServer], root: Path,
                                      client: httpx.Client, proto: str, ca_file: str) -> None:
    server = make_server(root=str(root), fallback="index.html")
    shell = (root / "index.html").read_bytes()
    r = client.get(server.url + "/app/settings/42", headers=NAVIGATE)
    assert r.status_code == 200 and r.content == shell
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    # Without Sec-Fetch-Dest, an Accept that names text/html is a navigation.
    r = client.get(server.url + "/deep/link", headers={"accept": "text/html"})
    assert r.status_code == 200 and r.content == shell
    r = client.head(server.url + "/deep/link", headers=NAVIGATE)
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) == len(shell)
    status, _, body = curl(server.url + "/route", ca_file, proto, "-H", "Accept: text/html")
    assert status == 200 and body.encode() == shell
    # Existing files are served as ever.
    assert client.get(server.url + "/about", headers=NAVIGATE).content == (root / "about.html").read_bytes()


@pytest.mark.parametrize("headers", [
    {"sec-fetch-dest": "script", "accept": "*/*"},
    {"sec-fetch-dest": "script", "accept": "text/html"},   # Sec-Fetch-Dest decides when present
    {"sec-fetch-dest": "style", "accept": "text/css,*/*;q=0.1"},
    {"sec-fetch-dest": "empty", "accept": "text/html"},    # fetch()
    {"accept": "*/*"},                                     # curl, scripts
    {"accept": "application/json"},
    {"accept": "text/html;q=0"},                           # refused, not named
    {},
])
def test_fallback_never_answers_an_asset_request(make_server: Callable[..., RunningServer], root: Path,
                                                 client: httpx.Client, headers: dict[str, str]) -> None:
    """A missing /static/app.js is a 404, never the app's HTML."""
    server = make_server(root=str(root), fallback="index.html")
    r = client.get(server.url + "/static/missing.js", headers=headers)
    assert r.status_code == 404 and b"the app shell" not in r.content
    assert r.content == (root / "404.html").read_bytes()


def test_fallback_curl_asset_request_is_404(make_server: Callable[..., RunningServer], root: Path,
                                            proto: str, ca_file: str) -> None:
    server = make_server(root=str(root), fallback="index.html")
    status, _, body = curl(server.url + "/static/app.js", ca_file, proto, "-H", "Sec-Fetch-Dest: script")
    assert status == 404 and "the app shell" not in body


def test_fallback_only_for_get_and_head(make_server: Callable[..., RunningServer], root: Path,
                                        client: httpx.Client) -> None:
    server = make_server(root=str(root), fallback="index.html")
    assert client.post(server.url + "/route", headers=NAVIGATE).status_code == 405


def test_fallback_without_the_option_is_404(make_server: Callable[..., RunningServer], root: Path,
                                            client: httpx.Client) -> None:
    server = make_server(root=str(root))
    assert client.get(server.url + "/route", headers=NAVIGATE).status_code == 404


def test_fallback_with_templates_layout(make_server: Callable[..., RunningServer],
                                        client: httpx.Client) -> None:
    """With --templates, the page is looked up among the templates (the demo site)."""
    server = make_server(fallback="about.html")
    r = client.get(server.url + "/nowhere", headers=NAVIGATE)
    assert r.status_code == 200 and r.content == (REPO / "templates" / "about.html").read_bytes()


# -- 5. security headers ---------------------------------------------------------------------------


SECURITY = {"x-content-type-options": "nosniff", "referrer-policy": "strict-origin-when-cross-origin",
            "x-frame-options": "SAMEORIGIN"}
HSTS = "max-age=31536000"


def test_security_headers_on_every_answer(make_server: Callable[..., RunningServer], root: Path,
                                          client: httpx.Client, proto: str, ca_file: str) -> None:
    """200, 404, 405, 301 and 400 alike; HSTS over TLS with a --cert certificate."""
    server = make_server(root=str(root), redirect=[{"from": "/old", "to": "/"}])
    answers = [client.get(server.url + "/"), client.get(server.url + "/nope"),
               client.post(server.url + "/"), client.get(server.url + "/old"),
               client.get(server.url + "/docs"), client.get(server.url + "/%2e%2e/x")]
    assert [r.status_code for r in answers] == [200, 404, 405, 301, 301, 400]
    for r in answers:
        for name, value in SECURITY.items():
            assert r.headers.get_list(name) == [value], (r.status_code, name)
        assert r.headers.get_list("strict-transport-security") == [HSTS]
    status, headers, _ = curl(server.url + "/", ca_file, proto)
    assert status == 200 and headers["x-frame-options"] == ["SAMEORIGIN"]
    assert headers["strict-transport-security"] == [HSTS]


def test_security_headers_on_the_engines_own_answers(make_server: Callable[..., RunningServer],
                                                     root: Path) -> None:
    """A request too malformed to reach the site (h11 refuses it) is answered 400 by the HTTP/1.1
    engine with the handler's error page: with the security headers too."""
    server = make_server(root=str(root))
    with socket.create_connection(("127.0.0.1", server.h2c_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 400")
    assert b"\r\nx-content-type-options: nosniff" in head and b"\r\nx-frame-options: sameorigin" in head


def test_no_hsts_on_the_cleartext_port(make_server: Callable[..., RunningServer], root: Path) -> None:
    """h2c and HTTP/1.1 on --h2c-bind: the security headers, but never HSTS, even when the client
    claims :scheme https."""
    server = make_server(root=str(root))
    for http2 in (True, False):
        with httpx.Client(http2=http2, http1=not http2) as c:
            r = c.get(server.h2c_url + "/")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in r.headers
    with H2Client.h2c(server.h2c_port) as c:
        sid = c.send_headers([(b":method", b"GET"), (b":scheme", b"https"),
                              (b":authority", b"localhost"), (b":path", b"/")])
        c.receive_until(lambda: c.responses[sid].done)
    assert c.responses[sid].status == 200
    assert c.responses[sid].header(b"strict-transport-security") is None


def test_no_hsts_with_the_development_certificate(make_server: Callable[..., RunningServer], root: Path,
                                                  tmp_path: Path) -> None:
    """A dev certificate is for this machine only: HSTS would pin the name to it for a year."""
    server = make_server(root=str(root), cert=None, key=None, certs_dir=str(tmp_path / "devcerts"))
    assert server.server.ca_file is not None
    with httpx.Client(verify=ssl.create_default_context(cafile=str(server.server.ca_file))) as c:
        r = c.get(server.url + "/")
    assert r.headers["x-frame-options"] == "SAMEORIGIN" and "strict-transport-security" not in r.headers


def test_security_headers_off_and_overridden(make_server: Callable[..., RunningServer], root: Path,
                                             client: httpx.Client) -> None:
    server = make_server(root=str(root), security_headers=False)
    r = client.get(server.url + "/")
    assert not {*SECURITY, "strict-transport-security"} & set(r.headers)
    server = make_server(root=str(root), headers=[{"path": "/**", "set": {
        "X-Frame-Options": "DENY", "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
        "Referrer-Policy": ""}}])
    r = client.get(server.url + "/")
    assert r.headers.get_list("x-frame-options") == ["DENY"]
    assert r.headers.get_list("strict-transport-security") == ["max-age=63072000; includeSubDomains"]
    assert "referrer-policy" not in r.headers and r.headers["x-content-type-options"] == "nosniff"


# -- push and hints follow the rules ---------------------------------------------------------------


def test_redirected_or_protected_paths_are_not_pushed_nor_hinted(
        make_server: Callable[..., RunningServer], ca_file: str, tmp_path: Path, verify: object) -> None:
    """The demo page's push map names hero.png (redirected here) and site.js (behind auth): neither
    is promised, nor in the 103, nor in the page's Link headers; the rest are."""

    users = htpasswd_file(tmp_path, {"ann": "pw"})
    server = make_server(
        push_manifest=str(REPO / "push_manifest.json"),
        redirect=[{"from": "/static/img/hero.png", "to": "/static/img/logo.svg"}],
        auth=[{"path": "/static/js/**", "htpasswd": str(users), "realm": "js"}])
    browser = [(b"accept", b"text/html"), (b"user-agent", b"h2serve-tests/1.0")]
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 1}) as c:
        sid = c.request("/", headers=browser)
        page = c.responses[sid]
        c.receive_until(lambda: page.done and all(c.responses[p].done for p in page.pushed))
        pushed = [dict(c.responses[p].request_headers)[b":path"].decode() for p in page.pushed]
    assert page.status == 200 and pushed  # the others still are
    links = [v.decode() for n, v in page.headers if n == b"link"]
    for path in ("/static/img/hero.png", "/static/js/site.js"):
        assert path not in pushed
        assert not [x for x in links if path in x]
    assert "/static/css/site.css" in pushed and any("/static/css/site.css" in x for x in links)
    # A client that refuses push gets the 103 instead: without them too.
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as c:
        sid = c.request("/", headers=browser)
        c.receive_until(lambda: c.responses[sid].done)
        hints = c.responses[sid].informational
    assert len(hints) == 1
    hinted = [v.decode() for n, v in hints[0] if n == b"link"]
    assert any("/static/css/site.css" in x for x in hinted)
    assert not [x for x in hinted if "hero.png" in x or "site.js" in x]
    # Over HTTP/1.1 the Link headers leave them out as well.
    with httpx.Client(verify=verify) as h1:  # type: ignore[arg-type]
        r = h1.get(server.url + "/")
    assert r.http_version == "HTTP/1.1"
    assert not [x for x in r.headers.get_list("link") if "hero.png" in x or "site.js" in x]
    assert any("/static/css/site.css" in x for x in r.headers.get_list("link"))


def test_pushed_responses_carry_the_rules_headers(make_server: Callable[..., RunningServer],
                                                  ca_file: str) -> None:
    """A pushed response is answered as a GET of its path: [[headers]] and security headers too."""
    server = make_server(push_manifest=str(REPO / "push_manifest.json"),
                         headers=[{"path": "/static/css/*", "set": {"X-Pushed-Rule": "yes"}}])
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 1}) as c:
        sid = c.request("/", headers=[(b"accept", b"text/html")])
        page = c.responses[sid]
        c.receive_until(lambda: page.done and all(c.responses[p].done for p in page.pushed))
        by_path = {dict(c.responses[p].request_headers)[b":path"]: c.responses[p] for p in page.pushed}
    css = by_path[b"/static/css/site.css"]
    assert css.header(b"x-pushed-rule") == b"yes"
    assert css.header(b"x-content-type-options") == b"nosniff"
    assert css.header(b"strict-transport-security") == HSTS.encode()


# -- a whole TOML file ----------------------------------------------------------------------------


def test_a_good_file_serves(tmp_path: Path, root: Path, spawn_server: Callable[..., ServerProcess],
                            ca_file: str) -> None:
    """A TOML file with every kind of rule starts, and each takes effect."""
    users = htpasswd_file(tmp_path, {"ann": "pw"})
    config = tmp_path / "h2serve.toml"
    config.write_text(f"""\
fallback = "index.html"
cors-origins = ["https://app.example.com"]
security-headers = false

[[redirect]]
from = "/blog/*"
to = "/posts/*"
status = 308

[[headers]]
path = "/static/**"
set = {{ "X-Robots-Tag" = "noindex", "Cache-Control" = "public, max-age=60" }}

[[auth]]
path = "/private/**"
htpasswd = "{users}"
realm = "Staff"
""")
    proc = spawn_server("--config", str(config), "--root", str(root))
    url = f"https://localhost:{proc.port}"
    status, headers, _ = curl(url + "/blog/a/b?x=1", ca_file, "h2")
    assert status == 308 and headers["location"] == ["/posts/a/b?x=1"]
    assert "x-frame-options" not in headers
    status, headers, _ = curl(url + "/static/app.css", ca_file, "http/1.1")
    assert headers["x-robots-tag"] == ["noindex"] and headers["cache-control"] == ["public, max-age=60"]
    status, headers, _ = curl(url + "/private/", ca_file, "h2")
    assert status == 401 and headers["www-authenticate"] == ['Basic realm="Staff"']
    status, _, body = curl(url + "/private/secret.txt", ca_file, "h2", "-u", "ann:pw")
    assert status == 200 and body == "the secret\n"
    status, _, body = curl(url + "/some/route", ca_file, "h2", "-H", "Accept: text/html")
    assert status == 200 and "app shell" in body
    status, headers, _ = curl(url + "/", ca_file, "h2", "-X", "OPTIONS", "-H", "Origin: https://app.example.com",
                              "-H", "Access-Control-Request-Method: GET")
    assert status == 204 and headers["access-control-allow-origin"] == ["https://app.example.com"]
    proc2 = spawn_server("--root", str(root), "--no-security-headers")
    _, headers, _ = curl(f"https://localhost:{proc2.port}/", ca_file, "h2")
    assert "x-content-type-options" not in headers
