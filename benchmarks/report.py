"""Tables (Markdown) and charts (PNG, matplotlib) from the results of `benchmarks.run`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MODE_NAMES = {"push": "h2 + push", "nopush": "h2, no push", "hints": "h2 + 103 hints", "h1": "HTTP/1.1 x6",
              "probe": "probe: 1 small file"}
TARGET_SITE = "target30"
TARGET_RTT = 50
TARGETS = {"ratio_floor": 1.05, "ratio_h1": 0.30}


def _fmt(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _rows(cells: list[dict[str, Any]], site: str) -> list[tuple[str, str, str]]:
    """(server, label, mode) in table order: h2serve's modes, then each peer's."""
    seen: dict[tuple[str, str], str] = {}
    order = {"push": 0, "hints": 1, "nopush": 2, "h1": 3, "probe": 4}
    for c in cells:
        if c["site"] == site:
            seen.setdefault((c["server"], c["mode"]), c["label"])
    servers = list(dict.fromkeys(s for s, _ in seen))
    return [(s, seen[(s, m)], m) for s in servers
            for m in sorted((m for (s2, m) in seen if s2 == s), key=lambda m: order.get(m, 9))]


def target_summary(results: dict[str, Any]) -> list[str]:
    """The issue's targets, checked on the 30-asset page at RTT 50 ms."""
    cells = results.get("pageload", {}).get("cells", [])
    at = {(c["server"], c["mode"]): c for c in cells
          if c["site"] == TARGET_SITE and c["rtt_ms"] == TARGET_RTT}
    ours = at.get(("h2serve", "push"))
    if ours is None:
        return []
    kib = results["pageload"]["sites"][TARGET_SITE]["bytes"] / 1024
    lines = [f"### Targets: the 30-asset page ({kib:.0f} KiB) at RTT {TARGET_RTT} ms, fresh TLS 1.3 "
             "connection", "",
             "| | x 3-RTT floor | x own HTTP/1.1 | handshake | page done | last asset after page | "
             "client CPU |", "|---|---|---|---|---|---|---|"]
    for (_, mode), c in sorted(at.items(), key=lambda kv: (kv[0][0] != "h2serve", kv[0])):
        if mode not in ("push", "h1"):
            continue
        lines.append(f"| {c['label']} {MODE_NAMES[mode]} | {_ratio(c['ratio_floor'])} | "
                     f"{_ratio(c['ratio_h1'])} | {c['handshake_ms'] / TARGET_RTT:.2f} RTT | "
                     f"{c['page_done_ms'] / TARGET_RTT:.2f} RTT | {c['after_page_ms']:.1f} ms | "
                     f"{c['client_cpu_ms']:.1f} ms |")
    hyper = at.get(("hypercorn", "push"))
    checks = [
        f"h2serve push <= {TARGETS['ratio_floor']}x floor: {_ratio(ours['ratio_floor'])} -> "
        f"{'met' if ours['ratio_floor'] <= TARGETS['ratio_floor'] else 'MISSED'}",
        f"h2serve push <= {TARGETS['ratio_h1']}x HTTP/1.1: {_ratio(ours['ratio_h1'])} -> "
        f"{'met' if ours['ratio_h1'] is not None and ours['ratio_h1'] <= TARGETS['ratio_h1'] else 'MISSED'}",
    ]
    if hyper is not None:
        beat = ours["median_ms"] < hyper["median_ms"]
        share = ours["median_ms"] / hyper["median_ms"]
        checks.append(f"h2serve push beats Hypercorn+Quart push: {share:.2f}x its time -> "
                      f"{'met' if beat else 'MISSED'}")
    lines += ["", *[f"- {c}" for c in checks], ""]
    return lines


