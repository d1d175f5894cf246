"""What scraping /metrics costs the serving rate (issue 17: less than 5%).

    python -m benchmarks.scrape [--rounds 7] [--interval 0] [--workers 1]

One h2serve with `--metrics-bind`, pinned to core 0; h2load (1 KiB file over h2, 32 connections x
10 streams) pinned to core 1, with and without a scraper fetching /metrics in a loop, the order
swapped each round. The scraper runs on core 1 beside h2load (it is the client side), fetching as
fast as the server answers (`--interval 0`: a far harsher load than Prometheus's one scrape every
15 s), on one kept-alive connection. The server's serving loop only hands the exposition to a worker
thread, so what a scrape costs it is that thread's CPU time, taken from the loop's core.

Two figures, medians over the rounds: h2load's rate, and the server's CPU time per request (from
/proc, the exposition thread's included). On a machine shared with other work the rate moves by
tens of percent from one run to the next, and the scraper competes with h2load for core 1; the CPU
time per request is the steadier measure of what scraping takes from serving (a server bound by
its core serves at a rate inversely proportional to it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import peers
from .revisions import cpu_seconds
from .throughput import SMALL_NAME, make_site, run_h2load

H2LOAD = ["-c", "32", "-m", "10", "-n", "30000"]


class Scraper(threading.Thread):
    """GET /metrics in a loop on one connection, `interval` seconds apart, until stopped."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stopped = threading.Event()
        self.scrapes = 0
        self.bytes = 0

    def run(self) -> None:
        import httpx

        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})  # this thread: beside h2load, off the server's core
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}") as client:
            while not self.stopped.is_set():
                r = client.get("/metrics")
                assert r.status_code == 200
                self.scrapes += 1
                self.bytes += len(r.content)
                if self.interval:
                    self.stopped.wait(self.interval)


def server_cpu(pid: int) -> float:
    """CPU seconds of the server so far: the process, and with --workers its workers."""
    from h2serve.workers import worker_pids

    return cpu_seconds(pid) + sum(cpu_seconds(w) for w in worker_pids(pid))


def start(site: Path, certs: Path, workers: int) -> tuple[subprocess.Popen[str], int, int]:
    cmd = peers.pinned([sys.executable, "-m", "h2serve", "--root", str(site), "--bind", "127.0.0.1:0",
                        "--cert", str(certs / "cert.pem"), "--key", str(certs / "key.pem"),
                        "--access-log", "off", "--push-manifest", str(site / "empty.json"),
                        "--metrics-bind", "127.0.0.1:0", "--workers", str(workers)], 0)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if " serving " in line:
            port = int(line.split(" on https://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            metrics = int(line.split("metrics on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            return proc, port, metrics
    raise SystemExit("h2serve did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scrape", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between scrapes")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    from h2serve.net.certs import ensure_dev_certs

    with tempfile.TemporaryDirectory() as tmp:
        site = make_site(Path(tmp) / "site")
        (site / "empty.json").write_text("{}")
        certs, _ = ensure_dev_certs(Path(tmp) / "certs")
        proc, port, metrics = start(site, certs.cert.parent, args.workers)
        url = f"https://127.0.0.1:{port}/{SMALL_NAME}"
        rates: dict[str, list[float]] = {"without": [], "with": []}
        cpu: dict[str, list[float]] = {"without": [], "with": []}
        scrapes: list[float] = []
        try:
            run_h2load(url, H2LOAD)  # warm-up
            for r in range(args.rounds):
                for mode in (["without", "with"] if r % 2 == 0 else ["with", "without"]):
                    scraper = Scraper(metrics, args.interval) if mode == "with" else None
                    if scraper is not None:
                        scraper.start()
                    t0, c0 = time.monotonic(), server_cpu(proc.pid)
                    result = run_h2load(url, H2LOAD)
                    cpu[mode].append((server_cpu(proc.pid) - c0) / result["requests"] * 1e6)
                    if scraper is not None:
                        scraper.stopped.set()
                        scraper.join(10)
                        scrapes.append(scraper.scrapes / (time.monotonic() - t0))
                    rates[mode].append(result["req_per_s"])
                    print(f"round {r + 1} {mode} scraping: {result['req_per_s']:,.0f} req/s, "
                          f"{cpu[mode][-1]:.1f} us/request", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(20)
    without, with_ = statistics.median(rates["without"]), statistics.median(rates["with"])
    cpu_without, cpu_with = statistics.median(cpu["without"]), statistics.median(cpu["with"])
    print(f"| | without scraping | with /metrics scraped in a loop ({statistics.median(scrapes):,.0f}/s) "
          f"| cost |\n|---|---|---|---|\n"
          f"| h2load rate | {without:,.0f} req/s | {with_:,.0f} req/s | "
          f"{(1 - with_ / without) * 100:.1f}% |\n"
          f"| server CPU | {cpu_without:.1f} us/request | {cpu_with:.1f} us/request | "
          f"{(cpu_with / cpu_without - 1) * 100:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
