"""Virtual hosts (`[[site]]`; h2serve/vhosts.py, Services.pick): each site's files, rules, push map
and certificate, chosen by :authority/Host and by SNI; over HTTP/2 and HTTP/1.1 with curl and httpx."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer
from rulesite import CURL_PROTOCOLS, curl, make_site, throwaway_ca
from test_cli import assert_usage_error, run_cli

from h2serve.config import Config, ConfigError
from h2serve.site.rulespec import SiteSpec


@pytest.fixture
def two_sites(tmp_path: Path) -> dict[str, Path]:
    """Two sites with pages of their own (their index pages differ) and a CA and certificate each."""
    roots = {}
    for name in ("a", "b"):
        root = make_site(tmp_path / name)
        (root / "index.html").write_text(f"<!doctype html><title>{name}</title><h1>site {name}</h1>\n")
        (root / f"only-{name}.txt").write_text(f"{name}\n")
        roots[name] = root
    return roots


def vhost_server(make_server: Callable[..., RunningServer], tmp_path: Path, roots: dict[str, Path],
                 **options: object) -> tuple[RunningServer, dict[str, tuple[str, str, str]]]:
    cas = {name: throwaway_ca(tmp_path / f"ca-{name}", [f"{name}.test", f"www.{name}.test"])
           for name in roots}
    sites = [{"host": [f"{n}.test", f"www.{n}.test"], "root": str(roots[n]), "cert": cas[n][1],
              "key": cas[n][2], **options.pop(n, {})} for n in roots]  # type: ignore[dict-item]
    # The top-level certificate is the default site's (make_server would give the localhost one).
    return make_server(site=sites, root=None, push_manifest=None, cert=cas["a"][1], key=cas["a"][2],
                       **options), cas


def curl_sni(port: int, name: str, ca: str, proto: str, path: str = "/", *args: str) -> tuple[int, dict, str]:
    """curl to https://NAME:PORT/ resolved to 127.0.0.1: SNI and Host are NAME, verified with `ca`."""
    return curl(f"https://{name}:{port}{path}", ca, proto, "--resolve", f"{name}:{port}:127.0.0.1", *args)


def test_sni_picks_each_sites_certificate_and_host_its_files(
        make_server: Callable[..., RunningServer], tmp_path: Path, two_sites: dict[str, Path],
        proto: str) -> None:
    """Each name verifies against its own CA only, and is served its own site."""
    server, cas = vhost_server(make_server, tmp_path, two_sites)
    for name in ("a", "b"):
        for host in (f"{name}.test", f"www.{name}.test"):
            status, _, body = curl_sni(server.port, host, cas[name][0], proto)
            assert status == 200 and f"site {name}" in body, host
            status, _, body = curl_sni(server.port, host, cas[name][0], proto, f"/only-{name}.txt")
            assert status == 200 and body == f"{name}\n"
        other = cas["b" if name == "a" else "a"][0]
        failed = subprocess.run(
            ["curl", "-sS", CURL_PROTOCOLS[proto], "--cacert", other, "--resolve",
             f"{name}.test:{server.port}:127.0.0.1", f"https://{name}.test:{server.port}/"],
            capture_output=True, text=True, timeout=30)
        assert failed.returncode == 60, failed.stderr  # certificate not trusted by the other CA


def test_httpx_with_sni_hostname(make_server: Callable[..., RunningServer], tmp_path: Path,
                                 two_sites: dict[str, Path], proto: str) -> None:
    server, cas = vhost_server(make_server, tmp_path, two_sites)
    for name in ("a", "b"):
        verify = ssl.create_default_context(cafile=cas[name][0])
        with httpx.Client(http2=proto == "h2", http1=proto != "h2", verify=verify) as c:
            r = c.get(f"https://127.0.0.1:{server.port}/", headers={"host": f"{name}.test"},
                      extensions={"sni_hostname": f"{name}.test"})
        assert r.status_code == 200 and f"site {name}".encode() in r.content
        assert r.http_version == ("HTTP/2" if proto == "h2" else "HTTP/1.1")


def test_unknown_names_get_the_first_site(make_server: Callable[..., RunningServer], tmp_path: Path,
                                          two_sites: dict[str, Path], proto: str) -> None:
    """Any other name (and no SNI) gets the default site and its certificate; Host is matched
    without its port and case."""
    server, cas = vhost_server(make_server, tmp_path, two_sites)
    status, _, body = curl_sni(server.port, "a.test", cas["a"][0], proto, "/", "-H", "Host: other.test")
    assert status == 200 and "site a" in body
    status, _, body = curl_sni(server.port, "a.test", cas["a"][0], proto, "/", "-H", "Host: B.TEST:9999")
    assert status == 200 and "site b" in body  # the certificate was a's, the Host header says b


