"""Latency over time: per-interval histograms recorded, merged from workers, settled into figures (bounded memory),
percentiles withheld where an interval's requests cannot support them; and the spans marked on the time axis."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from locust_milvus.report import histograms, plots, summary
from locust_milvus.report.histograms import INTERVAL_S, SETTLE_INTERVALS_MASTER, Recorder
from locust_milvus.report.plots import spans

from .conftest import run_locust


def feed(recorder: Recorder, monkeypatch, at: float, values_ms: list[float]) -> None:
    monkeypatch.setattr(histograms.time, "time", lambda: at)
    for v in values_ms:
        recorder.record("langchain-sync", "search", v)


def test_workers_intervals_merge_and_settle_into_figures(monkeypatch):
    base = 1_800_000_000 - 1_800_000_000 % INTERVAL_S
    worker_a, worker_b, master = Recorder(), Recorder(), Recorder()
    worker_a.settle_after = worker_b.settle_after = None  # workers keep and send their open intervals
    master.settle_after = histograms.SETTLE_INTERVALS_MASTER
    feed(worker_a, monkeypatch, base + 1, [2.0] * 150)
    feed(worker_b, monkeypatch, base + 2, [4.0] * 50)
    feed(worker_b, monkeypatch, base + INTERVAL_S + 1, [9.0] * 10)  # the next interval: too few for a p95
    for worker in (worker_a, worker_b):
        master.merge(worker.drain())
    key = ("langchain-sync", "search")
    figures = master.latency_over_time(key)
    count, p50, p95, p99, top = figures[base // INTERVAL_S]
    assert count == 200 and p50 == pytest.approx(2.0, rel=0.01) and p99 == pytest.approx(4.0, rel=0.01)
    assert top == pytest.approx(4.0, rel=0.01)
    count, p50, p95, p99, _ = figures[base // INTERVAL_S + 1]
    assert count == 10 and p50 == pytest.approx(9.0, rel=0.01) and p95 is None and p99 is None
    # Later, the master settles what no report can still add to: numbers kept, histograms dropped.
    monkeypatch.setattr(histograms.time, "time", lambda: base + 10 * INTERVAL_S)
    master.merge({"series": []})
    series = master.series[key]
    assert not series.intervals and sorted(series.settled) == [base // INTERVAL_S, base // INTERVAL_S + 1]
    assert master.latency_over_time(key) == figures


def test_a_long_local_run_keeps_few_histograms(monkeypatch):
    recorder = Recorder()
    base = 1_800_000_000
    for i in range(2000):  # 2,000 intervals: about 2 h 47 min at 5 s
        feed(recorder, monkeypatch, base + i * INTERVAL_S, [3.0, 4.0])
    series = recorder.series[("langchain-sync", "search")]
    assert len(series.intervals) == 1 and not series.merged and len(series.settled) == 1999
    # 2 significant digits, each value as the highest of its bucket (never under-reported): 3.007 and 4.015 ms
    assert series.settled[base // INTERVAL_S] == [2, pytest.approx(3.0, rel=0.01), None, None,
                                                  pytest.approx(4.0, rel=0.01)]


def test_a_long_distributed_run_keeps_few_histograms_on_the_master(monkeypatch):
    base = 1_800_000_000 - 1_800_000_000 % INTERVAL_S
    master, worker = Recorder(), Recorder()
    master.settle_after, worker.settle_after = SETTLE_INTERVALS_MASTER, None
    most = 0
    for i in range(2000):  # a report per interval (workers report every 3 s: more often, same bound)
        feed(worker, monkeypatch, base + i * INTERVAL_S + 1, [3.0])
        master.merge(worker.drain())
        series = master.series[("langchain-sync", "search")]
        most = max(most, len(series.merged) + len(series.intervals))
    assert most <= SETTLE_INTERVALS_MASTER + 1 and len(series.settled) >= 2000 - SETTLE_INTERVALS_MASTER - 1
    assert sum(f[0] for f in master.latency_over_time(("langchain-sync", "search")).values()) == 2000


def test_a_report_after_its_interval_settled_is_counted_not_lost(monkeypatch):
    base = 1_800_000_000 - 1_800_000_000 % INTERVAL_S
    master, worker = Recorder(), Recorder()
    master.settle_after, worker.settle_after = SETTLE_INTERVALS_MASTER, None
    feed(worker, monkeypatch, base + 1, [2.0] * 100)
    late = worker.drain()
    feed(worker, monkeypatch, base + 2, [2.0] * 100)
    master.merge(worker.drain())
    monkeypatch.setattr(histograms.time, "time", lambda: base + 20 * INTERVAL_S)
    master.merge({"series": []})  # settled
    master.merge(late)  # a worker's report 100 s late
    [figures] = master.latency_over_time(("langchain-sync", "search")).values()
    assert figures[0] == 200 and figures[1] == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("count, supported", [(1, (False, False, False)), (2, (True, False, False)),
                                              (19, (True, False, False)), (20, (True, True, False)),
                                              (99, (True, True, False)), (100, (True, True, True))])
def test_a_percentile_needs_the_requests_to_support_it(monkeypatch, count, supported):
    recorder = Recorder()
    base = 1_800_000_000 - 1_800_000_000 % INTERVAL_S
    feed(recorder, monkeypatch, base, [1.0 + i / 10 for i in range(count)])
    feed(recorder, monkeypatch, base + INTERVAL_S, [1.0])  # settles the first interval
    n, *percentiles, top = recorder.series[("langchain-sync", "search")].settled[base // INTERVAL_S]
    assert n == count and tuple(p is not None for p in percentiles) == supported
    assert top == pytest.approx(1.0 + (count - 1) / 10, rel=0.01)


def test_the_bucket_counts_give_hdrhistograms_figures():
    rng = random.Random(14)
    for count in (1, 2, 20, 99, 100, 5000):
        values = [int(rng.lognormvariate(rng.uniform(2, 14), rng.uniform(0.05, 2))) for _ in range(count)]
        h, buckets = histograms.new_interval_histogram(), {}
        for us in values:
            h.record_value(us)
            key = histograms._bucket(us)
            buckets[key] = buckets.get(key, 0) + 1
        assert histograms.bucket_figures(buckets) == histograms.interval_figures(h)


def test_the_summary_timeline_has_intervals_aligned_from_t0(monkeypatch):
    recorder = Recorder()
    base = 1_800_000_000 - 1_800_000_000 % INTERVAL_S
    feed(recorder, monkeypatch, base + 3, [0.2] * 3)  # t0 is 3 s into its interval (under 256 us: exact)
    feed(recorder, monkeypatch, base + 2 * INTERVAL_S + 1, [0.25] * 2)  # nothing in the interval between
    timeline = summary._timeline(recorder)
    assert timeline["t0"] == base + 3 and timeline["interval_s"] == INTERVAL_S
    [item] = timeline["series"]
    assert item["latency"] == [
        {"t": -3, "count": 3, "p50_ms": 0.2, "p95_ms": None, "p99_ms": None, "max_ms": 0.2},
        {"t": INTERVAL_S - 3, "count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None},
        {"t": 2 * INTERVAL_S - 3, "count": 2, "p50_ms": 0.25, "p95_ms": None, "p99_ms": None, "max_ms": 0.25}]


def test_the_time_charts_draw_many_series_with_a_note(tmp_path):
    n, series = 30, []
    for op in range(8):  # 16 series: more than MAX_LINES
        for mode in ("sync", "async"):
            latency = [{"t": t, "count": 150, "p50_ms": 2.0 + op, "p95_ms": 4.0 + op, "p99_ms": 9.0 + op,
                        "max_ms": 20.0} for t in range(0, n, INTERVAL_S)]
            series.append({"name": f"op{op}", "mode": mode, "ok": [30] * n, "failed": [0] * 10 + [40] * 3 + [0] * 17,
                           "latency": latency})
    data = {"timeline": {"t0": 1000, "interval_s": INTERVAL_S, "series": series}}
    assert (10.0, 13.0, "outage", "outage") in spans(data)
    assert plots.latency_over_time_chart(data, tmp_path / "lot.png").stat().st_size > 20_000
    lines = plots.timeline_lines(data)
    assert len(lines) > plots.MAX_LINES
    assert plots.throughput_chart(lines, tmp_path / "tp.png", "t", spans(data)).stat().st_size > 20_000


def test_spans_mark_capacity_steps_outages_and_stalls():
    ok = [5] * 3 + [0] * 3 + [1] * 2 + [5] * 2
    failed = [0] * 3 + [0] * 3 + [4] * 2 + [0] * 2
    summary = {"timeline": {"t0": 1000, "series": [{"name": "search", "mode": "sync", "ok": ok, "failed": failed}]},
               "capacity": {"steps": [{"index": 1, "verdict": "pass", "judged_from_s": 1001.0, "judged_to_s": 1004.0},
                                      {"index": 2, "verdict": "server", "judged_from_s": 1005.0,
                                       "judged_to_s": 1009.0}]}}
    assert spans(summary) == [(1.0, 4.0, "step", "step 1"), (5.0, 9.0, "step-failed", "step 2"),
                              (6.0, 8.0, "outage", "outage"), (3.0, 6.0, "stall", "stall")]


@pytest.mark.locust
def test_a_real_run_has_latency_over_time_in_both_modes(milvus, tmp_path):
    reports = tmp_path / "reports"
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "12s", "--host", milvus.uri, "--collection",
                        f"lt_{uuid.uuid4().hex[:8]}", "--prepopulate", "100", "--reports-dir", str(reports))
    assert result.returncode == 0, result.output[-3000:]
    [folder] = list(reports.iterdir())
    timeline = json.loads((folder / "summary.json").read_text())["timeline"]
    assert timeline["interval_s"] == INTERVAL_S
    for mode in ("sync", "async"):
        [search] = [s for s in timeline["series"] if s["name"] == "search" and s["mode"] == mode]
        assert sum(p["count"] for p in search["latency"]) == sum(search["ok"]) + sum(search["failed"])
        assert sum(1 for p in search["latency"] if p["p50_ms"]) >= 2, search["latency"]
    assert (folder / "latency_over_time.png").stat().st_size > 20_000
    assert "latency_over_time.png" not in (folder / "summary.html").read_text()  # embedded, not linked
    assert (folder / "summary.html").read_text().count("data:image/png;base64,") == 3
