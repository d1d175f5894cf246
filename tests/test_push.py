"""Server push, preload links and 103 Early Hints (push.py, the push parts of http2.py and http1.py,
manifest reloading in server.py), on real TLS connections. Frame order is checked on the frames as
received by the raw client in h2client.py, with the header blocks decoded in arrival order."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h11
import httpx
import pytest
from conftest import REPO, STATIC, TEMPLATES, open_tls, wait_for
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2client import H2Client, StreamResponse
from hpack import Decoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
)

from h2serve.push.manifest import build_map
from h2serve.push.plan import COPIED_HEADERS, Client, Pusher
from h2serve.site.blocking import WouldBlock
from h2serve.site.handler import Site

Headers = list[tuple[bytes, bytes]]

MANIFEST = json.loads((REPO / "push_manifest.json").read_text())
# The index page's entries, highest weight first (manifest order within a weight: a stable sort).
INDEX_ENTRIES = sorted(MANIFEST["/"].items(), key=lambda item: -item[1]["weight"])
INDEX_PUSHES = [path for path, _ in INDEX_ENTRIES]
# The preload headers an index page answer carries: one per entry but the images (which Chromium
# ranks better when its parser finds them), fonts are CORS requests.
INDEX_LINKS = [f"<{path}>; rel=preload; as={spec['type']}{'; crossorigin' if spec['type'] == 'font' else ''}"
               .encode() for path, spec in INDEX_ENTRIES if spec["type"] != "image"]
# What a browser sends with a page request; none of it asks for a compressed answer, so pushed
# bodies are the files' bytes.
BROWSER: Headers = [
    (b"accept", b"text/html,application/xhtml+xml,*/*;q=0.8"),
    (b"accept-language", b"en-GB,en;q=0.9"),
    (b"user-agent", b"h2serve-tests/1.0"),
    (b"cache-control", b"max-age=0"),
]
COOKIE_RE = re.compile(rb"^h2push=([A-Za-z0-9_-]+); Path=/; (?:[^;]+; )*HttpOnly; SameSite=Lax; Secure$")


def static_bytes(url_path: str) -> bytes:
    return (STATIC / url_path.removeprefix("/static/")).read_bytes()


# -- order and content of pushes ---------------------------------------------------------------------


def test_every_push_promise_then_the_page_then_the_pushed_responses(server, ca_file):
    """On the page's stream: one PUSH_PROMISE per manifest entry (by weight), then the 200 with the
    Link headers; each pushed stream's HEADERS come after the page's HEADERS. No 103: every
    resource it would hint is promised in the same flight."""
    assert len(INDEX_PUSHES) == 8
    with push_client(server.port, ca_file) as c:
        page = fetch(c, "/", BROWSER)
    assert page.status == 200 and page.informational == []

    blocks = header_blocks(c)
    on_page = [b for b in blocks if b.stream_id == page.stream_id]
    assert [b.kind for b in on_page] == ["PUSH_PROMISE"] * 8 + ["HEADERS"]
    promises, final = on_page[:-1], on_page[-1]
    assert final.get(b":status") == b"200"
    assert final.all(b"link") == INDEX_LINKS

    # Promised in weight order: style, script, font, then the images.
    assert [p.get(b":path").decode() for p in promises] == INDEX_PUSHES
    weights = [MANIFEST["/"][p.get(b":path").decode()]["weight"] for p in promises]
    assert weights == sorted(weights, reverse=True) and weights[0] == 256 and weights[-1] == 32
    assert [p.promised for p in promises] == page.pushed

    # Nothing of the page or of any pushed stream before the last PUSH_PROMISE ...
    last_promise = promises[-1].index
    for i, wire in enumerate(c.frames[:last_promise]):
        assert wire.stream_id not in page.pushed, i
        assert not (wire.stream_id == page.stream_id and isinstance(wire.frame, DataFrame)), i
    assert not any(isinstance(w.frame, PushPromiseFrame) for w in c.frames[final.index:])
    # ... and each pushed stream's HEADERS (its 200) after the page's HEADERS, before its DATA.
    for pid in page.pushed:
        pushed_headers = [b for b in blocks if b.stream_id == pid]
        assert len(pushed_headers) == 1 and pushed_headers[0].kind == "HEADERS"
        assert pushed_headers[0].index > final.index
        assert pushed_headers[0].get(b":status") == b"200"
        first_data = next(i for i, w in enumerate(c.frames)
                          if w.stream_id == pid and isinstance(w.frame, DataFrame))
        assert first_data > pushed_headers[0].index
        assert c.responses[pid].ended
        assert bytes(c.responses[pid].body) == static_bytes(promised_path(c.responses[pid]))


def test_promised_requests_copy_only_the_headers_that_shape_the_response(server, ca_file):
    assert set(COPIED_HEADERS) == {b"accept", b"accept-encoding", b"accept-language", b"user-agent",
                                   b"cache-control"}
    sent = [*BROWSER, (b"accept-encoding", b"identity"), (b"cookie", b"x=1"), (b"x-custom", b"1")]
    with push_client(server.port, ca_file) as c:
        page = fetch(c, "/", sent)
    copied = [(n, v) for n, v in sent if n in COPIED_HEADERS]
    assert len(copied) == 5
    assert len(page.pushed) == 8
    for pid, path in zip(page.pushed, INDEX_PUSHES, strict=True):
        assert c.responses[pid].request_headers == [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", c.authority),
            (b":path", path.encode()), *copied]
        names = {n for n, _ in c.responses[pid].request_headers}
        assert b"cookie" not in names and b"x-custom" not in names


def test_cleartext_h2c_promises_scheme_http_and_a_cookie_without_secure(server):
    with H2Client.h2c(server.h2c_port, settings={SettingCodes.ENABLE_PUSH: 1}) as c:
        page = fetch(c, "/", BROWSER)
    assert [c.responses[p].request_headers[1] for p in page.pushed] == [(b":scheme", b"http")] * 8
    cookie = page.header(b"set-cookie")
    assert cookie is not None and cookie.endswith(b"; HttpOnly; SameSite=Lax")


def test_pushed_response_equals_a_plain_get_on_a_fresh_connection(server, ca_file):
    """A gzip-accepting client: whatever coding the handler picks, push and GET pick the same."""
    sent = [*BROWSER, (b"accept-encoding", b"gzip, deflate")]
    with push_client(server.port, ca_file) as c:
        page = fetch(c, "/", sent)
    assert len(page.pushed) == 8
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as fresh:
        for pid in page.pushed:
            pushed = c.responses[pid]
            copied = [(n, v) for n, v in pushed.request_headers if not n.startswith(b":")]
            plain = fetch(fresh, promised_path(pushed), copied)
            assert plain.status == pushed.status == 200
            assert without_date(plain.headers) == without_date(pushed.headers), promised_path(pushed)
            assert plain.body == pushed.body
            assert pushed.ended and not plain.pushed


def test_nghttp_receives_the_push_promises(server):
    p = subprocess.run(["nghttp", "-nv", f"{server.url}/"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    promised: dict[int, str] = {}
    path = None
    for line in p.stdout.splitlines():
        header = re.search(r"recv \(stream_id=\d+\) :path: (\S+)", line)
        if header:
            path = header.group(1)
        elif "promised_stream_id=" in line:
            pid = int(re.search(r"promised_stream_id=(\d+)", line).group(1))  # type: ignore[union-attr]
            promised[pid] = path  # type: ignore[assignment]
    assert p.stdout.count("recv PUSH_PROMISE frame") == 8
    assert sorted(promised) == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [promised[pid] for pid in sorted(promised)] == INDEX_PUSHES


# -- when the client refuses or limits push -----------------------------------------------------------


def test_push_disabled_client_gets_links_and_103_but_no_promise(server, ca_file, verify):
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as c:
        page = fetch(c, "/", BROWSER)
    assert not c.frames_of(PushPromiseFrame)
    assert page.status == 200 and page.pushed == []
    assert all_headers(page.headers, b"link") == INDEX_LINKS
    assert page.header(b"set-cookie") is None  # nothing pushed, nothing to remember
    on_page = [b for b in header_blocks(c) if b.stream_id == page.stream_id]
    assert [b.get(b":status") for b in on_page] == [b"103", b"200"]
    assert on_page[0].all(b"link") == INDEX_LINKS

    with httpx.Client(http2=True, verify=verify) as client:
        r = client.get(server.url + "/")
    assert r.http_version == "HTTP/2" and r.status_code == 200
    assert r.headers.get_list("link") == [v.decode() for v in INDEX_LINKS]
    assert "</static/fonts/h2demo.ttf>; rel=preload; as=font; crossorigin" in r.headers.get_list("link")


@pytest.mark.parametrize("max_streams", [0, 2, 3])
def test_pushes_capped_by_client_max_concurrent_streams(server, ca_file, max_streams):
    """The first ones by weight are pushed, the rest skipped; 0 means no push at all."""
    with push_client(server.port, ca_file, {SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}) as c:
        page = fetch(c, "/", BROWSER)
    assert page.status == 200 and page.body == (TEMPLATES / "index.html").read_bytes()
    assert pushed_paths(c, page) == INDEX_PUSHES[:max_streams]
    assert len(c.frames_of(PushPromiseFrame)) == max_streams
    assert all(c.responses[p].ended for p in page.pushed)
    assert all_headers(page.headers, b"link") == INDEX_LINKS  # the rest are still announced
    # ... and hinted first: the 103 comes before the promises, with every link.
    on_page = [b for b in header_blocks(c) if b.stream_id == page.stream_id]
    assert on_page[0].get(b":status") == b"103" and on_page[0].all(b"link") == INDEX_LINKS
    assert [b.kind for b in on_page[1:]] == ["PUSH_PROMISE"] * max_streams + ["HEADERS"]


def test_reset_pushed_streams_get_no_more_data_and_the_connection_goes_on(server, ca_file):
    """With a 100-byte window every stream stalls after 100 bytes; the client then opens the window
    of two pushed streams and resets them (CANCEL, REFUSED_STREAM) in one write. The server must
    send nothing more on them, complete the others and the page, and answer a new request."""
    window = 100
    c = push_client(server.port, ca_file, {SettingCodes.INITIAL_WINDOW_SIZE: window}, flow_control="manual")
    with c:
        sid = c.request("/", headers=BROWSER)
        page = c.responses[sid]
        c.receive_until(lambda: len(page.pushed) == 8 and all(
            c.stream_received.get(s, 0) == window for s in (sid, *page.pushed)))
        by_path = {promised_path(c.responses[p]): p for p in page.pushed}
        resets = {by_path["/static/fonts/h2demo.ttf"]: ErrorCodes.CANCEL,
                  by_path["/static/img/hero.png"]: ErrorCodes.REFUSED_STREAM}
        for pid, code in resets.items():  # room to send more, and the reset, in one write
            c.conn.increment_flow_control_window(1 << 20, pid)
            c.conn.reset_stream(pid, code)
        c.conn.increment_flow_control_window(1 << 22)
        c.flush()
        at_reset = len(c.frames)
        for s in (sid, *page.pushed):
            if s not in resets:
                c.grant(s, 1 << 20, connection=False)
        c.receive_until(lambda: page.ended and all(c.responses[p].ended for p in page.pushed
                                                    if p not in resets))
        assert page.body == (TEMPLATES / "index.html").read_bytes()
        for pid in page.pushed:
            if pid not in resets:
                assert bytes(c.responses[pid].body) == static_bytes(promised_path(c.responses[pid]))
        for pid in resets:
            late = [w for w in c.frames[at_reset:] if w.stream_id == pid and isinstance(w.frame, DataFrame)]
            assert late == []
            assert c.responses[pid].received == window and not c.responses[pid].ended
        assert not c.goaways

        again = c.request("/about", headers=BROWSER)
        c.grant(again, 1 << 20, connection=False)
        c.receive_until(lambda: c.responses[again].done)
        assert c.responses[again].status == 200
        assert c.responses[again].body == (TEMPLATES / "about.html").read_bytes()
        assert c.responses[again].pushed == []  # what /about would push was promised on / already


# -- never push ----------------------------------------------------------------------------------------


def test_head_of_a_page_gets_links_but_no_promise_no_hints(server, ca_file):
    """HEAD carries the Link headers GET would (RFC 9110 section 9.3.2), but no 103 and no push."""
    with push_client(server.port, ca_file) as c:
        page = fetch(c, "/", BROWSER, method="HEAD")
        get = fetch(c, "/", BROWSER)
    assert page.status == 200 and page.body == b""
    assert len(c.frames_of(PushPromiseFrame)) == 8  # all of them for the GET, none for the HEAD
    assert page.informational == []
    assert all_headers(page.headers, b"link") == all_headers(get.headers, b"link") != []


def test_404_and_non_page_answers_get_no_promise(server, ca_file):
    with push_client(server.port, ca_file) as c:
        missing = fetch(c, "/no-such-page", BROWSER)
        asset = fetch(c, "/static/css/site.css", BROWSER)
    assert missing.status == 404 and asset.status == 200
    assert not c.frames_of(PushPromiseFrame)
    for r in (missing, asset):
        assert r.informational == [] and all_headers(r.headers, b"link") == []


def test_304_page_answer_gets_no_promise(server, ca_file):
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as c:
        etag = fetch(c, "/", BROWSER).header(b"etag")
    assert etag is not None
    with push_client(server.port, ca_file) as c:
        page = fetch(c, "/", [*BROWSER, (b"if-none-match", etag)])
    assert page.status == 304
    assert not c.frames_of(PushPromiseFrame) and page.informational == []


def test_second_page_request_on_a_connection_pushes_nothing_again(server, ca_file):
    with push_client(server.port, ca_file) as c:
        first = fetch(c, "/", BROWSER)
        second = fetch(c, "/", BROWSER)
        about = fetch(c, "/about", BROWSER)  # all of its entries were pushed with / already
    assert len(first.pushed) == 8
    assert second.pushed == [] and about.pushed == []
    assert len(c.frames_of(PushPromiseFrame)) == 8
    assert all_headers(second.headers, b"link") == INDEX_LINKS
    assert second.informational == []  # everything it would hint was pushed with the first
    assert second.header(b"set-cookie") is None


def test_http11_gets_links_but_no_103_by_default(server, ca_file):
    informational, response, body = h1_get(server.port, ca_file, "/")
    assert informational == []
    assert response.status_code == 200 and body == (TEMPLATES / "index.html").read_bytes()
    assert all_headers(response.headers, b"link") == INDEX_LINKS
    assert all_headers(response.headers, b"set-cookie") == []  # nothing pushed over HTTP/1.1


def test_no_push_for_a_request_that_arrives_with_the_clients_goaway(server, ca_file):
    """The request and a GOAWAY(last_stream_id=0) in one write: the page is answered, but a client
    that said it will take no stream of ours is promised none."""
    with push_client(server.port, ca_file) as c:
        c.receive_until(lambda: bool(c.server_settings))
        sid = c.conn.get_next_available_stream_id()
        c.responses[sid] = StreamResponse(sid)
        c.conn.send_headers(sid, page_request(c, "/"), end_stream=True)
        c.write(c.conn.data_to_send() + GoAwayFrame(0, last_stream_id=0).serialize())
        c.receive_until(lambda: c.responses[sid].done)
        c.wait_closed()  # the page was the last stream: the server closes
    page = c.responses[sid]
    assert page.status == 200 and page.ended
    assert page.body == (TEMPLATES / "index.html").read_bytes()
    assert not c.frames_of(PushPromiseFrame)
    assert all_headers(page.headers, b"link") == INDEX_LINKS


def test_page_request_cancelled_in_the_same_write_is_dropped_and_the_connection_goes_on(server, ca_file):
    """A request and its RST_STREAM read together: no 103, no promise, no answer on that stream,
    and the next page on the connection is answered and pushed as usual."""
    with push_client(server.port, ca_file) as c:
        c.receive_until(lambda: bool(c.server_settings))
        sid = c.conn.get_next_available_stream_id()
        c.responses[sid] = StreamResponse(sid)
        c.conn.send_headers(sid, page_request(c, "/"), end_stream=True)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.flush()  # one write
        about = fetch(c, "/about", BROWSER)
    assert about.status == 200 and about.body == (TEMPLATES / "about.html").read_bytes()
    assert pushed_paths(c, about) == [p for p, _ in sorted(MANIFEST["/about.html"].items(),
                                                           key=lambda item: -item[1]["weight"])]
    assert not [w for w in c.frames if w.stream_id == sid]
    assert not c.goaways


def test_no_push_while_the_server_shuts_down(server, ca_file):
    """A request that arrives after the server's first (shutdown) GOAWAY is still answered, with
    its links, but nothing is pushed with it."""
    with push_client(server.port, ca_file) as c:
        c.receive_until(lambda: bool(c.server_settings))
        stopping = asyncio.run_coroutine_threadsafe(server.server.stop(5), server.loop)
        # Raw reads up to the GOAWAY: h2 would answer the shutdown PING at once, and the server
        # would then close an idle connection before the request is sent.
        data = read_until_goaway(c.sock)
        sid = c.request("/", headers=BROWSER)
        c.receive_bytes(data)
        c.receive_until(lambda: c.responses[sid].done)
    stopping.result(10)
    page = c.responses[sid]
    assert c.goaways and c.goaways[0].last_stream_id == 2**31 - 1
    assert page.status == 200 and page.body == (TEMPLATES / "index.html").read_bytes()
    assert not c.frames_of(PushPromiseFrame)
    assert all_headers(page.headers, b"link") == INDEX_LINKS


# -- the push cookie ----------------------------------------------------------------------------------


def test_push_cookie_skips_what_the_client_has_until_a_file_changes(make_server, site, ca_file):
    manifest = site / "push_manifest.json"  # the default place: beside templates/
    shutil.copyfile(REPO / "push_manifest.json", manifest)
    running = make_server(templates=str(site / "templates"), static=str(site / "static"),
                          push_manifest=str(manifest))

    first_client, first = visit(running.port, ca_file)
    assert pushed_paths(first_client, first) == INDEX_PUSHES
    set_cookie = first.header(b"set-cookie")
    assert set_cookie is not None and len(set_cookie) < 1024
    match = COOKIE_RE.match(set_cookie)
    assert match, set_cookie
    cookie = (b"cookie", b"theme=dark; h2push=" + match.group(1))

    second_client, second = visit(running.port, ca_file, [cookie])
    assert second.status == 200 and second.pushed == []
    assert not second_client.frames_of(PushPromiseFrame)
    assert all_headers(second.headers, b"link") == INDEX_LINKS

    js = site / "static/js/site.js"
    st = js.stat()
    os.utime(js, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # same bytes, new validator

    def changed() -> tuple[H2Client, StreamResponse] | None:
        c, page = visit(running.port, ca_file, [cookie])
        return (c, page) if page.pushed else None

    third_client, third = poll(changed, timeout=5)  # once the server's file cache sees the change
    assert pushed_paths(third_client, third) == ["/static/js/site.js"]
    assert bytes(third_client.responses[third.pushed[0]].body) == js.read_bytes()
    assert third.header(b"set-cookie") is not None


def test_no_push_cookie_pushes_every_new_connection_again(make_server, server, ca_file):
    _, first = visit(server.port, ca_file)
    match = COOKIE_RE.match(first.header(b"set-cookie") or b"")
    assert match
    no_cookie = make_server(push_cookie="")
    for _ in range(2):  # even with a valid cookie from a server that sets them
        c, page = visit(no_cookie.port, ca_file, [(b"cookie", b"h2push=" + match.group(1))])
        assert pushed_paths(c, page) == INDEX_PUSHES
        assert page.header(b"set-cookie") is None


def test_push_cookie_for_200_resources_is_under_1_kib(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html>")
    for i in range(200):
        (tmp_path / f"a{i:03}.js").write_text(f"// {i}")
    site = Site.from_folders(root=str(tmp_path), templates="", static="")
    pmap = build_map({f"/a{i:03}.js": {"type": "script", "weight": 1} for i in range(200)}, site, "m.json")
    pusher = Pusher(site, pmap)
    page = site.lookup(("",))
    assert page is not None

    def plan(headers: Headers):
        return pusher.plan(page, Client("h2", "https", b"localhost", headers, push_slots=200))

    first = plan([])
    assert first is not None and len(first.promises) == 200
    assert first.set_cookie is not None and len(first.set_cookie) < 1024
    value = first.set_cookie.split(b";", 1)[0]
    again = plan([(b"cookie", value)])
    assert again is not None and again.promises == []  # it remembers all 200


def test_a_page_answer_makes_its_map_entries_ready_once_per_version_and_coding(tmp_path):
    """On a page's answer the pusher has each map entry answered once in a worker thread with the
    page request's Accept-Encoding, so that the browser's own requests find them loaded and
    compressed (a stylesheet still being compressed waits behind images that were ready)."""
    site = Site.from_folders(root=None, templates=str(TEMPLATES), static=str(STATIC))
    pusher = Pusher(site, build_map(MANIFEST, site, "m.json"))
    page = site.lookup(("",))
    assert page is not None
    br = [(b"accept-encoding", b"br")]
    with pytest.raises(WouldBlock):  # cold: the stylesheet must be read and compressed first
        site.respond("GET", b"/static/css/site.css", br, block=False)
    submitted: list[tuple[str, Callable[[], None]]] = []
    pusher.warm(page, [(b"user-agent", b"x"), *br], lambda kind, fn: submitted.append((kind, fn)))
    assert [kind for kind, _ in submitted] == ["io"] * len(INDEX_PUSHES)
    for _, fn in submitted:
        fn()
    for path in INDEX_PUSHES:  # every entry now answers from memory, in the coding asked for
        response = site.respond("GET", path.encode(), br, block=False)
        assert response.status == 200
        if path.endswith(".css"):
            assert (b"content-encoding", b"br") in response.headers
        if response.body is not None:
            response.body.close()
    pusher.warm(page, br, lambda kind, fn: submitted.append((kind, fn)))
    assert len(submitted) == len(INDEX_PUSHES)  # the same page version and coding: nothing more
    pusher.warm(page, [(b"accept-encoding", b"gzip")], lambda kind, fn: submitted.append((kind, fn)))
    assert len(submitted) == 2 * len(INDEX_PUSHES)


def test_a_fresh_servers_first_page_visit_prepares_the_stylesheet(make_server, ca_file):
    """Over the real server: after one GET of the page, the stylesheet's compressed answer is
    ready before it is asked for."""
    running = make_server()
    site = running.server.services.site
    br = [(b"accept-encoding", b"br")]
    with pytest.raises(WouldBlock):
        site.respond("GET", b"/static/css/site.css", br, block=False)
    with push_client(running.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as c:
        page = fetch(c, "/", [*BROWSER, *br])
    assert page.header(b":status") == b"200" and page.pushed == []

    def ready() -> bool:
        try:
            response = site.respond("GET", b"/static/css/site.css", br, block=False)
        except WouldBlock:
            return False
        if response.body is not None:
            response.body.close()
        return (b"content-encoding", b"br") in response.headers

    wait_for(ready)


# -- preload links and Early Hints -------------------------------------------------------------------


def test_early_hints_off_sends_no_103_but_keeps_the_links(make_server, ca_file):
    running = make_server(early_hints="off")
    with push_client(running.port, ca_file) as c:
        page = fetch(c, "/", BROWSER)
    assert page.informational == []
    assert all_headers(page.headers, b"link") == INDEX_LINKS
    assert len(page.pushed) == 8
    informational, response, _ = h1_get(running.port, ca_file, "/")
    assert informational == [] and all_headers(response.headers, b"link") == INDEX_LINKS


def test_early_hints_all_sends_103_over_http11_but_not_to_http10(make_server, ca_file):
    running = make_server(early_hints="all")
    informational, response, body = h1_get(running.port, ca_file, "/")
    assert [i.status_code for i in informational] == [103]
    assert all_headers(informational[0].headers, b"link") == INDEX_LINKS
    assert response.status_code == 200 and all_headers(response.headers, b"link") == INDEX_LINKS
    assert body == (TEMPLATES / "index.html").read_bytes()

    informational, response, body = h1_get(running.port, ca_file, "/", version=b"1.0")
    assert informational == []
    assert response.status_code == 200 and all_headers(response.headers, b"link") == INDEX_LINKS

    with H2Client.tls(running.port, ca_file, settings={SettingCodes.ENABLE_PUSH: 0}) as c:
        page = fetch(c, "/", BROWSER)
    assert [dict(h)[b":status"] for h in page.informational] == [b"103"]


def test_no_preload_links_means_no_link_headers_and_no_103(make_server, ca_file):
    running = make_server(preload_links=False)
    with push_client(running.port, ca_file) as c:
        page = fetch(c, "/", BROWSER)
    assert page.status == 200 and page.informational == []
    assert all_headers(page.headers, b"link") == []
    assert pushed_paths(c, page) == INDEX_PUSHES  # pushing is a setting of its own
    informational, response, _ = h1_get(running.port, ca_file, "/")
    assert informational == [] and all_headers(response.headers, b"link") == []


# -- manifests: errors, reloading, all pages, derived ----------------------------------------------------


BAD_MANIFESTS = {
    "invalid-json": ('{"/": {"/static/css/site.css": ', ["not valid JSON"]),
    "bad-type": ({"/": {"/static/css/site.css": {"type": "stylesheet", "weight": 1}}},
                 ["'/static/css/site.css'", "'stylesheet'"]),
    "bad-weight": ({"/": {"/static/js/site.js": {"type": "script", "weight": 300}}},
                   ["'/static/js/site.js'", "weight 300"]),
    "missing-file": ({"/": {"/static/css/nope.css": {"type": "style", "weight": 1}}},
                     ["'/static/css/nope.css'", "no such file"]),
    "other-origin": ({"https://cdn.example.com/app.js": {"type": "script", "weight": 1}},
                     ["'https://cdn.example.com/app.js'", "no such file"]),
    "not-an-object": ([1, 2], ["JSON object"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_fails_startup_with_one_line(tmp_path, certs, case):
    content, fragments = BAD_MANIFESTS[case]
    bad = tmp_path / f"{case}.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    result = subprocess.run(
        [sys.executable, "-m", "h2serve", "--bind", "127.0.0.1:0", "--cert", str(certs.cert),
         "--key", str(certs.key), "--templates", str(TEMPLATES), "--static", str(STATIC),
         "--push-manifest", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in [str(bad), *fragments]:
        assert fragment in lines[0], lines[0]


def test_missing_manifest_file_fails_startup(tmp_path, certs):
    missing = tmp_path / "nowhere.json"
    result = subprocess.run(
        [sys.executable, "-m", "h2serve", "--bind", "127.0.0.1:0", "--cert", str(certs.cert),
         "--key", str(certs.key), "--push-manifest", str(missing)],
        cwd=REPO, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "cannot read" in lines[0], result.stderr


def flat_manifest(*paths: str) -> str:
    types = {".css": "style", ".js": "script", ".ttf": "font", ".svg": "image"}
    return json.dumps({p: {"type": types[Path(p).suffix], "weight": 256 - i} for i, p in enumerate(paths)})


CSS_LINK = "</static/css/site.css>; rel=preload; as=style"
JS_LINK = "</static/js/site.js>; rel=preload; as=script"


def test_sighup_reloads_the_manifest_and_keeps_the_old_one_when_broken(spawn_server, tmp_path, verify):
    manifest = tmp_path / "push.json"
    manifest.write_text(flat_manifest("/static/css/site.css"))
    proc = spawn_server("--push-manifest", str(manifest), "--access-log", "off")
    url = f"https://localhost:{proc.port}/"
    with httpx.Client(verify=verify) as client:
        def links() -> list[str]:
            return client.get(url).headers.get_list("link")

        assert links() == [CSS_LINK]
        manifest.write_text(flat_manifest("/static/css/site.css", "/static/js/site.js"))
        proc.proc.send_signal(signal.SIGHUP)
        poll(lambda: links() == [CSS_LINK, JS_LINK], timeout=2)

        manifest.write_text('{"/static/css/site.css": ')
        proc.proc.send_signal(signal.SIGHUP)
        error = poll(lambda: next((line for line in proc.stderr_lines if " ERROR " in line), None),
                     timeout=2)
        assert str(manifest) in error and "not valid JSON" in error and "keeping the old one" in error
        assert links() == [CSS_LINK, JS_LINK]
        assert proc.proc.poll() is None


def test_reload_option_picks_up_a_change_without_a_signal(spawn_server, tmp_path, verify):
    manifest = tmp_path / "push.json"
    manifest.write_text(flat_manifest("/static/css/site.css"))
    proc = spawn_server("--push-manifest", str(manifest), "--reload", "--access-log", "off")
    url = f"https://localhost:{proc.port}/"
    with httpx.Client(verify=verify) as client:
        assert client.get(url).headers.get_list("link") == [CSS_LINK]
        manifest.write_text(flat_manifest("/static/css/site.css", "/static/js/site.js"))
        poll(lambda: client.get(url).headers.get_list("link") == [CSS_LINK, JS_LINK], timeout=3)


def follow_push_map(running) -> tuple[asyncio.Task, list[float]]:
    """Start the --reload task on a running server, with a polling interval no test outlives: a
    reload seen is the file watcher's doing. Returns the task and the times of the reloads."""
    server = running.server
    reloads: list[float] = []
    reload = server.reload_push_map

    def counted() -> bool:
        reloads.append(time.monotonic())
        return reload()

    server.reload_push_map = counted

    async def start() -> asyncio.Task:
        return asyncio.ensure_future(server.watch_push_map(interval=3600))

    return running.call(start()), reloads


