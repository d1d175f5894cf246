"""The in-memory ceiling: what the h2 library alone costs a server per small-file request.

    python -m benchmarks.ceiling [--requests N] [--runs R]

A client and a server `H2Connection` are wired together in memory: no sockets, no TLS, no event
loop, no file lookup. The client sends GETs ten at a time (as h2load's `-m 10` does); the server
side takes the bytes (`receive_data`), answers each RequestReceived with a 200 (`send_headers` with
the headers h2serve sends for a 1 KiB file, then `send_data` of 1 KiB with END_STREAM) and collects
its output (`data_to_send`). Only that server side is timed; the client's work is not.

The server connection uses h2serve's own `H2Configuration` and SETTINGS (proto/compat.py), so this is the
ceiling for the configuration the server actually runs: any server built on h2 in this process,
spending nothing at all on I/O, files or logging, answers at most this many requests per second
per core. Two request shapes: h2load's minimal headers, and the headers a browser sends.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from h2.settings import SettingCodes, Settings

from h2serve.accesslog import AccessLog
from h2serve.config import Config
from h2serve.proto.compat import H2_CONFIG
from h2serve.proto.exchange import Services
from h2serve.proto.h2engine import H2Engine
from h2serve.push.plan import Pusher
from h2serve.site.handler import Site

MINIMAL = [
    (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:8443"),
    (b":path", b"/1k.bin"), (b"user-agent", b"h2load nghttp2/1.52.0"),
]
BROWSER = [
    (b":method", b"GET"), (b":authority", b"localhost:8443"), (b":scheme", b"https"),
    (b":path", b"/static/img/photo-1.png"),
    (b"sec-ch-ua", b'"Chromium";v="156", "Not)A;Brand";v="24"'),
    (b"sec-ch-ua-mobile", b"?0"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    b"Chrome/156.0.0.0 Safari/537.36"),
    (b"sec-ch-ua-platform", b'"Linux"'),
    (b"accept", b"image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"),
    (b"sec-fetch-site", b"same-origin"), (b"sec-fetch-mode", b"no-cors"),
    (b"sec-fetch-dest", b"image"), (b"referer", b"https://localhost:8443/"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"accept-language", b"en-GB,en-US;q=0.9,en;q=0.8"), (b"priority", b"u=2, i"),
]
# What h2serve answers for a 1 KiB file (files.py): the ceiling sends the same header list.
RESPONSE = [
    (b":status", b"200"), (b"content-type", b"application/octet-stream"),
    (b"etag", b'"400-18a2b3c4d5e6f708"'), (b"last-modified", b"Sun, 22 Nov 2026 21:03:44 GMT"),
    (b"cache-control", b"public, max-age=3600"), (b"accept-ranges", b"bytes"),
    (b"content-length", b"1024"), (b"date", b"Sun, 22 Nov 2026 21:04:00 GMT"),
    (b"server", b"h2serve"),
]
BODY = bytes(1024)
BATCH = 10


def _pair() -> tuple[H2Connection, H2Connection, bytes]:
    """A connected client and server, preface and SETTINGS exchanged; the client's pending bytes."""
    cfg = Config()
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2_CONFIG)
    server.local_settings = Settings(client=False, initial_values={
        SettingCodes.MAX_CONCURRENT_STREAMS: cfg.max_concurrent_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: cfg.initial_window_size,
        SettingCodes.MAX_HEADER_LIST_SIZE: cfg.max_header_list_size,
    })
    client.initiate_connection()
    client.increment_flow_control_window(2**30)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client, server, client.data_to_send()


def _answer(server: H2Connection, data: bytes) -> bytes:
    """The timed part: what any h2 server must do for a batch of requests."""
    for event in server.receive_data(data):
        if type(event) is RequestReceived:
            server.send_headers(event.stream_id, RESPONSE)
            server.send_data(event.stream_id, BODY, end_stream=True)
    return server.data_to_send()