def test_cleartext_port_routes_by_host(make_server: Callable[..., RunningServer], tmp_path: Path,
                                       two_sites: dict[str, Path]) -> None:
    server, _ = vhost_server(make_server, tmp_path, two_sites)
    for http2 in (True, False):
        with httpx.Client(http2=http2, http1=not http2) as c:
            r = c.get(server.h2c_url + "/", headers={"host": "www.b.test"})
        assert b"site b" in r.content


def test_rules_with_host_apply_to_their_site(make_server: Callable[..., RunningServer], tmp_path: Path,
                                             two_sites: dict[str, Path]) -> None:
    """A rule with `host` applies to the site holding that name (under any of its names); one
    without, to every site. Each site has its own fallback."""
    server, cas = vhost_server(
        make_server, tmp_path, two_sites,
        b={"fallback": "index.html"},
        redirect=[{"from": "/old", "to": "/new", "host": "b.test"}],
        headers=[{"path": "/**", "set": {"X-Everywhere": "1"}},
                 {"path": "/**", "set": {"X-Only-A": "1"}, "host": "a.test"}])
    with httpx.Client(verify=ssl.create_default_context(cafile=cas["a"][0])) as c:
        def get(host: str, path: str, **headers: str) -> httpx.Response:
            return c.get(f"https://127.0.0.1:{server.port}{path}", headers={"host": host, **headers},
                         extensions={"sni_hostname": "a.test"})

        r = get("a.test", "/old")
        assert r.status_code == 404 and r.headers["x-only-a"] == "1" and r.headers["x-everywhere"] == "1"
        r = get("www.b.test", "/old")
        assert r.status_code == 301 and r.headers["location"] == "/new" and "x-only-a" not in r.headers
        assert get("a.test", "/route", accept="text/html").status_code == 404
        r = get("b.test", "/route", accept="text/html")
        assert r.status_code == 200 and b"site b" in r.content


def test_each_site_has_its_push_map(make_server: Callable[..., RunningServer], tmp_path: Path,
                                    two_sites: dict[str, Path]) -> None:
    manifest = tmp_path / "b-push.json"
    manifest.write_text(json.dumps({"/": {"/static/app.css": {"type": "style", "weight": 1}}}))
    server, cas = vhost_server(make_server, tmp_path, two_sites, b={"push-manifest": str(manifest)})
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=cas["b"][0])) as c:
        r = c.get(f"https://127.0.0.1:{server.port}/", headers={"host": "b.test"},
                  extensions={"sni_hostname": "b.test"})
        assert r.headers.get_list("link") == ["</static/app.css>; rel=preload; as=style"]
        r = c.get(f"https://127.0.0.1:{server.port}/", headers={"host": "a.test"},
                  extensions={"sni_hostname": "b.test"})
        assert "link" not in r.headers


def test_hsts_per_site(make_server: Callable[..., RunningServer], tmp_path: Path,
                       two_sites: dict[str, Path]) -> None:
    server, cas = vhost_server(make_server, tmp_path, two_sites)
    status, headers, _ = curl_sni(server.port, "b.test", cas["b"][0], "h2")
    assert status == 200 and headers["strict-transport-security"] == ["max-age=31536000"]


# -- start-up checks -------------------------------------------------------------------------------


