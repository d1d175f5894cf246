"""Compression dictionaries, RFC 9842 (h2serve/site/dictionary.py and `[[dictionary]]`): the previous
version of a bundle as the dictionary for the next, answered as `dcz` over HTTP/2 and HTTP/1.1,
decoded here with `zstandard` and the dictionary, byte for byte.

The headers are read with http-sf, as a browser reads them: `Use-As-Dictionary` a Dictionary,
`Available-Dictionary` an Item holding a byte sequence.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli
import http_sf
import httpx
import pytest
import zstandard
from browser import spki_hash
from conftest import RunningServer
from h2.settings import SettingCodes
from h2client import H2Client
from test_browser import LazyBrowser

from benchmarks import jsbundle
from h2serve.config import Config, ConfigError
from h2serve.net.certs import DevCerts
from h2serve.site import zstdcodec
from h2serve.site.dictionary import parse_available
from h2serve.site.rulespec import DictionaryRule

OLD_NAME, NEW_NAME = "app.1a2b3c4d.js", "app.5e6f7a8b.js"
OLD = jsbundle.bundle(120 * 1024)
NEW = jsbundle.deploy(OLD)
RULE = {"match": "/static/app.*.js", "match-dest": ["script"]}
DELTA_CODINGS = "gzip, deflate, br, zstd, dcb, dcz"  # what Chromium sends with a dictionary


def available(data: bytes) -> str:
    """The Available-Dictionary value naming `data`: `:<base64 SHA-256>:`."""
    return ":" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


@pytest.fixture
def bundles(site: Path) -> Path:
    static = site / "static"
    (static / OLD_NAME).write_bytes(OLD)
    (static / NEW_NAME).write_bytes(NEW)
    return static


@pytest.fixture
def client(proto: str, verify: object) -> Iterator[httpx.Client]:
    with httpx.Client(http2=proto == "h2", verify=verify, timeout=30) as c:  # type: ignore[arg-type]
        del c.headers["accept-encoding"]
        yield c


def get(client: httpx.Client, url: str, **headers: str) -> tuple[httpx.Response, bytes]:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    with client.stream("GET", url, headers=hdrs) as r:
        return r, b"".join(r.iter_raw())


def serve(site: Path, make_server: Callable[..., RunningServer], **options: object) -> RunningServer:
    options.setdefault("dictionary", [RULE])
    return make_server(templates=str(site / "templates"), static=str(site / "static"), **options)


def test_dcz_answer_decodes_with_the_dictionary(
        site: Path, bundles: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
        proto: str) -> None:
    """The old bundle's answer makes it a dictionary (Use-As-Dictionary); the new one, asked for with
    its hash and dcz, comes as dcz: magic, the dictionary's SHA-256, a zstd frame that
    `zstandard` decodes with the old bundle as raw dictionary to exactly the new bundle; under a
    tenth of the new bundle's brotli size; with Vary on both headers and an ETag of its own."""
    server = serve(site, make_server)
    first, body = get(client, server.url + f"/static/{OLD_NAME}", accept_encoding="br")
    assert brotli.decompress(body) == OLD
    use = http_sf.parse(first.headers["use-as-dictionary"].encode(), tltype="dictionary")
    assert use["match"][0] == "/static/app.*.js"
    assert [d[0] for d in use["match-dest"][0]] == ["script"]
    assert first.headers["vary"] == "accept-encoding, available-dictionary"
    assert "immutable" in first.headers["cache-control"]  # a dictionary must stay in the cache

    r, delta = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding=DELTA_CODINGS,
                   available_dictionary=available(OLD), sec_fetch_dest="script")
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "dcz"
    assert r.headers["vary"] == "accept-encoding, available-dictionary"
    assert r.headers["content-length"] == str(len(delta))
    assert delta[:8] == b"\x5e\x2a\x4d\x18\x20\x00\x00\x00"
    assert delta[8:40] == hashlib.sha256(OLD).digest()
    assert zstdcodec.decompress_dcz(delta, OLD) == NEW
    raw = zstandard.ZstdCompressionDict(OLD, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    assert zstandard.ZstdDecompressor(dict_data=raw, max_window_size=8 << 20).decompress(delta[40:]) == NEW
    assert len(delta) < len(brotli.compress(NEW, quality=11)) / 10
    plain, _ = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding="identity")
    br, _ = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding="br")
    etags = {plain.headers["etag"], br.headers["etag"], r.headers["etag"]}
    assert len(etags) == 3 and r.headers["etag"].startswith(plain.headers["etag"][:-1] + "-dcz-")
    # The same request again: the cached delta, the same bytes and ETag; a 304 for its ETag.
    again, delta2 = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding=DELTA_CODINGS,
                        available_dictionary=available(OLD))
    assert (delta2, again.headers["etag"]) == (delta, r.headers["etag"])
    cached, empty = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding=DELTA_CODINGS,
                        available_dictionary=available(OLD), if_none_match=r.headers["etag"])
    assert (cached.status_code, empty) == (304, b"")


