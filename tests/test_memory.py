"""Every process's resident memory over a test (runtime/memory.py): the growth after a warm-up, the sampler's bound,
and the report's table and chart."""

from __future__ import annotations

import gevent

from locust_milvus.report import plots, summary
from locust_milvus.runtime import memory as memory_module
from locust_milvus.runtime.memory import Memory, growth, rss_mb


def test_growth_is_judged_after_the_warm_up_and_none_for_a_short_run():
    points = [(0, 100.0), (30, 180.0), (60, 200.0), (300, 204.0), (600, 210.0)]
    g = growth(points)  # 600 s run: warm-up max(60, 20 % of 600) = 120 s, the first sample after it is 204
    assert g == {"warmup_s": 120.0, "start_mb": 100.0, "after_warmup_mb": 204.0, "end_mb": 210.0, "peak_mb": 210.0,
                 "growth_pct": 2.9}
    assert growth(points, warmup_s=60)["growth_pct"] == 5.0
    assert growth([(0, 100.0), (5, 101.0), (10, 102.0)]) is None  # no sample after a 60 s warm-up


def test_the_sampler_reads_this_process_and_keeps_its_samples_bounded(monkeypatch):
    assert 10 < rss_mb() < 100_000
    monkeypatch.setattr(memory_module, "EVERY_S", 0.001)
    monkeypatch.setattr(memory_module, "MAX_POINTS", 20)
    m = Memory()
    m.start()
    gevent.sleep(0.3)
    m.stop()
    assert 2 <= len(m.points) <= 21 and m.every_s > 0.001  # halved at least once: the interval doubled
    assert all(b[0] >= a[0] for a, b in zip(m.points, m.points[1:], strict=False))


def test_the_report_gives_each_process_its_growth_and_draws_them(tmp_path):
    points = [[t, 200.0 + t / 60] for t in range(0, 601, 10)]
    health = {"limits": {"hub_lag_ms": 100, "loop_lag_ms": 100, "cpu_pct": 90, "sustained_s": 5}, "processes": [],
              "saturated": False, "warnings": [], "lost_workers": [],
              "memory": [{"process": "master (pid 1)", "rss_mb": points, "growth": growth(points)},
                         {"process": "worker 0 (pid 2)", "rss_mb": points[:3], "growth": None}]}
    blocks = summary.generator_health_blocks(health)
    [table] = [b for b in blocks if b[0] == "table" and "growth after warm-up" in b[1]]
    assert table[2][0][0] == "master (pid 1)" and table[2][0][-1] == "+4.0 % (from 120 s)"
    assert table[2][1][-1] == "n/a (run too short)"
    assert plots.memory_chart({"generator_health": health}, tmp_path / "memory.png").stat().st_size > 10_000
    health["memory"][0]["growth"] = None
    assert plots.memory_chart({"generator_health": health}, tmp_path / "none.png") is None
