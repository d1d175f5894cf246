"""Content codings (h2serve/coding.py and files.py): Accept-Encoding with q-values, on-the-fly gzip,
brotli and zstd cached per file version, precompressed siblings, over real TLS on HTTP/2 and HTTP/1.1.

httpx decodes content codings by itself, so the coded bytes are read with `client.stream()` and
`iter_raw()`; the client sends no Accept-Encoding unless a test gives one.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import httpx
import pytest
import zstandard
from conftest import STATIC, RunningServer, ServerProcess, wait_for

from h2serve.site import coding as codings
from h2serve.site.blocking import WouldBlock
from h2serve.site.coding import MAX_COMPRESSIONS, CompressionCache
from h2serve.site.handler import Site
from h2serve.site.workpool import WorkPool

PROTOCOLS = ["h2", "http/1.1"]
HTTPX_VERSION = {"h2": "HTTP/2", "http/1.1": "HTTP/1.1"}
CSS_PATH = "/static/css/site.css"
CSS = (STATIC / "css/site.css").read_bytes()   # text/css, 6.7 KiB: compressed on the fly
DECODE = {"gzip": gzip.decompress, "br": brotli.decompress, None: lambda b: b,
          # 8 MiB: the largest window RFC 9659 lets a zstd decoder insist on, as browsers do
          # (a stream decoder: the zstd command writes no content size in the frame header)
          "zstd": lambda b: zstandard.ZstdDecompressor(max_window_size=8 << 20).decompressobj().decompress(b)}


@pytest.fixture
def client(proto: str, verify) -> Iterator[httpx.Client]:
    """httpx over TLS verified with the test CA, speaking `proto`, with no default Accept-Encoding."""
    with httpx.Client(http2=proto == "h2", verify=verify, timeout=15) as c:
        del c.headers["accept-encoding"]
        yield c


def fetch(client: httpx.Client, proto: str, url: str, accept_encoding: str | None = None,
          method: str = "GET", **headers: str) -> tuple[httpx.Response, bytes]:
    """One request; the response and its body exactly as sent (not decoded)."""
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if accept_encoding is not None:
        hdrs["accept-encoding"] = accept_encoding
    with client.stream(method, url, headers=hdrs) as r:
        assert r.http_version == HTTPX_VERSION[proto]
        body = b"".join(r.iter_raw())
    assert "accept-encoding" in r.request.headers or accept_encoding is None
    return r, body


def coding_of(r: httpx.Response) -> str | None:
    return r.headers.get("content-encoding")


def curl(ca_file: str, proto: str, url: str, *args: str) -> tuple[dict[str, str], bytes]:
    flag = "--http2" if proto == "h2" else "--http1.1"
    out = subprocess.run(["curl", "-sS", flag, "--cacert", ca_file, "-D", "-", *args, url],
                         capture_output=True, timeout=15, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/2 200" if proto == "h2" else "HTTP/1.1 200"), lines[0]
    return {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])}, body


# -- on the fly --------------------------------------------------------------------------------------

@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_on_the_fly_coding(server: RunningServer, client: httpx.Client, proto: str, coding: str) -> None:
    """A compressible file over 1 KiB in the coding asked for: the body decodes to the file, its
    Content-Length is the coded length, Vary is set, and the ETag is the identity one plus the
    coding (a different representation, a different strong validator)."""
    identity, plain = fetch(client, proto, server.url + CSS_PATH, "identity")
    r, body = fetch(client, proto, server.url + CSS_PATH, coding)
    assert r.status_code == 200
    assert coding_of(r) == coding
    assert DECODE[coding](body) == CSS == plain
    assert len(body) < len(CSS) // 2
    assert r.headers["content-length"] == str(len(body))
    assert r.headers["vary"] == "accept-encoding"
    assert r.headers["etag"] != identity.headers["etag"]
    assert r.headers["etag"] == identity.headers["etag"][:-1] + f'-{coding}"'
    assert not r.headers["etag"].startswith("W/")
    assert r.headers["last-modified"] == identity.headers["last-modified"]
    assert r.headers["content-type"] == "text/css; charset=utf-8"
    # The same request again: the same bytes and ETag (compressed once, then cached).
    again, body2 = fetch(client, proto, server.url + CSS_PATH, coding)
    assert (body2, again.headers["etag"]) == (body, r.headers["etag"])


@pytest.mark.parametrize("accept, chosen", [
    ("gzip", "gzip"),
    ("br", "br"),
    ("br;q=0, gzip", "gzip"),
    ("gzip;q=0", None),
    ("*;q=0, identity", None),
    ("*;q=0", None),
    ("identity;q=0, gzip", "gzip"),
    ("*", "br"),                          # any coding: the server's preference
    ("gzip, br", "br"),                   # a tie: the server's preference
    ("gzip;q=1, br;q=0.5", "gzip"),       # the client's q-values first
    ("GZIP", "gzip"),
    ("x-gzip", "gzip"),
    ("gzip;q=0.5", "gzip"),               # a coding named at all is wanted over unrated identity
    ("identity, gzip;q=0.5", None),       # identity rated higher
    ("identity;q=0.4, gzip;q=0.5", "gzip"),
    ("deflate, compress", None),          # nothing the server offers
    ("identity", None),
    ("", None),
    ("gzip;q=abc", None),                 # unparsable q: not acceptable
    ("zstd, gzip;q=0.1", "zstd"),
    ("gzip, zstd", "zstd"),               # preference: br, zstd, gzip
    ("zstd, br", "br"),
    ("zstd;q=0.5, gzip", "gzip"),
    ("dcz, gzip", "gzip"),                # dcz without a dictionary: not offered
])
def test_accept_encoding_choice(server: RunningServer, client: httpx.Client, proto: str, accept: str,
                                chosen: str | None) -> None:
    """Which coding an Accept-Encoding value gets; whatever it is, the bytes decode to the file and
    Vary: Accept-Encoding is there."""
    r, body = fetch(client, proto, server.url + CSS_PATH, accept)
    assert r.status_code == 200
    assert coding_of(r) == chosen, accept
    assert DECODE[chosen](body) == CSS
    assert r.headers["vary"] == "accept-encoding"


def test_no_accept_encoding_identity_with_vary(server: RunningServer, client: httpx.Client,
                                               proto: str) -> None:
    r, body = fetch(client, proto, server.url + CSS_PATH)
    assert "accept-encoding" not in r.request.headers
    assert coding_of(r) is None
    assert body == CSS
    assert r.headers["vary"] == "accept-encoding"


def test_png_never_compressed(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """An already compressed type is sent as is, and its answer does not vary."""
    png = (STATIC / "img/hero.png").read_bytes()
    for accept in ("gzip, br", "*", "br"):
        r, body = fetch(client, proto, server.url + "/static/img/hero.png", accept)
        assert coding_of(r) is None and body == png
        assert "vary" not in r.headers


def test_small_and_large_text_files_identity(site: Path, make_server: Callable[..., RunningServer],
                                            client: httpx.Client, proto: str) -> None:
    """Under 1 KiB (site.js, 550 bytes) or over 1 MiB (left to precompressed siblings): identity."""
    big = b"".join(b"line %07d of a large text file\n" % i for i in range(40000))
    assert len(big) > 1024 * 1024
    (site / "static" / "big.txt").write_bytes(big)
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    js = (STATIC / "js/site.js").read_bytes()
    assert len(js) < 1024
    for path, content in (("/static/js/site.js", js), ("/static/big.txt", big)):
        r, body = fetch(client, proto, server.url + path, "gzip, br")
        assert coding_of(r) is None, path
        assert body == content
        assert r.headers["vary"] == "accept-encoding"


def test_medium_file_not_in_memory_compressed(site: Path, make_server: Callable[..., RunningServer],
                                              client: httpx.Client, proto: str) -> None:
    """A 300 KiB text file (over the 64 KiB kept in memory, under 1 MiB) is compressed too."""
    text = b"".join(b"<p>paragraph %06d</p>\n" % i for i in range(14000))
    (site / "templates" / "long.html").write_bytes(text)
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    for coding in ("gzip", "br", "zstd"):
        r, body = fetch(client, proto, server.url + "/long", coding)
        assert coding_of(r) == coding
        assert DECODE[coding](body) == text
        assert r.headers["content-length"] == str(len(body))


def test_head_with_coding_same_headers_as_get(server: RunningServer, client: httpx.Client,
                                              proto: str) -> None:
    """HEAD with gzip: the GET's headers, Content-Length being the coded length; no body."""
    get, body = fetch(client, proto, server.url + CSS_PATH, "gzip")
    head, nothing = fetch(client, proto, server.url + CSS_PATH, "gzip", method="HEAD")
    assert nothing == b""
    assert head.status_code == 200
    for name in ("content-encoding", "content-length", "content-type", "etag", "vary", "last-modified",
                 "cache-control", "accept-ranges"):
        assert head.headers[name] == get.headers[name], name
    assert head.headers["content-length"] == str(len(body))


