"""Validators and conditional requests (RFC 9110 section 13), byte ranges (section 14), over real TLS
on HTTP/2 and HTTP/1.1 alike, with httpx and curl.

The clients here ask for the identity coding unless a test says otherwise, so lengths and byte
offsets compare with the files on disk (codings: tests/test_coding.py).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import h11
import httpx
import pytest
from conftest import STATIC, BigFile, RunningServer, open_tls

PROTOCOLS = ["h2", "http/1.1"]
HTTPX_VERSION = {"h2": "HTTP/2", "http/1.1": "HTTP/1.1"}
CSS_PATH = "/static/css/site.css"
CSS = (STATIC / "css/site.css").read_bytes()
LEN = len(CSS)
CSS_CACHE = "public, max-age=3600"
STRONG_ETAG = re.compile(r'^"[0-9a-f]+-[0-9a-f]+"$')


def get(client: httpx.Client, proto: str, url: str, method: str = "GET",
        **headers: str | bytes) -> httpx.Response:
    """One request; header names are given with underscores (if_none_match=...)."""
    r = client.request(method, url, headers={k.replace("_", "-"): v for k, v in headers.items()})
    assert r.http_version == HTTPX_VERSION[proto]
    return r


def http_date(seconds: float) -> str:
    return formatdate(int(seconds), usegmt=True)


def curl(ca_file: str, proto: str, url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (last response) and body of one curl request over `proto`."""
    flag = "--http2" if proto == "h2" else "--http1.1"
    out = subprocess.run(["curl", "-sS", flag, "--cacert", ca_file, "-D", "-", *args, url],
                         capture_output=True, timeout=15, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split()[:2]
    assert version == ("HTTP/2" if proto == "h2" else "HTTP/1.1")
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(":") for line in lines[1:])}
    return int(status), headers, body


# -- validators ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, name", [
    ("/", "templates/index.html"), ("/about", "templates/about.html"),
    (CSS_PATH, "static/css/site.css"), ("/static/js/site.js", "static/js/site.js"),
    ("/static/img/hero.png", "static/img/hero.png"), ("/static/fonts/h2demo.ttf", "static/fonts/h2demo.ttf"),
    ("/static/data/sample.json", "static/data/sample.json"),
])
def test_every_file_has_strong_etag_and_last_modified(server: RunningServer, client: httpx.Client,
                                                       proto: str, path: str, name: str) -> None:
    """A strong ETag (never W/) and Last-Modified, the file's mtime as an HTTP date; both stable."""
    mtime = os.stat(Path(__file__).resolve().parent.parent / name).st_mtime
    first = get(client, proto, server.url + path)
    again = get(client, proto, server.url + path, method="HEAD")
    assert first.status_code == 200
    assert STRONG_ETAG.match(first.headers["etag"]), first.headers["etag"]
    assert first.headers["last-modified"] == http_date(mtime)
    assert (again.headers["etag"], again.headers["last-modified"]) == (
        first.headers["etag"], first.headers["last-modified"])


@pytest.mark.parametrize("inm", ["{etag}", "*", '"nope", {etag}, "other"', "W/{etag}", '"x",W/{etag}'])
def test_if_none_match_304(server: RunningServer, client: httpx.Client, proto: str, inm: str) -> None:
    """The current ETag, `*`, a list holding it, or its weak form (weak comparison) give 304 with the
    validators and caching headers of the 200, and no body and no Content-Length."""
    full = get(client, proto, server.url + CSS_PATH)
    etag = full.headers["etag"]
    for method in ("GET", "HEAD"):
        r = get(client, proto, server.url + CSS_PATH, method, if_none_match=inm.format(etag=etag))
        assert r.status_code == 304, (method, inm)
        assert r.content == b""
        assert "content-length" not in r.headers
        assert r.headers["etag"] == etag
        assert r.headers["last-modified"] == full.headers["last-modified"]
        assert r.headers["cache-control"] == CSS_CACHE
        assert r.headers["vary"] == "accept-encoding"
        assert "date" in r.headers and r.headers["server"] == "h2serve"
    # The connection stays in step: the next answer on it is whole.
    after = get(client, proto, server.url + CSS_PATH)
    assert after.status_code == 200 and after.content == CSS


