"""Bytes on the wire for a returning visitor after a deploy, in each content coding h2serve offers.

    python -m benchmarks.bytes [--size 300] [--changed 5]

Two cases, each served by a real h2serve (in this process, cleartext HTTP/2 with prior knowledge
on a loopback port, read with httpx; nothing is timed, so the machine's load does not matter):

* **bundle**: a deterministic, realistic JavaScript bundle of `--size` KiB (benchmarks/jsbundle.py)
  is deployed as `app.<hash1>.js`; the next release rewrites `--changed` of its functions and adds
  one, as `app.<hash2>.js`, and deletes the old file. The visitor holds the old bundle; what does
  the new one cost? (The server served the old one, so it keeps it as a dictionary.)
* **demo**: the demo site (templates/ and static/); the deploy edits a paragraph of the index page
  and one rule of site.css. The returning visitor downloads the page and the stylesheet again
  (every other asset is unchanged and cached). With `[[dictionary]] match = "/static/css/site.css"`
  the old stylesheet is the dictionary for the new one; pages are `no-cache`, which no browser
  keeps as a dictionary, so the page itself gets brotli 11 in the dcz row.

Codings: identity; gzip -6, brotli 5 and zstd 3 (on the fly, from a server without
--precompress-dir); brotli 11 and zstd 19 (precompressed, from a server with it, once the
background encodings are made); dcz (a zstd 19 delta against the old version, RFC 9842). Figures
are response body bytes; the headers are much the same whatever the coding (a path a
`[[dictionary]]` rule matches carries Use-As-Dictionary and the longer Vary in every coding).

Results: a table on standard output and `benchmarks/results/bytes.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from h2serve import Config, Server

from . import jsbundle

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "bytes.json"
OLD_NAME, NEW_NAME = "app.1a2b3c4d.js", "app.5e6f7a8b.js"
DICTIONARIES = [{"match": "/static/js/app.*.js", "match-dest": ["script"]},
                {"match": "/static/css/site.css", "match-dest": ["style"]}]
ROWS = [  # (label, Accept-Encoding, server: "fly" or "best", with the old version's hash)
    ("identity", "identity", "fly", False),
    ("gzip -6 (on the fly)", "gzip", "fly", False),
    ("brotli 5 (on the fly)", "br", "fly", False),
    ("zstd 3 (on the fly)", "zstd", "fly", False),
    ("brotli 11 (precompressed)", "br", "best", False),
    ("zstd 19 (precompressed)", "zstd", "best", False),
    ("dcz (delta, RFC 9842)", "gzip, deflate, br, zstd, dcb, dcz", "best", True),
]


@contextmanager
def running(config: Config) -> Iterator[Server]:
    """A server on its own event loop in a thread, for as long as the block runs."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = Server(config)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def edit_demo(site: Path) -> None:
    """The demo's deploy: a paragraph of the index page and one rule of the stylesheet changed."""
    page = site / "templates" / "index.html"
    text = page.read_text()
    start = text.index("<p>")
    page.write_text(text[:start] + "<p>Now with compression dictionaries.</p>\n" + text[start:])
    css = site / "static" / "css" / "site.css"
    text = css.read_text()
    brace = text.index("}")
    css.write_text(text[:brace] + "  letter-spacing: 0.01em;\n" + text[brace:])


def fetch(client: httpx.Client, url: str, accept: str, dictionary: bytes | None,
          dest: str) -> tuple[int, str]:
    headers = {"accept-encoding": accept, "sec-fetch-dest": dest}
    if dictionary is not None:
        headers["available-dictionary"] = ":" + base64.b64encode(
            hashlib.sha256(dictionary).digest()).decode() + ":"
    with client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200, (url, r.status_code)
        return len(b"".join(r.iter_raw())), r.headers.get("content-encoding", "identity")


