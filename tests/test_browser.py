"""A real browser end to end: headless Chromium (Debian's `chromium`, driven over the DevTools
protocol by browser.py) loads the demo site from the real server over h2 and over HTTP/1.1.

Why a browser when curl, nghttp and httpx already test every frame: only a browser shows that the
whole page works as a person gets it, which is where ALPN, TLS, 103 Early Hints, Link preloads,
push refusal, CORS fonts and the page's own JavaScript all meet. Chromium trusts the test leaf
certificate by its public key alone (--ignore-certificate-errors-spki-list), never by switching
verification off. Chromium not starting is a failure (with its log), never a skip.

One browser per module (starting it costs about a second); each test gets a tab in a browser context
of its own, so no cache, cookie or warm connection crosses between tests.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser import Browser, BrowserError, Page, spki_hash
from conftest import REPO, RunningServer

from h2serve.net.certs import DevCerts
from h2serve.proto.h2engine import H2Engine

# What the demo index page loads: its push map lists exactly the stylesheet, script, font and images
# that templates/index.html references.
PAGE_ASSETS = frozenset(json.loads((REPO / "push_manifest.json").read_text())["/"])
# What its 103 and Link headers name: the map's entries but the images (push/manifest.py PRELOAD_TYPES).
HINTED_ASSETS = frozenset(path for path, spec in json.loads(
    (REPO / "push_manifest.json").read_text())["/"].items() if spec["type"] != "image")
# Whatever becomes of the map, these are the page's: its stylesheet, script and largest image.
CORE_ASSETS = frozenset({"/static/css/site.css", "/static/js/site.js", "/static/img/hero.png"})
TITLE = "h2serve demo"

# Every Resource Timing entry of the page, the navigation first, as plain data.
ENTRIES_JS = """performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
  .map(e => ({name: e.name, type: e.entryType, protocol: e.nextHopProtocol,
              initiator: e.initiatorType, status: e.responseStatus,
              interim: e.firstInterimResponseStart || 0}))"""
# Rendering is done and the demo's script has run (it marks <body> when it has).
STATE_JS = """({title: document.title, status: document.getElementById('js-status').textContent,
  ready: document.body.classList.contains('js-ready'), state: document.readyState})"""

Entry = dict[str, Any]
OpenTab = Callable[[], Page]


class LazyBrowser:
    """The module's Chromium, started on first use inside a test, so that a browser that cannot
    start fails that test (with Chromium's own words) instead of erroring in a fixture."""

    def __init__(self, profile: Path, spki: str) -> None:
        self.profile, self.spki = profile, spki
        self.browser: Browser | None = None
        self.error: str | None = None

    def get(self) -> Browser:
        if self.error is not None:
            raise BrowserError(self.error)
        if self.browser is None:
            try:
                self.browser = Browser.launch(self.profile, spki=self.spki)
            except BrowserError as e:
                self.error = str(e)
                raise
        return self.browser

    def close(self) -> None:
        if self.browser is not None:
            self.browser.close()


@pytest.fixture(scope="module")
def chromium(certs: DevCerts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LazyBrowser]:
    """One Chromium for the module, trusting the test server's leaf key; killed at the end."""
    lazy = LazyBrowser(tmp_path_factory.mktemp("chromium"), spki_hash(certs.cert.read_bytes()))
    yield lazy
    lazy.close()


@pytest.fixture
def open_tab(chromium: LazyBrowser) -> Iterator[OpenTab]:
    """Open fresh tabs (each in a new browser context) from inside the test; closed afterwards."""
    pages: list[Page] = []

    def open_() -> Page:
        pages.append(chromium.get().new_page())
        return pages[-1]

    yield open_
    for page in pages:
        page.close()


# -- the page over each protocol -----------------------------------------------------------------


def test_h2_page_loads_with_every_resource_over_h2(make_server: Callable[..., RunningServer],
                                                    open_tab: OpenTab, tmp_path: Path) -> None:
    """The demo page, its stylesheet, script, font and images all arrive over h2 (ALPN h2, the
    certificate trusted by its key), the script runs, and the page renders to a real screenshot."""
    server = make_server()
    page = load(open_tab(), server.url + "/")
    entries = page.evaluate(ENTRIES_JS)
    assert_page_ran(page, "h2")
    assert_all_over(entries, "h2")
    shot = tmp_path / "index.png"
    shot.write_bytes(page.screenshot())
    width, height = png_size(shot.read_bytes())
    assert width >= 800 and height >= 600, (width, height)


def test_chromium_sends_rfc9218_priorities_the_server_reads(
        make_server: Callable[..., RunningServer], open_tab: OpenTab,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Chromium says how urgent each request is (RFC 9218 `priority` header, since Chrome 124 over
    HTTP/2); the server reads a signal for every request of the page, the page and its stylesheet
    come out more urgent than the images, and the page loads over h2."""
    from h2serve.proto import h2priority

    seen: dict[bytes, Any] = {}
    read = h2priority.priority_from_headers

    def recording(headers: list[tuple[bytes, bytes]]) -> Any:
        priority = read(headers)
        path = dict(headers).get(b":path", b"")
        seen[path] = (dict(headers).get(b"priority"), priority)
        return priority

    monkeypatch.setattr(h2priority, "priority_from_headers", recording)
    server = make_server()
    page = load(open_tab(), server.url + "/")
    assert_page_ran(page, "h2")
    assert seen[b"/"][0] is not None, seen  # the browser sent the header
    assert all(value is not None for value, _ in seen.values()), seen
    page_u = seen[b"/"][1].urgency
    css_u = seen[b"/static/css/site.css"][1].urgency
    images = [p for path, (_, p) in seen.items() if path.endswith(b".png")]
    assert images and all(p.urgency > max(page_u, css_u) for p in images), seen


def test_http11_only_server_page_loads_over_http11(make_server: Callable[..., RunningServer],
                                                   open_tab: OpenTab) -> None:
    """A server offering only http/1.1 by ALPN serves the same page, every resource over HTTP/1.1;
    no 103 reaches Chromium (the server sends none over HTTP/1.1 by default, and Chromium would
    ignore one there), so nothing is preloaded from hints."""
    server = make_server(alpn=["http/1.1"])
    page = load(open_tab(), server.url + "/")
    entries = page.evaluate(ENTRIES_JS)
    assert_page_ran(page, "http/1.1")
    assert_all_over(entries, "http/1.1")
    assert not page.events("Network.responseReceivedEarlyHints")
    assert "early-hints" not in {e["initiator"] for e in entries}


# -- 103 Early Hints ---------------------------------------------------------------------------------


def test_chromium_preloads_from_103_early_hints(make_server: Callable[..., RunningServer],
                                                open_tab: OpenTab, tmp_path: Path) -> None:
    """Over h2 the server answers the index page (which has push-map entries: the demo's
    push_manifest.json beside templates/) with a 103 carrying one Link rel=preload per entry (its
    images aside), before
    the 200. What Chromium shows of it:

    - CDP `Network.responseReceivedEarlyHints` on the document's request, whose `headers.link` is
      the Link values joined by newlines;
    - the navigation entry's `firstInterimResponseStart` (when the 103 arrived) is non-zero;
    - preloads started from the 103 have Resource Timing `initiatorType == "early-hints"` (and CDP
      `Network.responseReceived` with `response.fromEarlyHints`).

    Chromium acts on a 103 only for a top-level navigation over HTTP/2 or HTTP/3 (never HTTP/1.1),
    only on the first 103, and only for preload and preconnect; a preload is reused by the page
    only when it matches the page's own request (so the font hint says `crossorigin`, as the
    page's CSS font load is a CORS request). Its documentation warns that `initiatorType` is not
    always "early-hints" for every hinted resource, so at least one must be; the access log then
    shows every hinted resource fetched exactly once: the page used the preloads, not new fetches.
    """
    server = make_server()
    page = load(open_tab(), server.url + "/")
    assert_page_ran(page, "h2")
    assert_document_hinted(page)
    entries = page.evaluate(ENTRIES_JS)
    assert entries[0]["interim"] > 0, entries[0]
    early = {path_of(e) for e in entries if e["initiator"] == "early-hints"}
    assert early and early <= HINTED_ASSETS, early
    from_hints = {urlsplit(r["response"]["url"]).path for r in page.events("Network.responseReceived")
                  if r["response"].get("fromEarlyHints")}
    assert from_hints and from_hints <= HINTED_ASSETS, from_hints
    assert_fetched_once(tmp_path / "access.log", PAGE_ASSETS)


def test_no_early_hints_no_hinted_preloads(make_server: Callable[..., RunningServer],
                                           open_tab: OpenTab) -> None:
    """The control for the test above: with `early_hints="off"` Chromium gets no 103 and no
    resource is marked "early-hints", though the Link headers still ride on the 200."""
    server = make_server(early_hints="off")
    page = load(open_tab(), server.url + "/")
    assert_page_ran(page, "h2")
    assert not page.events("Network.responseReceivedEarlyHints")
    entries = page.evaluate(ENTRIES_JS)
    assert entries[0]["interim"] == 0
    assert not [e for e in entries if e["initiator"] == "early-hints"]


# -- server push ---------------------------------------------------------------------------------


def test_push_map_page_loads_and_chromium_refuses_push(
        make_server: Callable[..., RunningServer], open_tab: OpenTab, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The index page has a push map and push is on, but Chromium (since 106) sends
    SETTINGS_ENABLE_PUSH=0, so the server promises nothing: its `Pusher.plan` is asked with no push
    slots and returns no promises (the 103 and Link headers still go). The one h2 connection is
    still up after the load, every resource was requested by the browser and logged once (nothing
    pushed and fetched again), no push cookie was set, and the server logged nothing at INFO or
    above (no protocol error, reset or GOAWAY)."""
    caplog.set_level(logging.INFO, logger="h2serve")
    server = make_server()
    plans = spy_on_plans(server)
    page = load(open_tab(), server.url + "/")
    assert_page_ran(page, "h2")
    assert_all_over(page.evaluate(ENTRIES_JS), "h2")
    settings = enable_push_settings(server)
    assert settings and set(settings) == {0}, settings
    assert plans == [{"protocol": "h2", "push_slots": 0, "promises": 0, "early_hints": True}]
    assert_fetched_once(tmp_path / "access.log", PAGE_ASSETS)
    assert not [c for c in page.cookies() if c["name"] == "h2push"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []


# -- helpers -------------------------------------------------------------------------------------


def load(page: Page, url: str) -> Page:
    """Navigate `page` to `url` and wait for the load event and the demo script's mark."""
    page.goto(url)
    deadline = time.monotonic() + 10
    while not page.evaluate("document.body.classList.contains('js-ready')"):
        if time.monotonic() > deadline:
            raise AssertionError(f"the demo script did not run: {page.evaluate(STATE_JS)}")
        time.sleep(0.05)
    return page


def assert_page_ran(page: Page, protocol: str) -> None:
    """The right page, completely loaded, with its script run and reporting `protocol`."""
    assert page.evaluate(STATE_JS) == {"title": TITLE, "status": f"JavaScript loaded over {protocol}",
                                       "ready": True, "state": "complete"}


def assert_all_over(entries: list[Entry], protocol: str) -> None:
    """The navigation and every resource came over `protocol` with a 200, and they include every
    asset of the page (the navigation alone coming over `protocol` would prove little)."""
    assert entries and entries[0]["type"] == "navigation", entries
    wrong = [e for e in entries if e["protocol"] != protocol or e["status"] != 200]
    assert not wrong, wrong
    loaded = {path_of(e) for e in entries[1:]}
    assert loaded >= PAGE_ASSETS | CORE_ASSETS, (PAGE_ASSETS | CORE_ASSETS) - loaded


def assert_document_hinted(page: Page) -> None:
    """Chromium got one 103 on the page's own request, with a preload Link per push-map entry
    that is not an image."""
    documents = [r["requestId"] for r in page.events("Network.requestWillBeSent")
                 if r.get("type") == "Document"]
    hints = page.events("Network.responseReceivedEarlyHints")
    assert [h["requestId"] for h in hints] == documents, (hints, documents)
    assert link_targets(hints[0]["headers"]) == HINTED_ASSETS


def assert_fetched_once(access_log: Path, paths: frozenset[str]) -> None:
    """Each of `paths` appears in the access log exactly once, as a 200 (waiting briefly: the
    server writes its log just after the last bytes leave)."""
    deadline = time.monotonic() + 3
    while True:
        counts = {p: requests_logged(access_log, p) for p in paths}
        if all(n == 1 for n in counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counts == dict.fromkeys(paths, 1), access_log.read_text()


def requests_logged(access_log: Path, path: str) -> int:
    text = access_log.read_text() if access_log.exists() else ""
    return sum(f'"GET {path} HTTP/' in line and '" 200 ' in line for line in text.splitlines())


def path_of(entry: Entry) -> str:
    return urlsplit(entry["name"]).path


def link_targets(headers: dict[str, str]) -> frozenset[str]:
    """The targets of rel=preload Link values (CDP joins repeated headers with newlines)."""
    value = next(v for k, v in headers.items() if k.lower() == "link")
    targets = set()
    for link in value.replace("\n", ",").split(","):
        target, _, params = link.strip().partition(";")
        assert "rel=preload" in params, link
        targets.add(target.strip().strip("<>"))
    return frozenset(targets)


def spy_on_plans(server: RunningServer) -> list[dict[str, Any]]:
    """Record, for every answer that has a push plan (a page in the push map), the facts
    `Pusher.plan` was given and what it decided."""
    pusher = server.server.services.pusher
    plan, seen = pusher.plan, []

    def recording(page: Any, client: Any, *, block: bool = True) -> Any:
        decided = plan(page, client, block=block)
        if decided is not None:  # None: an answer the map has nothing for (every asset)
            seen.append({"protocol": client.protocol, "push_slots": client.push_slots,
                         "promises": len(decided.promises), "early_hints": decided.early_hints})
        return decided

    pusher.plan = recording  # type: ignore[method-assign]
    return seen


def enable_push_settings(server: RunningServer) -> list[int]:
    """SETTINGS_ENABLE_PUSH as each open HTTP/2 connection's client set it (read on the server's
    own loop); h2 reports 1 when a client never sent the setting."""
    async def read() -> list[int]:
        return [c.engine.conn.remote_settings.enable_push for c in server.server.registry.connections
                if isinstance(c.engine, H2Engine)]
    return server.call(read())


def png_size(data: bytes) -> tuple[int, int]:
    """Check that `data` is a whole, valid PNG (signature, chunk CRCs, IHDR first, IEND last, image
    data of the declared size) with real content (many different rows); return its size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body, crc = data[pos + 8:pos + 8 + length], data[pos + 8 + length:pos + 12 + length]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", [k for k, _ in chunks]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)  # 8-bit RGB or RGBA
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + width * (3 if colour == 2 else 4)
    assert len(raw) == stride * height
    rows = {raw[i:i + stride] for i in range(0, len(raw), stride)}
    assert len(rows) > height // 4, f"only {len(rows)} distinct rows of {height}: a blank page?"
    return width, height
