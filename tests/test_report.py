"""The report folder, the CI gates and ``locust-milvus compare``: real locust runs (made once per module and
shared, to keep the suite short), the web UI's folder per test, and unit tests of threshold parsing, recording
and histogram merging."""

from __future__ import annotations

import csv
import json
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from locust_milvus.config.secrets import redacted_options as redacted_config
from locust_milvus.config.settings import ConfigError
from locust_milvus.report import gates
from locust_milvus.report.histograms import Recorder, decode, merge_into, new_histogram, percentiles_ms
from locust_milvus.report.summary import build, sig3

from .conftest import LOCUSTFILE, ROOT, child_env, run_locust

CANARY = "canary-7f3e-s3cret-token"
FILES = ("report.html", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
         "locust_exceptions.csv", "summary.json", "summary.md", "summary.html", "latency.png", "throughput.png")
PNG = b"\x89PNG\r\n\x1a\n"
PERCENTILE_KEYS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms")


def only_folder(reports: Path) -> Path:
    [folder] = [p for p in reports.iterdir() if p.is_dir()]
    return folder


def csv_counts(folder: Path) -> dict[tuple[str, str], tuple[int, int]]:
    with open(folder / "locust_stats.csv", newline="") as f:
        return {(r["Type"], r["Name"]): (int(r["Request Count"]), int(r["Failure Count"]))
                for r in csv.DictReader(f) if r["Name"] != "Aggregated"}


def json_counts(summary: dict) -> dict[tuple[str, str], tuple[int, int]]:
    return {(r["request_type"], r["name"]): (r["count"], r["failures"]) for r in summary["rows"]}


@pytest.fixture(scope="module")
def both_modes(milvus, tmp_path_factory):
    """Both users, gates that pass, a canary token: the run whose folder most tests read."""
    reports = tmp_path_factory.mktemp("reports")
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection",
                        f"t_{uuid.uuid4().hex[:12]}", "--prepopulate", "100", "--reports-dir", str(reports),
                        "--report-name", "both", "--milvus-token", CANARY, "--check-p99", "10s",
                        "--check-fail-ratio", "0.05", "--check-rps", "search@sync=1,search@async=1")
    return result, only_folder(reports)


@pytest.fixture(scope="module")
def distributed_failing_gate(milvus, tmp_path_factory):
    """A master with two worker processes, async users only, one gate that cannot pass (p50 of 1 us)."""
    reports = tmp_path_factory.mktemp("reports")
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection",
                        f"t_{uuid.uuid4().hex[:12]}", "--prepopulate", "100", "--reports-dir", str(reports),
                        "--processes", "2", "--check-p50", "search=1us", "--check-p99", "search@async=10s",
                        "AsyncMilvusUser")
    return result, only_folder(reports)