def measure(request: list[tuple[bytes, bytes]], requests: int) -> float:
    """Server-side seconds per request, over `requests` requests on fresh connections of at most
    1,000 streams each (so that stream ids and h2's tables stay in a realistic range)."""
    spent, done = 0.0, 0
    while done < requests:
        client, server, pending = _pair()
        for _ in range(min(1000, requests - done) // BATCH):
            for _ in range(BATCH):
                client.send_headers(client.get_next_available_stream_id(), request, end_stream=True)
            data = pending + client.data_to_send()
            t0 = time.thread_time()
            out = _answer(server, data)
            spent += time.thread_time() - t0
            for event in client.receive_data(out):
                length = getattr(event, "flow_controlled_length", 0)
                if length:
                    client.acknowledge_received_data(length, event.stream_id)
            pending = client.data_to_send()
            done += BATCH
    return spent / done


class _MemoryHost:
    """The engine's `Host` with no event loop: blocking work runs at once (the file is warm after
    the first request anyway), and output is pulled after each batch."""

    def now(self) -> float:
        return time.monotonic()

    def defer(self, kind: str, work: Callable[[], None],
              done: Callable[[BaseException | None], None]) -> None:
        try:
            work()
        except Exception as e:
            done(e)
        else:
            done(None)

    def wake(self) -> None:
        pass


def _services(folder: Path) -> Services:
    """h2serve's own site, push planner and access log (logging off) over a folder with 1k.bin."""
    (folder / "1k.bin").write_bytes(BODY)
    for name in ("static/img",):
        (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "static/img/photo-1.png").write_bytes(BODY)
    cfg = Config(root=str(folder), access_log="off")
    site = Site.from_folders(root=cfg.root, templates=cfg.templates, static=cfg.static)
    return Services(cfg, site, Pusher.from_config(cfg, site), AccessLog.open("off"))


def measure_h2serve(request: list[tuple[bytes, bytes]], requests: int) -> float:
    """Like `measure`, but the server side is h2serve's `H2Engine` (proto/h2engine.py) with its site
    and file cache: the server's whole per-request work except TLS, sockets and the event loop."""
    with tempfile.TemporaryDirectory() as tmp:
        services = _services(Path(tmp))
        host = _MemoryHost()
        spent, done = 0.0, 0
        while done < requests:
            client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            client.initiate_connection()
            client.increment_flow_control_window(2**30)
            engine = H2Engine(services, host, tls=True, client="127.0.0.1")
            engine.start()
            for _ in range(min(1000, requests - done) // BATCH):
                for _ in range(BATCH):
                    client.send_headers(client.get_next_available_stream_id(), request, end_stream=True)
                data = client.data_to_send()
                t0 = time.thread_time()
                engine.receive(data)
                out = b"".join(iter(engine.output, b""))
                spent += time.thread_time() - t0
                for event in client.receive_data(out):
                    length = getattr(event, "flow_controlled_length", 0)
                    if length:
                        client.acknowledge_received_data(length, event.stream_id)
                done += BATCH
            engine.connection_lost()
        return spent / done


def run(requests: int = 20000, runs: int = 5, server: bool = True) -> dict[str, Any]:
    """Median of `runs` runs for each request shape: microseconds and requests/s per core."""
    out: dict[str, Any] = {}
    cases = [("minimal", MINIMAL, measure), ("browser", BROWSER, measure)]
    if server:
        cases += [
            ("h2serve minimal", MINIMAL, measure_h2serve),
            ("h2serve browser", BROWSER, measure_h2serve),
        ]
    for name, request, how in cases:
        per = sorted(how(request, requests) for _ in range(runs))
        median = statistics.median(per)
        out[name] = {"us_per_request": round(median * 1e6, 1), "req_per_s": round(1 / median),
                     "spread_us": [round(per[0] * 1e6, 1), round(per[-1] * 1e6, 1)]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per run (default 20000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per shape; the median counts (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--no-server", action="store_true",
                        help="skip the same measure of h2serve's own protocol layer")
    args = parser.parse_args(argv)
    result = run(args.requests, args.runs, not args.no_server)
    if args.json:
        print(json.dumps(result))
    else:
        for name, r in result.items():
            print(f"{name:16} {r['us_per_request']:6.1f} us/request  {r['req_per_s']:6,} req/s per core"
                  f"  (runs {r['spread_us'][0]}-{r['spread_us'][1]} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
