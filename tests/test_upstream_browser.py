"""Chromium in front of h2serve in front of a Flask app (flask-http2-push): the app's preload
Links arrive as a 103 and Chromium fetches the hinted resources from it (Resource Timing
`initiatorType` "early-hints"), on the first load and on a load from learned hints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from conftest import RunningServer
from test_browser import ENTRIES_JS, OpenTab, chromium, open_tab  # noqa: F401  (fixtures)
from test_upstream_proxy import proxy, push_app, site_root  # noqa: F401  (fixtures)

PAGE_ASSETS = {"/static/app.css", "/static/app.js"}


def wait_loaded(page, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while page.evaluate("document.readyState") != "complete":
        assert time.monotonic() < deadline, "the page did not finish loading"
        time.sleep(0.05)


def test_chromium_uses_the_apps_preloads_from_early_hints(
        proxy: Callable[..., RunningServer], open_tab: OpenTab, tmp_path: Path) -> None:  # noqa: F811
    server = proxy(access_log=str(tmp_path / "access.log"))
    for load in ("first (hints from the app's answer)", "second (learned hints)"):
        page = open_tab()
        page.goto(server.url + "/")
        wait_loaded(page)
        assert "hello from the app" in page.evaluate("document.body.textContent"), load
        entries = page.evaluate(ENTRIES_JS)
        assert entries[0]["protocol"] == "h2" and entries[0]["interim"] > 0, (load, entries[0])
        early = {urlsplit(e["name"]).path for e in entries if e["initiator"] == "early-hints"}
        assert early and early <= PAGE_ASSETS, (load, entries)
