"""A minimal ASGI static-file app, for Hypercorn in the throughput benchmark.

    BENCH_ROOT=DIR hypercorn --certfile cert.pem --keyfile key.pem benchmarks.asgi_static:app

GET or HEAD of /PATH answers the file DIR/PATH with Content-Type and Content-Length: small files
(up to 64 KiB, like h2serve's cache) kept in memory after the first read, larger ones read and sent
256 KiB at a time. Nothing else (no validators, ranges or codings): the least a static server does.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("BENCH_ROOT", ".")).resolve()
CHUNK = 256 * 1024
SMALL = 64 * 1024
_cache: dict[str, tuple[bytes, bytes]] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] not in ("GET", "HEAD"):
        await _plain(send, 405, b"method not allowed\n")
        return
    rel = scope["path"].lstrip("/") or "index.html"
    path = (ROOT / rel).resolve()
    if not path.is_relative_to(ROOT) or not path.is_file():
        await _plain(send, 404, b"not found\n")
        return
    kind = (mimetypes.guess_type(path.name)[0] or "application/octet-stream").encode()
    size = path.stat().st_size
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(size).encode())]})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    if size <= SMALL:
        cached = _cache.get(rel)
        if cached is None:
            cached = _cache[rel] = (kind, path.read_bytes())
        await send({"type": "http.response.body", "body": cached[1]})
        return
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