def test_bad_sites(tmp_path: Path, two_sites: dict[str, Path]) -> None:
    a, b = str(two_sites["a"]), str(two_sites["b"])

    def bad(match: str, **options: object) -> None:
        with pytest.raises(ConfigError, match=match):
            Config(**options)  # type: ignore[arg-type]

    bad(r"\[\[site\]\] #2 host: 'a.test' is already a host of \[\[site\]\] #1",
        site=[{"host": ["a.test"], "root": a}, {"host": ["A.test"], "root": b}])
    bad(r"\[\[site\]\] #2 root: .* inside or holds the root of \[\[site\]\] #1",
        site=[{"host": ["a.test"], "root": a}, {"host": ["b.test"], "root": str(two_sites["a"] / "static")}])
    bad(r"\[\[site\]\] #1 root: .*: no such folder", site=[{"host": ["a.test"], "root": str(tmp_path / "x")}])
    bad(r"\[\[site\]\] #1 host: name at least one host", site=[{"host": [], "root": a}])
    bad(r"\[\[site\]\] #1 host: 'a.test:443' is not a host name", site=[{"host": ["a.test:443"], "root": a}])
    bad(r"\[\[site\]\] #1: cert and key go together", site=[{"host": ["a.test"], "root": a, "cert": a}])
    bad(r"\[\[site\]\] #2 fallback: nope.html: no such file",
        site=[{"host": ["a.test"], "root": a}, {"host": ["b.test"], "root": b, "fallback": "nope.html"}])
    bad(r"\[\[redirect\]\] #1 host: 'c.test' is no \[\[site\]\]'s host",
        site=[{"host": ["a.test"], "root": a}], redirect=[{"from": "/a", "to": "/b", "host": "c.test"}])
    bad(r"--root: with \[\[site\]\]", site=[{"host": ["a.test"], "root": a}], root=b)
    bad(r"--fallback: with \[\[site\]\]", site=[{"host": ["a.test"], "root": a}], fallback="index.html")
    bad(r"\[\[site\]\] #1: unknown key 'hosts'", site=[{"hosts": ["a.test"], "root": a}])


def test_bad_site_on_the_command_line_is_one_line(tmp_path: Path, two_sites: dict[str, Path]) -> None:
    config = tmp_path / "sites.toml"
    config.write_text(f'bind = ["127.0.0.1:0"]\n[[site]]\nhost = ["a.test"]\nroot = "{two_sites["a"]}"\n'
                      f'[[site]]\nhost = ["a.test"]\nroot = "{two_sites["b"]}"\n')
    assert_usage_error(run_cli("--config", str(config)), "[[site]] #2 host", "'a.test'")


def test_the_first_site_is_the_top_level_one(two_sites: dict[str, Path]) -> None:
    """Config mirrors the default site's settings, so the parts that know one site serve it; a
    variant made with dataclasses.replace is checked the same."""
    import dataclasses

    config = Config(site=[SiteSpec(("a.test",), str(two_sites["a"]), fallback="index.html"),
                          {"host": ["b.test"], "root": str(two_sites["b"])}])
    assert config.root == str(two_sites["a"]) and config.fallback == "index.html"
    assert [s.host for s in config.site] == [("a.test",), ("b.test",)]
    assert dataclasses.replace(config, list_dirs=True).root == config.root


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    """README's virtual hosts example loads, its paths moved under a temporary folder."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("\n### Virtual hosts\n", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    for folder in ("/srv/example", "/srv/app"):
        make_site(Path(str(tmp_path) + folder))
    _, cert, key = throwaway_ca(tmp_path / "ca", ["example.com"])
    (tmp_path / "srv" / "app-push.json").write_text("{}")
    text = example.replace('"/srv/', f'"{tmp_path}/srv/').replace('"0.0.0.0:443"', '"127.0.0.1:0"')
    for live in ("example.com", "app.example.net"):
        text = text.replace(f"/etc/letsencrypt/live/{live}/fullchain.pem", cert)
        text = text.replace(f"/etc/letsencrypt/live/{live}/privkey.pem", key)
    (tmp_path / "sites.toml").write_text(text)
    config = Config.from_toml(tmp_path / "sites.toml")
    assert [s.host for s in config.site] == [("example.com", "www.example.com"), ("app.example.net",)]
    assert config.redirect[0].host == "www.example.com" and config.site[1].fallback == "index.html"


def test_sighup_reload_reads_every_sites_push_map(make_server: Callable[..., RunningServer], tmp_path: Path,
                                                  two_sites: dict[str, Path]) -> None:
    manifest = tmp_path / "b-push.json"
    manifest.write_text("{}")
    server, _ = vhost_server(make_server, tmp_path, two_sites, b={"push-manifest": str(manifest)})
    manifest.write_text(json.dumps({"/": {"/app.js": {"type": "script", "weight": 1}}}))
    assert server.server.reload_push_map()
    services = server.server.services
    assert services is not None
    b = services.pick(b"b.test")
    assert b is not services.default
    with httpx.Client(http2=True) as c:
        r = c.get(server.h2c_url + "/", headers={"host": "b.test"})
    assert r.headers.get_list("link") == ["</app.js>; rel=preload; as=script"]
