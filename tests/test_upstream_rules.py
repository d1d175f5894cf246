"""The site rules' response headers on the application's answers (site/rules.py `proxied`): a Flask
app under gunicorn (tests/upstream_apps/pushapp.py, whose `/answer?h=Name:value` sends the headers
a test names), h2serve in front with --upstream, httpx over HTTP/2 and HTTP/1.1."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from conftest import AppProcess, RunningServer

SECURITY = {"x-content-type-options": "nosniff", "referrer-policy": "strict-origin-when-cross-origin",
            "x-frame-options": "SAMEORIGIN"}
HSTS = "max-age=31536000"
ORIGIN = "https://app.example.com"


@pytest.fixture
def front(make_server: Callable[..., RunningServer], upstream_app: Callable[..., AppProcess],
          tmp_path: Path) -> Callable[..., RunningServer]:
    """h2serve with one file of its own (/file.txt), everything else to the app; options override."""
    root = tmp_path / "public"
    root.mkdir()
    (root / "file.txt").write_text("a file\n")
    app = upstream_app("pushapp")

    def start(**options: object) -> RunningServer:
        options.setdefault("root", str(root))
        options.setdefault("upstream", app.url)
        return make_server(**options)

    return start


def answer(*headers: str) -> str:
    """The app's path that answers with `headers` ("Name: value" each)."""
    return "/answer?" + urlencode([("h", h) for h in headers])


def test_security_headers_and_hsts_on_proxied_answers(front, client: httpx.Client) -> None:
    """GET and POST answered by the app, and the 502 given when it is gone: each security header
    once, HSTS (TLS, a --cert certificate), as on the site's own files."""
    server = front()
    answers = [client.get(server.url + "/headers"), client.post(server.url + "/upload", content=b"x"),
               client.get(server.url + "/file.txt")]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert answers[0].json()["host"].startswith("localhost")  # the app's own answer
    for r in answers:
        for name, value in SECURITY.items():
            assert r.headers.get_list(name) == [value], (r.url, name)
        assert r.headers.get_list("strict-transport-security") == [HSTS]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = client.get(front(upstream=gone).url + "/app-page")
    assert r.status_code == 502
    assert r.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert r.headers.get_list("strict-transport-security") == [HSTS]


def test_the_apps_own_security_headers_stand_and_are_not_doubled(front, client: httpx.Client) -> None:
    server = front()
    r = client.get(server.url + answer("X-Frame-Options: DENY", "Strict-Transport-Security: max-age=60",
                                       "Referrer-Policy: no-referrer"))
    assert r.status_code == 200 and r.text == "answered by the app"
    assert r.headers.get_list("x-frame-options") == ["DENY"]
    assert r.headers.get_list("strict-transport-security") == ["max-age=60"]
    assert r.headers.get_list("referrer-policy") == ["no-referrer"]
    assert r.headers.get_list("x-content-type-options") == ["nosniff"]  # the one it did not send
    r = client.get(front(security_headers=False).url + answer("X-Frame-Options: DENY"))
    assert r.headers.get_list("x-frame-options") == ["DENY"]
    assert not {"x-content-type-options", "referrer-policy", "strict-transport-security"} & set(r.headers)


def test_headers_rules_override_and_remove_the_apps_headers(front, client: httpx.Client) -> None:
    """A value replaces every header of that name the app sent (its own X-Frame-Options too), an
    empty value removes it; later rules win; a rule for another path leaves the app's alone."""
    server = front(headers=[
        {"path": "/answer", "set": {"X-App": "ours", "X-Gone": "", "X-Frame-Options": "DENY"}},
        {"path": "/**", "set": {"Content-Security-Policy": "default-src 'self'"}},
        {"path": "/answer", "set": {"Referrer-Policy": ""}},
        {"path": "/other/**", "set": {"X-Kept": "not here"}}])
    r = client.get(server.url + answer("X-App: theirs", "X-App: theirs too", "X-Gone: 1",
                                       "X-Frame-Options: ALLOWALL", "X-Kept: the app's"))
    assert r.status_code == 200
    assert r.headers.get_list("x-app") == ["ours"]
    assert "x-gone" not in r.headers and "referrer-policy" not in r.headers
    assert r.headers.get_list("x-frame-options") == ["DENY"]
    assert r.headers.get_list("content-security-policy") == ["default-src 'self'"]
    assert r.headers.get_list("x-kept") == ["the app's"]
    assert r.headers.get_list("x-content-type-options") == ["nosniff"]