def test_a_matching_file_on_disk_serves_unasked(site: Path, bundles: Path,
                                                make_server: Callable[..., RunningServer],
                                                client: httpx.Client) -> None:
    """The old bundle was never served by this server (a restart, or another instance served it):
    it is still on disk, so it is found by its hash."""
    server = serve(site, make_server)
    r, delta = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding="dcz, br",
                   available_dictionary=available(OLD))
    assert r.headers["content-encoding"] == "dcz"
    assert zstdcodec.decompress_dcz(delta, OLD) == NEW


@pytest.mark.parametrize("value", [
    "", ":not base64!:", ":" + base64.b64encode(b"x" * 31).decode() + ":", '"a string"', "abc",
    ":" + base64.b64encode(hashlib.sha256(b"unknown").digest()).decode() + ":", "::", "1; a=",
    available(OLD) + ", " + available(OLD),
])
def test_unknown_or_malformed_available_dictionary_gets_the_ordinary_coding(
        site: Path, bundles: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
        value: str) -> None:
    server = serve(site, make_server)
    r, body = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding="br, dcz",
                  available_dictionary=value)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "br"
    assert brotli.decompress(body) == NEW


def test_no_dcz_unless_asked_matching_and_within_bounds(site: Path, bundles: Path,
                                                        make_server: Callable[..., RunningServer],
                                                        client: httpx.Client) -> None:
    """dcz only for a client naming it, a path the rule matches, a destination it allows, the
    whole file (not a range); no Use-As-Dictionary on other paths."""
    server = serve(site, make_server)
    url = server.url + f"/static/{NEW_NAME}"
    r, _ = get(client, url, accept_encoding="br, zstd", available_dictionary=available(OLD))
    assert r.headers["content-encoding"] == "br"
    r, _ = get(client, url, accept_encoding="br, dcz;q=0", available_dictionary=available(OLD))
    assert r.headers["content-encoding"] == "br"
    r, _ = get(client, url, accept_encoding="br, dcz", available_dictionary=available(OLD),
               sec_fetch_dest="style")
    assert r.headers["content-encoding"] == "br"
    r, body = get(client, url, accept_encoding="br, dcz", available_dictionary=available(OLD),
                  range="bytes=0-99")
    assert r.status_code == 206 and "content-encoding" not in r.headers and body == NEW[:100]
    (bundles / "other.js").write_bytes(NEW)
    r, _ = get(client, server.url + "/static/other.js", accept_encoding="br, dcz",
               available_dictionary=available(OLD))
    assert r.headers["content-encoding"] == "br"
    assert "use-as-dictionary" not in r.headers and r.headers["vary"] == "accept-encoding"


def test_a_dictionary_of_another_pattern_is_not_used(site: Path, bundles: Path,
                                                     make_server: Callable[..., RunningServer],
                                                     client: httpx.Client) -> None:
    (bundles / "vendor.1a2b3c4d.js").write_bytes(OLD)
    server = serve(site, make_server, dictionary=[{"match": "/static/vendor.*.js"},
                                                  {"match": "/static/app.5e6f7a8b.js"}])
    r, _ = get(client, server.url + f"/static/{NEW_NAME}", accept_encoding="br, dcz",
               available_dictionary=available(OLD))
    assert r.headers["content-encoding"] == "br"
    assert http_sf.parse(r.headers["use-as-dictionary"].encode(),
                         tltype="dictionary")["match"][0] == "/static/app.5e6f7a8b.js"