@pytest.mark.locust
def test_report_folder_holds_every_file_with_honest_figures(both_modes):
    result, folder = both_modes
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    assert re.fullmatch(r"\d{8}-\d{6}-both", folder.name), folder.name
    for name in FILES:
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "latency.png").read_bytes()[:8] == PNG and (folder / "throughput.png").read_bytes()[:8] == PNG
    summary = json.loads((folder / "summary.json").read_text())

    # The same requests as Locust's own statistics, per (type, name), both modes and every default operation.
    counts = json_counts(summary)
    assert counts == csv_counts(folder)
    assert {(t, n) for t, n in counts} == {(t, n) for t in ("langchain-sync", "langchain-async")
                                           for n in ("add", "search", "delete")}
    for row in summary["rows"]:
        values = [row["min_ms"], *(row[k] for k in PERCENTILE_KEYS), row["max_ms"]]
        assert values == sorted(values) and values[0] > 0, row
        assert row["count"] > 0 and row["failures"] == 0, row
        # RPS is requests over the span of the test's requests
        assert row["rps"] == pytest.approx(row["count"] / summary["duration_s"], rel=1e-3)
        assert decode(row["histogram"]).get_total_count() == row["count"]  # the JSON keeps the whole histogram
    # microsecond resolution: Locust's tables would show only whole milliseconds below 100 ms
    percentiles = [row[k] for row in summary["rows"] for k in PERCENTILE_KEYS]
    assert sum(1 for v in percentiles if v != round(v)) > len(percentiles) // 2, percentiles
    assert 0 < summary["duration_s"] <= 6
    # the throughput timeline adds up to the counts
    for series in summary["timeline"]["series"]:
        row = next(r for r in summary["rows"] if (r["name"], r["mode"]) == (series["name"], series["mode"]))
        assert sum(series["ok"]) + sum(series["failed"]) == row["count"]

    # The gates passed and say so, in the output and in the summary.
    assert "CHECK FAILED" not in result.output
    passed = [line for line in result.output.splitlines() if "CHECK PASSED: " in line]
    assert len(passed) == 6 + 6 + 2  # p99 and fail ratio of 3 operations x 2 modes, RPS of search x 2 modes
    assert any("CHECK PASSED: p99 of search (async) " in line for line in passed)
    assert len(summary["checks"]) == 14 and all(c["passed"] for c in summary["checks"])

    # The answer first, both modes in one table (no second table of the same numbers), plots embedded in the HTML.
    md = (folder / "summary.md").read_text()
    assert md.index("## The answer") < md.index("## What was tested") < md.index("## Results per operation")
    assert "## Sync versus async" not in md
    assert re.search(r"\| search \| sync \| [\d.,]+ \| [\d.]+ \| ([\d.]+|n/a \(<100\)) \| 0 \|", md), md[:3000]
    assert re.search(r"\| search \| async \| [\d.,]+ \| [\d.]+ \| ([\d.]+|n/a \(<100\)) \| 0 \|", md), md[:3000]
    # What was tested: versions (the server's own, read at set-up) and the workload.
    v = summary["versions"]
    assert v["milvus_server"].startswith("v2.3.5") and v["pymilvus"] and v["langchain_milvus"] and v["langchain_core"]
    assert v["locust"] and v["python"].count(".") == 2
    w = summary["workload"]
    assert w["consistency_level"] == "Session" and w["index_type"] == "AUTOINDEX" and w["metric"] == "L2"
    assert w["dim"] == 128 and w["top_k"] == 3 and w["embedding"] == "fake" and w["mix"]["search"] > 0
    assert w["rows_at_start"] is not None and w["rows_at_end"] is not None
    assert w["user_classes"] == ["AsyncMilvusUser", "SyncMilvusUser"] and w["users"] == 4
    html = (folder / "summary.html").read_text()
    assert html.count("src='data:image/png;base64,") == 3  # latency, throughput, latency over time

    # The configuration is there, without the token.
    assert summary["config"]["milvus_token"] == "(redacted)"
    assert summary["config"]["report_name"] == "both" and summary["config"]["num_users"] == 4
    assert summary["runner"] == "local runner" and summary["host"].startswith("http://127.0.0.1:")


@pytest.mark.locust
def test_the_token_is_in_no_written_file(both_modes):
    result, folder = both_modes
    assert CANARY not in result.output
    for path in folder.iterdir():
        assert CANARY.encode() not in path.read_bytes(), path.name


@pytest.mark.locust
def test_a_failing_gate_fails_the_run_with_its_own_exit_code(distributed_failing_gate):
    result, folder = distributed_failing_gate
    assert result.returncode == gates.GATE_EXIT_CODE, result.output[-3000:]
    assert "Traceback" not in result.output
    [failed] = [line for line in result.output.splitlines() if "CHECK FAILED: " in line]
    measured = float(re.search(r"CHECK FAILED: p50 of search \(async\) ([\d.]+) ms > 0\.001 ms$", failed)[1])
    assert measured > 0.001
    assert "CHECK PASSED: p99 of search (async) " in result.output  # the other gate is judged too
    # Merged from the two workers' histograms: the same counts as the master's Locust statistics.
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["runner"] == "master with 2 workers"
    assert json_counts(summary) == csv_counts(folder)
    assert {t for t, _ in json_counts(summary)} == {"langchain-async"}
    [check] = [c for c in summary["checks"] if not c["passed"]]
    assert check["measured"] == pytest.approx(measured, abs=1e-3) and check["threshold"] == 0.001
    assert "## Checks: FAILED" in (folder / "summary.md").read_text()


