"""A/B of two checkouts of h2serve in one run: the figure a change on the hot path comes with.

    git worktree add /tmp/before <rev>
    python -m benchmarks.revisions --before /tmp/before [--after .] [--rounds 7]

Both servers run side by side on the same site and certificate (each pinned to core 0, h2load to
core 1) and take turns, scenario by scenario, the order swapped each round, after one warm-up run
each. For each scenario it prints the median rate and the median CPU time the server spent per
request (per MB for the large file), read from /proc, with the after/before ratios. The CPU time is
the steadier figure on a machine shared with others: h2load's rate moves with whatever else runs.

`--before-args`/`--after-args` add options to one server's command line: the same checkout twice
with an option off and on (`--before . --after-args "--metrics-bind 127.0.0.1:0"`) measures what
turning it on costs.

Scenarios: a 1 KiB file over h2 (32 connections x 10 streams) and over HTTP/1.1 (32 connections),
and a 64 MiB file over h2 (one connection, one stream at a time).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import peers
from .throughput import BIG_NAME, SMALL_NAME, make_site, parse_h2load

SCENARIOS = [
    ("1KiB h2 32x10", ["-c", "32", "-m", "10", "-n", "30000"], SMALL_NAME),
    ("1KiB h1 32", ["--h1", "-c", "32", "-n", "20000"], SMALL_NAME),
    ("64MiB h2", ["-c", "1", "-m", "1", "-n", "8"], BIG_NAME),
]


def cpu_seconds(pid: int) -> float:
    """User and system time of a process so far (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(checkout: Path, site: Path, certs: Path, empty_map: Path,
          extra: list[str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """`python -m h2serve` from `checkout` (its own package first on the path), with `extra`
    options; (process, port)."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = peers.pinned([sys.executable, "-m", "h2serve", "--root", str(site), "--bind", "127.0.0.1:0",
                        "--cert", str(certs / "cert.pem"), "--key", str(certs / "key.pem"),
                        "--access-log", "off", "--push-manifest", str(empty_map), *(extra or [])], 0)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=checkout)
    assert proc.stderr is not None
    for line in proc.stderr:
        if " on https://" in line:
            port = int(line.split(" on https://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            return proc, port
    raise SystemExit(f"h2serve from {checkout} did not start")


def run(before: Path, after: Path, rounds: int,
        extra: dict[str, list[str]] | None = None) -> list[str]:
    """The table rows: scenario, rates, ratio, CPU per unit of work."""
    from h2serve.net.certs import ensure_dev_certs  # the after checkout's: both read the same files

    with tempfile.TemporaryDirectory() as tmp:
        site = make_site(Path(tmp) / "site")
        certs, _ = ensure_dev_certs(Path(tmp) / "certs")
        empty = Path(tmp) / "empty.json"
        empty.write_text("{}")
        servers = {name: start(path, site, certs.cert.parent, empty, (extra or {}).get(name))
                   for name, path in (("before", before), ("after", after))}
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        try:
            for scenario, args, path in SCENARIOS:
                for _, port in servers.values():  # warm-up, not counted
                    _h2load(args, port, path)
                for r in range(rounds):
                    for name in (["before", "after"] if r % 2 == 0 else ["after", "before"]):
                        proc, port = servers[name]
                        t0 = cpu_seconds(proc.pid)
                        result = _h2load(args, port, path)
                        spent = cpu_seconds(proc.pid) - t0
                        big = path == BIG_NAME
                        rate = result["mb_per_s"] if big else result["req_per_s"]
                        work = result["bytes"] / 1e6 if big else result["requests"]
                        results.setdefault((scenario, name), []).append((rate, spent / work * 1e6))
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
    rows = ["| scenario | before | after | after/before | server CPU, before -> after |",
            "|---|---|---|---|---|"]
    for scenario, _, path in SCENARIOS:
        b, a = results[(scenario, "before")], results[(scenario, "after")]
        rb, ra = statistics.median(x[0] for x in b), statistics.median(x[0] for x in a)
        cb, ca = statistics.median(x[1] for x in b), statistics.median(x[1] for x in a)
        unit, per = ("MB/s", "us/MB") if path == BIG_NAME else ("req/s", "us/request")
        rows.append(f"| {scenario} | {rb:,.0f} {unit} | {ra:,.0f} {unit} | {ra / rb:.3f} | "
                    f"{cb:.1f} -> {ca:.1f} {per} ({ca / cb:.3f}) |")
    return rows


def _h2load(args: list[str], port: int, path: str) -> dict[str, float]:
    out = subprocess.run(peers.pinned(["h2load", *args, f"https://127.0.0.1:{port}/{path}"], 1),
                         capture_output=True, text=True, timeout=300).stdout
    result = parse_h2load(out)
    if result.get("failed", 1) or result.get("succeeded") != result.get("requests"):
        raise SystemExit(f"h2load failed against port {port}: {out[-400:]}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.revisions",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier revision")
    parser.add_argument("--after", type=Path, default=Path.cwd(),
                        help="a checkout of the later one (default: .)")
    parser.add_argument("--rounds", type=int, default=7, help="runs per server and scenario; medians count")
    parser.add_argument("--before-args", default="", help="options added to the before server's command")
    parser.add_argument("--after-args", default="", help="options added to the after server's command")
    args = parser.parse_args(argv)
    extra = {"before": shlex.split(args.before_args), "after": shlex.split(args.after_args)}
    for row in run(args.before.resolve(), args.after.resolve(), args.rounds, extra):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