def test_served_versions_are_kept_across_a_deploy_and_a_restart(
        site: Path, bundles: Path, tmp_path: Path, make_server: Callable[..., RunningServer],
        client: httpx.Client) -> None:
    """A served version is kept in --precompress-dir: the deploy deletes the old bundle, the server
    restarts, and the old bundle still serves as the dictionary; the delta is kept there too."""
    folder = tmp_path / "pre"
    first = serve(site, make_server, precompress_dir=str(folder))
    get(client, first.url + f"/static/{OLD_NAME}", accept_encoding="br")
    first.server.services.site.dictionaries.wait()
    first.stop()
    (bundles / OLD_NAME).unlink()
    second = serve(site, make_server, precompress_dir=str(folder))
    r, delta = get(client, second.url + f"/static/{NEW_NAME}", accept_encoding="br, dcz",
                   available_dictionary=available(OLD))
    assert r.headers["content-encoding"] == "dcz"
    assert zstdcodec.decompress_dcz(delta, OLD) == NEW
    assert [p.read_bytes() for p in (folder / "deltas").iterdir()] == [delta]


def test_pushed_responses_get_the_ordinary_coding(site: Path, bundles: Path,
                                                  make_server: Callable[..., RunningServer],
                                                  ca_file: str) -> None:
    """A push copies the page request's Accept-Encoding (zstd here) but never its
    Available-Dictionary: the pushed bundle is zstd, from the same negotiation as a GET, and its
    answer still carries Use-As-Dictionary."""
    manifest = site / "push.json"
    manifest.write_text(json.dumps({"/": {f"/static/{NEW_NAME}": {"type": "script", "weight": 1}}}))
    server = serve(site, make_server, push_manifest=str(manifest))
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 1}) as c:
        sid = c.request("/", headers=[(b"accept-encoding", b"zstd, dcz"),
                                      (b"available-dictionary", available(OLD).encode())])
        page = c.responses[sid]
        c.receive_until(lambda: page.done and page.pushed and all(c.responses[p].done for p in page.pushed))
        pushed = c.responses[page.pushed[0]]
    assert dict(pushed.request_headers)[b"accept-encoding"] == b"zstd, dcz"
    assert b"available-dictionary" not in dict(pushed.request_headers)
    assert pushed.header(b"content-encoding") == b"zstd"
    assert pushed.header(b"use-as-dictionary") is not None
    assert zstandard.ZstdDecompressor().decompress(bytes(pushed.body)) == NEW


def test_parse_available() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert parse_available(f":{base64.b64encode(digest).decode()}:".encode()) == digest
    assert parse_available(f":{base64.b64encode(digest).decode()}:;p=1".encode()) == digest
    assert parse_available(None) is None
    assert parse_available(b":" + base64.b64encode(digest[:16]) + b":") is None


@pytest.mark.parametrize("table, message", [
    ({"match": "static/app.*.js"}, "match: 'static/app.*.js' must be a path pattern starting with /"),
    ({"match": "/static/:name.js"}, "are not supported"),
    ({"match": "https://cdn.example.com/app.*.js"}, "must be a path pattern"),
    ({"match": "/a(.*).js"}, "are not supported"),
    ({"match": "/app.*.js", "match-dest": ["scripts"]}, "match-dest: 'scripts' is not a fetch destination"),
    ({"match": "/app.*.js", "match-dest": [["script"]]}, "match-dest: ['script'] is not a fetch destination"),
    ({"match": "/app.*.js", "id": 'a"b'}, "id:"),
    ({"match": "/app.*.js", "type": "raw"}, "unknown key 'type'"),
    ({}, "match is missing"),
])
def test_bad_dictionary_tables(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"\[\[dictionary\]\] #1") as raised:
        Config(dictionary=[table])
    assert message in str(raised.value)


def test_dictionary_table_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "h2serve.toml"
    toml.write_text('[[dictionary]]\nmatch = "/static/app.*.js"\nmatch-dest = ["script"]\nid = "app"\n')
    config = Config.from_toml(toml)
    assert config.dictionary == (DictionaryRule("/static/app.*.js", ("script",), "app"),)


def test_id_is_sent(site: Path, bundles: Path, make_server: Callable[..., RunningServer],
                    client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="h2serve")
    server = serve(site, make_server, dictionary=[{"match": "/static/app.*.js", "id": "app-bundle"}])
    r, _ = get(client, server.url + f"/static/{OLD_NAME}")
    assert r.headers["use-as-dictionary"] == 'match="/static/app.*.js", id="app-bundle"'
    assert not caplog.records


# -- a real browser ------------------------------------------------------------------------------

PAGE = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{version}</title>'
        '<script type="module" src="/static/{name}"></script></head>'
        '<body><p>bundle {version}</p></body></html>\n')