def test_a_threshold_that_cannot_be_read_stops_before_anything_starts(tmp_path):
    result = run_locust("--headless", "-u", "2", "-t", "5s", "--reports-dir", str(tmp_path / "reports"),
                        "--check-p95", "search=5 parsecs")
    assert result.returncode == 1
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if "--check-p95" in line]
    assert "'5 parsecs' is not a duration; use a number with us, ms or s" in line
    assert "embedded Milvus" not in result.output  # refused before the server started
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


@pytest.mark.locust
def test_compare_puts_two_runs_side_by_side(both_modes, distributed_failing_gate, tmp_path):
    (_, a), (_, b) = both_modes, distributed_failing_gate
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "locust_milvus.cli", "compare", str(a), str(b), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "compare.md").read_text()
    row_a = next(r for r in json.loads((a / "summary.json").read_text())["rows"] if r["name"] == "search"
                 and r["mode"] == "async")
    row_b = next(r for r in json.loads((b / "summary.json").read_text())["rows"] if r["name"] == "search"
                 and r["mode"] == "async")
    assert (f"| search (async) | {a.name} | {row_a['count']:,} | 0 | {sig3(row_a['rps'])} | {sig3(row_a['p50_ms'])} |"
            in md), md[:3000]
    # what each run tested, side by side: the server's version and the workload
    assert re.search(r"\| milvus-server \| v2\.3\.5\S* \| v2\.3\.5\S* \|", md), md[:3000]
    assert re.search(r"\| user classes \| .*SyncMilvusUser.* \| .*AsyncMilvusUser.* \|", md), md[:3000]
    assert f"| search (async) | {b.name} | {row_b['count']} |" in md
    assert f"| search (async) | {b.name} / {a.name} | {row_b['count'] / row_a['count']:.2f}x |" in md
    assert f"| search (sync) | {b.name} | 0 |" in md  # b ran async users only: shown, not hidden
    for png in ("compare_latency.png", "compare_throughput.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert (out / "compare.html").read_text().count("data:image/png;base64,") == 2
    missing = subprocess.run([sys.executable, "-m", "locust_milvus.cli", "compare", str(a), str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, env=child_env())
    assert missing.returncode == 1 and "has no summary.json" in missing.stderr


# (That `locust-milvus compare` imports no Locust is checked with the other plain commands in test_tutorial.py.)


@pytest.mark.locust
def test_web_ui_writes_one_folder_per_test(milvus, collection, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    reports = tmp_path / "reports"
    log = open(tmp_path / "locust.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1",
                             "--web-port", str(port), "--host", milvus.uri, "--collection", collection,
                             "--prepopulate", "100", "--reports-dir", str(reports), "--report-name", "ui"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env())

    def post(path: str, form: dict) -> dict:
        req = urllib.request.Request(base + path, data=urllib.parse.urlencode(form).encode())
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())

    def requests_so_far() -> int:
        with urllib.request.urlopen(base + "/stats/requests", timeout=10) as resp:
            return sum(s["num_requests"] for s in json.loads(resp.read())["stats"] if s["name"] != "Aggregated")

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "locust.log").read_text()
                time.sleep(0.5)
        for expected in (1, 2):
            assert post("/swarm", {"user_count": 2, "spawn_rate": 2, "host": milvus.uri})["success"]
            deadline = time.monotonic() + 60  # set-up (the collection, at the first start) comes before requests
            while requests_so_far() == 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1)
            post("/stop", {})
            deadline = time.monotonic() + 30
            while len(list(reports.glob("*/summary.json"))) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    output = (tmp_path / "locust.log").read_text()
    assert "Traceback" not in output
    folders = sorted(p.parent for p in reports.glob("*/summary.json"))
    assert len(folders) == 2 and all(re.fullmatch(r"\d{8}-\d{6}-ui(-2)?", f.name) for f in folders), folders
    for folder in folders:  # each test's own figures, not the sum of both
        counts = json_counts(json.loads((folder / "summary.json").read_text()))
        assert counts == csv_counts(folder) and sum(c for c, _ in counts.values()) > 0


# --- unit tests -----------------------------------------------------------------------------------------------------

KNOWN = {"add", "search", "delete"}