def test_conditional_on_coded_representation(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """If-None-Match with the gzip ETag: 304 for a gzip request, 200 for an identity one (another
    representation, another validator)."""
    r, _ = fetch(client, proto, server.url + CSS_PATH, "gzip")
    etag = r.headers["etag"]
    not_modified, empty = fetch(client, proto, server.url + CSS_PATH, "gzip", if_none_match=etag)
    assert (not_modified.status_code, empty) == (304, b"")
    assert not_modified.headers["etag"] == etag
    assert not_modified.headers["vary"] == "accept-encoding"
    full, plain = fetch(client, proto, server.url + CSS_PATH, "identity", if_none_match=etag)
    assert (full.status_code, plain) == (200, CSS)


def test_curl_compressed(server: RunningServer, proto: str, ca_file: str) -> None:
    """curl --compressed (it offers br, gzip, zstd and deflate) gets a coding it decodes to the file."""
    headers, body = curl(ca_file, proto, server.url + CSS_PATH, "--compressed")
    assert headers["content-encoding"] == "br"
    assert headers["vary"] == "accept-encoding"
    assert body == CSS
    for coding in ("gzip", "zstd"):
        headers, body = curl(ca_file, proto, server.url + CSS_PATH, "--compressed", "-H",
                             f"Accept-Encoding: {coding}")
        assert headers["content-encoding"] == coding
        assert body == CSS


# -- precompressed siblings -------------------------------------------------------------------------

@pytest.fixture
def siblings(site: Path) -> dict[str, bytes]:
    """x.css with .br, .gz and .zst siblings whose content differs from x.css (a marker comment
    first), so an answer decoded from one of them proves it came from the sibling."""
    css = site / "static" / "x.css"
    css.write_bytes(CSS)
    marked = b"/* from a precompressed sibling */\n" + CSS
    files = {"br": brotli.compress(marked, quality=11),
             "gzip": gzip.compress(marked, compresslevel=9, mtime=1_600_000_000)}
    (site / "static" / "x.css.br").write_bytes(files["br"])
    (site / "static" / "x.css.gz").write_bytes(files["gzip"])
    subprocess.run(["zstd", "-q", "-19", "-o", str(site / "static" / "x.css.zst"), "-"], input=marked,
                   check=True, timeout=15)
    files["zstd"] = (site / "static" / "x.css.zst").read_bytes()
    files["marked"] = marked
    return files


@pytest.mark.parametrize("accept, chosen", [
    ("br", "br"), ("gzip", "gzip"), ("zstd", "zstd"), ("gzip, br, zstd", "br"), ("gzip, zstd", "zstd"),
    ("br;q=0.5, gzip", "gzip"), ("identity", None),
])
def test_precompressed_sibling_bytes(site: Path, siblings: dict[str, bytes],
                                     make_server: Callable[..., RunningServer], client: httpx.Client,
                                     proto: str, accept: str, chosen: str | None) -> None:
    """A precompressed sibling is sent byte for byte (its own ETag, with the coding), not a
    compression made here; identity still gets x.css itself."""
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    r, body = fetch(client, proto, server.url + "/static/x.css", accept)
    assert r.status_code == 200
    assert coding_of(r) == chosen
    assert r.headers["vary"] == "accept-encoding"
    if chosen is None:
        assert body == CSS
        assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', r.headers["etag"])
        return
    assert body == siblings[chosen]
    assert r.headers["content-length"] == str(len(siblings[chosen]))
    size = len(siblings[chosen])
    assert re.fullmatch(rf'"{size:x}-[0-9a-f]+-{chosen}"', r.headers["etag"]), r.headers["etag"]
    assert DECODE[chosen](body) == siblings["marked"]
    again, body2 = fetch(client, proto, server.url + "/static/x.css", accept)
    assert (body2, again.headers["etag"]) == (body, r.headers["etag"])


def test_precompressed_sibling_curl(site: Path, siblings: dict[str, bytes],
                                    make_server: Callable[..., RunningServer], proto: str,
                                    ca_file: str) -> None:
    """curl decodes each sibling to the marked text: br, gzip and zstd (sibling only)."""
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    for coding in ("br", "gzip", "zstd"):
        headers, body = curl(ca_file, proto, server.url + "/static/x.css", "--compressed", "-H",
                             f"Accept-Encoding: {coding}")
        assert headers["content-encoding"] == coding
        assert body == siblings["marked"], coding


def test_sibling_of_any_type_and_size(site: Path, make_server: Callable[..., RunningServer],
                                      client: httpx.Client, proto: str) -> None:
    """Siblings serve types never compressed here (a .bin, or a 2 MiB JSON), and when over 64 KiB
    they are streamed from disk."""
    data = b"".join(b'{"n": %d},\n' % i for i in range(200000))
    assert len(data) > 1024 * 1024
    (site / "static" / "data.json").write_bytes(data)
    gz = gzip.compress(data, mtime=0)
    assert len(gz) > 64 * 1024
    (site / "static" / "data.json.gz").write_bytes(gz)
    blob = bytes(range(256)) * 100
    (site / "static" / "blob.bin").write_bytes(blob)
    (site / "static" / "blob.bin.gz").write_bytes(gzip.compress(blob, mtime=0))
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    r, body = fetch(client, proto, server.url + "/static/data.json", "gzip, br")
    assert coding_of(r) == "gzip" and body == gz
    r, body = fetch(client, proto, server.url + "/static/blob.bin", "gzip")
    assert coding_of(r) == "gzip" and gzip.decompress(body) == blob
    assert r.headers["vary"] == "accept-encoding"
    r, body = fetch(client, proto, server.url + "/static/blob.bin", "br")
    assert coding_of(r) is None and body == blob


# -- compressed once -----------------------------------------------------------------------------------

def read_chars(pid: int) -> int:
    """Bytes a process has read through read(2) and the like, sockets included (/proc/PID/io)."""
    io = Path(f"/proc/{pid}/io").read_text()
    return int(re.search(r"^rchar: (\d+)", io, re.M).group(1))  # type: ignore[union-attr]


def test_compressed_once_not_reread(tmp_path: Path, spawn_server: Callable[..., ServerProcess],
                                    verify) -> None:
    """A 700 KiB stylesheet (too big to be kept in memory) is read and compressed once: repeated
    gzip requests are answered from the compressed cache without reading the file again."""
    static = tmp_path / "static"
    static.mkdir()
    text = b"".join(b".rule-%06d { color: #%06x }\n" % (i, i) for i in range(24000))
    assert 64 * 1024 < len(text) < 1024 * 1024
    (static / "app.css").write_bytes(text)
    proc = spawn_server("--static", str(static), "--access-log", "off")
    url = f"https://localhost:{proc.port}/static/app.css"
    with httpx.Client(verify=verify, timeout=15) as c:
        for i in range(11):
            with c.stream("GET", url, headers={"accept-encoding": "gzip"}) as r:
                assert r.headers["content-encoding"] == "gzip"
                assert gzip.decompress(b"".join(r.iter_raw())) == text
            if i == 0:  # compressed now; count from here
                time.sleep(0.1)
                before = read_chars(proc.proc.pid)
    grown = read_chars(proc.proc.pid) - before
    assert grown < len(text), f"server read {grown} bytes for 10 cached answers of a {len(text)}-byte file"


def test_compressed_cache_follows_edits(site: Path, make_server: Callable[..., RunningServer],
                                        client: httpx.Client, proto: str) -> None:
    """An edited file is compressed again for the very next request (the cache is keyed by
    version), whatever its size; the coded ETag changes with it."""
    css = site / "static" / "live.css"
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    etags = set()
    for i in range(5):
        content = (b"/* version %d */\n" % i) + CSS * (1 + i * 5)  # 6.7 KiB to 140 KiB
        css.write_bytes(content)
        for coding in ("gzip", "br"):
            r, body = fetch(client, proto, server.url + "/static/live.css", coding)
            assert coding_of(r) == coding
            assert DECODE[coding](body) == content, (i, coding)
            etags.add(r.headers["etag"])
    assert len(etags) == 10


# -- compressing off the loop: bounded, once per version -------------------------------------------------

class Gate:
    """Stands for `coding.compress`: counts the calls and those running, and holds each one until
    `release()`."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str]] = []
        self.running = 0
        self.most = 0
        self.entered = threading.Semaphore(0)
        self._open = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, data: bytes, coding: str) -> bytes:
        with self._lock:
            self.calls.append((data, coding))
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.release()
        assert self._open.wait(10)
        with self._lock:
            self.running -= 1
        return gzip.compress(data, mtime=0)

    def release(self) -> None:
        self._open.set()


def test_uncached_compression_would_block() -> None:
    cache = CompressionCache()
    with pytest.raises(WouldBlock) as raised:
        cache.get("/a.css", '"1-1"', "gzip", lambda: CSS, block=False)
    assert raised.value.kind == "cpu"
    out = cache.get("/a.css", '"1-1"', "gzip", lambda: CSS)
    assert cache.get("/a.css", '"1-1"', "gzip", lambda: None, block=False) is out
    assert gzip.decompress(out) == CSS


def test_same_version_compressed_once_by_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second thread asking for bytes being compressed waits for them: one compression."""
    gate = Gate()
    monkeypatch.setattr(codings, "compress", gate)
    waiting = threading.Event()

    class Pending(codings._Pending):  # to see the second thread start waiting
        def __init__(self) -> None:
            super().__init__()
            self.done = WaitSpy(waiting)

    monkeypatch.setattr(codings, "_Pending", Pending)
    cache = CompressionCache()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.get, "/a.css", '"1-1"', "gzip", lambda: CSS)
        assert gate.entered.acquire(timeout=10)
        second = pool.submit(cache.get, "/a.css", '"1-1"', "gzip", lambda: CSS)
        assert waiting.wait(10)  # the second is waiting for the first's result
        gate.release()
        assert first.result(10) is second.result(10)
    assert len(gate.calls) == 1