def test_reload_follows_the_manifest_by_inotify(make_server, tmp_path, verify):
    """--reload with inotify: the manifest's folder is watched; edits to the manifest (three
    writes at once, as an editor saves) reload the map once, shortly after; other files in its
    folder reload nothing."""
    manifest = tmp_path / "push.json"
    manifest.write_text(flat_manifest("/static/css/site.css"))
    running = make_server(push_manifest=str(manifest))
    task, reloads = follow_push_map(running)
    try:
        poll(lambda: str(tmp_path.resolve()) in running.server._watcher._folders, timeout=5)
        (tmp_path / "unrelated.txt").write_text("not a push map source\n")
        for paths in (("/static/js/site.js",), ("/static/css/site.css",),
                      ("/static/css/site.css", "/static/js/site.js")):
            manifest.write_text(flat_manifest(*paths))
        with httpx.Client(verify=verify) as client:
            poll(lambda: client.get(running.url).headers.get_list("link") == [CSS_LINK, JS_LINK],
                 timeout=5)
        assert len(reloads) == 1
    finally:
        running.loop.call_soon_threadsafe(task.cancel)


def test_reload_polls_where_no_file_watcher_runs(make_server, tmp_path, verify):
    manifest = tmp_path / "push.json"
    manifest.write_text(flat_manifest("/static/css/site.css"))
    running = make_server(push_manifest=str(manifest))
    watcher, running.server._watcher = running.server._watcher, None  # as where inotify is missing

    async def start() -> asyncio.Task:
        return asyncio.ensure_future(running.server.watch_push_map(interval=0.1))

    task = running.call(start())
    try:
        with httpx.Client(verify=verify) as client:
            assert client.get(running.url).headers.get_list("link") == [CSS_LINK]
            # The polling starts from the times seen when it began: edit until one is noticed.
            poll(lambda: manifest.write_text(flat_manifest("/static/css/site.css", "/static/js/site.js"))
                 and client.get(running.url).headers.get_list("link") == [CSS_LINK, JS_LINK],
                 timeout=5)
    finally:
        running.loop.call_soon_threadsafe(task.cancel)
        running.server._watcher = watcher  # for stop() to close


