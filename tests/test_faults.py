"""Faults, with the real embedded Milvus as the victim: killed mid-run and restarted on its data, paused, and
stopped while async operations are in flight. --verify checks that nothing acknowledged was lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from locust_milvus.embedded.server import EmbeddedMilvus

from .conftest import LOCUSTFILE, ROOT, child_env, read_stats_csv, run_locust
from .test_web_ui import free_port

pytestmark = pytest.mark.locust
VERDICT = re.compile(r"locust-milvus verify: (OK|FAILED) checked=(\d+) missing=(\d+) deleted_but_present=(\d+) "
                     r"duplicate_rows=(\d+) unknown_outcome=(\d+)")


def summary_of(reports):
    [path] = list(reports.glob("*/summary.json"))
    return json.loads(path.read_text())


def test_server_killed_and_restarted_mid_run_loses_no_acknowledged_write(tmp_path):
    data, port = tmp_path / "milvus-data", free_port()
    # A killed Milvus leaves its sessions in etcd; on restart each component waits for its old lease to expire
    # (common.session.ttl, 30 s by default, seen here as 55 s of start-up). A 5 s lease keeps the test short.
    config = {"common.session.ttl": 5}
    victim = EmbeddedMilvus(data_dir=data, port=port, config=config)
    victim.start()
    run_s, outage_s = 75, 20
    # Output goes to a file, not a pipe: a pipe nobody reads until the end fills up and blocks locust's writes.
    output = open(tmp_path / "locust-output.txt", "w+")  # noqa: SIM115 - closed below
    # --stop-timeout 20: the check after the run (--verify) may wait up to 25 s for a Milvus that was just restarted
    # (with the default 0 it has 5 s, then gives up, saying so, to leave time for the report).
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4", "-t",
         f"{run_s}s", "--host", victim.uri, "--collection", "faults", "--prepopulate", "200", "--milvus-timeout",
         "2", "--verify", "--stop-timeout", "20", "--csv", str(tmp_path / "run"), "--reports-dir",
         str(tmp_path / "reports"), "--report-name", "faults", "--add-weight", "3", "--delete-weight", "1",
         "--search-weight", "4"],
        cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=child_env())
    began, began_wall = time.monotonic(), time.time()
    try:
        time.sleep(12)  # set-up, then some load
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        victim.stop()  # reaps it; the data directory is kept
        time.sleep(outage_s)
        victim = EmbeddedMilvus(data_dir=data, port=port, config=config)  # the same data, the same address
        victim.start()
        back_at = time.time()
        proc.wait(timeout=run_s + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
        victim.stop()
        output.seek(0)
        out = output.read()
        output.close()
    elapsed = time.monotonic() - began
    print(f"kill at {killed_at:.1f}, back at {back_at:.1f}, output in {output.name}")
    assert "Traceback" not in out, out[-4000:]
    assert elapsed < run_s + 60, f"the run took {elapsed:.0f} s"  # it ended on time: no hang
    # Failures were counted during the outage, and Locust's exit code says so (1), not the verify code (4).
    stats = read_stats_csv(tmp_path / "run")
    assert int(stats[("", "Aggregated")]["Failure Count"]) > 0
    assert proc.returncode == 1, out[-4000:]
    assert back_at < began_wall + run_s - 10, "the server came back too late to see the users recover"
    # The report's timeline shows the outage window: failures and no successes while the server was down, and
    # successes again within 5 s of its return.
    timeline = summary_of(tmp_path / "reports")["timeline"]
    t0 = timeline["t0"]
    ok = [sum(s["ok"][i] for s in timeline["series"]) for i in range(len(timeline["series"][0]["ok"]))]
    failed = [sum(s["failed"][i] for s in timeline["series"]) for i in range(len(ok))]
    down = range(int(killed_at) - t0 + 3, int(back_at) - t0 - 1)
    assert sum(failed[i] for i in down) > 0 and sum(ok[i] for i in down) == 0, (ok, failed, down)
    recovered = [i + t0 for i in range(len(ok)) if ok[i] and i + t0 >= back_at]
    assert recovered and recovered[0] - back_at <= 5, (recovered[:3], back_at)
    # Nothing Milvus acknowledged was lost across the restart; unknown outcomes are counted apart.
    verdict = VERDICT.search(out)
    assert verdict and verdict.group(1) == "OK", out[-3000:]
    assert int(verdict.group(2)) > 200  # the pre-populated documents and the adds were all checked
    assert int(verdict.group(6)) > 0  # calls cut off by the outage: outcome unknown, not lost and not successes


def test_rate_limits_are_failures_with_their_milvus_code_not_silent_retries(tmp_path):
    # A Milvus whose insert quota is about 1 KB/s: most adds are refused by the proxy's rate limiter.
    config = {"quotaAndLimits.dml.enabled": True, "quotaAndLimits.dml.insertRate.max": 0.001}
    with EmbeddedMilvus(config=config) as limited:
        result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "6s", "--host", limited.uri, "--collection",
                            "quota", "--prepopulate", "0", "--add-weight", "1", "--search-weight", "0",
                            "--delete-weight", "0", "--dim", "32", "--csv", str(tmp_path / "run"),
                            "--reports-dir", str(tmp_path / "reports"), "SyncMilvusUser", timeout=120)
    assert "Traceback" not in result.output
    add = read_stats_csv(tmp_path / "run")[("langchain-sync", "add")]
    assert int(add["Failure Count"]) > 0
    # Refused at once, counted with Milvus's own code (8: rate limit), not retried for seconds inside the figure.
    assert float(add["Median Response Time"]) < 500, add
    with open(tmp_path / "run_failures.csv") as f:
        failures = f.read()
    assert re.search(r"code=8\b.*rate limit|rate limit.*code=8\b", failures, re.IGNORECASE), failures[-2000:]
