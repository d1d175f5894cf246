"""Throughput with h2load: small-file request rates and a large file's transfer rate, for h2serve and,
where installed, Hypercorn (with the minimal ASGI static app of `asgi_static.py`) and nginx (one
worker, TLS with the same certificate, http2 on), all in the same run.

    python -m benchmarks.throughput [--quick] [--servers h2serve,hypercorn,nginx]

Scenarios (over TLS, h2 by ALPN unless said otherwise):

* `1KiB h2 32x10`:  a 1 KiB file, 32 connections x 10 concurrent streams (`-c 32 -m 10 -n N`)
* `1KiB h2 1x100`:  the same file, one connection x 100 concurrent streams (`-c 1 -m 100 -n N`)
* `1KiB h1 32`:     the same file over HTTP/1.1, 32 connections (`--h1 -c 32 -n N`)
* `64MiB h2`:       a 64 MiB file, one connection, one stream at a time (`-c 1 -m 1 -n K`): MB/s

h2serve runs as the CLI starts it (uvloop when installed) and, when uvloop is installed, also as
`h2serve-asyncio` (`--loop asyncio`). The in-memory ceiling of `ceiling.py` (what h2 alone costs a
server per request) is measured in the same run, on the servers' core, and h2serve's h2 request
rates are given as a ratio to it.

Each server runs pinned to core 0 (`taskset -c 0`) and h2load to core 1 (`taskset -c 1`); each
server's peak RSS (VmHWM of its processes) is read before it stops.
The servers run side by side and take turns, scenario by scenario (three times in a full run: the
median rate counts), each h2load run waiting until the rest of the machine is quiet.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import peers

ASYNCIO = "h2serve-asyncio"  # h2serve with --loop asyncio
SMALL_NAME = "1k.bin"
BIG_NAME = "64m.bin"
BIG_SIZE = 64 * 1024 * 1024


def scenarios(quick: bool) -> list[dict[str, Any]]:
    n = 5000 if quick else 30000
    big = 2 if quick else 16  # 1 GiB: a second or more for every server, so timing noise stays small
    return [
        {"name": "1KiB h2 32x10", "args": ["-c", "32", "-m", "10", "-n", str(n)], "file": SMALL_NAME},
        {"name": "1KiB h2 1x100", "args": ["-c", "1", "-m", "100", "-n", str(n)], "file": SMALL_NAME},
        {"name": "1KiB h1 32", "args": ["--h1", "-c", "32", "-n", str(n)], "file": SMALL_NAME},
        {"name": "64MiB h2", "args": ["-c", "1", "-m", "1", "-n", str(big)], "file": BIG_NAME},
    ]


def make_site(folder: Path) -> Path:
    """index.html, a 1 KiB file and a 64 MiB file (random bytes: no server compresses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "static").mkdir(exist_ok=True)
    (folder / "index.html").write_text("<!DOCTYPE html><title>throughput</title>\n")
    (folder / SMALL_NAME).write_bytes(os.urandom(1024))
    big = folder / BIG_NAME
    if not big.exists() or big.stat().st_size != BIG_SIZE:
        with open(big, "wb") as f:
            for _ in range(BIG_SIZE // (1 << 20)):
                f.write(os.urandom(1 << 20))
    return folder


UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_h2load(text: str) -> dict[str, Any]:
    """The numbers of h2load's summary: seconds, req/s, bytes, succeeded and failed requests."""
    out: dict[str, Any] = {}
    m = re.search(r"finished in ([\d.]+)(s|ms|us), ([\d.]+) req/s", text)
    if m:
        out["seconds"] = float(m.group(1)) * UNITS[m.group(2)]
        out["req_per_s"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    if m:
        out["requests"], out["succeeded"] = int(m.group(1)), int(m.group(4))
        out["failed"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"(\d+) done", text)
    if m:
        out["done"] = int(m.group(1))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["status_2xx"] = int(m.group(1))
        out["status_other"] = sum(int(m.group(i)) for i in (2, 3, 4))
        # h2load (nghttp2 1.52) records an HTTP/1.1 status only from a status line with a reason
        # phrase: "HTTP/1.1 200 " (h11's, so h2serve's and Hypercorn's) counts as failed with no
        # status, although the response is complete. Such responses are counted as done, and noted.
        if out["status_2xx"] == 0 and out["status_other"] == 0 and out.get("done"):
            out["no_reason_phrase"] = True
    m = re.search(r"traffic: \S+ \((\d+)\) total", text)
    if m:
        out["bytes"] = int(m.group(1))
        if out.get("seconds"):
            out["mb_per_s"] = out["bytes"] / out["seconds"] / 1e6
    return out


def run_h2load(url: str, args: list[str], cpu: int | None = 1, timeout: float = 300) -> dict[str, Any]:
    cmd = peers.pinned(["h2load", *args, url], cpu)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    result = parse_h2load(done.stdout)
    if "req_per_s" not in result:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    return result


def available_servers() -> list[str]:
    out = ["h2serve"]
    if importlib.util.find_spec("uvloop") is not None:
        out.append(ASYNCIO)  # h2serve runs on uvloop by default: show the stock loop too
    if peers.hypercorn_available():
        out.append("hypercorn")
    if peers.nginx_binary() is not None:
        out.append("nginx")
    return out


def start(name: str, site: Path, certs: peers.Certs, work: Path) -> peers.ServerProcess:
    if name == "h2serve":
        # Defaults throughout: the 1 KiB file is served from h2serve's memory cache.
        return peers.start_h2serve(["--root", str(site)], certs, work)
    if name == ASYNCIO:
        return peers.start_h2serve(["--root", str(site)], certs, work, extra=["--loop", "asyncio"])
    if name == "hypercorn":
        return peers.start_hypercorn_static(site, certs, work)
    if name == "nginx":
        return peers.start_nginx(site, site / "static", certs, work)
    raise ValueError(name)


def run(work: Path, certs: peers.Certs, *, quick: bool = False, servers: list[str] | None = None,
        progress: Callable[[str], None] = print, quiet: float = 0.3) -> dict[str, Any]:
    """Every scenario against every server; returns {"servers": {...}, "scenarios": [...], ...}.

    The servers run side by side (each pinned to core 0, idle but for the run at hand) and are
    taken in turn for each scenario, `repeats` times, each h2load run starting once the rest of the
    machine is quiet; a server's rate is the median of its runs."""
    if shutil.which("h2load") is None:
        progress("h2load is not installed (apt-get install nghttp2-client): no throughput benchmark")
        return {}
    from .run import ForeignCpu, wait_for_quiet

    site = make_site(work / "throughput-site")
    names = servers or available_servers()
    plan = scenarios(quick)
    repeats = 1 if quick else 3  # odd: the median is one of the runs
    results: dict[str, Any] = {"scenarios": [s["name"] for s in plan], "servers": {},
                               "repeats": repeats, "background_cores": [], "steal_cores": []}
    running: dict[str, peers.ServerProcess] = {}
    try:
        for name in names:
            running[name] = start(name, site, certs, work)
            results["servers"][name] = {"results": {}, "runs": {}}
            run_h2load(f"https://127.0.0.1:{running[name].port}/{SMALL_NAME}",
                       ["-c", "4", "-m", "10", "-n", "400"])  # warm-up
        for scenario in plan:
            key = "mb_per_s" if scenario["file"] == BIG_NAME else "req_per_s"
            for _ in range(repeats):
                for name, server in running.items():
                    foreign = ForeignCpu(lambda server=server: [os.getpid(), *server.pids()])
                    for _attempt in range(3):  # a run that other processes disturbed is redone, twice
                        if quiet:
                            wait_for_quiet(quiet, 4.0)
                        started = time.monotonic()
                        foreign.begin()
                        result = run_h2load(f"https://127.0.0.1:{server.port}/{scenario['file']}",
                                            scenario["args"])
                        disturbed = foreign.cores()
                        if not quiet or disturbed <= quiet:
                            break
                    results["background_cores"].append(round(disturbed, 3))
                    results["steal_cores"].append(round(foreign.steal, 3))
                    entry = results["servers"][name]
                    runs = entry["runs"].setdefault(scenario["name"], [])
                    runs.append(result)
                    entry["results"][scenario["name"]] = median_run(runs, key)
                    rate = (f"{result['mb_per_s']:.0f} MB/s" if key == "mb_per_s"
                            else f"{result['req_per_s']:.0f} req/s")
                    bad = f", {result['failed']} failed" if result.get("failed") else ""
                    if result.get("no_reason_phrase"):
                        bad = ", h2load counts them failed: status line without reason phrase"
                    progress(f"throughput {name:9s} {scenario['name']:14s} {rate}{bad} "
                             f"({time.monotonic() - started:.1f}s)")
        for name, server in running.items():
            results["servers"][name]["peak_rss_kib"] = server.peak_rss_kib()
            progress(f"throughput {name:9s} peak RSS {server.peak_rss_kib() / 1024:.1f} MiB")
    finally:
        for server in running.values():
            server.stop()
    progress("throughput: the in-memory h2 ceiling (benchmarks/ceiling.py) on core 0")
    results["ceiling"] = measure_ceiling(quick)
    results["ratios"] = ratios(results)
    return results


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median `key` (the upper middle one of an even number)."""
    return sorted(runs, key=lambda r: r.get(key, 0))[len(runs) // 2]


def measure_ceiling(quick: bool) -> dict[str, Any]:
    """benchmarks/ceiling.py in a process of its own on the servers' core: what h2 alone costs per
    request, for the ratio of h2serve's h2 rate to it."""
    args = ["--requests", "10000", "--runs", "3"] if quick else ["--requests", "20000", "--runs", "5"]
    cmd = peers.pinned([sys.executable, "-m", "benchmarks.ceiling", "--json", "--no-server", *args], 0)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True,
                          cwd=peers.REPO)
    return json.loads(done.stdout)


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """h2serve's rate over each peer's, per scenario (req/s; MB/s for the large file)."""
    servers = results.get("servers", {})
    ours = servers.get("h2serve", {}).get("results", {})
    out: dict[str, dict[str, float]] = {}
    for peer, entry in servers.items():
        if peer == "h2serve":
            continue
        out[peer] = {}
        for scenario, theirs in entry["results"].items():
            mine = ours.get(scenario)
            if not mine:
                continue
            key = "mb_per_s" if scenario.startswith("64MiB") else "req_per_s"
            if theirs.get(key):
                out[peer][scenario] = mine[key] / theirs[key]
    ceiling = results.get("ceiling", {}).get("minimal", {}).get("req_per_s")
    if ceiling:  # h2load's requests carry minimal headers
        out["ceiling"] = {s: ours[s]["req_per_s"] / ceiling for s in ours if s.startswith("1KiB h2")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--servers", help="comma-separated: h2serve,hypercorn,nginx (default: installed)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="h2serve-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        certs = peers.make_certs(work / "certs")
        servers = args.servers.split(",") if args.servers else None
        results = run(work, certs, quick=args.quick, servers=servers,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