def test_reload_with_auto_push_follows_new_folders(make_server, site, verify):
    """--reload --auto-push: every folder of the site is watched, and a folder made later too, so
    a page created in it, then edited, changes the map each time."""
    running = make_server(templates=str(site / "templates"), static=str(site / "static"),
                          auto_push=True)
    task, _ = follow_push_map(running)
    folders = running.server._watcher._folders
    try:
        every = [d for root in ("templates", "static") for d, _, _ in os.walk(site.resolve() / root)]
        poll(lambda: all(d in folders for d in every), timeout=5)
        (site / "templates" / "blog").mkdir()
        page = site / "templates" / "blog" / "post.html"
        page.write_text('<link rel="stylesheet" href="/static/css/site.css">')
        with httpx.Client(verify=verify) as client:
            def links() -> list[str]:
                return client.get(running.url + "/blog/post").headers.get_list("link")

            poll(lambda: CSS_LINK in links(), timeout=5)
            assert str(site.resolve() / "templates" / "blog") in folders
            page.write_text('<script src="/static/js/site.js"></script>')
            poll(lambda: links() == [JS_LINK], timeout=5)
    finally:
        running.loop.call_soon_threadsafe(task.cancel)


def test_push_all_pages_applies_a_flat_manifest_to_every_page(make_server, tmp_path, ca_file):
    manifest = tmp_path / "flat.json"
    manifest.write_text(flat_manifest("/static/css/site.css", "/static/js/site.js"))
    expected = ["/static/css/site.css", "/static/js/site.js"]
    for all_pages, on_about in ((True, expected), (False, [])):
        running = make_server(push_manifest=str(manifest), push_all_pages=all_pages)
        with push_client(running.port, ca_file) as c:
            about = fetch(c, "/about", BROWSER)
            index = fetch(c, "/", BROWSER)
        assert pushed_paths(c, about) == on_about
        assert len(all_headers(about.headers, b"link")) == len(on_about)
        assert pushed_paths(c, index) == ([] if all_pages else expected)  # never twice per connection


