"""A real-browser page-load benchmark: Debian's headless Chromium loads pages through the latency
relay, and the page's own Performance API says when it painted and loaded.

    python -m benchmarks.browser            # RTT 50 ms; no cap, 10 and 2 Mbit/s; 7 loads per cell
    python -m benchmarks.browser --quick    # 3 loads per cell, 2 Mbit/s only

Each load is a fresh browser context (its own cache and connections, so every load opens its
connections anew, TCP and TLS handshakes included) navigating to `https://localhost:PORT/`, where
PORT is a `Relay` (benchmarks/relay.py) in front of the server: half the RTT of delay each way and,
with a cap, one shared line of that many Mbit/s per direction. After the load event, the page's
Performance API gives first contentful paint (the `paint` entry), largest contentful paint (the
last `largest-contentful-paint` entry, from a buffered PerformanceObserver), DOMContentLoaded and
the load event (the navigation timing entry), each in ms from the start of the navigation.
Before the measured loads of a cell, each server gets one unmeasured load (its caches filled, as a
server's are after its first visitor). Loads go round the servers in turn (server A, B, C, A, B,
C, ...), so a disturbance of the machine spreads over all of them; the table gives medians.

Servers, each started here on the same site and certificate: h2serve as it ships (h2, 103 Early
Hints, RFC 9218 priorities), h2serve `--priorities off`, h2serve `--alpn http/1.1`, nginx and h2o
(Debian's `nginx-light` and `h2o`, with the configs `nginx_config` and `h2o_config` write; skipped
with a note when absent), and Hypercorn (the static ASGI app of asgi_static.py; skipped when not
installed). Sites: `target30` and `hero` (benchmarks/sites.py).

Results: a table on standard output, `benchmarks/results/browser.json` and, with matplotlib,
`benchmarks/results/browser.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import peers, sites
from benchmarks.devtools import Browser, BrowserError, spki_hash
from benchmarks.relay import Relay

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("fcp", "lcp", "dcl", "load")
METRIC_NAMES = {"fcp": "FCP", "lcp": "LCP", "dcl": "DOMContentLoaded", "load": "load"}
SERVERS = ("h2serve", "h2serve-prio-off", "h2serve-h1", "nginx", "h2o", "hypercorn")
SERVER_NOTES = {
    "h2serve": "h2serve as it ships: h2, 103 Early Hints, RFC 9218 priorities",
    "h2serve-prio-off": "h2serve --priorities off (round-robin)",
    "h2serve-h1": "h2serve --alpn http/1.1",
    "nginx": "nginx (Debian nginx-light), one worker, http2",
    "h2o": "h2o (Debian), one thread",
    "hypercorn": "Hypercorn, static ASGI app",
}
# After the load event, wait this long for the last paints, then read the entries.
SETTLE_MS = 300
METRICS_JS = """new Promise(resolve => {
  const lcp = [];
  new PerformanceObserver(list => lcp.push(...list.getEntries()))
    .observe({type: 'largest-contentful-paint', buffered: true});
  setTimeout(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const fcp = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint');
    const last = lcp[lcp.length - 1];
    resolve({fcp: fcp ? fcp.startTime : null, lcp: last ? last.startTime : null,
             lcp_element: last ? (last.url || (last.element ? last.element.tagName : '')) : null,
             dcl: nav.domContentLoadedEventStart, load: nav.loadEventStart,
             protocol: nav.nextHopProtocol});
  }, SETTLE_MS);
})""".replace("SETTLE_MS", str(SETTLE_MS))


# -- configs of the peer servers (pure) -----------------------------------------------------------

def nginx_head(prefix: Path, *, root_user: bool, mime: Path | None) -> str:
    """The part of an nginx.conf every peer run shares (this one and benchmarks/proxy.py's): one
    worker, its files under `prefix`, no access log, gzip for text as h2serve compresses it, up to
    inside `http {`."""
    temp = "".join(f"    {kind}_temp_path {prefix / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
{"user root root;" if root_user else ""}
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    {f"include {mime};" if mime else ""}
    default_type application/octet-stream;
    access_log off;
{temp}    sendfile on;
    tcp_nodelay on;
    gzip on;
    gzip_types text/css application/javascript image/svg+xml application/json;
"""


def nginx_config(prefix: Path, port: int, pages: Path, static: Path, cert: Path, key: Path, *,
                 root_user: bool = False, mime: Path | None = None) -> str:
    """nginx.conf for one worker serving `pages` at / and `static` at /static/ over TLS with h2
    (nginx 1.22's `listen ... http2`), gzip for text as h2serve compresses it, no push, no access
    log; its files under `prefix`."""
    return f"""{nginx_head(prefix, root_user=root_user, mime=mime)}    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {pages};
        location = / {{
            try_files /index.html =404;
        }}
        location /static/ {{
            alias {static}/;
        }}
    }}
}}
"""


def h2o_config(prefix: Path, port: int, pages: Path, static: Path, cert: Path, key: Path, *,
               root_user: bool = False) -> str:
    """h2o.conf (YAML) for one thread serving `pages` at / and `static` at /static over TLS (h2 and
    http/1.1 by ALPN), compressing text on the fly (`compress: ON`: brotli or gzip) as h2serve
    does, no access log; its files under `prefix`."""
    user = "user: root\n" if root_user else ""
    return f"""{user}pid-file: {prefix / "h2o.pid"}
error-log: {prefix / "error.log"}
num-threads: 1
listen:
  host: 127.0.0.1
  port: {port}
  ssl:
    certificate-file: {cert}
    key-file: {key}
compress: ON
hosts:
  "localhost:{port}":
    paths:
      "/static":
        file.dir: {static}
      "/":
        file.dir: {pages}
"""


def h2o_binary() -> str | None:
    for candidate in (shutil.which("h2o"), "/usr/sbin/h2o", "/usr/bin/h2o"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_nginx(work: Path, run: str, config: Callable[[Path, int, bool, Path | None], str]
              ) -> peers.ServerProcess:
    """nginx on a free port with `config(prefix, port, root_user, mime)` as its nginx.conf, its
    files under `work`/nginx-`run`-PORT."""
    binary = peers.nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    port = peers.free_port()
    prefix = work / f"nginx-{run}-{port}"
    prefix.mkdir(parents=True, exist_ok=True)
    mime = Path("/etc/nginx/mime.types")
    conf = prefix / "nginx.conf"
    conf.write_text(config(prefix, port, os.geteuid() == 0, mime if mime.exists() else None))
    cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return peers._start("nginx", peers.pinned(cmd, 0), port, prefix / "stdout.log")


def start_nginx(site: sites.SiteSpec, certs: peers.Certs, work: Path) -> peers.ServerProcess:
    return run_nginx(work, "browser", lambda prefix, port, root_user, mime: nginx_config(
        prefix, port, site.pages, site.static, certs.cert, certs.key, root_user=root_user, mime=mime))


def start_h2o(site: sites.SiteSpec, certs: peers.Certs, work: Path) -> peers.ServerProcess:
    binary = h2o_binary()
    if binary is None:
        raise RuntimeError("h2o is not installed")
    port = peers.free_port()
    prefix = work / f"h2o-{port}"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "h2o.conf"
    conf.write_text(h2o_config(prefix, port, site.pages, site.static, certs.cert, certs.key,
                               root_user=os.geteuid() == 0))
    return peers._start("h2o", peers.pinned([binary, "-c", str(conf)], 0), port,
                        prefix / "stdout.log")


def start_server(name: str, site: sites.SiteSpec, certs: peers.Certs, work: Path
                 ) -> peers.ServerProcess:
    extra = {"h2serve": [], "h2serve-prio-off": ["--priorities", "off"],
             "h2serve-h1": ["--alpn", "http/1.1"]}
    if name in extra:
        server = peers.start_h2serve(site.h2serve_args(), certs, work, extra=extra[name])
        server.name = name
        return server
    if name == "nginx":
        return start_nginx(site, certs, work)
    if name == "h2o":
        return start_h2o(site, certs, work)
    if name == "hypercorn":
        assert site.root is not None
        return peers.start_hypercorn_static(site.root, certs, work)
    raise ValueError(f"unknown server {name!r}")


def unavailable(name: str) -> str | None:
    """Why `name` cannot run here, or None."""
    if name == "nginx" and peers.nginx_binary() is None:
        return "nginx is not installed (apt-get install nginx-light)"
    if name == "h2o" and h2o_binary() is None:
        return "h2o is not installed (apt-get install h2o)"
    if name == "hypercorn" and not peers.hypercorn_available():
        return "Hypercorn is not installed (pip install -e '.[bench]')"
    return None


# -- statistics and the report (pure) -------------------------------------------------------------

@dataclass
class Cell:
    site: str
    mbit: float | None
    server: str
    loads: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def median(self, metric: str) -> float | None:
        values = [load[metric] for load in self.loads if load.get(metric) is not None]
        return statistics.median(values) if values else None

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "mbit": self.mbit, "server": self.server, "loads": self.loads,
                "failures": self.failures,
                "median_ms": {m: self.median(m) for m in METRICS}}


def bandwidth_label(mbit: float | None) -> str:
    return "no cap" if mbit is None else f"{mbit:g} Mbit/s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(cells: list[Cell]) -> str:
    """A markdown table of the medians, one row per site x bandwidth x server."""
    lines = ["| site | bandwidth | server | loads | FCP | LCP | DOMContentLoaded | load |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in cells:
        failed = f" ({len(c.failures)} failed)" if c.failures else ""
        lines.append(f"| {c.site} | {bandwidth_label(c.mbit)} | {c.server} | {len(c.loads)}{failed} | "
                     + " | ".join(_ms(c.median(m)) for m in METRICS) + " |")
    return "\n".join(lines)


def _ratio(cells: list[Cell], site: str, mbit: float | None, metric: str, ours: str,
           theirs: str) -> float | None:
    by = {(c.site, c.mbit, c.server): c for c in cells}
    a, b = by.get((site, mbit, ours)), by.get((site, mbit, theirs))
    if a is None or b is None:
        return None
    x, y = a.median(metric), b.median(metric)
    return x / y if x is not None and y else None


# (metric, site or None for every site, other server, the ratio to stay at or under, what it says)
TARGETS = (
    ("fcp", None, "h2serve-h1", 1.0, "FCP over h2 no later than h2serve's own HTTP/1.1"),
    ("fcp", None, "nginx", 0.7, "FCP at most 0.7x nginx's"),
    ("fcp", None, "h2o", 0.7, "FCP at most 0.7x h2o's"),
    ("fcp", None, "h2serve-prio-off", 0.6, "FCP with priorities at most 0.6x --priorities off"),
    ("lcp", "hero", "nginx", 1.0, "hero LCP no later than nginx's"),
    ("load", None, "h2serve-prio-off", 1.05, "load event no later than 1.05x --priorities off"),
)


def target_lines(cells: list[Cell], mbit: float | None = 2) -> list[str]:
    """Each target of the issue at `mbit`, per site: h2serve's ratio to the other server, and
    whether it is met."""
    out = []
    for metric, only, other, limit, text in TARGETS:
        for site in dict.fromkeys(c.site for c in cells):
            if only is not None and site != only:
                continue
            r = _ratio(cells, site, mbit, metric, "h2serve", other)
            if r is None:
                out.append(f"- {site}, {text}: not measured")
                continue
            verdict = "met" if r <= limit else "missed"
            out.append(f"- {site}, {text}: x{r:.2f} ({verdict})")
    return out


def chart(cells: list[Cell], out: Path) -> Path | None:
    """browser.png: per site (rows) and metric (columns), medians per bandwidth, one bar per server.
    None (and a note) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return None
    site_names = list(dict.fromkeys(c.site for c in cells))
    mbits = list(dict.fromkeys(c.mbit for c in cells))
    servers = list(dict.fromkeys(c.server for c in cells))
    by = {(c.site, c.mbit, c.server): c for c in cells}
    fig, axes = plt.subplots(len(site_names), len(METRICS), squeeze=False,
                             figsize=(4 * len(METRICS), 3.2 * len(site_names)))
    width = 0.8 / max(1, len(servers))
    for row, site in enumerate(site_names):
        for col, metric in enumerate(METRICS):
            ax = axes[row][col]
            for k, server in enumerate(servers):
                values = [(by[(site, m, server)].median(metric) if (site, m, server) in by else None)
                          for m in mbits]
                xs = [i + (k - (len(servers) - 1) / 2) * width for i in range(len(mbits))]
                ax.bar(xs, [v or 0 for v in values], width, label=server)
            ax.set_xticks(range(len(mbits)), [bandwidth_label(m) for m in mbits], fontsize=7)
            ax.set_title(f"{site}: {METRIC_NAMES[metric]}", fontsize=9)
            ax.set_ylabel("median (ms)", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Headless Chromium through the relay (RTT 50 ms): medians of fresh-context loads",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- running ---------------------------------------------------------------------------------------

class RelayThread:
    """An asyncio loop in a thread of its own, for the relays (the browser is driven synchronously
    from the main thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="relay", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    @contextmanager
    def relay(self, port: int, rtt_ms: float, mbit: float | None) -> Iterator[Relay]:
        relay = self.run(Relay(target_port=port, rtt_ms=rtt_ms, mbit=mbit).start())
        try:
            yield relay
        finally:
            self.run(relay.close())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def load_once(browser: Browser, port: int, timeout: float = 90) -> dict[str, Any]:
    """One load of https://localhost:PORT/ in a fresh browser context: the page's metrics."""
    page = browser.new_page()
    try:
        started = time.perf_counter()
        page.goto(f"https://localhost:{port}/", timeout=timeout)
        wall = (time.perf_counter() - started) * 1000
        result = page.evaluate(METRICS_JS)
        result["wall_ms"] = round(wall, 1)
        return result
    finally:
        page.close()


def parse_mbits(text: str) -> list[float | None]:
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        out.append(None if part in ("none", "0", "") else float(part))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.browser", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt", type=float, default=50.0, help="round-trip time in ms (50)")
    parser.add_argument("--mbit", default="none,10,2",
                        help="bandwidth caps, 'none' for no cap (none,10,2)")
    parser.add_argument("--runs", type=int, default=7, help="loads per cell (7)")
    parser.add_argument("--sites", default="target30,hero")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--quick", action="store_true", help="3 loads per cell, 2 Mbit/s only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    mbits = [2.0] if args.quick else parse_mbits(args.mbit)
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    servers = []
    for name in wanted:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}: one of {', '.join(SERVERS)}")
        why = unavailable(name)
        if why:
            print(f"note: {name} skipped: {why}", file=sys.stderr)
        else:
            servers.append(name)

    cells: list[Cell] = []
    relays = RelayThread()
    with tempfile.TemporaryDirectory(prefix="h2serve-browser-") as tmp:
        work = Path(tmp)
        certs = peers.make_certs(work / "certs")
        browser = Browser.launch(work / "chromium", spki=spki_hash(certs.cert.read_bytes()),
                                 extra=("--host-resolver-rules=MAP localhost 127.0.0.1",))
        try:
            for site_name in [s.strip() for s in args.sites.split(",") if s.strip()]:
                site = sites.make_site(site_name, work / "sites")
                running = {}
                try:
                    for name in servers:
                        try:
                            running[name] = start_server(name, site, certs, work)
                        except RuntimeError as e:
                            print(f"note: {name} skipped on {site_name}: {e}", file=sys.stderr)
                    for mbit in mbits:
                        row = {name: Cell(site_name, mbit, name) for name in running}
                        with contextmanager_all(relays, running, args.rtt, mbit) as ports:
                            for name in running:  # one warm-up load each (server caches, JIT)
                                with _suppress_load_error():
                                    load_once(browser, ports[name])
                            for _ in range(runs):
                                for name in running:
                                    try:
                                        row[name].loads.append(load_once(browser, ports[name]))
                                    except BrowserError as e:
                                        row[name].failures.append(str(e).splitlines()[0])
                        for name, cell in row.items():
                            print(f"{site_name:8s} {bandwidth_label(mbit):11s} {name:17s} "
                                  + " ".join(f"{METRIC_NAMES[m]} {_ms(cell.median(m))}"
                                             for m in METRICS)
                                  + (f" ({len(cell.failures)} failed)" if cell.failures else ""),
                                  file=sys.stderr)
                        cells.extend(row.values())
                finally:
                    for server in running.values():
                        server.stop()
        finally:
            browser.close()
            relays.close()

    print(f"\nHeadless Chromium, RTT {args.rtt:g} ms, medians of {runs} loads (ms)\n")
    print(table(cells))
    print()
    for mbit in mbits:
        print(f"Targets at {bandwidth_label(mbit)}:")
        print("\n".join(target_lines(cells, mbit)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "browser.json").write_text(json.dumps({
        "command": " ".join(["python -m benchmarks.browser", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "rtt_ms": args.rtt, "runs": runs, "cells": [c.as_json() for c in cells]}, indent=1))
    png = chart(cells, args.out / "browser.png")
    if png:
        print(f"\nchart: {png}")
    return 0


@contextmanager
def contextmanager_all(relays: RelayThread, running: dict[str, peers.ServerProcess], rtt: float,
                       mbit: float | None) -> Iterator[dict[str, int]]:
    """A relay in front of each running server; their ports by server name."""
    opened = []
    try:
        for name, server in running.items():
            cm = relays.relay(server.port, rtt, mbit)
            opened.append((name, cm, cm.__enter__()))
        yield {name: relay.port for name, _, relay in opened}
    finally:
        for _, cm, _ in reversed(opened):
            cm.__exit__(None, None, None)


@contextmanager
def _suppress_load_error() -> Iterator[None]:
    try:
        yield
    except BrowserError as e:
        print(f"warm-up load failed: {str(e).splitlines()[0]}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
