"""CORS (h2serve/site/cors.py): `cors-origins` / `--cors-origin`, over HTTP/2 and HTTP/1.1 with httpx
and curl against the real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer
from rulesite import curl, htpasswd_file, make_site

APP = "https://app.example.com"
PREFLIGHT = {"origin": APP, "access-control-request-method": "GET"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_site(tmp_path / "site")


def test_allowed_origin_gets_its_origin_and_vary(make_server: Callable[..., RunningServer], root: Path,
                                                 client: httpx.Client, proto: str, ca_file: str) -> None:
    server = make_server(root=str(root), cors_origins=[APP, "http://localhost:3000"])
    r = client.get(server.url + "/app.js", headers={"origin": APP})
    assert r.status_code == 200 and r.headers.get_list("access-control-allow-origin") == [APP]
    assert "origin" in r.headers["vary"].lower() and "accept-encoding" in r.headers["vary"].lower()
    r = client.get(server.url + "/nope", headers={"origin": "http://localhost:3000"})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    status, headers, _ = curl(server.url + "/app.js", ca_file, proto, "-H", f"Origin: {APP}")
    assert status == 200 and headers["access-control-allow-origin"] == [APP]


def test_other_origins_get_no_cors_headers(make_server: Callable[..., RunningServer], root: Path,
                                           client: httpx.Client) -> None:
    """Not even a near miss; Vary: Origin still, so a cache keeps the two answers apart."""
    server = make_server(root=str(root), cors_origins=[APP])
    for origin in ("https://evil.example.com", "https://app.example.com.evil.net", "http://app.example.com",
                   "null", None):
        r = client.get(server.url + "/app.js", headers={"origin": origin} if origin else {})
        assert r.status_code == 200
        assert not [n for n in r.headers if n.startswith("access-control-")], origin
        assert "origin" in r.headers["vary"].lower()


def test_preflight(make_server: Callable[..., RunningServer], root: Path, client: httpx.Client,
                   proto: str, ca_file: str) -> None:
    server = make_server(root=str(root), cors_origins=[APP])
    r = client.options(server.url + "/data.json",
                       headers={**PREFLIGHT, "access-control-request-headers": "range, if-none-match"})
    assert r.status_code == 204 and r.content == b""
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-allow-methods"] == "GET, HEAD"
    assert r.headers["access-control-allow-headers"] == "range, if-none-match"
    assert int(r.headers["access-control-max-age"]) > 0
    assert "content-length" not in r.headers  # RFC 9110 section 8.6: not in a 204
    assert r.headers["x-content-type-options"] == "nosniff"
    status, headers, _ = curl(server.url + "/x", ca_file, proto, "-X", "OPTIONS", "-H", f"Origin: {APP}",
                              "-H", "Access-Control-Request-Method: GET")
    assert status == 204 and headers["access-control-allow-methods"] == ["GET, HEAD"]


def test_preflight_from_another_origin_or_plain_options_stays_405(
        make_server: Callable[..., RunningServer], root: Path, client: httpx.Client) -> None:
    server = make_server(root=str(root), cors_origins=[APP])
    for headers in ({"origin": "https://evil.example.com", "access-control-request-method": "GET"}, {}):
        r = client.options(server.url + "/", headers=headers)
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", headers
        assert not [n for n in r.headers if n.startswith("access-control-")]
    # An OPTIONS that is no preflight is an ordinary request: 405, readable by an allowed origin.
    r = client.options(server.url + "/", headers={"origin": APP})
    assert r.status_code == 405 and r.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-methods" not in r.headers


def test_without_the_option_options_is_405(make_server: Callable[..., RunningServer], root: Path,
                                           client: httpx.Client) -> None:
    server = make_server(root=str(root))
    r = client.options(server.url + "/", headers=PREFLIGHT)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    r = client.get(server.url + "/app.js", headers={"origin": APP})
    assert "access-control-allow-origin" not in r.headers and "origin" not in r.headers.get("vary", "")


def test_any_origin(make_server: Callable[..., RunningServer], root: Path, client: httpx.Client,
                    proto: str, ca_file: str) -> None:
    server = make_server(root=str(root), cors_origins=["*"])
    r = client.get(server.url + "/app.js", headers={"origin": "https://anyone.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    r = client.options(server.url + "/app.js", headers={"origin": "https://anyone.example",
                                                        "access-control-request-method": "HEAD"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    status, headers, _ = curl(server.url + "/", ca_file, proto, "-H", "Origin: https://x.example")
    assert status == 200 and headers["access-control-allow-origin"] == ["*"]


def test_preflight_needs_no_credentials_and_redirects_carry_cors(
        make_server: Callable[..., RunningServer], root: Path, client: httpx.Client, tmp_path: Path) -> None:
    """Browsers send preflights without credentials: one to a protected path is answered 204, and
    the 401 and a redirect carry the CORS headers, so a script can read them."""

    users = htpasswd_file(tmp_path, {"ann": "pw"})
    server = make_server(root=str(root), cors_origins=[APP],
                         auth=[{"path": "/private/**", "htpasswd": str(users)}],
                         redirect=[{"from": "/old", "to": "/about"}])
    assert client.options(server.url + "/private/secret.txt", headers=PREFLIGHT).status_code == 204
    r = client.get(server.url + "/private/secret.txt", headers={"origin": APP})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == APP
    r = client.get(server.url + "/old", headers={"origin": APP})
    assert r.status_code == 301 and r.headers["access-control-allow-origin"] == APP


def test_cli_repeatable_flag(spawn_server: Callable[..., object], ca_file: str) -> None:
    proc = spawn_server("--cors-origin", APP, "--cors-origin", "https://other.example")
    port = proc.port  # type: ignore[attr-defined]
    for origin in (APP, "https://other.example"):
        status, headers, _ = curl(f"https://localhost:{port}/", ca_file, "h2", "-H", f"Origin: {origin}")
        assert status == 200 and headers["access-control-allow-origin"] == [origin]
