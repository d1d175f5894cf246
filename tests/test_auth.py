"""Basic auth (h2serve/site/auth.py and its place in site/rules.py): `[[auth]]` with an htpasswd
file of bcrypt entries, over HTTP/2 and HTTP/1.1 with httpx and curl against the real server."""

from __future__ import annotations

import base64
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer
from rulesite import curl, htpasswd_file, make_site

from h2serve.site.auth import Guard, basic_credentials
from h2serve.site.blocking import WouldBlock
from h2serve.site.rulespec import AuthRule, read_htpasswd


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_site(tmp_path / "site")


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return htpasswd_file(tmp_path, {"ann": "correct horse", "bob": "s3cret:with:colons"})


def protect(path: str, users: Path, realm: str = "Private area") -> list[dict[str, str]]:
    return [{"path": path, "htpasswd": str(users), "realm": realm}]


def test_without_credentials_401_with_challenge(make_server: Callable[..., RunningServer], root: Path,
                                                users: Path, client: httpx.Client, proto: str,
                                                ca_file: str) -> None:
    server = make_server(root=str(root), auth=protect("/private/**", users))
    for path in ("/private/", "/private/secret.txt", "/private/nothing-here", "/private"):
        r = client.get(server.url + path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == 'Basic realm="Private area"'
        assert b"the secret" not in r.content
    status, headers, _ = curl(server.url + "/private/secret.txt", ca_file, proto)
    assert status == 401 and headers["www-authenticate"] == ['Basic realm="Private area"']
    assert client.get(server.url + "/about").status_code == 200  # elsewhere: no auth


def test_valid_credentials_served_private(make_server: Callable[..., RunningServer], root: Path,
                                          users: Path, client: httpx.Client, proto: str,
                                          ca_file: str) -> None:
    server = make_server(root=str(root), auth=protect("/private/**", users))
    r = client.get(server.url + "/private/secret.txt", auth=("ann", "correct horse"))
    assert r.status_code == 200 and r.content == b"the secret\n"
    # Cache-Control: private, whatever else the file's policy said (public dropped).
    assert r.headers["cache-control"] == "private, max-age=3600"
    r = client.get(server.url + "/private/", auth=("bob", "s3cret:with:colons"))
    assert r.status_code == 200 and r.headers["cache-control"] == "private, no-cache"
    status, headers, body = curl(server.url + "/private/secret.txt", ca_file, proto,
                                 "-u", "ann:correct horse")
    assert status == 200 and body == "the secret\n" and headers["cache-control"] == ["private, max-age=3600"]
    for auth in (("ann", "wrong"), ("nobody", "correct horse"), ("ANN", "correct horse")):
        assert client.get(server.url + "/private/secret.txt", auth=auth).status_code == 401, auth
    for header in ("Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        r = client.get(server.url + "/private/secret.txt", headers={"authorization": header})
        assert r.status_code == 401, header


def test_a_rule_may_say_otherwise_about_caching(make_server: Callable[..., RunningServer], root: Path,
                                                users: Path, client: httpx.Client) -> None:
    server = make_server(root=str(root), auth=protect("/private/**", users),
                         headers=[{"path": "/private/**", "set": {"Cache-Control": "no-store"}}])
    r = client.get(server.url + "/private/secret.txt", auth=("ann", "correct horse"))
    assert r.status_code == 200 and r.headers.get_list("cache-control") == ["no-store"]


def test_the_files_own_name_is_protected_whichever_name_reaches_it(
        make_server: Callable[..., RunningServer], root: Path, users: Path, client: httpx.Client) -> None:
    """A rule on /admin.html holds for /admin (which serves admin.html), and one on
    /docs/index.html for /docs/; percent-encoding or doubled slashes do not get round a rule."""
    server = make_server(root=str(root), auth=[*protect("/admin.html", users),
                                               *protect("/docs/index.html", users, "docs")])
    for path in ("/admin", "/admin.html", "/%61dmin", "/docs/", "//docs/index.html", "/docs/%69ndex.html"):
        r = client.get(server.url + path)
        assert r.status_code == 401, path
    assert client.get(server.url + "/docs/", auth=("ann", "correct horse")).status_code == 200
    assert client.get(server.url + "/admin", auth=("ann", "correct horse")).status_code == 200


def test_redirect_before_auth_and_auth_before_fallback(
        make_server: Callable[..., RunningServer], root: Path, users: Path, client: httpx.Client) -> None:
    server = make_server(root=str(root), auth=protect("/private/**", users), fallback="index.html",
                         redirect=[{"from": "/private/moved", "to": "/about"}])
    assert client.get(server.url + "/private/moved").status_code == 301
    r = client.get(server.url + "/private/route", headers={"accept": "text/html"})
    assert r.status_code == 401 and b"app shell" not in r.content
    r = client.get(server.url + "/private/route", headers={"accept": "text/html"},
                   auth=("ann", "correct horse"))
    assert r.status_code == 200 and b"app shell" in r.content


def test_a_protected_fallback_page_needs_credentials(
        make_server: Callable[..., RunningServer], root: Path, users: Path, client: httpx.Client) -> None:
    server = make_server(root=str(root), auth=protect("/index.html", users), fallback="index.html")
    assert client.get(server.url + "/route", headers={"accept": "text/html"}).status_code == 401


def test_failed_attempts_are_logged_without_the_password(
        make_server: Callable[..., RunningServer], root: Path, users: Path, client: httpx.Client,
        caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(root=str(root), auth=protect("/private/**", users))
    with caplog.at_level(logging.WARNING, logger="h2serve"):
        client.get(server.url + "/private/secret.txt", auth=("ann", "hunter2-wrong"))
        client.get(server.url + "/private/secret.txt", auth=("mallory", "letmein-wrong"))
        client.get(server.url + "/private/secret.txt")  # no attempt: no line
    text = caplog.text
    assert "'ann'" in text and "'mallory'" in text and "/private/secret.txt" in text
    assert "hunter2" not in text and "letmein" not in text
    assert len([r for r in caplog.records if "basic auth failed" in r.getMessage()]) == 2


def test_the_check_takes_as_long_for_unknown_users(tmp_path: Path) -> None:
    """An unknown user is checked against a dummy hash of the same cost: the time of a failure does
    not say whether the user exists."""
    path = htpasswd_file(tmp_path, {"ann": "pw"}, rounds=10)
    guard = Guard(AuthRule("/**", str(path), users=read_htpasswd("t", str(path))))

    def timed(user: str) -> float:
        header = b"Basic " + base64.b64encode(f"{user}:wrong".encode())
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            assert guard.check(header, block=True) == (False, user)
            best = min(best, time.perf_counter() - start)
        return best

    known, unknown = timed("ann"), timed("nobody")
    assert 0.5 < unknown / known < 2, (known, unknown)
    assert known > 0.01  # a real bcrypt check ran for both


def test_checks_never_block_the_loop_and_successes_are_remembered(tmp_path: Path) -> None:
    path = htpasswd_file(tmp_path, {"ann": "pw"})
    guard = Guard(AuthRule("/**", str(path), users=read_htpasswd("t", str(path))))
    good = b"Basic " + base64.b64encode(b"ann:pw")
    with pytest.raises(WouldBlock):
        guard.check(good, block=False)
    assert guard.check(good, block=True) == (True, "ann")
    assert guard.check(good, block=False) == (True, "ann")  # remembered: no bcrypt on the loop
    bad = b"Basic " + base64.b64encode(b"ann:no")
    assert guard.check(bad, block=True) == (False, "ann")
    with pytest.raises(WouldBlock):
        guard.check(bad, block=False)  # failures are never remembered
    assert guard.check(None, block=False) == (False, None)


def test_basic_credentials() -> None:
    assert basic_credentials(b"Basic " + base64.b64encode("zoë:p:w".encode())) == ("zoë", b"p:w")
    assert basic_credentials(b"basic " + base64.b64encode(b"a:")) == ("a", b"")
    assert basic_credentials(b"Basic " + base64.b64encode(b"\xff:x")) is None
    assert basic_credentials(b"Digest abc") is None


def test_long_passwords_as_apache_checks_them(tmp_path: Path) -> None:
    """bcrypt reads 72 bytes of a password; htpasswd -B truncates there too, so a longer one works."""
    path = htpasswd_file(tmp_path, {"ann": "x" * 72})
    guard = Guard(AuthRule("/**", str(path), users=read_htpasswd("t", str(path))))
    assert guard.check(b"Basic " + base64.b64encode(b"ann:" + b"x" * 100), block=True)[0]


def test_a_file_written_by_apache_htpasswd(make_server: Callable[..., RunningServer], root: Path,
                                           tmp_path: Path, client: httpx.Client) -> None:
    path = tmp_path / "apache.htpasswd"
    subprocess.run(["htpasswd", "-c", "-B", "-b", str(path), "carol", "from apache"], check=True,
                   capture_output=True)
    server = make_server(root=str(root), auth=protect("/private/**", path))
    assert client.get(server.url + "/private/", auth=("carol", "from apache")).status_code == 200
    assert client.get(server.url + "/private/", auth=("carol", "nope")).status_code == 401
