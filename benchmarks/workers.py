"""What a second worker process buys: h2serve with `--workers 1` and `--workers 2` beside nginx
with `worker_processes 1` and `2`, in the same run, with h2load.

    python -m benchmarks.workers [--quick]

Scenarios (a 1 KiB file over TLS, h2load with one thread, `-t 1`, for a fixed time, `-D 5`; 2 s
with `--quick`):

* `1KiB h2 32x10`: HTTP/2, 32 connections x 10 concurrent streams (`-c 32 -m 10`)
* `1KiB h1 32`:    HTTP/1.1, 32 connections (`--h1 -c 32`)

How it is measured. On a 2-core machine the load generator cannot have cores of its own, so nothing
is pinned: the servers' processes and h2load's one thread share both cores. With one worker, the
server has a core and h2load most of the other; with two, the workers get what h2load leaves of
both. So the absolute gain understates what a second worker brings where there are cores to spare,
and the figure to read is the ratio 2 workers / 1 worker, for h2serve beside the same ratio for
nginx, measured under the same constraint in the same run. nginx is started by
`peers.start_nginx` (same certificate, `http2`, `sendfile`, no access log), with its default
accept handling (one shared listening socket); h2serve runs with its defaults (uvloop when
installed, no access log). The four servers run side by side and take turns, scenario by scenario,
each run starting once the rest of the machine is quiet; a full run does each twice and keeps the
best rate. Each run also records the CPU the server's processes and h2load used, in cores
(`server_cores`, `client_cores`): h2load's one thread at 1.0 core means the load generator, not the
server, set the rate (nginx: its 2/1 ratio is then the measurement's ceiling, not nginx's scaling),
and req/s per server core shows whether a worker keeps its efficiency beside another.

A worker gets whole connections, spread by the kernel (for h2serve, a hash per connection over its
workers' SO_REUSEPORT sockets), so 32 connections rarely split 16/16. Runs last a fixed time, not a
fixed number of requests, so an uneven split costs little as long as each worker has connections
enough to keep it busy: the connections of the less loaded worker just make more requests. The
connections each worker held are read from /proc during every run and reported with it.

Results: a table on standard output and `benchmarks/results/workers.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import peers
from .throughput import SMALL_NAME, make_site, run_h2load

RESULTS = Path(__file__).resolve().parent / "results" / "workers.json"
SERVERS = ("h2serve-1", "h2serve-2", "nginx-1", "nginx-2")


def scenarios(quick: bool) -> list[dict[str, Any]]:
    seconds = "2" if quick else "5"
    return [
        {"name": "1KiB h2 32x10", "args": ["-t", "1", "-c", "32", "-m", "10", "-D", seconds]},
        {"name": "1KiB h1 32", "args": ["-t", "1", "--h1", "-c", "32", "-D", seconds]},
    ]


def start(name: str, site: Path, certs: peers.Certs, work: Path) -> peers.ServerProcess:
    """`h2serve-N` or `nginx-N`: that server with N worker processes, not pinned to a core."""
    kind, workers = name.rsplit("-", 1)
    if kind == "h2serve":
        return peers.start_h2serve(["--root", str(site)], certs, work, cpu=None,
                                   extra=["--workers", workers])
    return peers.start_nginx(site, site, certs, work, cpu=None, workers=int(workers))


class SplitSampler:
    """Counts, every 0.1 s while h2load runs, the established connections each worker holds (by
    socket inode, /proc); keeps the sample with the most connections in all."""

    def __init__(self, server: peers.ServerProcess) -> None:
        pids = server.pids()
        self.workers = pids[1:] or pids  # a supervisor or nginx master holds no connection
        self.port = server.port
        self.best: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SplitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._done.wait(0.1):
            counts = established_by_pid(self.port, self.workers)
            if sum(counts) > sum(self.best):
                self.best = sorted(counts, reverse=True)


def established_by_pid(port: int, pids: list[int]) -> list[int]:
    """The established connections to local `port` that each of `pids` holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in pids:
        n = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
            except OSError:
                continue
        counts.append(n)
    return counts