def markdown(results: dict[str, Any], title: bool = True) -> str:
    m = results.get("machine", {})
    pkgs = m.get("packages", {})
    peers = []
    if "hypercorn" in pkgs:
        peers.append(f"Hypercorn {pkgs['hypercorn']} + Quart {pkgs.get('quart', '?')}")
    if m.get("nginx"):
        peers.append(f"nginx {m['nginx']}")
    out = ["## Results", ""] if title else []
    out += [f"`{results['command']}` on {results['date']}, {results.get('seconds', 0):.0f} s. Machine: "
           f"{m.get('cpus')} cores ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, {m.get('os')}, "
           f"kernel {m.get('kernel')}, Python {m.get('python')}, {m.get('openssl')}, h2 {pkgs.get('h2')}"
           f"{'; peers: ' + ', '.join(peers) if peers else ''}. Servers pinned to core 0; client, relay "
           f"and h2load to core 1. h2serve at commit {m.get('commit')}"
           f"{' with uncommitted changes in h2serve/' if m.get('h2serve_uncommitted') else ''}; "
           f"load average at start {m.get('loadavg_at_start')}.", ""]
    bg = results.get("pageload", {}).get("background_cores") or {}
    if bg.get("median") is not None:
        out[-2] += (f" Other processes took {bg['median']:.2f} cores of CPU (median over the rounds of "
                    f"page loads kept; max {bg['max']:.2f}); {bg.get('rounds_redone', 0)} rounds they "
                    f"disturbed more (over {bg.get('limit', 0.3):g} cores) were measured again.")
        if bg.get("steal_median") is not None:
            out[-2] += (f" The hypervisor took {bg['steal_median']:.2f} cores (steal, median per round) "
                        "while the loads ran.")
    pl = results.get("pageload")
    if pl:
        out += target_summary(results)
        mbit = f", bandwidth cap {results['mbit']:g} Mbit/s each way" if results.get("mbit") else ""
        out += ["### Page load", "",
                f"Median of {results['runs_per_cell']} loads per cell, (min-max), in ms; each load a "
                f"fresh connection (TCP + TLS 1.3 handshake included) to the last byte of the last "
                f"asset, through the relay{mbit}. Then each median as a ratio: to the same server's "
                "HTTP/1.1 load (x h1) and to the 3-RTT floor (TCP handshake + TLS 1.3 handshake + "
                "one request: 3 RTT). The probe row fetches one small file on a fresh connection: the "
                "practical floor of client, relay and TLS.", ""]
        rtts = results["rtts_ms"]
        for site, info in pl["sites"].items():
            out += [f"#### {site}: {info['description']}; {info['assets']} assets, "
                    f"{info['bytes'] / 1024:.0f} KiB with the page", ""]
            cells = {(c["server"], c["mode"], c["rtt_ms"]): c for c in pl["cells"] if c["site"] == site}
            nonzero = [r for r in rtts if r]
            head = (["server", "mode"] + [f"RTT {r:g}" for r in rtts]
                    + [f"x h1 @{r:g}" for r in nonzero] + [f"x floor @{r:g}" for r in nonzero])
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for server, label, mode in _rows(pl["cells"], site):
                row = [label, MODE_NAMES.get(mode, mode)]
                for r in rtts:
                    c = cells.get((server, mode, r))
                    failed = f" [{len(c['errors'])} failed]" if c and c.get("errors") else ""
                    row.append("" if c is None else
                               f"{_fmt(c['median_ms'])} ({_fmt(c['min_ms'])}-{_fmt(c['max_ms'])}){failed}")
                for key in ("ratio_h1", "ratio_floor"):
                    for r in nonzero:
                        c = cells.get((server, mode, r))
                        row.append("" if c is None or (mode == "probe" and key == "ratio_h1")
                                   else _ratio(c.get(key)))
                out.append("| " + " | ".join(row) + " |")
            out.append("")
        rss = pl.get("peak_rss_kib", {})
        if rss:
            out += ["Peak RSS during the page loads (VmHWM, MiB): " + "; ".join(
                f"{pl['servers'].get(s, s)} " + ", ".join(f"{site} {v / 1024:.0f}" for site, v in per.items())
                for s, per in rss.items()), ""]
    tp = results.get("throughput")
    if tp and tp.get("servers"):
        names = list(tp["servers"])
        best = (f"median of {tp['repeats']} runs" if tp.get("repeats", 1) > 2
                else f"best of {tp['repeats']} runs" if tp.get("repeats", 1) > 1 else "one run")
        out += ["### Throughput (h2load)", "",
                f"Requests per second (the 64 MiB file: MB/s), {best} each, server on core 0 and "
                "h2load on core 1; then h2serve's rate as a ratio to each peer's.", ""]
        head = ["scenario", *names, *[f"h2serve / {n}" for n in names if n != "h2serve"]]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for scenario in tp["scenarios"]:
            big = scenario.startswith("64MiB")
            row = [scenario + (" (MB/s)" if big else " (req/s)")]
            for n in names:
                r = tp["servers"][n]["results"].get(scenario, {})
                value = r.get("mb_per_s" if big else "req_per_s")
                note = "*" if r.get("no_reason_phrase") else ""
                row.append("" if value is None else f"{value:.0f}{note}")
            for n in names:
                if n != "h2serve":
                    row.append(_ratio(tp.get("ratios", {}).get(n, {}).get(scenario)))
            out.append("| " + " | ".join(row) + " |")
        out.append("| peak RSS (MiB) | " + " | ".join(
            f"{tp['servers'][n].get('peak_rss_kib', 0) / 1024:.1f}" for n in names) + " |"
            + " |" * (len(names) - 1))
        if any(r.get("no_reason_phrase") for n in names for r in tp["servers"][n]["results"].values()):
            out += ["", "\\* h2load 1.52 counts an HTTP/1.1 response whose status line has no reason "
                        "phrase (`HTTP/1.1 200 `, as h11 writes it) as failed; the rate counts them as "
                        "done, which they are."]
        out += ["", *_ceiling_lines(tp), "", *throughput_targets(tp)]
        out.append("")
    return "\n".join(out) + "\n"


