"""The peer of the page-load benchmark: a small Quart app, run by Hypercorn, that pushes the same
assets as h2serve's push map before answering the index page.

    BENCH_PAGES=DIR BENCH_STATIC=DIR BENCH_PUSHES='["/static/app.css", ...]' \\
        hypercorn --certfile cert.pem --keyfile key.pem benchmarks.quart_push:app

Pages come from BENCH_PAGES at / (`/` is index.html), assets from BENCH_STATIC through Quart's own
static route at /static/. `make_push_promise(path)` is Quart's spelling (quart.helpers): it sends
the ASGI `http.response.push` message, which Hypercorn turns into a PUSH_PROMISE over HTTP/2 when
the client allows push, and ignores otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from quart import Quart, make_push_promise, send_from_directory

PAGES = Path(os.environ.get("BENCH_PAGES", "templates")).resolve()
STATIC = Path(os.environ.get("BENCH_STATIC", "static")).resolve()
PUSHES: list[str] = json.loads(os.environ.get("BENCH_PUSHES", "[]"))

app = Quart(__name__, static_folder=str(STATIC), static_url_path="/static")


@app.route("/")
async def index():  # type: ignore[no-untyped-def]
    for path in PUSHES:
        await make_push_promise(path)
    return await send_from_directory(PAGES, "index.html")


@app.route("/<path:name>")
async def page(name: str):  # type: ignore[no-untyped-def]
    return await send_from_directory(PAGES, name)
