"""Latency over time: per-interval histograms recorded, merged from workers, settled into figures (bounded memory),
percentiles withheld where an interval's requests cannot support them; and the spans marked on the time axis."""

from __future__ import annotations

import json
import uuid

import pytest

from locust_milvus.report import histograms
from locust_milvus.report.histograms import INTERVAL_S, Recorder
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
    assert len(series.intervals) <= 2 and len(series.settled) >= 1998


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