TIMING_JS = """(() => {{ const e = performance.getEntriesByName(location.origin + '/static/{name}')[0];
  return e ? {{encoded: e.encodedBodySize, decoded: e.decodedBodySize, protocol: e.nextHopProtocol}}
           : null; }})()"""


@pytest.fixture(scope="module")
def chromium(certs: DevCerts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LazyBrowser]:
    """Headless Chromium trusting the test server's leaf key (test_browser.py's way): RFC 9842
    dictionaries exist only in a secure context, so TLS must be trusted, not ignored."""
    lazy = LazyBrowser(tmp_path_factory.mktemp("chromium"), spki_hash(certs.cert.read_bytes()))
    yield lazy
    lazy.close()


def test_chromium_gets_the_new_bundle_as_a_dcz_delta(
        site: Path, make_server: Callable[..., RunningServer], chromium: LazyBrowser,
        tmp_path: Path) -> None:
    """Headless Chromium (156: RFC 9842 on by default, no flag) loads a page with app.<hash1>.js;
    the test deploys app.<hash2>.js (a few functions changed) and a page naming it; the same
    browser context loads that page. Chromium asks for the new bundle with the old one's hash and
    dcz, gets dcz, and Resource Timing shows under a tenth of its brotli size on the wire; the
    script ran (it sets window.bundle)."""
    static, templates = site / "static", site / "templates"
    old = OLD + b'\nwindow.bundle = "v1";\n'
    new = NEW + b'\nwindow.bundle = "v2";\n'
    (static / OLD_NAME).write_bytes(old)
    (templates / "app.html").write_text(PAGE.format(version="v1", name=OLD_NAME))
    server = serve(site, make_server)
    seen: list[dict[bytes, bytes]] = []
    respond = server.server.services.site.respond

    def recording(method: str, target: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                  **kw: object) -> object:
        if target.startswith(b"/static/app."):
            seen.append({b":path": target, **dict(headers or [])})
        return respond(method, target, headers, **kw)  # type: ignore[arg-type]

    server.server.services.site.respond = recording  # type: ignore[method-assign]
    page = chromium.get().new_page()
    try:
        page.goto(server.url + "/app")
        assert page.evaluate("window.bundle") == "v1"
        first = page.evaluate(TIMING_JS.format(name=OLD_NAME))
        assert first["protocol"] == "h2" and first["decoded"] == len(old)

        (static / NEW_NAME).write_bytes(new)
        (templates / "app.html").write_text(PAGE.format(version="v2", name=NEW_NAME))
        page.goto(server.url + "/app")
        assert page.evaluate("window.bundle") == "v2"
        timing = page.evaluate(TIMING_JS.format(name=NEW_NAME))
        answers = {r["response"]["url"].rsplit("/", 1)[-1]: r["response"]
                   for r in page.events("Network.responseReceived")}
    finally:
        page.close()
    asked = next(h for h in seen if h[b":path"] == f"/static/{NEW_NAME}".encode())
    assert b"dcz" in asked[b"accept-encoding"], asked
    assert parse_available(asked[b"available-dictionary"]) == hashlib.sha256(old).digest()
    assert timing["decoded"] == len(new)
    got = {k.lower(): v for k, v in answers[NEW_NAME]["headers"].items()}
    assert got["content-encoding"] == "dcz" and got["vary"] == "accept-encoding, available-dictionary"
    assert timing["encoded"] < len(brotli.compress(new, quality=11)) / 10, timing


def test_readme_example_loads_as_written(tmp_path: Path) -> None:
    """The README's `[[dictionary]]` example is a valid configuration, as printed."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in readme.split("```toml\n")[1:] if "[[dictionary]]" in b).split("```")[0]
    (tmp_path / "h2serve.toml").write_text(block)
    config = Config.from_toml(tmp_path / "h2serve.toml")
    assert config.precompress_dir == "/var/cache/h2serve"
    assert config.dictionary == (DictionaryRule("/static/app.*.js", ("script",), "app"),
                                 DictionaryRule("/static/css/main.*.css"))


def test_dictionary_without_zstandard_is_a_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the `zstd` extra no delta can be made: said at start-up, with the install command."""
    monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` now raises ImportError
    with pytest.raises(ConfigError, match=r"\[\[dictionary\]\] #1: zstandard is not installed "
                                          r"\(pip install 'h2serve\[zstd\]'\)"):
        Config(dictionary=[RULE])