def test_thresholds_are_parsed_with_units_modes_and_defaults():
    parsed = gates.parse("p99", "50ms, search=1.5ms, search@async=500us, *@sync=2s, delete=3", KNOWN)
    assert [(g.name, g.mode, g.threshold) for g in parsed] == [
        (None, None, 50.0), ("search", None, 1.5), ("search", "async", 0.5), (None, "sync", 2000.0),
        ("delete", None, 3.0)]
    assert [g.threshold for g in gates.parse("fail_ratio", "0.01,add=5%", KNOWN)] == [0.01, 0.05]
    assert [g.threshold for g in gates.parse("rps", "add=100", KNOWN)] == [100.0]
    assert gates.parse("p50", "  ", KNOWN) == []


@pytest.mark.parametrize("metric, spec, message", [
    ("p99", "search=fast", "'fast' is not a duration"),
    ("p99", "search=5 parsecs", "'5 parsecs' is not a duration"),
    ("p99", "search=-1ms", "'-1ms' is not a duration"),
    ("p50", "search@both=5ms", "mode 'both' is not sync or async"),
    ("p50", "serch=5ms", "no operation is named 'serch'; use one of add, delete, search"),
    ("p90", "search=5ms,search=6ms", "search is given twice"),
    ("p90", "search=", "cannot read 'search='"),
    ("p90", "5ms,,6ms", "cannot read ''"),
    ("fail_ratio", "2", "'2' is not a fail ratio between 0 and 1"),
    ("fail_ratio", "add=150%", "'150%' is not a fail ratio"),
    ("rps", "add=-5", "'-5' is not a number of requests per second >= 0"),
    ("rps", "add=lots", "'lots' is not a number of requests per second"),
])
def test_bad_thresholds_are_one_clear_line(metric, spec, message):
    with pytest.raises(ConfigError) as err:
        gates.parse(metric, spec, KNOWN)
    assert message in str(err.value) and gates.option_name(metric) in str(err.value)
    assert "\n" not in str(err.value)


def _row(name, mode, p50, count=100, failures=0, rps=10.0):
    return {"name": name, "mode": mode, "count": count, "failures": failures, "fail_ratio": failures / count,
            "rps": rps, "p50_ms": p50, "p90_ms": p50, "p95_ms": p50, "p99_ms": p50, "p999_ms": p50}


def test_the_most_specific_threshold_judges_each_operation_and_mode():
    rows = [_row("search", "sync", 3.0), _row("search", "async", 7.0), _row("add", "sync", 40.0)]
    outcomes = gates.evaluate(gates.parse("p50", "50ms,search=10ms,search@async=5ms", KNOWN), rows)
    assert [o.line for o in outcomes] == [
        "CHECK PASSED: p50 of search (sync) 3.000 ms <= 10 ms",
        "CHECK FAILED: p50 of search (async) 7.000 ms > 5 ms",
        "CHECK PASSED: p50 of add (sync) 40.000 ms <= 50 ms",
    ]
    rps = gates.evaluate(gates.parse("rps", "search=20", KNOWN), rows)
    assert [o.line for o in rps] == ["CHECK FAILED: RPS of search (sync) 10.0 < 20",
                                     "CHECK FAILED: RPS of search (async) 10.0 < 20"]
    fails = gates.evaluate(gates.parse("fail_ratio", "0.01", KNOWN), [_row("add", "sync", 1.0, failures=2)])
    assert [o.line for o in fails] == ["CHECK FAILED: fail ratio of add (sync) 0.0200 > 0.01"]


def test_a_gate_on_an_operation_that_did_not_run_fails():
    outcomes = gates.evaluate(gates.parse("p99", "delete=5ms", KNOWN), [_row("search", "sync", 1.0)])
    assert [(o.passed, o.line) for o in outcomes] == [(False, "CHECK FAILED: p99 of delete: no requests recorded")]
    assert not gates.evaluate(gates.parse("p99", "5ms", KNOWN), [])[0].passed