def test_if_none_match_other_etag_200(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """A different ETag (an old version) gets the full 200; a PNG's 304 carries no Vary."""
    r = get(client, proto, server.url + CSS_PATH, if_none_match='"1-1", "2-2"')
    assert r.status_code == 200 and r.content == CSS
    png = get(client, proto, server.url + "/static/img/hero.png")
    r = get(client, proto, server.url + "/static/img/hero.png", if_none_match=png.headers["etag"])
    assert r.status_code == 304
    assert "vary" not in r.headers
    assert r.headers["cache-control"] == CSS_CACHE


def test_if_none_match_304_over_h1_byte_level(server: RunningServer, ca_file: str) -> None:
    """On the wire (h11 on a raw TLS socket): the 304 has no Content-Length and no body bytes, so a
    GET right behind it on the same connection parses cleanly."""
    etag = None
    conn = h11.Connection(h11.CLIENT)
    results = []
    with open_tls(server.port, ca_file, alpn=["http/1.1"]) as sock:
        for extra in ([], None):
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            headers = [(b"host", b"localhost")]
            if extra is None:
                headers.append((b"if-none-match", etag))
            sock.sendall(conn.send(h11.Request(method=b"GET", target=CSS_PATH.encode(), headers=headers)))
            sock.sendall(conn.send(h11.EndOfMessage()))
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            fields = dict(response.headers)
            etag = fields[b"etag"]
            results.append((response.status_code, fields, bytes(body)))
        assert conn.our_state is h11.DONE and conn.their_state is h11.DONE
    (s1, _, b1), (s2, f2, b2) = results
    assert (s1, b1) == (200, CSS)
    assert (s2, b2) == (304, b"")
    assert b"content-length" not in f2 and b"transfer-encoding" not in f2


def test_if_modified_since(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """At or after the mtime: 304. Before it: 200. Not a date: ignored (200)."""
    full = get(client, proto, server.url + CSS_PATH)
    lm = full.headers["last-modified"]
    mtime = int((STATIC / "css/site.css").stat().st_mtime)
    for ims in (lm, http_date(mtime + 3600)):
        r = get(client, proto, server.url + CSS_PATH, if_modified_since=ims)
        assert r.status_code == 304, ims
        assert r.headers["etag"] == full.headers["etag"]
    for ims in (http_date(mtime - 1), "yesterday", "Mon, 99 Foo 2020 00:00:00 GMT",
                lm.replace("GMT", "-0000"), ""):
        r = get(client, proto, server.url + CSS_PATH, if_modified_since=ims)
        assert r.status_code == 200, ims
        assert r.content == CSS


def test_if_none_match_takes_precedence_over_if_modified_since(server: RunningServer, client: httpx.Client,
                                                                proto: str) -> None:
    """RFC 9110 section 13.2.2: with If-None-Match present, If-Modified-Since is not evaluated."""
    mtime = int((STATIC / "css/site.css").stat().st_mtime)
    future = http_date(mtime + 86400)
    r = get(client, proto, server.url + CSS_PATH, if_none_match='"nope"', if_modified_since=future)
    assert r.status_code == 200 and r.content == CSS
    etag = r.headers["etag"]
    r = get(client, proto, server.url + CSS_PATH, if_none_match=etag, if_modified_since=http_date(0))
    assert r.status_code == 304


def test_if_match_and_if_unmodified_since(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """If-Match: strong comparison, 412 when nothing matches. If-Unmodified-Since before the mtime:
    412. If-Match, when present, decides alone. Invalid dates are ignored."""
    full = get(client, proto, server.url + CSS_PATH)
    etag = full.headers["etag"]
    mtime = int((STATIC / "css/site.css").stat().st_mtime)
    before, after = http_date(mtime - 10), http_date(mtime + 10)
    cases = [
        ({"if_match": '"nope"'}, 412),
        ({"if_match": "W/" + etag}, 412),  # weak tags never match strongly
        ({"if_match": etag}, 200),
        ({"if_match": f'"nope", {etag}'}, 200),
        ({"if_match": "*"}, 200),
        ({"if_unmodified_since": before}, 412),
        ({"if_unmodified_since": full.headers["last-modified"]}, 200),
        ({"if_unmodified_since": after}, 200),
        ({"if_unmodified_since": "not a date"}, 200),
        ({"if_match": etag, "if_unmodified_since": before}, 200),   # If-Match takes precedence
        ({"if_match": '"nope"', "if_unmodified_since": after}, 412),
    ]
    for headers, status in cases:
        r = get(client, proto, server.url + CSS_PATH, **headers)
        assert r.status_code == status, headers
        if status == 200:
            assert r.content == CSS
        else:
            assert b"412 Precondition Failed" in r.content
            assert "etag" not in r.headers


def test_preconditions_with_curl(server: RunningServer, client: httpx.Client, proto: str,
                                 ca_file: str) -> None:
    """The same through curl: If-None-Match gives 304, If-Match with another tag 412."""
    etag = get(client, proto, server.url + CSS_PATH).headers["etag"]
    status, headers, body = curl(ca_file, proto, server.url + CSS_PATH, "-H", f"If-None-Match: {etag}")
    assert (status, body) == (304, b"")
    assert headers["etag"] == etag
    status, _, _ = curl(ca_file, proto, server.url + CSS_PATH, "-H", 'If-Match: "x"')
    assert status == 412


# -- ranges ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, start, end", [
    ("bytes=0-99", 0, 99),
    ("bytes=-100", LEN - 100, LEN - 1),
    ("bytes=100-", 100, LEN - 1),
    (f"bytes={LEN - 10}-{LEN + 5000}", LEN - 10, LEN - 1),    # end beyond the length: clamped
    ("bytes=0-0", 0, 0),
    (f"bytes=-{LEN * 2}", 0, LEN - 1),                         # suffix longer than the file
    pytest.param("bytes=0-" + "9" * 5000, 0, LEN - 1, id="5000-digit-end"),  # int() refuses it
    pytest.param("bytes=" + "0" * 40 + "7-" + "0" * 40 + "9", 7, 9, id="leading-zeros"),
])
def test_single_range_206(server: RunningServer, client: httpx.Client, proto: str, spec: str, start: int,
                          end: int) -> None:
    """One range: 206, Content-Range, Content-Length and exactly those bytes, same validators."""
    full = get(client, proto, server.url + CSS_PATH)
    r = get(client, proto, server.url + CSS_PATH, range=spec)
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {start}-{end}/{LEN}"
    assert r.headers["content-length"] == str(end - start + 1)
    assert r.content == CSS[start:end + 1]
    assert r.headers["etag"] == full.headers["etag"]
    assert r.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("spec", [f"bytes={LEN}-", f"bytes={LEN + 100}-{LEN + 200}", "bytes=-0",
                                  pytest.param("bytes=" + "9" * 5000 + "-", id="5000-digit-start")])
def test_unsatisfiable_range_416(server: RunningServer, client: httpx.Client, proto: str, spec: str) -> None:
    """A range starting at or past the end: 416 with `Content-Range: bytes */LEN`."""
    r = get(client, proto, server.url + CSS_PATH, range=spec)
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{LEN}"
    assert b"416 Range Not Satisfiable" in r.content


@pytest.mark.parametrize("spec", [
    "bytes=0-1,5-6",        # several ranges: the whole file (the documented choice)
    "bytes=0-1, 5-6",
    "bytes=abc", "bytes=5-3", "bytes=-", "bytes=0 - 5", "items=0-5", "bytes", "0-5",
    b"bytes=\xb2-",         # "²" passes str.isdigit() but not int(): once a 500
    b"bytes=0-\xb3",
])
def test_ignored_range_200(server: RunningServer, client: httpx.Client, proto: str,
                           spec: str | bytes) -> None:
    """Several ranges and unparsable Range values are ignored: the whole file as a 200."""
    r = get(client, proto, server.url + CSS_PATH, range=spec)
    assert r.status_code == 200
    assert "content-range" not in r.headers
    assert r.content == CSS
    assert r.headers["accept-ranges"] == "bytes"


def test_range_on_head_ignored(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """Range applies to GET only: a HEAD with Range is the 200's head."""
    r = get(client, proto, server.url + CSS_PATH, "HEAD", range="bytes=0-9")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(LEN)
    assert "content-range" not in r.headers


def test_if_range(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """If-Range with the current ETag or the Last-Modified date: the range (206). With an old ETag,
    a weak tag, or another date: the whole file (200)."""
    full = get(client, proto, server.url + CSS_PATH)
    etag, lm = full.headers["etag"], full.headers["last-modified"]
    mtime = int((STATIC / "css/site.css").stat().st_mtime)
    for if_range, status in ((etag, 206), (lm, 206), ('"1-1"', 200), ("W/" + etag, 200),
                             (http_date(mtime - 1), 200), (http_date(mtime + 1), 200), ("garbage", 200)):
        r = get(client, proto, server.url + CSS_PATH, range="bytes=10-19", if_range=if_range)
        assert r.status_code == status, if_range
        assert r.content == (CSS[10:20] if status == 206 else CSS), if_range


def test_accept_ranges_on_200s(server: RunningServer, client: httpx.Client, proto: str) -> None:
    for path in ("/", CSS_PATH, "/static/img/hero.png"):
        r = get(client, proto, server.url + path)
        assert r.status_code == 200
        assert r.headers["accept-ranges"] == "bytes", path


def test_range_on_large_file_exact_slice(big_file: BigFile, make_server: Callable[..., RunningServer],
                                         client: httpx.Client, proto: str) -> None:
    """Ranges of a 64 MiB file (read in 64 KiB chunks by a worker thread, not from memory): exact
    slices at odd offsets across chunk boundaries, a suffix and an open range."""
    server = make_server(**big_file.server_options())
    path = big_file.static / big_file.name
    size = big_file.size
    url = server.url + big_file.url_path
    far = 1000003 + 3 * 1024 * 1024 + 12344
    with open(path, "rb") as f:
        for spec, start, end in (
                (f"bytes=1000003-{far}", 1000003, far),
                ("bytes=-70001", size - 70001, size - 1),
                (f"bytes={size - 65537}-", size - 65537, size - 1),
                ("bytes=65535-65536", 65535, 65536)):
            f.seek(start)
            expected = hashlib.sha256(f.read(end - start + 1)).hexdigest()
            with client.stream("GET", url, headers={"range": spec}) as r:
                assert r.http_version == HTTPX_VERSION[proto]
                assert r.status_code == 206
                assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
                assert r.headers["content-length"] == str(end - start + 1)
                digest = hashlib.sha256()
                n = 0
                for chunk in r.iter_raw():
                    digest.update(chunk)
                    n += len(chunk)
            assert n == end - start + 1, spec
            assert digest.hexdigest() == expected, spec


def test_range_with_curl(big_file: BigFile, make_server: Callable[..., RunningServer], proto: str,
                         ca_file: str) -> None:
    """curl -r on a large file and on a small one: 206 with exactly those bytes."""
    server = make_server(**big_file.server_options())
    data = (big_file.static / big_file.name).open("rb").read(2_000_000)
    status, headers, body = curl(ca_file, proto, server.url + big_file.url_path, "-r", "1234567-1999999")
    assert status == 206
    assert headers["content-range"] == f"bytes 1234567-1999999/{big_file.size}"
    assert body == data[1234567:2_000_000]
    status, headers, body = curl(ca_file, proto, server.url + CSS_PATH, "-r", "-50")
    assert (status, body) == (206, CSS[-50:])


def raw_get(client: httpx.Client, proto: str, url: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """A GET whose body is kept as sent (no content decoding)."""
    with client.stream("GET", url, headers={k.replace("_", "-"): v for k, v in headers.items()}) as r:
        assert r.http_version == HTTPX_VERSION[proto]
        return r, b"".join(r.iter_raw())


def test_range_gets_identity_not_on_the_fly_coding(server: RunningServer, client: httpx.Client,
                                                   proto: str) -> None:
    """Range + Accept-Encoding: gzip on a compressible file without a precompressed sibling: the
    range of the identity bytes, no Content-Encoding, the identity ETag (the documented choice)."""
    identity = get(client, proto, server.url + CSS_PATH)
    r, body = raw_get(client, proto, server.url + CSS_PATH, range="bytes=100-299", accept_encoding="gzip, br")
    assert r.status_code == 206
    assert "content-encoding" not in r.headers
    assert r.headers["content-range"] == f"bytes 100-299/{LEN}"
    assert body == CSS[100:300]
    assert r.headers["etag"] == identity.headers["etag"]
    assert r.headers["vary"] == "accept-encoding"


@pytest.mark.parametrize("big", [False, True])
def test_range_applies_to_precompressed_sibling(site: Path, make_server: Callable[..., RunningServer],
                                                client: httpx.Client, proto: str, big: bool) -> None:
    """With `site.css.gz` beside site.css, Range + Accept-Encoding: gzip is a range of the .gz bytes,
    with Content-Encoding: gzip (kept in memory when small, streamed from disk when large)."""
    css = site / "static" / "css" / "site.css"
    if big:  # over the 64 KiB kept in memory: FileBody serves the sibling
        css.write_bytes(b"".join(b"/* %d */ p { margin: %dpx }\n" % (i, i) for i in range(40000)))
    gz = gzip.compress(css.read_bytes(), compresslevel=9, mtime=1_700_000_000)
    if big:
        gz += os.urandom(70 * 1024)  # keep the sibling over 64 KiB whatever the ratio
    css.with_name("site.css.gz").write_bytes(gz)
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    start, end = 10, len(gz) - 3
    r, body = raw_get(client, proto, server.url + CSS_PATH, range=f"bytes={start}-{end}",
                      accept_encoding="gzip")
    assert r.status_code == 206
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(gz)}"
    assert r.headers["content-length"] == str(end - start + 1)
    assert body == gz[start:end + 1]
    assert r.headers["etag"].endswith('-gzip"')
    # Without gzip accepted, the same range is of the identity bytes.
    r, body = raw_get(client, proto, server.url + CSS_PATH, range="bytes=10-20", accept_encoding="identity")
    assert "content-encoding" not in r.headers
    assert body == css.read_bytes()[10:21]


def test_if_range_with_coded_etag(site: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
                                  proto: str) -> None:
    """Resuming a coded download: If-Range with the .gz sibling's ETag gets the range of the .gz
    bytes; with the identity ETag (another representation) the whole .gz as a 200."""
    css = site / "static" / "css" / "site.css"
    gz = gzip.compress(css.read_bytes(), mtime=0)
    css.with_name("site.css.gz").write_bytes(gz)
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    coded, _ = raw_get(client, proto, server.url + CSS_PATH, accept_encoding="gzip")
    identity = get(client, proto, server.url + CSS_PATH)
    assert coded.headers["etag"] != identity.headers["etag"]
    r, body = raw_get(client, proto, server.url + CSS_PATH, accept_encoding="gzip", range="bytes=5-",
                      if_range=coded.headers["etag"])
    assert (r.status_code, body) == (206, gz[5:])
    r, body = raw_get(client, proto, server.url + CSS_PATH, accept_encoding="gzip", range="bytes=5-",
                      if_range=identity.headers["etag"])
    assert (r.status_code, body) == (200, gz)


def test_empty_file_ranges(site: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
                           proto: str) -> None:
    """A zero-length file: 200 with Content-Length 0, and every range unsatisfiable (`bytes */0`)."""
    (site / "static" / "empty.txt").write_bytes(b"")
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    r = get(client, proto, server.url + "/static/empty.txt")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    assert STRONG_ETAG.match(r.headers["etag"])
    for spec in ("bytes=0-", "bytes=-1", "bytes=0-0"):
        r = get(client, proto, server.url + "/static/empty.txt", range=spec)
        assert (r.status_code, r.headers["content-range"]) == (416, "bytes */0"), spec
