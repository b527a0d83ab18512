"""--verify gives one verdict per run: in a distributed run the master's, from its workers' verdicts and its own
check of the documents it pre-populated, in its log, its report and its exit code, however the run ends (time limit,
the web UI's stop, SIGTERM, a worker lost); in a local run its own, in its report too. Real locust processes on
loopback against the session's embedded Milvus; a write is lost for real by deleting it behind the ledger's back
(tests/lose_a_write.py)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import LOCUSTFILE, ROOT, child_env, read_stats_csv
from .test_distributed import WORKER_TOTALS, finish
from .test_web_ui import free_port

pytestmark = pytest.mark.locust
LOSE_A_WRITE = ROOT / "tests" / "lose_a_write.py"
COUNTS = r"checked=(\d+) missing=(\d+) deleted_but_present=(\d+) duplicate_rows=(\d+) unknown_outcome=(\d+)"
RUN_LINE = re.compile(r"locust-milvus verify: (OK|FAILED) " + COUNTS + r" processes_verified=(\d+)/(\d+)(.*)")
WORKER_LINE = re.compile(r"locust-milvus verify \((worker \d+)\): (OK|FAILED) " + COUNTS)
MASTER_LINE = re.compile(r"locust-milvus verify \(master\): (OK|FAILED) " + COUNTS)


def start(locustfiles: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "locust", "-f", locustfiles, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())


def verify_run(milvus, collection, tmp_path, seconds: int, addon: bool = False, kill_worker_after: float | None = None):
    port = free_port()
    master = start(str(LOCUSTFILE), "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                   "--headless", "--expect-workers", "2", "-u", "4", "-r", "4", "-t", f"{seconds}s", "--host",
                   milvus.uri, "--collection", collection, "--prepopulate", "50", "--verify", "--csv",
                   str(tmp_path / "run"), "--reports-dir", str(tmp_path / "reports"),
                   "--add-weight", "4", "--search-weight", "2", "--delete-weight", "1", "--upsert-weight", "1")
    # The add-on runs on the workers: worker 0 loses a write there before it checks its ledger.
    locustfiles = f"{LOCUSTFILE},{LOSE_A_WRITE}" if addon else str(LOCUSTFILE)
    workers = [start(locustfiles, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
               for _ in range(2)]
    if kill_worker_after is not None:
        time.sleep(kill_worker_after)
        workers[0].send_signal(signal.SIGKILL)
    master_out = finish(master, timeout=seconds + 150)
    worker_outs = [finish(w, timeout=30) for w in workers]
    [folder] = list((tmp_path / "reports").iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    return master, master_out, worker_outs, summary, folder


def test_the_master_gives_one_verdict_for_the_run(milvus, collection, tmp_path):
    master, out, worker_outs, summary, folder = verify_run(milvus, collection, tmp_path, seconds=6)
    assert master.returncode == 0, out[-3000:]
    for text in (out, *worker_outs):
        assert "Traceback" not in text, text[-3000:]
    # Each worker checked its own documents and logged it as its own, not as the run's.
    workers = [WORKER_LINE.search(w) for w in worker_outs]
    assert all(workers), [w[-2000:] for w in worker_outs]
    assert sorted(m.group(1) for m in workers) == ["worker 0", "worker 1"]
    assert all(m.group(2) == "OK" and int(m.group(3)) > 0 for m in workers)
    assert not any(RUN_LINE.search(w) for w in worker_outs)
    # The master checks the documents it pre-populated, which no worker writes or deletes.
    own = MASTER_LINE.search(out)
    assert own and own.group(1) == "OK" and int(own.group(2)) == 50, out[-3000:]
    # The master logs the run's verdict once: the workers' counts and its own added up.
    runs = RUN_LINE.findall(out)
    assert len(runs) == 1, out[-3000:]
    [(word, checked, missing, resurrected, duplicates, unknown, verified, of, rest)] = runs
    assert (word, verified, of) == ("OK", "3", "3"), runs
    assert int(checked) == sum(int(m.group(3)) for m in workers) + 50
    assert int(unknown) == sum(int(m.group(7)) for m in workers)
    assert (missing, resurrected, duplicates, rest.strip()) == ("0", "0", "0", ""), runs
    # The report records it, with each worker's part.
    verdict = summary["verify"]
    assert verdict["ok"] and verdict["checked"] == int(checked) and verdict["processes_verified"] == 3
    assert [p["process"] for p in verdict["processes"]] == ["master", "worker 0", "worker 1"]
    assert verdict["line"] in out
    assert "## Write ledger (--verify): OK" in (folder / "summary.md").read_text()
    # The master waited for the workers' final statistics, which come after their checks: the totals add up.
    totals = [WORKER_TOTALS.search(w) for w in worker_outs]
    assert all(totals), [w[-2000:] for w in worker_outs]
    stats = read_stats_csv(tmp_path / "run")
    assert sum(int(m.group(1)) for m in totals) == int(stats[("", "Aggregated")]["Request Count"])


def test_a_write_lost_on_one_worker_fails_the_run_with_exit_code_4(milvus, collection, tmp_path):
    master, out, worker_outs, summary, _ = verify_run(milvus, collection, tmp_path, seconds=6, addon=True)
    assert "Traceback" not in out, out[-3000:]
    lost = re.search(r"lose_a_write: deleted (\S+) behind the ledger's back", worker_outs[0] + worker_outs[1])
    assert lost, [w[-2000:] for w in worker_outs]
    runs = RUN_LINE.findall(out)
    assert len(runs) == 1, out[-3000:]
    [(word, _checked, missing, resurrected, duplicates, _unknown, verified, of, rest)] = runs
    assert (word, missing, resurrected, duplicates, verified, of) == ("FAILED", "1", "0", "0", "3", "3"), runs
    assert rest == f"; missing e.g. {lost.group(1)}", runs
    assert master.returncode == 4, out[-3000:]
    verdict = summary["verify"]
    assert not verdict["ok"] and verdict["missing"] == 1 and verdict["missing_examples"] == [lost.group(1)]
    assert [(p["process"], p["ok"]) for p in verdict["processes"]] == [("master", True), ("worker 0", False),
                                                                       ("worker 1", True)]


def test_a_worker_that_never_reports_leaves_the_run_not_verified(milvus, collection, tmp_path):
    master, out, worker_outs, summary, _ = verify_run(milvus, collection, tmp_path, seconds=14, kill_worker_after=8)
    assert "Traceback" not in out, out[-3000:]
    runs = RUN_LINE.findall(out)
    assert len(runs) == 1, out[-3000:]
    [(word, checked, missing, _r, _d, _u, verified, of, rest)] = runs
    assert (word, missing, verified, of) == ("FAILED", "0", "2", "3"), runs
    survivor = WORKER_LINE.search(worker_outs[1])
    assert survivor and int(checked) == int(survivor.group(3)) + 50, worker_outs[1][-2000:]
    assert re.fullmatch(r"; not verified by worker \d: its verdict had not arrived \d+ s after the test began to stop "
                        r"\(the worker was lost, or its check had not finished\)", rest), runs
    assert master.returncode == 4, out[-3000:]
    assert not summary["verify"]["ok"] and len(summary["verify"]["not_verified"]) == 1


def test_a_local_run_records_its_verdict_in_its_report(milvus, collection, tmp_path):
    proc = start(f"{LOCUSTFILE},{LOSE_A_WRITE}", "--headless", "-u", "2", "-r", "2", "-t", "4s", "--host", milvus.uri,
                 "--collection", collection, "--prepopulate", "20", "--verify", "--reports-dir", str(tmp_path),
                 "--add-weight", "2", "--search-weight", "1")
    out = finish(proc, timeout=150)
    lost = re.search(r"lose_a_write: deleted (\S+) behind the ledger's back", out)
    assert lost, out[-3000:]
    [line] = re.findall(r"locust-milvus verify: .*", out)
    assert line.startswith("locust-milvus verify: FAILED ") and line.endswith(f"; missing e.g. {lost.group(1)}")
    assert proc.returncode == 4, out[-3000:]
    [folder] = list(tmp_path.iterdir())
    verdict = json.loads((folder / "summary.json").read_text())["verify"]
    assert verdict["line"] == line and verdict["missing"] == 1 and "processes" not in verdict
    assert "Verify: FAILED (below)." in (folder / "summary.md").read_text()


def test_a_web_ui_stop_gives_the_verdict_before_the_report(milvus, collection, tmp_path):
    # --autostart with -t: Locust stops the test as the web UI's Stop does (the workers check before they tell the
    # master they stopped), then --autoquit ends the processes.
    port = free_port()
    master = start(str(LOCUSTFILE), "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                   "--autostart", "--autoquit", "6", "--web-host", "127.0.0.1", "--web-port", str(free_port()),
                   "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "5s", "--host", milvus.uri, "--collection",
                   collection, "--prepopulate", "30", "--verify", "--reports-dir", str(tmp_path / "reports"),
                   "--add-weight", "3", "--search-weight", "1")
    workers = [start(str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
               for _ in range(2)]
    out = finish(master, timeout=150)
    worker_outs = [finish(w, timeout=30) for w in workers]
    assert all(WORKER_LINE.search(w) for w in worker_outs), [w[-2000:] for w in worker_outs]
    runs = RUN_LINE.findall(out)
    assert len(runs) == 1 and runs[0][0] == "OK" and runs[0][6:8] == ("3", "3"), out[-3000:]
    assert master.returncode == 0, out[-3000:]
    [folder] = list((tmp_path / "reports").iterdir())
    verdict = json.loads((folder / "summary.json").read_text())["verify"]
    assert verdict["ok"] and verdict["processes_verified"] == 3


def test_sigterm_mid_test_quits_the_workers_first_and_ends_with_their_verdicts(milvus, collection, tmp_path):
    port = free_port()
    master = start(str(LOCUSTFILE), "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                   "--headless", "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "120s", "--host", milvus.uri,
                   "--collection", collection, "--prepopulate", "30", "--verify", "--reports-dir",
                   str(tmp_path / "reports"), "--add-weight", "3", "--search-weight", "1")
    workers = [start(str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
               for _ in range(2)]
    time.sleep(14)  # set-up, then a few seconds of load
    assert master.poll() is None
    master.send_signal(signal.SIGTERM)
    began = time.monotonic()
    out = finish(master, timeout=60)
    ended_s = time.monotonic() - began
    worker_outs = [finish(w, timeout=30) for w in workers]
    assert "Traceback" not in out and out.count("Shutting down") == 1, out[-3000:]
    # Within the shutdown deadline (--stop-timeout 0 + 10 s), and the workers checked before the report.
    assert ended_s < 10, ended_s
    assert all(WORKER_LINE.search(w) for w in worker_outs), [w[-2000:] for w in worker_outs]
    runs = RUN_LINE.findall(out)
    assert len(runs) == 1 and runs[0][0] == "OK" and runs[0][6:8] == ("3", "3"), out[-3000:]
    assert master.returncode == 0 and all(w.returncode == 0 for w in workers), out[-3000:]
    [folder] = list((tmp_path / "reports").iterdir())
    assert json.loads((folder / "summary.json").read_text())["verify"]["ok"]


STOP_THEN_LOOK = """
import json, pathlib, sys
import gevent
from locust.env import Environment
import locust_milvus
from locust_milvus import SyncMilvusUser

env = Environment(user_classes=[SyncMilvusUser], host=sys.argv[1])
runner = locust_milvus.register(env, collection=sys.argv[2], prepopulate=20, reports_dir=sys.argv[3], verify=True)
runner.start(2, spawn_rate=2)
for _ in range(600):  # set-up, then some writes
    if env.stats.total.num_requests >= 30:
        break
    gevent.sleep(0.1)
runner.stop()  # as the web UI's Stop: the folder is written once the check is done
for _ in range(100):
    found = list(pathlib.Path(sys.argv[3]).glob("*/summary.json"))
    if found:
        break
    gevent.sleep(0.1)
print("RESULT", json.dumps(json.loads(found[0].read_text())["verify"]) if found else "none")
runner.quit()
env.events.quitting.fire(environment=env, reason="done")
"""


def test_a_stopped_local_test_writes_its_report_after_the_check(milvus, collection, tmp_path):
    proc = subprocess.run([sys.executable, "-c", STOP_THEN_LOOK, milvus.uri, collection, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=child_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    [result] = [line.removeprefix("RESULT ") for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    verdict = json.loads(result)
    assert verdict is not None, out[-3000:]
    assert verdict["ok"] and verdict["checked"] >= 20 and verdict["line"] in out, out[-3000:]
