"""The DevTools (CDP) driver of test_browser. It lives in benchmarks/devtools.py, which the page-load
benchmark (benchmarks/browser.py) uses too; this module keeps the name the tests import from."""

from __future__ import annotations

from benchmarks.devtools import FLAGS, Browser, BrowserError, Message, Page, find_chromium, spki_hash

__all__ = ["FLAGS", "Browser", "BrowserError", "Message", "Page", "find_chromium", "spki_hash"]