class WaitSpy(threading.Event):
    def __init__(self, waiting: threading.Event) -> None:
        super().__init__()
        self.waiting = waiting

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_compressions_beyond_the_bound_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two at most at once (the bound given): the third waits for a turn, then runs."""
    gate = Gate()
    monkeypatch.setattr(codings, "compress", gate)
    cache = CompressionCache(concurrency=2)
    turns = cache._turns._cond  # its waiters: the threads waiting for a turn
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(cache.get, f"/{i}.css", '"1-1"', "gzip", lambda: CSS) for i in range(3)]
        assert gate.entered.acquire(timeout=10) and gate.entered.acquire(timeout=10)
        wait_for(lambda: len(turns._waiters) == 1, timeout=10)
        assert (len(gate.calls), gate.running) == (2, 2)
        gate.release()
        assert [gzip.decompress(f.result(10)) for f in futures] == [CSS] * 3
    assert (len(gate.calls), gate.most) == (3, 2)
    assert (os.cpu_count() or 2) == MAX_COMPRESSIONS


def test_compression_waiting_does_not_hold_up_file_loads(site: Path) -> None:
    """Every compression turn taken: a file load in an "io" worker thread still answers at once."""
    s = Site.from_folders(root=None, templates=str(site / "templates"), static=str(site / "static"))
    s.compressed = CompressionCache(concurrency=1)
    gate = Gate()
    pool = WorkPool(io_threads=2, cpu_threads=2)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(codings, "compress", gate)
            s.respond("GET", CSS_PATH.encode(), block=True)
            stuck = pool.submit("cpu", lambda: s.respond("GET", CSS_PATH.encode(),
                                                         [(b"accept-encoding", b"gzip")], block=True))
            assert gate.entered.acquire(timeout=10)
            page = pool.submit("io", lambda: s.respond("GET", b"/about", block=True))
            assert page.result(10).status == 200 and not stuck.done()
            gate.release()
            assert stuck.result(10).status == 200
    finally:
        gate.release()
        pool.shutdown(wait=True)
