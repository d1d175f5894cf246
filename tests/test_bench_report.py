"""The throughput benchmark's bookkeeping (benchmarks/throughput.py, benchmarks/report.py): which
run a cell reports, and how issue 7's targets are judged. No server and no h2load here: the
benchmark itself never runs in CI."""

from __future__ import annotations

from benchmarks.report import throughput_targets
from benchmarks.throughput import median_run


def test_a_cell_reports_its_median_run_not_its_best() -> None:
    runs = [{"req_per_s": 900.0, "n": 1}, {"req_per_s": 300.0, "n": 2}, {"req_per_s": 600.0, "n": 3}]
    assert median_run(runs, "req_per_s")["n"] == 3
    assert median_run(runs[:1], "req_per_s")["n"] == 1
    assert median_run([{"mb_per_s": 5.0}, {}, {"mb_per_s": 1.0}], "mb_per_s") == {"mb_per_s": 1.0}


def test_each_target_is_met_or_missed_by_its_own_ratio() -> None:
    tp = {"ratios": {"hypercorn": {"1KiB h2 32x10": 3.01, "1KiB h1 32": 1.99},
                     "nginx": {"64MiB h2": 1.0},
                     "ceiling": {"1KiB h2 32x10": 0.79}},
          "servers": {"h2serve": {"peak_rss_kib": 40 * 1024}, "hypercorn": {"peak_rss_kib": 39 * 1024}}}
    lines = throughput_targets(tp)
    assert [line.rsplit("-> ", 1)[1] for line in lines] == ["met", "MISSED", "MISSED", "met", "MISSED"]
    assert "3x Hypercorn: 3.01" in lines[0] and "40.0 vs 39.0 MiB" in lines[4]


def test_targets_without_a_peer_are_left_out() -> None:
    tp = {"ratios": {"ceiling": {"1KiB h2 32x10": 0.9}}, "servers": {"h2serve": {"peak_rss_kib": 1}}}
    assert throughput_targets(tp) == [
        "- h2serve h2, 1 KiB, 32 x 10: >= 0.8x the in-memory h2 ceiling: 0.90 -> met"]