def measure(size_kib: int, changed: int) -> dict[str, Any]:
    """Each server serves the first visit (the old versions, which it keeps as dictionaries), then
    the deploy is made on disk, then the second visit is measured in each coding."""
    work = Path(tempfile.mkdtemp(prefix="h2serve-bytes-"))
    old = jsbundle.bundle(size_kib * 1024)
    new = jsbundle.deploy(old, changed)
    old_css = (REPO / "static" / "css" / "site.css").read_bytes()
    results: dict[str, Any] = {"bundle": {}, "demo": {}}
    try:
        for kind in ("fly", "best"):
            site = work / kind
            shutil.copytree(REPO / "templates", site / "templates")
            shutil.copytree(REPO / "static", site / "static")
            js = site / "static" / "js"
            (js / OLD_NAME).write_bytes(old)
            options: dict[str, Any] = {
                "bind": [], "h2c_bind": ["127.0.0.1:0"], "templates": str(site / "templates"),
                "static": str(site / "static"), "access_log": "off", "log_level": "warning",
                "push_manifest": str(REPO / "push_manifest.json"), "dictionary": DICTIONARIES}
            if kind == "best":
                options["precompress_dir"] = str(work / "precompressed")
            with running(Config(**options)) as server, \
                    httpx.Client(http1=False, http2=True, timeout=60) as client:
                base = f"http://127.0.0.1:{server.h2c_port}"
                for path, dest in ((f"/static/js/{OLD_NAME}", "script"), ("/", "document"),
                                   ("/static/css/site.css", "style")):  # the first visit
                    fetch(client, base + path, "br", None, dest)
                site_of = server.services.site
                site_of.dictionaries.wait()
                (js / NEW_NAME).write_bytes(new)  # the deploy
                (js / OLD_NAME).unlink()
                edit_demo(site)
                targets = [("bundle", f"/static/js/{NEW_NAME}", old, "script"),
                           ("demo", "/", None, "document"),
                           ("demo", "/static/css/site.css", old_css, "style")]
                if kind == "best":  # the first requests start the background encodings
                    for _, path, _, dest in targets:
                        for accept in ("br", "zstd"):
                            fetch(client, base + path, accept, None, dest)
                    assert site_of.precompressed is not None
                    site_of.precompressed.wait(120)
                for label, accept, where, with_dictionary in ROWS:
                    if where != kind:
                        continue
                    for case, path, dictionary, dest in targets:
                        sent, coding = fetch(client, base + path, accept,
                                             dictionary if with_dictionary else None, dest)
                        row = results[case].setdefault(label, {"bytes": 0, "codings": []})
                        row["bytes"] += sent
                        row["codings"].append(f"{path}: {coding}")
        results["sizes"] = {"bundle": len(new), "demo page and stylesheet": sum(
            (site / p).stat().st_size for p in ("templates/index.html", "static/css/site.css"))}
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(results: dict[str, Any]) -> str:
    lines = ["| coding | bundle: bytes | % of brotli 11 | demo (page + site.css): bytes | % of brotli 11 |",
             "|---|---|---|---|---|"]
    ref = {case: results[case]["brotli 11 (precompressed)"]["bytes"] for case in ("bundle", "demo")}
    for label, *_ in ROWS:
        cells = [label]
        for case in ("bundle", "demo"):
            sent = results[case][label]["bytes"]
            cells += [f"{sent:,}", f"{100 * sent / ref[case]:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bytes", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=300, help="bundle size in KiB (default: 300)")
    parser.add_argument("--changed", type=int, default=5, help="functions rewritten by the deploy")
    args = parser.parse_args(argv)
    results = measure(args.size, args.changed)
    print(f"bundle: {results['sizes']['bundle']:,} bytes, {args.changed} functions rewritten and one "
          f"added; demo: index.html and site.css edited ({results['sizes']['demo page and stylesheet']:,}"
          f" bytes)")
    print(table(results))
    for case in ("bundle", "demo"):
        print(f"{case} dcz row: " + "; ".join(results[case]["dcz (delta, RFC 9842)"]["codings"]))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"command": "python -m benchmarks.bytes " + " ".join(argv or sys.argv[1:]),
                                   "python": platform.python_version(), **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