def throughput_targets(tp: dict[str, Any]) -> list[str]:
    """Issue 7's targets, each checked on this run's figures (the ones its peers make possible)."""
    ratios = tp.get("ratios", {})
    hyper, nginx, ceiling = ratios.get("hypercorn", {}), ratios.get("nginx", {}), ratios.get("ceiling", {})
    checks = [("h2, 1 KiB, 32 x 10: >= 3x Hypercorn", hyper.get("1KiB h2 32x10"), 3.0),
              ("h2, 1 KiB, 32 x 10: >= 0.8x the in-memory h2 ceiling", ceiling.get("1KiB h2 32x10"), 0.8),
              ("HTTP/1.1, 1 KiB, 32 connections: >= 2x Hypercorn", hyper.get("1KiB h1 32"), 2.0),
              ("h2, 64 MiB: >= nginx's MB/s", nginx.get("64MiB h2"), 1.0)]
    out = [f"- h2serve {what}: {_ratio(value)} -> {'met' if value >= floor else 'MISSED'}"
           for what, value, floor in checks if value is not None]
    servers = tp.get("servers", {})
    if "h2serve" in servers and "hypercorn" in servers:
        ours, theirs = (servers[n].get("peak_rss_kib", 0) / 1024 for n in ("h2serve", "hypercorn"))
        out.append(f"- h2serve peak RSS <= Hypercorn's: {ours:.1f} vs {theirs:.1f} MiB -> "
                   f"{'met' if ours <= theirs else 'MISSED'}")
    return out


def _ceiling_lines(tp: dict[str, Any]) -> list[str]:
    """The in-memory h2 ceiling of the same run, and h2serve's h2 rates as a share of it."""
    ceiling = tp.get("ceiling", {})
    if not ceiling.get("minimal"):
        return []
    shares = ", ".join(f"{s} {_ratio(v)}" for s, v in tp.get("ratios", {}).get("ceiling", {}).items())
    return [f"The h2 ceiling (benchmarks/ceiling.py, in memory, same run, core 0): "
            f"{ceiling['minimal']['req_per_s']:,} requests/s per core with h2load's minimal headers "
            f"({ceiling['browser']['req_per_s']:,} with a browser's). h2serve's h2 rate as a share of "
            f"it: {shares}."]