def run(work: Path, certs: peers.Certs, *, quick: bool = False, progress: Any = print,
        quiet: float = 0.3) -> dict[str, Any]:
    """Every scenario against every server, in turns; {"servers": ..., "ratios": ...}."""
    from .run import wait_for_quiet

    site = make_site(work / "workers-site")
    names = [n for n in SERVERS if n.startswith("h2serve") or peers.nginx_binary() is not None]
    plan = scenarios(quick)
    repeats = 1 if quick else 2
    results: dict[str, Any] = {"scenarios": [s["name"] for s in plan], "repeats": repeats,
                               "servers": {n: {"results": {}, "runs": {}} for n in names}}
    running: dict[str, peers.ServerProcess] = {}
    try:
        for name in names:
            running[name] = start(name, site, certs, work)
            run_h2load(url(running[name]), ["-c", "8", "-m", "10", "-n", "2000"], cpu=None)  # warm-up
        for scenario in plan:
            for _ in range(repeats):
                for name, server in running.items():
                    if quiet:
                        wait_for_quiet(quiet, 3.0)
                    result = measure(server, scenario["args"])
                    record(results["servers"][name], scenario["name"], result)
                    progress(f"workers {name:10s} {scenario['name']:14s} {result['req_per_s']:8.0f} req/s"
                             f"  cores: server {result['server_cores']:.2f}, h2load "
                             f"{result['client_cores']:.2f}  connections per worker "
                             f"{'/'.join(map(str, result['connections_per_worker']))}")
    finally:
        for server in running.values():
            server.stop()
    results["ratios"] = ratios(results)
    return results


def measure(server: peers.ServerProcess, args: list[str]) -> dict[str, Any]:
    """One h2load run, with the cores the server and h2load used and the connections per worker."""
    pids = server.pids()
    server_cpu, client_cpu, started = cpu_seconds(pids), children_cpu_seconds(), time.monotonic()
    with SplitSampler(server) as split:
        result = run_h2load(url(server), args, cpu=None)
    elapsed = time.monotonic() - started
    result["server_cores"] = round((cpu_seconds(pids) - server_cpu) / elapsed, 3)
    result["client_cores"] = round((children_cpu_seconds() - client_cpu) / elapsed, 3)
    result["connections_per_worker"] = split.best
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of `pids` so far, in seconds."""
    return peers.cpu_ticks(pids) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended (each h2load run, once it has)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def url(server: peers.ServerProcess) -> str:
    return f"https://127.0.0.1:{server.port}/{SMALL_NAME}"


def record(entry: dict[str, Any], scenario: str, result: dict[str, Any]) -> None:
    entry["runs"].setdefault(scenario, []).append(result)
    best = entry["results"].get(scenario)
    if best is None or result["req_per_s"] > best["req_per_s"]:
        entry["results"][scenario] = result


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per server kind and scenario: the rate with 2 workers over the rate with 1."""
    out: dict[str, dict[str, float]] = {}
    servers = results["servers"]
    for kind in ("h2serve", "nginx"):
        one, two = servers.get(f"{kind}-1"), servers.get(f"{kind}-2")
        if one and two:
            out[kind] = {s: two["results"][s]["req_per_s"] / one["results"][s]["req_per_s"]
                         for s in results["scenarios"]}
    return out


def table(results: dict[str, Any]) -> str:
    """The rates (req/s), with the 2/1 ratio per server and the connections per worker."""
    servers, ratio = results["servers"], results["ratios"]
    head = f"{'scenario':14s} " + " ".join(f"{n:>10s}" for n in servers) + "".join(
        f" {k + ' 2/1':>12s}" for k in ratio)
    lines = [head]
    for s in results["scenarios"]:
        rates = " ".join(f"{servers[n]['results'][s]['req_per_s']:10.0f}" for n in servers)
        lines.append(f"{s:14s} {rates}" + "".join(f" {ratio[k][s]:11.2f}x" for k in ratio))
    for s in results["scenarios"]:
        cores = ", ".join(f"{n} {servers[n]['results'][s]['server_cores']:.2f}/"
                          f"{servers[n]['results'][s]['client_cores']:.2f}" for n in servers)
        lines.append(f"cores server/h2load, {s}: {cores}")
    for s in results["scenarios"]:
        splits = ", ".join(f"{n} {'/'.join(map(str, servers[n]['results'][s]['connections_per_worker']))}"
                           for n in servers if n.endswith("-2"))
        lines.append(f"connections per worker, {s}: {splits}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "nginx": peers.nginx_version(),
            "uvloop": _uvloop_version()}


def _uvloop_version() -> str:
    try:
        import uvloop
    except ImportError:
        return ""
    return uvloop.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, one run each")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS})")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load is not installed (apt-get install nghttp2-client)", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="h2serve-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        certs = peers.make_certs(work / "certs")
        results = run(work, certs, quick=args.quick,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    results["machine"] = machine()
    results["command"] = "python -m benchmarks.workers" + (" --quick" if args.quick else "")
    results["seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"({results['seconds']:.0f}s; {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
