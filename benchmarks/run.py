"""The whole benchmark in one command: page loads through the latency relay, then throughput.

    python -m benchmarks            # the full run (about 15 minutes on 2 cores)
    python -m benchmarks --quick    # 1-2 minutes: RTT 0 and 50 ms, the demo and 30-asset pages
    python -m benchmarks --rtt 50 --sites target30 --runs 9 --no-throughput

Results go to benchmarks/results/: results.json (every run of every cell), results.md (the tables),
pageload.png, pageload_floor.png and throughput.png; a full run also puts the tables into
benchmarks/README.md.

Page loads: the servers run side by side, each pinned to core 0 (idle but for the load at hand);
the client (this process) and one relay per server (processes of their own, so the client's work
never delays their timers) share core 1. Every load is a fresh connection (TCP + TLS 1.3 handshake
inside the time) fetching the page and all it needs. Servers and modes are interleaved, one load of
each per round, so that whatever else the machine does weighs on all of them alike, and each round
waits until the rest of the machine is quiet (`--quiet`); one unmeasured load per server and mode
warms each server first; the garbage collector is off during each load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import shlex
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pageload, peers, report, sites, throughput

RESULTS = Path(__file__).resolve().parent / "results"
RTTS = [0, 20, 50, 100]
H2SERVE_MODES = ["push", "nopush", "hints", "h1"]
PEER_MODES = ["push", "h1"]
CLIENT_CPU = 1
SERVER_CPU = 0


@dataclass
class Server:
    """One server of the page-load table: how to start it on a site, and which modes it runs."""

    name: str
    label: str
    modes: list[str]
    start: Callable[[sites.SiteSpec], peers.ServerProcess]


def page_servers(names: list[str], work: Path, certs: peers.Certs) -> list[Server]:
    out = []
    for name in names:
        if name == "h2serve":
            out.append(Server("h2serve", "h2serve", H2SERVE_MODES,
                              lambda s: peers.start_h2serve(s.h2serve_args(), certs, work,
                                                            cpu=SERVER_CPU)))
        elif name == "hypercorn":
            out.append(Server("hypercorn", "Hypercorn+Quart", PEER_MODES,
                              lambda s: peers.start_hypercorn_quart(
                                  s.pages, s.static, [p for p, _ in s.index_pushes()], certs, work,
                                  cpu=SERVER_CPU)))
        elif name == "nginx":
            out.append(Server("nginx", f"nginx {peers.nginx_version()}", PEER_MODES,
                              lambda s: peers.start_nginx(
                                  s.pages, s.static, certs, work,
                                  pushes=[p for p, _ in s.index_pushes()], cpu=SERVER_CPU)))
        else:
            raise SystemExit(f"unknown server {name!r}: h2serve, hypercorn or nginx")
    return out


class RelayProcess:
    """`python -m benchmarks.relay` in a subprocess on the client's core."""

    def __init__(self, target_port: int, rtt_ms: float, mbit: float | None) -> None:
        cmd = [sys.executable, "-m", "benchmarks.relay", "--target", f"127.0.0.1:{target_port}",
               "--rtt", str(rtt_ms)]
        if mbit:
            cmd += ["--mbit", str(mbit)]
        self.proc = subprocess.Popen(peers.pinned(cmd, CLIENT_CPU), stdout=subprocess.PIPE, text=True,
                                     cwd=peers.REPO, env={**os.environ, "PYTHONPATH": str(peers.REPO)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"relay did not start: {line!r}")
        self.port = int(line.split()[3].rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def summarize(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "q1": q[0], "q3": q[2]}


def probe_path(site: sites.SiteSpec) -> str:
    """A small file of the site, for the floor probe (connect, handshake, one request)."""
    pushes = site.index_pushes()
    return min((p for p, _ in pushes), key=lambda p: site.file_for(p).stat().st_size)


def cpu_busy(interval: float = 0.25) -> float:
    """Cores busy over `interval` seconds, all processes of the machine (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    ticks = total1 - total0
    return (os.cpu_count() or 1) * (ticks - (idle1 - idle0)) / ticks if ticks else 0.0


def wait_for_quiet(limit: float = 0.3, max_wait: float = 10.0) -> float:
    """Between rounds (our own processes idle), wait until the rest of the machine uses less than
    `limit` cores, for at most `max_wait` seconds; returns the load last seen, in cores."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > limit and time.monotonic() < deadline:
        time.sleep(0.5)
        busy = cpu_busy()
    return busy


@dataclass
class Target:
    """A running server of the table and the relay in front of it (and their processes)."""

    server: Server
    port: int
    pids: Callable[[], list[int]] = list


def _busy_ticks() -> tuple[int, int]:
    """Clock ticks the machine's processes ran (user, nice, system), and those the hypervisor took
    from it (steal), so far (/proc/stat). Interrupt time is left out: on loopback it is mostly our
    own packets, and no process is charged for it."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2], (fields[7] if len(fields) > 7 else 0)


class ForeignCpu:
    """CPU time that processes other than ours (client, relays, servers) took during a round: the
    measure of how much the rest of the machine disturbed it. The hypervisor's steal is kept apart
    (`steal`): on this kind of virtual machine it rises whenever our own processes run."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = (0, 0, 0.0, 0.0)
        self.steal_start = 0
        self.steal = 0.0  # cores' worth of steal over the last measured span

    def _own(self) -> tuple[int, float]:
        """Our processes' ticks, and the CPU seconds of children that ended (h2load runs)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return peers.cpu_ticks(self.pids()), children.ru_utime + children.ru_stime

    def begin(self) -> None:
        own, ended = self._own()
        busy, self.steal_start = _busy_ticks()
        self.start = (busy, own, ended, time.monotonic())

    def cores(self) -> float:
        """Cores' worth of foreign CPU since `begin()`, averaged over the time since."""
        busy, own, ended, started = self.start
        elapsed = time.monotonic() - started
        own_now, ended_now = self._own()
        busy_now, steal_now = _busy_ticks()
        if elapsed <= 0:
            return 0.0
        self.steal = (steal_now - self.steal_start) / self.hz / elapsed
        foreign = (busy_now - busy) / self.hz - (own_now - own) / self.hz - (ended_now - ended)
        return max(0.0, foreign / elapsed)


Rows = dict[str, dict[str, list[dict[str, Any]]]]  # server -> mode -> one row per load


async def measure(targets: list[Target], site: sites.SiteSpec, runs: int, ca: str, expected: set[str],
                  quiet: float, quiet_wait: float) -> tuple[Rows, dict[str, Any]]:
    """`runs` loads per server and mode (and the probe), after one warm-up load each. Servers and
    modes are interleaved, one load of each per round, so that whatever else the machine does at a
    moment weighs on all of them alike; each round starts once the machine is quiet, and a round
    that other processes disturbed anyway (more than `quiet` cores of their CPU time during it) is
    measured again. Returns the rows, and per round kept the foreign CPU and the steal (cores)."""
    out: Rows = {
        t.server.name: {m: [] for m in [*t.server.modes, "probe"]} for t in targets}
    probe = probe_path(site)
    background: list[float] = []

    async def once(port: int, mode: str) -> dict[str, Any]:
        gc.collect()
        gc.disable()
        cpu = time.process_time()
        try:
            if mode == "probe":
                result = await pageload.load_page("127.0.0.1", port, probe, mode="nopush", ca_file=ca,
                                                  assets=False)
            else:
                result = await pageload.load_page("127.0.0.1", port, "/", mode=mode, ca_file=ca)
        except Exception as e:  # a failed load is counted in its cell, and the run goes on
            return {"error": f"{type(e).__name__}: {e}"}
        finally:
            cpu = time.process_time() - cpu
            gc.enable()
        if mode != "probe" and result.fetched != expected:
            missing, extra = expected - result.fetched, result.fetched - expected
            return {"error": f"fetched set differs: missing {sorted(missing)}, extra {sorted(extra)}"}
        row = result.summary()
        row["client_cpu_ms"] = round(cpu * 1000, 3)
        row["page_done_ms"] = round(result.page.done_at * 1000, 3)
        return row

    for t in targets:
        for mode in [*t.server.modes, "probe"]:
            await once(t.port, mode)  # warm-up: caches, compression, first-connection costs
    def our_pids() -> list[int]:
        return [os.getpid(), *(pid for t in targets for pid in t.pids())]

    foreign = ForeignCpu(our_pids)
    kept = redone = 0
    steal: list[float] = []
    while kept < runs:
        if quiet:
            wait_for_quiet(quiet, quiet_wait)
        foreign.begin()
        rows = [(t.server.name, mode, await once(t.port, mode))
                for t in targets for mode in [*t.server.modes, "probe"]]
        disturbed = foreign.cores()
        # A round during which other processes took more than `quiet` cores (averaged over the
        # round) is measured again, up to as many times as there are rounds.
        if quiet and disturbed > quiet and redone < runs:
            redone += 1
            continue
        background.append(round(disturbed, 3))
        steal.append(round(foreign.steal, 3))
        kept += 1
        for name, mode, row in rows:
            out[name][mode].append(row)
    return out, {"foreign": background, "steal": steal, "redone": redone}


def run_pageload(args: argparse.Namespace, work: Path, certs: peers.Certs,
                 progress: Callable[[str], None]) -> dict[str, Any]:
    servers = page_servers(args.servers, work, certs)
    site_specs = [sites.make_site(name, work / "sites") for name in args.sites]
    total = sum(len(s.modes) for s in servers) * len(site_specs) * len(args.rtt)
    done = 0
    started = time.monotonic()
    cells: list[dict[str, Any]] = []
    site_info: dict[str, Any] = {}
    rss: dict[str, dict[str, int]] = {}
    background: list[float] = []
    steal: list[float] = []
    redone = 0
    for site in site_specs:
        expected = {p for p, _ in site.index_pushes()}
        count, size = site.files()
        site_info[site.name] = {"assets": count, "bytes": size, "description": site.description}
        progress(f"site {site.name}: {site.description}, {count} assets, {size / 1024:.0f} KiB with the page")
        procs: list[peers.ServerProcess] = []
        try:
            for server in servers:
                procs.append(server.start(site))
            for rtt in args.rtt:
                relays: list[RelayProcess] = []
                try:
                    for proc in procs:
                        relays.append(RelayProcess(proc.port, rtt, args.mbit))
                    targets = [Target(s, r.port, lambda p=p, r=r: [*p.pids(), r.proc.pid])
                               for s, p, r in zip(servers, procs, relays, strict=True)]
                    rows, seen = asyncio.run(measure(targets, site, args.runs, str(certs.ca), expected,
                                                     args.quiet, 2.0 if args.quick else 4.0))
                    background += seen["foreign"]
                    steal += seen["steal"]
                    redone += seen["redone"]
                finally:
                    for relay in relays:
                        relay.stop()
                for server in servers:
                    for mode, loads in rows[server.name].items():
                        good = [row for row in loads if "error" not in row]
                        errors = [row["error"] for row in loads if "error" in row]
                        done += mode != "probe"
                        if errors:
                            progress(f"{site.name} RTT {rtt:g} {server.name} {mode}: {len(errors)} "
                                     f"failed loads, first: {errors[0]}")
                        if not good:
                            continue
                        cell = make_cell(site.name, server, mode, rtt, good)
                        cell["errors"] = errors
                        cells.append(cell)
                        if mode == "probe":
                            continue
                        floor = f", x{cell['median_ms'] / (3 * rtt):.2f} floor" if rtt else ""
                        progress(f"[{done}/{total} {time.monotonic() - started:5.0f}s] {site.name:8s} "
                                 f"RTT {rtt:3g} {server.name:9s} {mode:6s}: median "
                                 f"{cell['median_ms']:7.1f} ms ({cell['min_ms']:.1f}-{cell['max_ms']:.1f})"
                                 f"{floor}")
            for server, proc in zip(servers, procs, strict=True):
                rss.setdefault(server.name, {})[site.name] = proc.peak_rss_kib()
        finally:
            for proc in procs:
                proc.stop()
    add_ratios(cells)
    return {"cells": cells, "sites": site_info, "peak_rss_kib": rss,
            "servers": {s.name: s.label for s in servers},
            "background_cores": {"median": statistics.median(background) if background else None,
                                 "max": max(background) if background else None,
                                 "rounds_redone": redone, "limit": args.quiet,
                                 "steal_median": statistics.median(steal) if steal else None}}


def make_cell(site: str, server: Server, mode: str, rtt: float, loads: list[dict[str, Any]]
              ) -> dict[str, Any]:
    times = [row["elapsed_ms"] for row in loads]
    s = summarize(times)
    first = loads[0]

    def med(key: str) -> float:
        return round(statistics.median(row[key] for row in loads), 3)

    return {"site": site, "server": server.name, "label": server.label, "mode": mode, "rtt_ms": rtt,
            "runs_ms": times, "median_ms": round(s["median"], 3), "min_ms": round(s["min"], 3),
            "max_ms": round(s["max"], 3), "q1_ms": round(s["q1"], 3), "q3_ms": round(s["q3"], 3),
            "handshake_ms": med("handshake_ms"), "page_done_ms": med("page_done_ms"),
            "after_page_ms": round(statistics.median(r["elapsed_ms"] - r["page_done_ms"] for r in loads), 3),
            "client_cpu_ms": med("client_cpu_ms"), "assets": first["assets"], "pushed": first["pushed"],
            "bytes": first["bytes"], "connections": first["connections"],
            "early_hints": first["early_hints"]}


def add_ratios(cells: list[dict[str, Any]]) -> None:
    """Each cell's median over the same server's HTTP/1.1 median, and over the 3-RTT floor."""
    h1 = {(c["site"], c["server"], c["rtt_ms"]): c["median_ms"] for c in cells if c["mode"] == "h1"}
    for c in cells:
        base = h1.get((c["site"], c["server"], c["rtt_ms"]))
        c["ratio_h1"] = round(c["median_ms"] / base, 4) if base else None
        c["floor_ms"] = 3 * c["rtt_ms"]
        c["ratio_floor"] = round(c["median_ms"] / c["floor_ms"], 4) if c["rtt_ms"] else None


def machine() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return ""

    try:
        distro = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        distro = ""
    versions = {}
    for module in ("h2", "h11", "hpack", "hypercorn", "quart", "matplotlib"):
        try:
            from importlib.metadata import version

            versions[module] = version(module)
        except Exception:
            pass
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip() \
        if throughput.shutil.which("h2load") else ""
    mem_kib = first("/proc/meminfo", "MemTotal").split()[0] if first("/proc/meminfo", "MemTotal") else "0"
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=peers.REPO,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    with open("/proc/loadavg") as f:
        loadavg = " ".join(f.read().split()[:3])
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "h2serve_uncommitted": bool(git("status", "--porcelain", "--", "h2serve")),
            "loadavg_at_start": loadavg, "cpus": os.cpu_count(),
            "cpu_model": first("/proc/cpuinfo", "model name"),
            "memory_gib": round(int(mem_kib) / 1024 / 1024, 1), "os": distro,
            "kernel": platform.release(), "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION, "packages": versions, "nginx": peers.nginx_version(),
            "h2load": h2load}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1-2 minutes: RTT 0 and 50 ms, the demo and target30 sites, fewer requests")
    parser.add_argument("--runs", type=int, help="measured loads per cell (default: 7; --quick: 5)")
    parser.add_argument("--rtt", help="comma-separated RTTs in ms (default: 0,20,50,100)")
    parser.add_argument("--sites", help=f"comma-separated, of {','.join(sites.site_names())}")
    parser.add_argument("--servers", help="comma-separated, of h2serve,hypercorn,nginx (default: "
                                          "those installed)")
    parser.add_argument("--mbit", type=float, help="bandwidth cap of the relay, Mbit/s each way")
    parser.add_argument("--no-pageload", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--out", default=str(RESULTS), help="results folder (default: %(default)s)")
    parser.add_argument("--no-readme", action="store_true", help="leave benchmarks/README.md as it is")
    parser.add_argument("--quiet", type=float, default=0.3, metavar="CORES",
                        help="before each round of loads, wait (up to 4 s; --quick: 2 s) until the "
                             "rest of the machine uses less than this many cores; 0: do not wait "
                             "(default: 0.3)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (5 if args.quick else 7)
    if args.runs < 5:
        print("note: fewer than 5 runs per cell", file=sys.stderr)
    args.rtt = [float(x) for x in args.rtt.split(",")] if args.rtt else ([0, 50] if args.quick else RTTS)
    args.rtt = [int(x) if x == int(x) else x for x in args.rtt]
    args.sites = args.sites.split(",") if args.sites else (
        ["demo", "target30"] if args.quick else sites.site_names())
    if args.servers:
        args.servers = args.servers.split(",")
    else:
        args.servers = ["h2serve"]
        if peers.quart_available():
            args.servers.append("hypercorn")
        if peers.nginx_binary():
            args.servers.append("nginx")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pageload.fast_hpack()
    command = "python -m benchmarks" + ("" if argv is None and len(sys.argv) <= 1 else
                                        " " + shlex.join(sys.argv[1:] if argv is None else argv))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="h2serve-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        certs = peers.make_certs(work / "certs")
        with PinnedTo(CLIENT_CPU):
            results: dict[str, Any] = {
                "command": command, "quick": args.quick, "runs_per_cell": args.runs,
                "rtts_ms": args.rtt, "mbit": args.mbit,
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
            }
            progress(f"benchmarks: {command}; servers {', '.join(args.servers)}; "
                     f"{args.runs} runs per cell")
            if not args.no_pageload:
                results["pageload"] = run_pageload(args, work, certs, progress)
            if not args.no_throughput:
                results["throughput"] = throughput.run(
                    work, certs, quick=args.quick,
                    servers=throughput_servers(args.servers),
                    progress=progress, quiet=args.quiet)
    results["seconds"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = report.markdown(results)
    (out / "results.md").write_text(markdown)
    charts = report.charts(results, out)
    if not args.quick and not args.no_readme and args.out == str(RESULTS):
        report.update_readme(Path(__file__).resolve().parent / "README.md", results)
    progress(f"done in {results['seconds']:.0f}s: {out / 'results.json'}, {out / 'results.md'}"
             + "".join(f", {c}" for c in charts))
    print(markdown)
    return 0


def throughput_servers(asked: list[str]) -> list[str]:
    """The servers asked for that h2load can measure; h2serve brings its asyncio variant."""
    return [s for s in throughput.available_servers()
            if s in asked or (s == throughput.ASYNCIO and "h2serve" in asked)]


class PinnedTo:
    """Pin this process (the client) to one core for the duration, then restore."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.saved: set[int] | None = None

    def __enter__(self) -> None:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > self.cpu:
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu})

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)


if __name__ == "__main__":
    sys.exit(main())
