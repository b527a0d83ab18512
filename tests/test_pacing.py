"""The open model (--target-rps): the scheduler's planned times, late and dropped starts, the corrected latency,
and the wrk2 experiment: a 2 s server pause shows in the corrected p99 but not in the service time."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import gevent
import pytest

from locust_milvus.config.settings import ConfigError
from locust_milvus.report.histograms import Recorder
from locust_milvus.workload import pacing
from locust_milvus.workload.pacing import DROP_AFTER_S, Pacer, parse_target_rps

from .conftest import LOCUSTFILE, ROOT, child_env

KNOWN = {"search", "add", "delete"}


def test_target_rps_is_parsed_and_bad_values_are_one_line():
    assert parse_target_rps("search=200, add=20", KNOWN) == {"search": 200.0, "add": 20.0}
    assert parse_target_rps("", KNOWN) == {}
    for bad, phrase in (("search", "use OPERATION=RATE"), ("serch=5", "use OPERATION=RATE"),
                        ("search=0", "must be a number"), ("search=fast", "must be a number")):
        with pytest.raises(ConfigError, match=phrase):
            parse_target_rps(bad, KNOWN)


def test_planned_starts_are_one_interval_apart_whatever_the_responses():
    pacing.reset()
    pacer = Pacer({"search": 100.0}, users=2, rng=random.Random(1))  # this user: 50/s, one start every 20 ms
    assert pacer.interval == pytest.approx(0.02)
    planned = []
    for _ in range(5):
        name, at = pacer.wait()
        planned.append(at)
        pacer.done(time.perf_counter())  # an instant response
    gaps = [b - a for a, b in zip(planned, planned[1:], strict=False)]
    assert gaps == pytest.approx([0.02] * 4)
    assert pacing.totals["search"].started == 5 and pacing.totals["search"].late == 0


def test_a_busy_user_starts_late_and_a_stalled_one_drops_starts():
    pacing.reset()
    pacer = Pacer({"search": 10.0}, users=1, rng=random.Random(2))  # one start every 100 ms
    _, first = pacer.wait()
    gevent.sleep(0.35)  # the response took 350 ms: the next 3 planned starts pass meanwhile
    pacer.done(time.perf_counter())
    _, second = pacer.wait()
    assert second == pytest.approx(first + 0.1)  # the schedule did not move: it starts late, at once
    corrected_ms = (time.perf_counter() - second) * 1000
    assert corrected_ms >= 240  # latency from the planned start includes the wait for the busy user
    assert pacing.totals["search"].late == 1
    # Far behind (a stall longer than DROP_AFTER_S): the missed starts are dropped and counted, not burst.
    pacer.next -= DROP_AFTER_S + 1.0
    pacer.wait()
    assert pacing.totals["search"].dropped >= int((DROP_AFTER_S + 1.0) / 0.1) - 1
    assert pacer.next > time.perf_counter() - DROP_AFTER_S


def test_the_recorder_keeps_service_and_corrected_latency_apart_and_merges_them():
    pacing.reset()
    worker = Recorder()
    for service, corrected in ((2.0, 2.0), (3.0, 1500.0), (2.5, 900.0)):
        worker.record("langchain-sync", "search", service, context={"corrected_ms": corrected})
    pacing._count("search", "started")
    master = Recorder()
    master.merge(worker.drain())
    series = master.series[("langchain-sync", "search")]
    assert series.histogram.get_max_value() < 3100  # us: service times only
    assert series.corrected.get_max_value() >= 1_499_000
    assert master.pacing_counts() == {"search": [1, 0, 0]}


@pytest.mark.locust
def test_a_server_pause_shows_in_the_corrected_p99_not_in_the_service_time(tmp_path, milvus, collection):
    # The wrk2 experiment: a constant arrival rate, then the server stops answering for 2 s. Closed-loop figures
    # (the service time) see only the few calls that were in flight; the arrivals planned during the pause wait,
    # and their latency from the planned start says so.
    reports = tmp_path / "reports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "10", "-r", "10", "-t", "24s",
         "--host", milvus.uri, "--collection", collection, "--prepopulate", "200", "--target-rps", "search=50",
         "--consistency-level", "Bounded", "--reports-dir", str(reports), "--report-name", "paced",
         "SyncMilvusUser"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    try:
        time.sleep(12)
        os.kill(milvus.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(milvus.pid, signal.SIGCONT)
        assert proc.wait(timeout=120) in (0, 1)
    finally:
        os.kill(milvus.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    [path] = list(reports.glob("*-paced/summary.json"))
    data = json.loads(path.read_text())
    [row] = [r for r in data["rows"] if r["name"] == "search"]
    assert row["count"] > 600 and row["failures"] == 0
    assert row["corrected_p99_ms"] >= 1000, row
    assert row["p99_ms"] < row["corrected_p99_ms"] / 2, row  # the service time hides most of the stall
    [paced] = data["pacing"]
    assert paced["name"] == "search" and paced["target_rps"] == 50 and paced["late"] > 0
    assert "Open model (--target-rps)" in (path.parent / "summary.md").read_text()