def test_auto_push_pushes_what_the_html_references(make_server, site, ca_file):
    (site / "templates/plain.html").write_text(
        '<!doctype html><link rel="stylesheet" href="/static/css/site.css">'
        '<script src="https://cdn.example.com/lib.js"></script><img src="data:image/png;base64,AA==">')
    running = make_server(templates=str(site / "templates"), static=str(site / "static"), auto_push=True)
    with push_client(running.port, ca_file) as c:
        plain = fetch(c, "/plain", BROWSER)
    # The stylesheet, and the font its @font-face uses; nothing from another origin or a data: URL.
    # Only the stylesheet is hinted: the page does not preload the font, which it may never use.
    assert pushed_paths(c, plain) == ["/static/css/site.css", "/static/fonts/h2demo.ttf"]
    assert all_headers(plain.headers, b"link") == [b"</static/css/site.css>; rel=preload; as=style"]
    with push_client(running.port, ca_file) as c:
        about = fetch(c, "/about", BROWSER)
    assert "/static/css/site.css" in pushed_paths(c, about)


def test_auto_push_hints_what_the_page_preloads_and_pushes_its_images(make_server, site, ca_file):
    """A derived map pushes the page's images but hints them only when the page preloads one; a
    font its CSS names is hinted once the page preloads it, wherever the preload stands."""
    (site / "templates/hero.html").write_text(
        '<!doctype html><link rel="stylesheet" href="/static/css/site.css">'
        '<link rel="preload" href="/static/fonts/h2demo.ttf" as="font" crossorigin>'
        '<link rel="preload" href="/static/img/hero.png" as="image">'
        '<img src="/static/img/hero.png"><img src="/static/img/logo.svg">')
    running = make_server(templates=str(site / "templates"), static=str(site / "static"), auto_push=True)
    with push_client(running.port, ca_file) as c:
        page = fetch(c, "/hero", BROWSER)
    assert pushed_paths(c, page) == ["/static/css/site.css", "/static/fonts/h2demo.ttf",
                                     "/static/img/hero.png", "/static/img/logo.svg"]
    assert all_headers(page.headers, b"link") == [
        b"</static/css/site.css>; rel=preload; as=style",
        b"</static/fonts/h2demo.ttf>; rel=preload; as=font; crossorigin",
        b"</static/img/hero.png>; rel=preload; as=image"]