def test_hsts_only_over_tls_with_a_cert(front, tmp_path: Path) -> None:
    """Proxied answers as the site's own: no HSTS with the development certificate, nor on the
    cleartext port, whatever the protocol; the other security headers always."""
    server = front(cert=None, key=None, certs_dir=str(tmp_path / "devcerts"))
    assert server.server.ca_file is not None
    dev = ssl.create_default_context(cafile=str(server.server.ca_file))
    for http2 in (True, False):
        with httpx.Client(http2=http2, verify=dev) as c:
            tls = c.get(server.url + "/headers")
        with httpx.Client(http2=http2, http1=not http2) as c:
            clear = c.get(server.h2c_url + "/headers")
        for r in (tls, clear):
            assert r.status_code == 200 and r.headers["x-frame-options"] == "SAMEORIGIN"
            assert "strict-transport-security" not in r.headers, (http2, r.url)


def test_cors_is_added_unless_the_app_answers_cors_itself(front, client: httpx.Client) -> None:
    """The app's Access-Control-Allow-Origin (and whatever else it says of CORS) stands; without
    one, an allowed origin gets the site's, and every answer Vary: Origin."""
    server = front(cors_origins=[ORIGIN])
    r = client.get(server.url + answer("Vary: Accept-Encoding"), headers={"origin": ORIGIN})
    assert r.headers.get_list("access-control-allow-origin") == [ORIGIN]
    assert r.headers.get_list("vary") == ["Accept-Encoding, Origin"]
    r = client.get(server.url + "/headers", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers and r.headers.get_list("vary") == ["Origin"]
    own = answer("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: X-Total")
    r = client.get(server.url + own, headers={"origin": ORIGIN})
    assert r.headers.get_list("access-control-allow-origin") == ["*"]
    assert r.headers.get_list("access-control-expose-headers") == ["X-Total"]
    assert "vary" not in r.headers


def test_answers_behind_auth_are_private(front, client: httpx.Client, tmp_path: Path) -> None:
    """`public` dropped, the rest of the app's Cache-Control kept, `private` first; a rule that sets
    Cache-Control wins; a path no [[auth]] covers keeps what the app said."""
    from rulesite import htpasswd_file

    users = htpasswd_file(tmp_path, {"ann": "correct horse"})
    server = front(auth=[{"path": "/answer", "htpasswd": str(users), "realm": "App"},
                         {"path": "/upload", "htpasswd": str(users), "realm": "App"}],
                   headers=[{"path": "/upload", "set": {"Cache-Control": "no-store"}}])
    ann = ("ann", "correct horse")
    path = answer("Cache-Control: public, max-age=600")
    assert client.get(server.url + path).status_code == 401
    r = client.get(server.url + path, auth=ann)
    assert r.status_code == 200 and r.headers.get_list("cache-control") == ["private, max-age=600"]
    r = client.get(server.url + answer("Cache-Control: public", "Cache-Control: max-age=60"), auth=ann)
    assert r.headers.get_list("cache-control") == ["private", "max-age=60"]  # public gone from each
    r = client.get(server.url + "/headers", auth=ann)
    assert r.status_code == 200 and "cache-control" not in r.headers  # not covered: as the app sent it
    r = client.post(server.url + "/upload", content=b"abc", auth=ann)
    assert r.status_code == 200 and r.headers.get_list("cache-control") == ["no-store"]
