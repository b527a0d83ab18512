"""The Locust web UI: our options are in the start form, values typed there take effect, and a test can be
stopped and started again in the same process."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from .conftest import LOCUSTFILE, ROOT, child_env

pytestmark = pytest.mark.locust


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def post(url: str, form: dict) -> dict:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=120) as resp:
        return json.loads(resp.read())


def wait_for_page(base: str, proc: subprocess.Popen, log_path, deadline: float) -> str:
    """Locust's start page, once its web UI answers; fails with the log if the process died or time ran out."""
    while True:
        try:
            return get(base + "/")
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)


def request_counts(base: str) -> dict[str, tuple[int, int]]:
    stats = json.loads(get(f"{base}/stats/requests"))["stats"]
    return {s["name"]: (s["num_requests"], s["num_failures"]) for s in stats if s["name"] != "Aggregated"}


@pytest.mark.parametrize("distributed", [False, True], ids=["local", "master-and-worker"])
def test_web_ui_form_start_stop_and_restart(milvus, collection, tmp_path, distributed):
    port, master_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "locust.log", "w+")
    role = (["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)]
            if distributed else [])
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1",
                             "--web-port", str(port), "--host", milvus.uri, "--collection", collection,
                             "--prepopulate", "100", "--milvus-token", "s3cret-token", "--reports-dir",
                             str(tmp_path / "reports"), *role],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    worker = None
    if distributed:  # a restart must work without restarting the worker either
        worker_log = open(tmp_path / "worker.log", "w+")
        # The token never travels from the master: the worker reads its own (tests/test_secrets_home.py).
        worker = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                                   "--master-host", "127.0.0.1", "--master-port", str(master_port)],
                                  cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT,
                                  env=child_env({"LOCUST_MILVUS_TOKEN": "s3cret-token"}))
    try:
        deadline = time.monotonic() + 60
        page = wait_for_page(base, proc, tmp_path / "locust.log", deadline)
        for dest in ("add_weight", "search_weight", "delete_weight", "async_concurrency", "milvus_timeout"):
            assert dest in page, dest
        assert "s3cret-token" not in page and "milvus_token" not in page  # the token never reaches the browser
        while distributed and json.loads(get(base + "/stats/requests")).get("workers", []) == []:
            assert time.monotonic() < deadline, "the worker did not connect"
            time.sleep(0.5)

        form = {"user_count": 4, "spawn_rate": 4, "host": milvus.uri, "add_weight": 0, "delete_weight": 0,
                "search_weight": 1, "verify": "true"}
        for number, attempt in enumerate(("first", "restart"), start=1):
            assert post(f"{base}/swarm", form)["success"], attempt
            # Set-up (the collection, pre-population) runs after /swarm has answered; then let the load run. The
            # runner's state and statistics cannot tell this start from the last one (CI saw the first run's counts,
            # then none, three times), so wait for this start's own "All users spawned", then for its requests.
            started = time.monotonic()
            while ((tmp_path / "locust.log").read_text().count("All users spawned") < number
                   or request_counts(base).get("search", (0, 0))[0] == 0) and time.monotonic() - started < 60:
                time.sleep(0.5)
            # This start's users ran (a worker whose asyncio loop was stalled by sync gRPC calls once hung here,
            # at the restart, while the counts below still showed the first start's requests).
            assert (tmp_path / "locust.log").read_text().count("All users spawned") >= number, attempt
            time.sleep(3)
            counts = request_counts(base)
            assert set(counts) == {"search"}, (attempt, counts)  # the weights typed in the form took effect
            assert counts["search"][0] > 0 and counts["search"][1] == 0, (attempt, counts)
            post(f"{base}/stop", {})
            # --verify's verdict of the test just stopped (the master's, merged with the worker's) on the run page
            stopped = time.monotonic()
            while (verdict := json.loads(get(base + "/milvus/state"))["verify"]) is None \
                    and time.monotonic() - stopped < 30:
                time.sleep(0.5)
            assert verdict is not None and verdict.startswith("locust-milvus verify: OK"), (attempt, verdict)
            # Clear the statistics, so that the restart's wait above sees its own requests, not these.
            urllib.request.urlopen(urllib.request.Request(f"{base}/stats/reset", data=b""), timeout=10).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if worker is not None:
            worker.wait(timeout=60)  # the master's quit ends it
    output = (tmp_path / "locust.log").read_text() + (
        (tmp_path / "worker.log").read_text() if distributed else "")
    assert "Traceback" not in output and "already exists" not in output
    assert "s3cret-token" not in output


def test_web_ui_capacity_checkbox_runs_a_sweep_that_stops_its_test(milvus, collection, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "locust.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1",
                             "--web-port", str(port), "--host", milvus.uri, "--collection", collection,
                             "--prepopulate", "100", "--reports-dir", str(tmp_path / "reports")],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    try:
        deadline = time.monotonic() + 60
        page = wait_for_page(base, proc, tmp_path / "locust.log", deadline)
        # the checkbox: a boolean option of the start form (Locust draws a check box for a bool default)
        assert re.search(r'"find_capacity": \{[^}]*"default_value": false', page), page[-3000:]
        # An SLO no step can meet: the sweep ends after its first step, and stops the test by itself.
        form = {"user_count": 4, "spawn_rate": 4, "host": milvus.uri, "find_capacity": "true",
                "target_rps": "search=20", "check_p99": "search=1us", "step_time": "4", "step_warmup": "1"}
        assert post(f"{base}/swarm", form)["success"]
        while "capacity: not found" not in (tmp_path / "locust.log").read_text():
            assert time.monotonic() < deadline + 60, (tmp_path / "locust.log").read_text()[-3000:]
            time.sleep(0.5)
        while json.loads(get(base + "/stats/requests"))["state"] != "stopped":
            assert time.monotonic() < deadline + 90, "the sweep did not stop its test"
            time.sleep(0.5)
        # the folder is written as the test stops (its plots take a moment)
        while not list((tmp_path / "reports").glob("*/summary.json")):
            assert time.monotonic() < deadline + 120, "no report written"
            time.sleep(0.5)
        [path] = list((tmp_path / "reports").glob("*/summary.json"))
        capacity = json.loads(path.read_text())["capacity"]
        assert capacity["ended"] == "first" and len(capacity["steps"]) == 1
        assert capacity["steps"][0]["planned_rps"] == {"search": 20.0}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert "Traceback" not in (tmp_path / "locust.log").read_text()