# -- helpers -----------------------------------------------------------------------------------------


def push_client(port: int, ca_file: str, settings: dict[int, int] | None = None, **kwargs) -> H2Client:
    """A verified TLS h2 connection whose SETTINGS allow push (plus `settings`)."""
    return H2Client.tls(port, ca_file, settings={SettingCodes.ENABLE_PUSH: 1, **(settings or {})}, **kwargs)


def fetch(client: H2Client, path: str, headers: Iterable[tuple[bytes, bytes]] = (), *,
          method: str = "GET", timeout: float = 10) -> StreamResponse:
    """Request `path` and read until it and every stream promised with it are done."""
    sid = client.request(path, method=method, headers=list(headers))
    r = client.responses[sid]
    client.receive_until(lambda: r.done and all(client.responses[p].done for p in r.pushed), timeout)
    return r


def page_request(client: H2Client, path: str) -> Headers:
    """A browser's GET of `path` with its pseudo-headers, for streams opened by hand."""
    return [(b":method", b"GET"), (b":scheme", client.scheme), (b":authority", client.authority),
            (b":path", path.encode()), *BROWSER]


def visit(port: int, ca_file: str, headers: Headers = ()) -> tuple[H2Client, StreamResponse]:
    """GET / on a new push-enabled connection, closed after."""
    with push_client(port, ca_file) as c:
        return c, fetch(c, "/", [*BROWSER, *headers])


