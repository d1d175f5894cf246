"""Static serving (h2serve/files.py) over real TLS, on HTTP/2 and HTTP/1.1 alike.

Traversal attempts are sent verbatim (raw h11 request lines, raw h2 `:path`, `curl --path-as-is`),
because httpx and curl would otherwise normalise `..` away before the server ever saw it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import subprocess
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import h11
import httpx
import pytest
from conftest import REPO, STATIC, TEMPLATES, RunningServer, ServerProcess, open_tls
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset

HTML = "text/html; charset=utf-8"
PROTOCOLS = ["h2", "http/1.1"]
HTTPX_VERSION = {"h2": "HTTP/2", "http/1.1": "HTTP/1.1"}

# URL path -> (file under the repository, Content-Type)
SITE_FILES = {
    "/": ("templates/index.html", HTML),
    "/about": ("templates/about.html", HTML),
    "/about.html": ("templates/about.html", HTML),
    "/static/css/site.css": ("static/css/site.css", "text/css; charset=utf-8"),
    "/static/js/site.js": ("static/js/site.js", "text/javascript; charset=utf-8"),
    "/static/img/logo.svg": ("static/img/logo.svg", "image/svg+xml; charset=utf-8"),
    "/static/img/hero.png": ("static/img/hero.png", "image/png"),
    "/static/img/icon-push.png": ("static/img/icon-push.png", "image/png"),
    "/static/fonts/h2demo.ttf": ("static/fonts/h2demo.ttf", "font/ttf"),
    "/static/data/sample.json": ("static/data/sample.json", "application/json; charset=utf-8"),
    "/static/docs.txt": ("static/docs.txt", "text/plain; charset=utf-8"),
}


# -- clients -----------------------------------------------------------------------------------------

def fetch(client: httpx.Client, proto: str, method: str, url: str) -> httpx.Response:
    r = client.request(method, url)
    assert r.http_version == HTTPX_VERSION[proto]
    return r


def recv_until_closed(sock, timeout: float = 5) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(out)
        out += data


def raw_h1(port: int, ca_file: str, target: bytes, method: bytes = b"GET") -> tuple[int, bytes, bytes]:
    """Send one request line verbatim over TLS (http/1.1); return status, raw head and raw body."""
    with open_tls(port, ca_file, alpn=["http/1.1"]) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = recv_until_closed(sock)
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {data[:200]!r}"
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    assert match, head
    return int(match.group(1)), head, body


def parse_head(head: bytes) -> dict[bytes, bytes]:
    lines = head.split(b"\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, _, value in (x.partition(b":") for x in lines)}


def raw_h2(port: int, ca_file: str, path: bytes, method: bytes = b"GET"
           ) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """One request on a raw h2 connection with `:path` sent verbatim.

    Returns status, response headers, body and the number of DATA frames that carried bytes.
    """
    config = H2Configuration(client_side=True, header_encoding=None,
                             validate_outbound_headers=False, normalize_outbound_headers=False)
    conn = H2Connection(config=config)
    with open_tls(port, ca_file, alpn=["h2"]) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", method), (b":scheme", b"https"),
                                (b":authority", b"localhost"), (b":path", path)], end_stream=True)
        sock.sendall(conn.data_to_send())
        headers: dict[bytes, bytes] = {}
        body = bytearray()
        data_frames = 0
        while True:
            data = sock.recv(65536)
            assert data, "server closed the connection before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, DataReceived):
                    body += event.data
                    data_frames += bool(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamReset):
                    raise AssertionError(f"stream reset: {event.error_code!r}")
                elif isinstance(event, ConnectionTerminated):
                    raise AssertionError(f"GOAWAY: {event.error_code!r}")
                elif isinstance(event, StreamEnded) and event.stream_id == sid:
                    return int(headers[b":status"]), headers, bytes(body), data_frames
            sock.sendall(conn.data_to_send())


def raw_request(proto: str, port: int, ca_file: str, target: bytes, method: bytes = b"GET"
                ) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers and body of one verbatim request over `proto`."""
    if proto == "h2":
        status, headers, body, _ = raw_h2(port, ca_file, target, method)
        return status, headers, body
    status, head, body = raw_h1(port, ca_file, target, method)
    return status, parse_head(head), body


