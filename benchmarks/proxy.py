"""The reverse-proxy benchmark: a page from a Flask app that takes 200 ms to render, with 20
assets, loaded by headless Chromium through the latency relay.

    python -m benchmarks.proxy              # RTT 50 ms, no cap, 7 loads per server
    python -m benchmarks.proxy --runs 3

The application is benchmarks/proxy_app.py under gunicorn (one worker, 8 threads), one instance
on cleartext HTTP/1.1 for the proxies and one over TLS for "gunicorn alone". In front of it:

- h2serve --upstream with learned hints on (the default): the 103 for / goes out as soon as the
  request arrives, so Chromium fetches the stylesheet and scripts while the app still renders;
- h2serve --upstream --learn-hints off: the 103 comes with the app's answer;
- nginx (Debian's) with its ordinary configuration: /static/ from disk, everything else by
  `proxy_pass` (HTTP/1.1 keep-alive to the app), h2 to the browser; nginx has no 103;
- gunicorn alone over HTTP/1.1 (TLS), the assets served by Flask.

Each load is a fresh browser context (cold cache, new connections); every server gets one
unmeasured load first (which is also what teaches h2serve the page's hints). Loads go round the
servers in turn. Results: medians of first contentful paint and the load event, in a table on
standard output and in `benchmarks/results/proxy.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import peers, sites
from benchmarks.browser import Cell, RelayThread, _ms, contextmanager_all, load_once, nginx_head, run_nginx
from benchmarks.devtools import Browser, BrowserError, spki_hash

RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = ("h2serve-learned", "h2serve-no-learn", "nginx", "gunicorn")
NOTES = {
    "h2serve-learned": "h2serve --upstream (learned hints on)",
    "h2serve-no-learn": "h2serve --upstream --learn-hints off",
    "nginx": "nginx: /static/ from disk, proxy_pass the rest",
    "gunicorn": "gunicorn alone, HTTP/1.1 over TLS",
}


def make_assets(folder: Path, seed: int = 15) -> Path:
    """20 assets: a 30 KiB stylesheet, four scripts of 20-50 KiB in the head, 15 images of 5-30
    KiB (real PNGs) in the body; about 400 KiB in all."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a-site.css").write_bytes(b"".join(
        b".c%d { color: #%06x; margin: %dpx }\n" % (i, rng.randrange(1 << 24), i % 40)
        for i in range(900))[:30 * 1024])
    for i in range(4):
        size = rng.randrange(20, 50) * 1024
        (folder / f"b-app{i}.js").write_bytes(b"".join(
            b"var v%d = %d;\n" % (j, rng.randrange(10**6)) for j in range(size // 10))[:size])
    for i in range(15):
        side = rng.randrange(40, 90)
        (folder / f"c-img{i:02d}.png").write_bytes(sites.png(side, side, rng))
    return folder


def nginx_proxy_config(prefix: Path, port: int, static: Path, upstream_port: int, cert: Path,
                       key: Path, *, root_user: bool, mime: Path | None) -> str:
    """nginx.conf: one worker, h2 over TLS, /static/ from disk, the rest to the app."""
    return f"""{nginx_head(prefix, root_user=root_user, mime=mime)}    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location /static/ {{
            alias {static}/;
            expires 1h;
        }}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def start_gunicorn(static: Path, work: Path, *, certs: peers.Certs | None = None
                   ) -> peers.ServerProcess:
    port = peers.free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
           "--threads", "8", "--no-control-socket", "--chdir", str(Path(__file__).parent),
           "proxy_app:app"]
    if certs is not None:
        cmd += ["--certfile", str(certs.cert), "--keyfile", str(certs.key)]
    env = peers._env(PROXY_STATIC=str(static))
    return peers._start("gunicorn", peers.pinned(cmd, 1), port, work / f"gunicorn-{port}.log", env=env)


def start_nginx(static: Path, upstream: int, certs: peers.Certs, work: Path) -> peers.ServerProcess:
    return run_nginx(work, "proxy", lambda prefix, port, root_user, mime: nginx_proxy_config(
        prefix, port, static, upstream, certs.cert, certs.key, root_user=root_user, mime=mime))


def start_servers(names: list[str], root: Path, certs: peers.Certs, work: Path
                  ) -> dict[str, peers.ServerProcess]:
    static = root / "static"
    running: dict[str, peers.ServerProcess] = {}
    app = start_gunicorn(static, work)
    running["app"] = app
    for name in names:
        if name.startswith("h2serve"):
            extra = ["--upstream", f"http://127.0.0.1:{app.port}"]
            if name == "h2serve-no-learn":
                extra += ["--learn-hints", "off"]
            server = peers.start_h2serve(["--root", str(root)], certs, work, extra=extra)
            server.name = name
            running[name] = server
        elif name == "nginx":
            running[name] = start_nginx(static, app.port, certs, work)
        elif name == "gunicorn":
            running[name] = start_gunicorn(static, work, certs=certs)
    return running


def table(cells: list[Cell]) -> str:
    lines = ["| server | loads | FCP (ms) | load (ms) |", "|---|---:|---:|---:|"]
    for c in cells:
        failed = f" ({len(c.failures)} failed)" if c.failures else ""
        lines.append(f"| {NOTES[c.server]} | {len(c.loads)}{failed} | {_ms(c.median('fcp'))} | "
                     f"{_ms(c.median('load'))} |")
    return "\n".join(lines)


def verdict(cells: list[Cell], rtt: float) -> list[str]:
    by = {c.server: c for c in cells}
    ours, nginx = by.get("h2serve-learned"), by.get("nginx")
    if ours is None or nginx is None:
        return []
    fcp_a, fcp_b = ours.median("fcp"), nginx.median("fcp")
    load_a, load_b = ours.median("load"), nginx.median("load")
    if None in (fcp_a, fcp_b, load_a, load_b):
        return []
    assert fcp_a is not None and fcp_b is not None and load_a is not None and load_b is not None
    gain = fcp_b - fcp_a
    return [f"FCP: h2serve with learned hints {gain:.0f} ms earlier than nginx (target: at least "
            f"{0.8 * rtt:.0f} ms): {'met' if gain >= 0.8 * rtt else 'NOT met'}",
            f"load event: h2serve {load_a:.0f} ms vs nginx {load_b:.0f} ms (target: no later): "
            f"{'met' if load_a <= load_b else 'NOT met'}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt", type=float, default=50.0, help="round-trip time in ms (50)")
    parser.add_argument("--runs", type=int, default=7, help="loads per server (7)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name in names:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}: one of {', '.join(SERVERS)}")
    if "nginx" in names and peers.nginx_binary() is None:
        print("note: nginx skipped: not installed", file=sys.stderr)
        names.remove("nginx")
    relays = RelayThread()
    cells = {name: Cell("proxy", None, name) for name in names}
    with tempfile.TemporaryDirectory(prefix="h2serve-proxy-") as tmp:
        work = Path(tmp)
        certs = peers.make_certs(work / "certs")
        root = work / "site"
        make_assets(root / "static")
        running = start_servers(names, root, certs, work)
        browser = Browser.launch(work / "chromium", spki=spki_hash(certs.cert.read_bytes()),
                                 extra=("--host-resolver-rules=MAP localhost 127.0.0.1",))
        try:
            fronts = {n: running[n] for n in names}
            with contextmanager_all(relays, fronts, args.rtt, None) as ports:
                for name in names:  # one unmeasured load each (and h2serve learns the hints)
                    load_once(browser, ports[name])
                for _ in range(args.runs):
                    for name in names:
                        try:
                            cells[name].loads.append(load_once(browser, ports[name]))
                        except BrowserError as e:
                            cells[name].failures.append(str(e).splitlines()[0])
        finally:
            browser.close()
            relays.close()
            for server in running.values():
                server.stop()
    result = list(cells.values())
    print(f"\nHeadless Chromium, RTT {args.rtt:g} ms, no cap, a 200 ms page with 20 assets, "
          f"medians of {args.runs} loads\n")
    print(table(result))
    print("\n" + "\n".join(verdict(result, args.rtt)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy.json").write_text(json.dumps({
        "command": " ".join(["python -m benchmarks.proxy", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "rtt_ms": args.rtt, "runs": args.runs, "cells": [c.as_json() for c in result]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