def pushed_paths(client: H2Client, page: StreamResponse) -> list[str]:
    return [promised_path(client.responses[p]) for p in page.pushed]


def promised_path(pushed: StreamResponse) -> str:
    return dict(pushed.request_headers)[b":path"].decode()


def all_headers(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def without_date(headers: Headers) -> Headers:
    return [(n, v) for n, v in headers if n != b"date"]


@dataclass
class Block:
    """One header block as received: HEADERS or PUSH_PROMISE (with its CONTINUATIONs)."""

    index: int          # position of its first frame in client.frames
    kind: str
    stream_id: int
    promised: int | None
    headers: Headers

    def get(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def all(self, name: bytes) -> list[bytes]:
        return all_headers(self.headers, name)


def header_blocks(client: H2Client) -> list[Block]:
    """Every header block the client received, decoded in arrival order by an HPACK decoder of our
    own (independent of h2's events), with where it sits among the received frames."""
    decoder = Decoder()
    blocks: list[Block] = []
    start: tuple[int, HeadersFrame | PushPromiseFrame] | None = None
    data = bytearray()
    for i, wire in enumerate(client.frames):
        frame = wire.frame
        if isinstance(frame, HeadersFrame | PushPromiseFrame):
            start, data = (i, frame), bytearray(frame.data)
        elif isinstance(frame, ContinuationFrame):
            data += frame.data
        else:
            continue
        if "END_HEADERS" in frame.flags and start is not None:
            index, first = start
            promised = first.promised_stream_id if isinstance(first, PushPromiseFrame) else None
            kind = "PUSH_PROMISE" if promised is not None else "HEADERS"
            blocks.append(Block(index, kind, first.stream_id, promised,
                                [(bytes(n), bytes(v)) for n, v in decoder.decode(bytes(data), raw=True)]))
            start = None
    return blocks


def h1_get(port: int, ca_file: str, path: str, *, version: bytes = b"1.1"
           ) -> tuple[list[h11.InformationalResponse], h11.Response, bytes]:
    """One GET over TLS with ALPN http/1.1, parsed by h11: the 1xx responses, the response, the body."""
    head = [b"GET " + path.encode() + b" HTTP/" + version, b"host: localhost",
            *(n + b": " + v for n, v in BROWSER)]
    conn = h11.Connection(h11.CLIENT)
    # h11 only writes HTTP/1.1: the request goes out as bytes of our own, and h11 is told of an
    # equivalent one so that it parses the answer.
    conn.send(h11.Request(method=b"GET", target=path.encode(), headers=[(b"host", b"localhost")]))
    conn.send(h11.EndOfMessage())
    with open_tls(port, ca_file, alpn=["http/1.1"]) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        informational: list[h11.InformationalResponse] = []
        response = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return informational, response, bytes(body)
            else:
                raise AssertionError(f"unexpected {event!r}")


def read_until_goaway(sock, timeout: float = 5) -> bytes:
    """Raw bytes from the server until they include its first GOAWAY frame (and whatever came with it)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        pos = 0
        while len(data) - pos >= 9:
            end = pos + 9 + int.from_bytes(data[pos:pos + 3], "big")
            if len(data) < end:
                break
            if data[pos + 3] == GoAwayFrame.type:
                return bytes(data)
            pos = end
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no GOAWAY in time"
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a GOAWAY"
        data += chunk


def poll(check: Callable[[], object], timeout: float, interval: float = 0.05):
    """Call `check` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(interval)