# -- files of the demo site ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", list(SITE_FILES))
def test_site_file_served_byte_identical(server: RunningServer, client: httpx.Client, proto: str,
                                         path: str) -> None:
    """Each page and asset comes back byte-identical with its type, length, Date and Server."""
    name, ctype = SITE_FILES[path]
    expected = (REPO / name).read_bytes()
    r = fetch(client, proto, "GET", server.url + path)
    assert r.status_code == 200
    assert r.content == expected
    assert r.headers["content-type"] == ctype
    assert r.headers["content-length"] == str(len(expected))
    assert r.headers["server"] == "h2serve"
    date = parsedate_to_datetime(r.headers["date"])
    assert r.headers["date"].endswith(" GMT")
    assert abs(datetime.datetime.now(datetime.UTC) - date) < datetime.timedelta(minutes=1)


def test_server_name_option(make_server: Callable[..., RunningServer], client: httpx.Client,
                            proto: str) -> None:
    """`server_name` sets the Server header."""
    server = make_server(server_name="custom/1.0")
    r = fetch(client, proto, "GET", server.url + "/static/js/site.js")
    assert r.headers["server"] == "custom/1.0"


def test_not_found_serves_site_404_page(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """A missing path is 404 with the site's own templates/404.html as an HTML body."""
    page = (TEMPLATES / "404.html").read_bytes()
    for path in ("/nope", "/static/nope.css", "/static/css/", "/static/", "/static/css/site"):
        r = fetch(client, proto, "GET", server.url + path)
        assert r.status_code == 404, path
        assert r.content == page, path
        assert r.headers["content-type"] == HTML
        assert r.headers["content-length"] == str(len(page))


@pytest.mark.parametrize("path", ["/", "/static/css/site.css", "/static/img/hero.png", "/nope"])
def test_head_same_headers_no_body(server: RunningServer, client: httpx.Client, proto: str,
                                      ca_file: str, path: str) -> None:
    """HEAD answers with GET's status, Content-Length and Content-Type, and no body."""
    get = fetch(client, proto, "GET", server.url + path)
    head = fetch(client, proto, "HEAD", server.url + path)
    assert head.status_code == get.status_code
    assert head.content == b""
    for name in ("content-length", "content-type", "server"):
        assert head.headers[name] == get.headers[name], name
    assert int(head.headers["content-length"]) == len(get.content)
    if proto == "h2":
        # At the frame level: the HEADERS frame ends the stream; not one DATA byte follows.
        status, headers, body, data_frames = raw_h2(server.port, ca_file, path.encode(), b"HEAD")
        assert status == get.status_code
        assert headers[b"content-length"] == get.headers["content-length"].encode()
        assert body == b"" and data_frames == 0
    else:
        # At the byte level: the connection closes right after the blank line that ends the head.
        status, raw_head, body = raw_h1(server.port, ca_file, path.encode(), b"HEAD")
        assert status == get.status_code
        fields = parse_head(raw_head)
        assert fields[b"content-length"] == get.headers["content-length"].encode()
        assert fields[b"content-type"] == get.headers["content-type"].encode()
        assert body == b""


def test_head_h1_with_h11_client(server: RunningServer, ca_file: str) -> None:
    """Over HTTP/1.1 a HEAD then a GET on one connection parse cleanly: the HEAD sent no body bytes."""
    css = (STATIC / "css/site.css").read_bytes()
    conn = h11.Connection(h11.CLIENT)
    with open_tls(server.port, ca_file, alpn=["http/1.1"]) as sock:
        results = []
        for method in (b"HEAD", b"GET"):
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            sock.sendall(conn.send(h11.Request(method=method, target=b"/static/css/site.css",
                                               headers=[(b"host", b"localhost")])))
            sock.sendall(conn.send(h11.EndOfMessage()))
            body = bytearray()
            response = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                    continue
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert response is not None
            results.append((response, bytes(body)))
    (head, head_body), (get, get_body) = results
    assert head.status_code == get.status_code == 200
    assert head_body == b""
    assert get_body == css
    assert dict(head.headers)[b"content-length"] == str(len(css)).encode()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_405(server: RunningServer, client: httpx.Client, proto: str, method: str) -> None:
    """Methods other than GET and HEAD get 405 with `Allow: GET, HEAD`."""
    r = fetch(client, proto, method, server.url + "/static/css/site.css")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert r.headers["content-type"] == HTML
    assert b"405" in r.content


@pytest.mark.parametrize("target", [b"/%zz", b"/%", b"/static/%4", b"/%ff%fe", b"/static/css/%c3%28.css"])
def test_undecodable_path_400(server: RunningServer, ca_file: str, proto: str, target: bytes) -> None:
    """Bad percent-escapes and percent-encoded bytes that are not UTF-8 get 400."""
    status, headers, body = raw_request(proto, server.port, ca_file, target)
    assert status == 400
    assert headers[b"content-type"] == HTML.encode()
    assert b"400 Bad Request" in body


def test_percent_encoded_name_is_decoded(server: RunningServer, client: httpx.Client, proto: str) -> None:
    """A validly percent-encoded path names the same file, and a query string is ignored."""
    css = (STATIC / "css/site.css").read_bytes()
    for path in ("/static/css/%73ite.css", "/static/css/site.css?v=3", "/%61bout"):
        r = fetch(client, proto, "GET", server.url + path)
        assert r.status_code == 200, path
        if "css" in path:
            assert r.content == css


# -- traversal ----------------------------------------------------------------------------------------

MARKER = b"H2SERVE-SECRET-7f3c9a1e"

TRAVERSALS = [
    b"/../secret.txt",
    b"/static/../../secret.txt",
    b"/static/../secret.txt",
    b"/./../secret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/.%2e/secret.txt",
    b"/static/%2e%2e/%2e%2e/secret.txt",
    b"/static/..%2f..%2fsecret.txt",
    b"/static/%2F..%2F..%2Fsecret.txt",
    b"/static/%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    b"/static/..\\..\\secret.txt",
    b"/static/%5c..%5c..%5csecret.txt",
    b"/static/..%5c..%5csecret.txt",
    b"/static/css/site.css%00.txt",
    b"/static/css/%00/../../../secret.txt",
    b"//etc/passwd",
    b"/static//etc/passwd",
    b"/etc/passwd",
    b"/static/%2fetc%2fpasswd",
    b"https://localhost/../secret.txt",
    b"../secret.txt",
    b"secret.txt",
]


@pytest.fixture
def secret_site(site: Path, make_server: Callable[..., RunningServer]) -> RunningServer:
    """The demo site copied under tmp with a marked secret.txt beside (outside) the served folders,
    and symlinks inside the served folders that point out of them."""
    for place in (site, site.parent):
        (place / "secret.txt").write_bytes(MARKER + b"\n")
    (site / "static" / "leak.txt").symlink_to(site / "secret.txt")
    (site / "static" / "outside").symlink_to(site)
    (site / "static" / "css" / "up.txt").symlink_to("../../secret.txt")
    (site / "templates" / "leak.html").symlink_to(site / "secret.txt")
    (site / "templates" / "out").symlink_to(site)
    return make_server(templates=str(site / "templates"), static=str(site / "static"))


def assert_refused(status: int, body: bytes, what: object) -> None:
    assert status in (400, 404), f"{what!r} answered {status}"
    assert MARKER not in body, f"{what!r} leaked the secret"
    assert b"root:x:0:0" not in body, f"{what!r} leaked /etc/passwd"


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_refused(secret_site: RunningServer, ca_file: str, proto: str, target: bytes) -> None:
    """Dot segments, encoded slashes, backslashes, NUL and absolute paths never escape the site."""
    status, _, body = raw_request(proto, secret_site.port, ca_file, target)
    assert_refused(status, body, target)


@pytest.mark.parametrize("target", [b"/static/leak.txt", b"/static/outside/secret.txt",
                                    b"/static/css/up.txt", b"/leak", b"/leak.html", b"/out/secret.txt",
                                    b"/static/outside/templates/about.html"])
def test_symlink_out_of_folder_refused(secret_site: RunningServer, ca_file: str, proto: str,
                                       target: bytes) -> None:
    """A symlink (to a file or a folder) inside a served folder that leads out of it is 404."""
    status, headers, body = raw_request(proto, secret_site.port, ca_file, target)
    assert status == 404, target
    assert_refused(status, body, target)
    assert headers[b"content-type"] == HTML.encode()


def test_symlink_within_folder_served(site: Path, make_server: Callable[..., RunningServer],
                                      client: httpx.Client, proto: str) -> None:
    """Containment is about where a symlink leads: one that stays inside the folder is served."""
    (site / "static" / "alias.css").symlink_to(site / "static" / "css" / "site.css")
    (site / "static" / "styles").symlink_to("css")
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    css = (STATIC / "css/site.css").read_bytes()
    for path in ("/static/alias.css", "/static/styles/site.css"):
        r = fetch(client, proto, "GET", server.url + path)
        assert r.status_code == 200, path
        assert r.content == css


def test_special_files_not_served(site: Path, make_server: Callable[..., RunningServer],
                                  client: httpx.Client, proto: str) -> None:
    """A FIFO is 404 at once (the server never blocks opening it); a folder named like a file is
    a folder: redirected to its slash form, and never taken for `/dir` (no `dir.html` file)."""
    os.mkfifo(site / "static" / "pipe.css")
    (site / "static" / "folder.js").mkdir()
    (site / "templates" / "dir.html").mkdir()
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    for path in ("/static/pipe.css", "/dir"):
        r = fetch(client, proto, "GET", server.url + path)
        assert r.status_code == 404, path
    for path in ("/static/folder.js", "/dir.html"):
        r = fetch(client, proto, "GET", server.url + path)
        assert (r.status_code, r.headers["location"]) == (301, path + "/"), path
    assert fetch(client, proto, "GET", server.url + "/about").status_code == 200


@pytest.mark.parametrize("flag", ["--http1.1", "--http2"])
def test_traversal_refused_curl_path_as_is(secret_site: RunningServer, ca_file: str, flag: str) -> None:
    """The same refusals seen through curl with --path-as-is (no client-side normalisation)."""
    for target in ("/../secret.txt", "/static/../../secret.txt", "/%2e%2e/secret.txt",
                   "/static/..%2f..%2fsecret.txt", "/static/..\\..\\secret.txt", "//etc/passwd"):
        out = subprocess.run(
            ["curl", "-sS", flag, "--path-as-is", "--cacert", ca_file, "-o", "-",
             "-w", "\n%{http_code} %{http_version}", f"{secret_site.url}{target}"],
            capture_output=True, timeout=10, check=True).stdout
        body, _, tail = out.rpartition(b"\n")
        code, version = tail.decode().split()
        assert version == ("2" if flag == "--http2" else "1.1")
        assert_refused(int(code), body, target)


def test_symlink_swapped_in_after_serving_refused(site: Path, make_server: Callable[..., RunningServer],
                                                  client: httpx.Client, proto: str) -> None:
    """A served file replaced by a symlink to the outside is not followed, even while the lookup
    of the old file is still cached (files above the in-memory size are reopened per request)."""
    big = os.urandom(256 * 1024)
    (site / "static" / "big.bin").write_bytes(big)
    (site / "outside.bin").write_bytes(MARKER * (len(big) // len(MARKER) + 1))
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    r = fetch(client, proto, "GET", server.url + "/static/big.bin")
    assert r.status_code == 200 and r.content == big
    (site / "static" / "big.bin").unlink()
    (site / "static" / "big.bin").symlink_to(site / "outside.bin")
    r = fetch(client, proto, "GET", server.url + "/static/big.bin")
    assert r.status_code == 404
    assert MARKER not in r.content


# -- --root mode -----------------------------------------------------------------------------------------

@pytest.fixture
def root_dir(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    (root / "sub").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "index.html").write_text("<p>root index</p>\n")
    (root / "sub" / "page.html").write_text("<p>sub page</p>\n")
    (root / "other" / "index.html").write_text("<p>other index</p>\n")
    (root / "404.html").write_text("<p>custom not found</p>\n")
    (root / "style.css").write_text("p { color: red }\n")
    (tmp_path / "secret.txt").write_bytes(MARKER)
    return root


def test_root_mode(make_server: Callable[..., RunningServer], root_dir: Path, client: httpx.Client,
                   proto: str, ca_file: str) -> None:
    """--root serves one folder: / is index.html, /x is x.html, /dir/ is dir/index.html if any,
    anything else that folder's 404.html."""
    server = make_server(root=str(root_dir))
    expect = {
        "/": (200, "index.html"),
        "/index.html": (200, "index.html"),
        "/sub/page.html": (200, "sub/page.html"),
        "/sub/page": (200, "sub/page.html"),
        "/style.css": (200, "style.css"),
        "/other/": (200, "other/index.html"),
        "/sub/": (404, "404.html"),
        "/sub/missing.html": (404, "404.html"),
        "/missing": (404, "404.html"),
        "/static/css/site.css": (404, "404.html"),  # the demo's static folder is not mounted
    }
    for path, (status, name) in expect.items():
        r = fetch(client, proto, "GET", server.url + path)
        assert r.status_code == status, path
        assert r.content == (root_dir / name).read_bytes(), path
    assert fetch(client, proto, "GET", server.url + "/style.css").headers["content-type"] == (
        "text/css; charset=utf-8")
    status, _, body = raw_request(proto, server.port, ca_file, b"/../secret.txt")
    assert_refused(status, body, "/../secret.txt")


# -- large files ---------------------------------------------------------------------------------------------

def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


def test_large_file_streamed_with_bounded_memory(tmp_path: Path, spawn_server: Callable[..., ServerProcess],
                                                 verify) -> None:
    """A 64 MiB file downloads intact over HTTP/1.1 and h2 while the server's peak memory grows by
    far less than the file: it is streamed, not read whole."""
    static = tmp_path / "static"
    static.mkdir()
    digest = hashlib.sha256()
    size = 64 * 1024 * 1024
    with open(static / "big.bin", "wb") as f:
        for _ in range(size // (1024 * 1024)):
            chunk = os.urandom(1024 * 1024)
            digest.update(chunk)
            f.write(chunk)
    proc = spawn_server("--static", str(static), "--access-log", "off")
    url = f"https://localhost:{proc.port}/static/big.bin"
    for http2 in (False, True):  # warm up both code paths before taking the baseline
        with httpx.Client(http2=http2, verify=verify) as c:
            assert c.get(f"https://localhost:{proc.port}/").status_code == 200
    baseline = vm_hwm_kib(proc.proc.pid)
    for http2, version in ((False, "HTTP/1.1"), (True, "HTTP/2")):
        with httpx.Client(http2=http2, verify=verify, timeout=30) as c, c.stream("GET", url) as r:
            assert r.status_code == 200
            assert r.http_version == version
            assert r.headers["content-length"] == str(size)
            assert r.headers["content-type"] == "application/octet-stream"
            got = hashlib.sha256()
            n = 0
            for chunk in r.iter_bytes():
                got.update(chunk)
                n += len(chunk)
        assert n == size
        assert got.hexdigest() == digest.hexdigest(), version
    growth_mib = (vm_hwm_kib(proc.proc.pid) - baseline) / 1024
    assert growth_mib < 24, f"server peak memory grew by {growth_mib:.1f} MiB for a 64 MiB file"