def test_histogram_merge_keeps_counts_min_and_percentiles():
    rng = random.Random(7)
    values = [rng.uniform(0.2, 40.0) for _ in range(3000)]
    whole, parts = new_histogram(), [new_histogram() for _ in range(3)]
    for i, v in enumerate(values):
        whole.record_value(int(v * 1000 + 0.5))
        parts[i % 3].record_value(int(v * 1000 + 0.5))
    merged = new_histogram()
    for part in parts:  # as the master does: starting from an empty histogram
        merge_into(merged, part)
    assert merged.get_total_count() == 3000
    assert percentiles_ms(merged) == percentiles_ms(whole)
    # hdrhistogram's own add() would report 0 here (the empty histogram's minimum)
    assert merged.get_min_value() == whole.get_min_value() > 0
    exact = sorted(values)
    assert percentiles_ms(merged)[50.0] == pytest.approx(exact[1499], rel=2e-3)  # 3 significant digits


def test_worker_recordings_merge_into_the_masters():
    workers = [Recorder(), Recorder()]
    for i in range(500):
        workers[i % 2].record("langchain-sync", "search", 1.0 + i / 1000, None)
    workers[0].record("langchain-async", "add", 3.25, RuntimeError("timeout at 0x7f3a9c2b"))
    workers[1].record("langchain-async", "add", 2.5, RuntimeError("timeout at 0x1234abcd"))
    master = Recorder(modes={"langchain-async": "async"})  # the workload names the modes (request_events.py)
    for w in workers:
        master.merge(json.loads(json.dumps(w.drain())))  # what travels is plain data
        assert not w.series  # drained: the next report carries only new requests
    series = master.series[("langchain-sync", "search")]
    assert series.histogram.get_total_count() == 500 and sum(series.ok.values()) == 500
    assert master.errors == {"RuntimeError: timeout at <id>": {("langchain-async", "add"): 2}}
    data = build(master, name="t", started_s=0.0, stopped_s=1.0, config={})
    add = next(r for r in data["rows"] if r["name"] == "add")
    assert (add["count"], add["failures"], add["min_ms"]) == (2, 2, 2.5)
    assert add["max_ms"] == pytest.approx(3.25, abs=0.002)  # HdrHistogram: within 2 us at 2 to 4 ms
    search = next(r for r in data["rows"] if r["name"] == "search")
    assert search["p50_ms"] == pytest.approx(1.25, abs=0.002) and search["p50_ms"] != round(search["p50_ms"])
    assert data["failures"] == [{"error": "RuntimeError: timeout at <id>", "count": 2,
                                 "operations": [{"name": "add", "mode": "async", "count": 2}]}]


def test_recording_is_cheap():
    recorder, n = Recorder(), 50_000
    start = time.perf_counter()
    for i in range(n):
        recorder.record("langchain-sync", "search", 0.5 + (i % 997) / 10, None)
    per_request_us = (time.perf_counter() - start) / n * 1e6
    print(f"recording costs {per_request_us:.2f} us per request")
    assert per_request_us < 20  # about 1.5 us here; a regression to Python-level percentile work would show


def test_the_configuration_is_redacted():
    config = redacted_config({"milvus_token": "user:pw", "host": "http://root:Milvus@db:19530", "users": 5,
                              "openai_api_key": "sk-x", "collection": "c", "tags": ["a"], "empty_token": ""})
    assert config == {"collection": "c", "empty_token": "", "host": "http://***@db:19530",
                      "milvus_token": "(redacted)", "openai_api_key": "(redacted)", "tags": ["a"], "users": 5}


def test_the_example_workflow_is_a_valid_github_workflow_running_the_gated_scenario():
    # It cannot run here (no Docker, no GitHub runner): validated against the GitHub workflow schema that
    # check-jsonschema vendors (SchemaStore), and its commands checked against the project's files.
    import importlib.resources

    import jsonschema
    import yaml

    workflow_file = ROOT / ".github" / "workflows" / "load-test.yml"
    schema = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "github-workflows.json"
    workflow = yaml.safe_load(workflow_file.read_text())
    workflow["on"] = workflow.pop(True)  # PyYAML reads YAML 1.1, where the key `on` is the boolean true
    jsonschema.validate(workflow, json.loads(schema.read_text()))
    steps = workflow["jobs"]["load-test"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "ETCD_USE_EMBED=true" in runs and "COMMON_STORAGETYPE=local" in runs and "milvus run standalone" in runs
    assert "locust --config scenarios/gated.conf --host http://localhost:19530" in runs
    assert (ROOT / "scenarios" / "gated.conf").is_file()
    [upload] = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["with"]["path"] == "reports/" and upload["if"] == "always()"