def charts(results: dict[str, Any], out: Path) -> list[Path]:
    """pageload.png (median time against RTT per site, min-max bars) and throughput.png."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    pl = results.get("pageload")
    if pl and pl.get("cells"):
        made += _pageload_charts(plt, pl, out)
    tp = results.get("throughput")
    if tp and tp.get("servers"):
        names = list(tp["servers"])
        fig, axes = plt.subplots(1, len(tp["scenarios"]), figsize=(3.2 * len(tp["scenarios"]), 3.4),
                                 squeeze=False)
        for ax, scenario in zip(axes[0], tp["scenarios"], strict=True):
            key = "mb_per_s" if scenario.startswith("64MiB") else "req_per_s"
            values = [tp["servers"][n]["results"].get(scenario, {}).get(key, 0) for n in names]
            ax.bar(names, values, color=["tab:blue", "tab:purple", "tab:orange", "tab:green"][:len(names)])
            ax.set_title(scenario, fontsize=9)
            ax.set_ylabel("MB/s" if key == "mb_per_s" else "requests/s")
            ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        path = out / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def _pageload_charts(plt: Any, pl: dict[str, Any], out: Path) -> list[Path]:
    site_names = list(pl["sites"])
    cols = 3
    rows = (len(site_names) + 1 + cols - 1) // cols  # one panel more, for the legend
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    handles: list[Any] = []
    for ax, site in zip(flat, site_names, strict=False):
        for server, label, mode in _rows(pl["cells"], site):
            if mode == "probe":
                continue
            cs = sorted((c for c in pl["cells"] if c["site"] == site and c["server"] == server
                         and c["mode"] == mode), key=lambda c: c["rtt_ms"])
            err = [[c["median_ms"] - c["min_ms"] for c in cs], [c["max_ms"] - c["median_ms"] for c in cs]]
            line = ax.errorbar([c["rtt_ms"] for c in cs], [c["median_ms"] for c in cs], yerr=err,
                               fmt=("-" if server == "h2serve" else "--") + "o", markersize=3, capsize=2,
                               label=f"{label} {MODE_NAMES[mode]}")
            if site == site_names[0]:
                handles.append(line)
        rtts = sorted({c["rtt_ms"] for c in pl["cells"]})
        floor = ax.plot(rtts, [3 * r for r in rtts], ":", color="grey", label="3-RTT floor")[0]
        if site == site_names[0]:
            handles.append(floor)
        info = pl["sites"][site]
        ax.set_title(f"{site}: {info['assets']} assets, {info['bytes'] / 1024:.0f} KiB", fontsize=9)
        ax.set_xlabel("RTT (ms)", fontsize=8)
        ax.set_ylabel("page load, median (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in flat[len(site_names):]:
        ax.axis("off")
    flat[len(site_names)].legend(handles=handles, loc="center", fontsize=8, frameon=False)
    fig.suptitle("Page load: median of fresh-connection loads, bars min-max", fontsize=10)
    fig.tight_layout()
    made = [out / "pageload.png"]
    fig.savefig(made[0], dpi=100)
    plt.close(fig)

    rtt = TARGET_RTT if any(c["rtt_ms"] == TARGET_RTT for c in pl["cells"]) else max(
        c["rtt_ms"] for c in pl["cells"])
    if not rtt:
        return made
    series = [(server, label, mode) for server, label, mode in _rows(pl["cells"], site_names[0])
              if mode not in ("h1", "probe")]
    at = {(c["site"], c["server"], c["mode"]): c for c in pl["cells"] if c["rtt_ms"] == rtt}
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(series))
    for i, (server, label, mode) in enumerate(series):
        values = [at[(site, server, mode)]["ratio_floor"] if (site, server, mode) in at else 0
                  for site in site_names]
        ax.bar([x + i * width for x in range(len(site_names))], values, width,
               label=f"{label} {MODE_NAMES[mode]}")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.axhline(TARGETS["ratio_floor"], color="red", linestyle="--", linewidth=0.8,
               label=f"target {TARGETS['ratio_floor']}x")
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(site_names))], site_names)
    ax.set_ylabel(f"median / 3-RTT floor at RTT {rtt:g} ms")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    made.append(out / "pageload_floor.png")
    fig.savefig(made[-1], dpi=100)
    plt.close(fig)
    return made


START, END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme: Path, results: dict[str, Any]) -> None:
    """Replace the part of the README between the results markers with the latest tables."""
    text = readme.read_text()
    block = (f"{START}\n{markdown(results, title=False)}\n![page load](results/pageload.png)\n\n"
             "![ratio to the 3-RTT floor](results/pageload_floor.png)\n\n"
             f"![throughput](results/throughput.png)\n{END}")
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
