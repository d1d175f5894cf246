"""Reverse-proxy mode against real applications: Flask apps run by gunicorn (tests/upstream_apps/),
the two seed extensions as released, h2serve in front with --upstream, real clients (nghttp, httpx,
a raw HTTP/2 client, raw sockets for HTTP/1.1 headers)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import AppProcess, RunningServer, ServerProcess, open_tls
from h2.settings import SettingCodes
from h2client import H2Client
from hyperframe.frame import HeadersFrame, PushPromiseFrame

CSS = b"body { color: #123456 }\n" * 40
JS = b"console.log('hello from the pushed script');\n" * 30
FILES = {"/static/app.css": CSS, "/static/app.js": JS}
MANIFEST = {"/static/app.css": {"type": "style", "weight": 1},
            "/static/app.js": {"type": "script", "weight": 1}}
NO_PUSH = {SettingCodes.ENABLE_PUSH: 0}


@pytest.fixture
def site_root(tmp_path: Path) -> Path:
    """The files h2serve answers itself: the two assets the apps preload, and no index page."""
    root = tmp_path / "public"
    (root / "static").mkdir(parents=True)
    for path, data in FILES.items():
        (root / path.lstrip("/")).write_bytes(data)
    return root


@pytest.fixture
def push_app(upstream_app: Callable[..., AppProcess], tmp_path: Path) -> AppProcess:
    """tests/upstream_apps/pushapp.py (flask-http2-push) with its push_manifest.json."""
    manifest = tmp_path / "push_manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    return upstream_app("pushapp", env={"PUSH_MANIFEST": str(manifest)})


@pytest.fixture
def proxy(make_server: Callable[..., RunningServer], site_root: Path,
          push_app: AppProcess) -> Callable[..., RunningServer]:
    """h2serve serving `site_root`, everything else to the push app; options override."""

    def start(**options: object) -> RunningServer:
        options.setdefault("root", str(site_root))
        options.setdefault("upstream", push_app.url)
        return make_server(**options)

    return start


def header_blocks(client: H2Client, sid: int) -> list[dict[bytes, list[bytes]]]:
    """The header blocks that arrived on stream `sid`, in order, as name -> values."""
    blocks = []
    for event in client.events:
        headers = getattr(event, "headers", None)
        if getattr(event, "stream_id", None) == sid and headers is not None \
                and type(event).__name__ in ("InformationalResponseReceived", "ResponseReceived"):
            block: dict[bytes, list[bytes]] = {}
            for name, value in headers:
                block.setdefault(name, []).append(value)
            blocks.append(block)
    return blocks


def get(client: H2Client, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    sid = client.request(path, headers=headers or [])
    client.receive_until(lambda: client.responses[sid].done
                         and all(client.responses[p].done for p in client.responses[sid].pushed),
                         timeout=15)
    return sid


# -- Links into pushes and 103 Early Hints (part 3) -------------------------------------------------


def test_nghttp_sees_push_promises_for_the_manifest_before_the_page(proxy) -> None:
    """flask-http2-push's one comma-joined field of absolute http:// URLs (built from the Host the
    app saw) becomes a PUSH_PROMISE per file, before the page's HEADERS."""
    server = proxy()
    p = subprocess.run(["nghttp", "-nv", f"{server.url}/"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    promises = [i for i, line in enumerate(lines) if "recv PUSH_PROMISE frame" in line]
    page = next(i for i, line in enumerate(lines) if re.search(r"recv \(stream_id=13\) :status: 200", line))
    assert len(promises) == 2 and max(promises) < page, p.stdout
    promised = re.findall(r"recv \(stream_id=13\) :path: (\S+)", p.stdout)
    assert sorted(promised) == ["/static/app.css", "/static/app.js"]
    # The app's own Link field reaches the client as the app sent it: one field, comma-joined
    # (https here: gunicorn trusts X-Forwarded-Proto from 127.0.0.1; the hints tests cover http).
    origin = f"https://localhost:{server.port}"
    assert (f"link: <{origin}/static/app.css>; rel=preload; as=style,<{origin}/static/app.js>; "
            "rel=preload; as=script") in p.stdout


def test_pushed_bodies_equal_the_files(proxy, ca_file: str) -> None:
    server = proxy()
    with H2Client.tls(server.port, ca_file) as c:
        sid = get(c, "/")
        page = c.responses[sid]
        assert page.status == 200 and b"hello from the app" in page.body
        assert len(page.pushed) == 2
        for pid in page.pushed:
            pushed = c.responses[pid]
            path = dict(pushed.request_headers)[b":path"].decode()
            assert pushed.status == 200 and bytes(pushed.body) == FILES[path]
        # Promises precede the page's HEADERS on the wire.
        first_header = next(f for f in c.frames if isinstance(f.frame, HeadersFrame) and f.stream_id == sid)
        assert all(f.at <= first_header.at for f in c.frames if isinstance(f.frame, PushPromiseFrame))
        assert page.header(b"set-cookie") is not None  # the push cookie, as for static pages


def test_client_without_push_gets_103_with_the_links_before_the_200(proxy, ca_file: str) -> None:
    server = proxy()
    with H2Client.tls(server.port, ca_file, settings=NO_PUSH) as c:
        sid = get(c, "/")
    assert not c.frames_of(PushPromiseFrame)
    blocks = header_blocks(c, sid)
    assert [b[b":status"] for b in blocks] == [[b"103"], [b"200"]]
    links = blocks[0][b"link"]
    assert [link.split(b";")[0] for link in links] == [b"</static/app.css>", b"</static/app.js>"]
    assert all(b'rel="preload"' in link for link in links)


def test_firehose_relative_links_with_a_trailing_comma(upstream_app, make_server, site_root,
                                                        ca_file: str) -> None:
    """Flask-Firehose's `push()` in a Jinja template: relative URLs, a trailing ", "."""
    app = upstream_app("firehoseapp")
    server = make_server(root=str(site_root), upstream=app.url)
    with H2Client.tls(server.port, ca_file) as c:
        sid = get(c, "/")
        page = c.responses[sid]
        assert page.status == 200 and b"hello from firehose" in page.body
        assert page.header(b"link").endswith(b"rel=preload,")  # Firehose's trailing ", " (less OWS)
        paths = sorted(dict(c.responses[p].request_headers)[b":path"] for p in page.pushed)
        assert paths == [b"/static/app.css", b"/static/app.js"]
        assert all(bytes(c.responses[p].body) in (CSS, JS) for p in page.pushed)
    with H2Client.tls(server.port, ca_file, settings=NO_PUSH) as c:
        sid = get(c, "/")
    assert [b[b":status"] for b in header_blocks(c, sid)] == [[b"103"], [b"200"]]


def test_http11_client_gets_no_103_by_default_but_the_app_links(proxy, verify) -> None:
    server = proxy()
    with httpx.Client(http2=False, verify=verify) as client:
        r = client.get(server.url + "/")
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    assert "rel=preload" in r.headers["link"]


# -- learned early hints (part 4) -----------------------------------------------------------------


def test_learned_103_comes_at_once_while_the_app_still_renders(proxy, ca_file: str) -> None:
    """The view sleeps 300 ms; the second request's 103 (learned from the first answer) arrives
    within 50 ms of the request, well before the 200."""
    server = proxy()
    with H2Client.tls(server.port, ca_file, settings=NO_PUSH) as c:
        get(c, "/slow")
        sid = get(c, "/slow")
        sent = next(f.at for f in c.sent_frames if isinstance(f.frame, HeadersFrame) and f.stream_id == sid)
        heads = [f.at for f in c.frames if isinstance(f.frame, HeadersFrame) and f.stream_id == sid]
    blocks = header_blocks(c, sid)
    assert blocks[0][b":status"] == [b"103"] and blocks[-1][b":status"] == [b"200"]
    assert blocks[0][b"link"] == [b'</static/app.css>; rel="preload"; as="style"']
    assert heads[0] - sent < 0.05, heads[0] - sent
    assert heads[-1] - heads[0] > 0.2  # the 200 waited for the app


def test_learned_pushes_go_out_before_the_app_answers(proxy, ca_file: str) -> None:
    server = proxy()
    with H2Client.tls(server.port, ca_file) as c:
        get(c, "/slow")  # learns, and pushes app.css with that answer
    with H2Client.tls(server.port, ca_file) as c:  # a new client: no push cookie
        sid = get(c, "/slow")
        page_head = next(f.at for f in c.frames if isinstance(f.frame, HeadersFrame) and f.stream_id == sid)
        promise = next(f.at for f in c.frames if isinstance(f.frame, PushPromiseFrame))
        pid = c.responses[sid].pushed[0]
        assert bytes(c.responses[pid].body) == CSS
    assert page_head - promise > 0.2


def test_learned_hints_follow_the_app(proxy, push_app: AppProcess, ca_file: str) -> None:
    """When the app's Links change, the next request still gets the old ones first (and then the
    new ones, in a second 103), and the one after gets only the new ones at once."""
    server = proxy()
    with H2Client.tls(server.port, ca_file, settings=NO_PUSH) as c:
        get(c, "/slow?s=0.05")
        httpx.put(push_app.url + "/links", content="</static/app.js>; rel=preload; as=script")
        sid = get(c, "/slow?s=0.05")
        hints = [b[b"link"] for b in header_blocks(c, sid) if b[b":status"] == [b"103"]]
        assert hints == [[b'</static/app.css>; rel="preload"; as="style"'],
                         [b'</static/app.js>; rel="preload"; as="script"']]
        sid = get(c, "/slow?s=0.05")
        hints = [b[b"link"] for b in header_blocks(c, sid) if b[b":status"] == [b"103"]]
        assert hints == [[b'</static/app.js>; rel="preload"; as="script"']]
        httpx.put(push_app.url + "/links", content="")
        get(c, "/slow?s=0.05")
        sid = get(c, "/slow?s=0.05")
        assert [b[b":status"] for b in header_blocks(c, sid)] == [[b"200"]]  # forgotten


def test_learn_hints_off_waits_for_the_app(proxy, ca_file: str) -> None:
    server = proxy(learn_hints="off")
    with H2Client.tls(server.port, ca_file, settings=NO_PUSH) as c:
        get(c, "/slow")
        sid = get(c, "/slow")
        sent = next(f.at for f in c.sent_frames if isinstance(f.frame, HeadersFrame) and f.stream_id == sid)
        heads = [f.at for f in c.frames if isinstance(f.frame, HeadersFrame) and f.stream_id == sid]
    assert [b[b":status"] for b in header_blocks(c, sid)] == [[b"103"], [b"200"]]
    assert heads[0] - sent > 0.25  # the 103 came with the app's answer, not before


# -- bodies both ways (part 1) ---------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_20_mib_post_reaches_the_app_intact(proxy, client: httpx.Client, proto: str, chunked: bool) -> None:
    server = proxy()
    data = os.urandom(20 * 1024 * 1024)
    content: object = data
    if chunked:
        content = (data[i:i + 1_000_003] for i in range(0, len(data), 1_000_003))
    r = client.post(server.url + "/upload", content=content, timeout=60)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert r.http_version == ("HTTP/2" if proto == "h2" else "HTTP/1.1")
    assert r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_large_answer_streams_through(proxy, client: httpx.Client) -> None:
    server = proxy()
    r = client.get(server.url + "/big?blocks=160")  # 10 MiB, chunked by the app
    assert r.status_code == 200
    assert r.content == b"0123456789abcdef" * 4096 * 160


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("h2", [True, False], ids=["h2", "http/1.1"])
def test_upload_to_a_slow_reader_does_not_grow_server_memory(
        spawn_server: Callable[..., ServerProcess], push_app: AppProcess, site_root: Path,
        verify: ssl.SSLContext, h2: bool) -> None:
    """The app reads 16 KiB then sleeps 5 ms: a 48 MiB upload takes seconds, during which the
    server holds at most a window (HTTP/2) or a pipe's worth (HTTP/1.1) of it, not the upload."""
    proc = spawn_server("--root", str(site_root), "--upstream", push_app.url)
    size = 48 * 1024 * 1024
    data = os.urandom(1024 * 1024)
    peak = [0]
    done = threading.Event()
    baseline = rss_kib(proc.proc.pid)

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(proc.proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with httpx.Client(http2=h2, verify=verify, timeout=120) as c:
            r = c.post(f"https://localhost:{proc.port}/upload?pause=0.005",
                       content=(data for _ in range(size // len(data))))
    finally:
        done.set()
        sampler.join()
    assert r.status_code == 200 and r.json()["size"] == size
    assert peak[0] - baseline < 16 * 1024, (baseline, peak[0])  # KiB: far below the 48 MiB sent


def test_body_over_max_body_size_gets_413_before_anything_is_forwarded(proxy, client: httpx.Client) -> None:
    server = proxy(max_body_size=1000)
    r = client.post(server.url + "/upload", content=b"x" * 1001)
    assert r.status_code == 413
    r = client.post(server.url + "/upload", content=b"x" * 1000)
    assert r.status_code == 200 and r.json()["size"] == 1000


def test_h2_body_without_length_over_max_body_size_gets_413(proxy, ca_file: str) -> None:
    """Over HTTP/2 a body need not say its length: the 413 comes once it passes the limit (the
    application's call abandoned), and the connection goes on."""
    server = proxy(max_body_size=50_000)
    with H2Client.tls(server.port, ca_file) as c:
        sid = c.request("/upload?pause=0.2", method="POST", end_stream=False)
        c.conn.send_data(sid, b"x" * 16_000)
        c.conn.send_data(sid, b"x" * 16_000)
        c.conn.send_data(sid, b"x" * 16_000)
        c.conn.send_data(sid, b"x" * 16_000)
        c.flush()
        c.receive_until(lambda: c.responses[sid].status is not None)
        assert c.responses[sid].status == 413
        assert bytes(c.responses[c_get(c, "/static/app.css")].body) == CSS


def c_get(c: H2Client, path: str) -> int:
    sid = c.request(path)
    c.receive_until(lambda: c.responses[sid].done)
    return sid


def test_without_upstream_a_post_still_gets_413(make_server, site_root: Path, client: httpx.Client) -> None:
    server = make_server(root=str(site_root))
    assert client.request("GET", server.url + "/static/app.css", content=b"abc").status_code == 413
    assert client.post(server.url + "/upload", content=b"abc").status_code == 405


# -- failures (part 2) -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upstream_down_gives_502_with_one_log_line_and_the_connection_goes_on(
        make_server, site_root: Path, client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(root=str(site_root), upstream=f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="h2serve"):
        r = client.get(server.url + "/page")
    assert r.status_code == 502
    lines = [rec.getMessage() for rec in caplog.records if "upstream" in rec.getMessage()]
    assert len(lines) == 1 and "502 for GET /page" in lines[0], lines
    assert client.get(server.url + "/static/app.css").content == CSS  # same connection, still usable


def test_upstream_that_never_answers_gives_504_after_the_timeout(
        proxy, client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    server = proxy(upstream_timeout=1.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="h2serve"):
        r = client.get(server.url + "/never")
    assert r.status_code == 504
    assert time.monotonic() - started >= 1.0
    lines = [rec.getMessage() for rec in caplog.records if "upstream" in rec.getMessage()]
    assert len(lines) == 1 and "504 for GET /never" in lines[0], lines
    assert client.get(server.url + "/headers").status_code == 200  # the connection goes on


def raw_h11_get(port: int, ca_file: str, head: bytes) -> bytes:
    """Send `head` as an HTTP/1.1 request over TLS; the whole answer (the server closes)."""
    sock = open_tls(port, ca_file, alpn=["http/1.1"])
    with sock:
        sock.sendall(head)
        out = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return out
            out += data


def test_hop_by_hop_and_spoofed_forwarding_headers_do_not_reach_the_app(proxy, ca_file: str) -> None:
    server = proxy()
    head = (b"GET /headers HTTP/1.1\r\nHost: localhost:%d\r\nConnection: close, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\n"
            b"Proxy-Connection: keep-alive\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n"
            b"X-Forwarded-Proto: gopher\r\nForwarded: for=6.6.6.6\r\nX-Kept: yes\r\n\r\n" % server.port)
    answer = raw_h11_get(server.port, ca_file, head)
    seen = json.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[-1] if b"chunked" in answer
                      else answer.split(b"\r\n\r\n", 1)[1])
    for name in ("x-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert name not in seen, seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == f"localhost:{server.port}"
    assert seen["forwarded"] == f'for=127.0.0.1;proto=https;host="localhost:{server.port}"'
    assert seen["host"] == f"localhost:{server.port}"
    assert seen["x-kept"] == "yes"


def test_over_h2_authority_becomes_host_and_spoofs_are_replaced(proxy, client: httpx.Client, proto) -> None:
    server = proxy()
    r = client.get(server.url + "/headers", headers={"x-forwarded-for": "6.6.6.6", "te": "trailers",
                                                     "cookie": "a=1"})
    seen = r.json()
    assert seen["host"] == f"localhost:{server.port}"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "te" not in seen and seen["cookie"] == "a=1"


# -- the access log (part 5) -------------------------------------------------------------------------


def test_access_log_shows_the_upstream_status_and_time(proxy, client: httpx.Client, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = proxy(access_log=str(log))
    assert client.get(server.url + "/slow?s=0.2").status_code == 200
    assert client.get(server.url + "/static/app.css").status_code == 200
    deadline = time.monotonic() + 3
    while log.read_text().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    slow, static = log.read_text().splitlines()
    took = re.search(r'"GET /slow\?s=0.2 HTTP/[\d.]+" 200 \d+ "-" "[^"]*" upstream=200 (\d+\.\d{3})$', slow)
    assert took and float(took.group(1)) >= 0.2, slow
    assert "upstream=" not in static


# -- the site rules still stand in front of the application ------------------------------------------


def test_auth_and_redirect_rules_guard_what_goes_to_the_app(proxy, client: httpx.Client,
                                                           tmp_path: Path) -> None:
    from rulesite import htpasswd_file

    users = htpasswd_file(tmp_path, {"ann": "correct horse"})
    server = proxy(auth=[{"path": "/upload", "htpasswd": str(users), "realm": "App"}],
                   redirect=[{"from": "/old", "to": "/headers", "status": 308}])
    assert client.post(server.url + "/upload", content=b"abc").status_code == 401
    assert client.get(server.url + "/upload").status_code == 401
    r = client.post(server.url + "/upload", content=b"abc", auth=("ann", "correct horse"))
    assert r.status_code == 200 and r.json()["size"] == 3
    r = client.post(server.url + "/old", content=b"abc")
    assert r.status_code == 308 and r.headers["location"] == "/headers"


def test_client_that_stops_reading_a_large_answer_holds_the_app_back(
        spawn_server: Callable[..., ServerProcess], push_app: AppProcess, site_root: Path,
        ca_file: str) -> None:
    """A 64 MiB answer to a client that grants no window beyond the first 64 KiB: the server
    reads from the application only what it can pass on (256 KiB buffered at most), so its memory
    does not grow with the answer."""
    proc = spawn_server("--root", str(site_root), "--upstream", push_app.url)
    baseline = rss_kib(proc.proc.pid)
    with H2Client.tls(proc.port, ca_file, flow_control="manual") as c:
        sid = c.request("/big?blocks=1024")
        c.receive_for(2.0)
        assert c.responses[sid].status == 200 and c.responses[sid].received <= 65535
        assert rss_kib(proc.proc.pid) - baseline < 16 * 1024
