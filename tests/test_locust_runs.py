"""Real ``locust`` processes on the main locustfile: headless runs, concurrency evidence, the embedded default,
Ctrl-C and SIGKILL, and ``--processes`` (bad input: test_bad_input.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import LOCUSTFILE, ROOT, child_env, read_stats_csv, run_locust

pytestmark = pytest.mark.locust
EMBEDDED = re.compile(r"embedded Milvus [\d.]+ ready at (\S+) \(pid (\d+), data (\S+)\)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def headless(milvus, collection, tmp_path, *extra, users=20, seconds=8, env=None):
    return run_locust("--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", milvus.uri,
                      "--collection", collection, "--prepopulate", "200", "--csv", str(tmp_path / "run"), *extra,
                      env=env)


@pytest.mark.parametrize("user_class, request_type, mode", [("SyncMilvusUser", "langchain-sync", 0),
                                                            ("AsyncMilvusUser", "langchain-async", 1)])
def test_headless_run_is_correct_and_truly_concurrent(milvus, collection, tmp_path, user_class, request_type, mode):
    result = headless(milvus, collection, tmp_path, user_class)
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    stats = read_stats_csv(tmp_path / "run")
    for name in ("add", "search", "delete"):
        row = stats[(request_type, name)]
        assert int(row["Request Count"]) > 0, name
        assert int(row["Failure Count"]) == 0, name
    assert {t for t, _ in stats} <= {request_type, ""}  # only this mode ran ("" is the Aggregated row)
    [figures] = result.monitor()
    peak, hub_lag_ms = figures[mode], figures[2]
    assert peak >= 10, f"only {peak} calls in flight with 20 users"
    # Blocking gRPC shows as one call in flight and seconds of lag (the test below). One short block per run is not
    # that: with today's packages a sync run shows a single 60 to 95 ms block of the hub (also at commit bd07ebb,
    # whose CI run passed at 50 ms), cause not yet found; saturation itself is 50 ms sustained for 5 s (health.py).
    assert hub_lag_ms <= 250, f"gevent hub blocked for {hub_lag_ms} ms"


def test_blocking_grpc_is_caught_by_the_concurrency_check(milvus, collection, tmp_path):
    # Without init_gevent every sync call blocks the process: Locust still reports requests, but one at a time.
    result = headless(milvus, collection, tmp_path, "SyncMilvusUser", "--add-weight", "0", "--delete-weight", "0",
                      env={"LOCUST_MILVUS_UNSAFE_BLOCKING_GRPC": "1"})
    assert result.returncode == 0, result.output[-3000:]
    assert int(read_stats_csv(tmp_path / "run")[("langchain-sync", "search")]["Request Count"]) > 0
    [(peak_sync, _, _)] = result.monitor()
    assert peak_sync == 1  # the check in the test above (>= 10) fails when gRPC is not cooperative


def test_async_concurrency_keeps_n_operations_in_flight(milvus, collection, tmp_path):
    result = headless(milvus, collection, tmp_path, "AsyncMilvusUser", "--async-concurrency", "10",
                      "--add-weight", "0", "--delete-weight", "0", users=2, seconds=5)
    assert result.returncode == 0, result.output[-3000:]
    [(_, peak_async, _)] = result.monitor()
    assert peak_async >= 10  # 2 users, 10 gathered operations each


def test_processes_fork_after_import(milvus, collection, tmp_path):
    # --processes forks after the locustfile is imported: nothing gRPC- or thread-shaped may exist by then.
    result = headless(milvus, collection, tmp_path, "--processes", "2", seconds=8)
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output and "SIGABRT" not in result.output
    stats = read_stats_csv(tmp_path / "run")
    for key in (("langchain-sync", "search"), ("langchain-async", "search")):
        assert int(stats[key]["Request Count"]) > 0 and int(stats[key]["Failure Count"]) == 0
    assert len(result.monitor()) == 2  # both worker processes ran users


def test_embedded_default_run_writes_its_report_and_cleans_up(tmp_path):
    report = tmp_path / "report.html"
    # The embedded Milvus has no authentication and ignores the token; it must still never be printed.
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "5s", "--html", str(report), "--reports-dir",
                        str(tmp_path / "reports"), env={"LOCUST_MILVUS_TOKEN": "s3cret-token"})
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    assert "s3cret-token" not in result.output and "s3cret-token" not in report.read_text()
    uri, pid, data = EMBEDDED.search(result.output).groups()
    assert uri.startswith("http://127.0.0.1:")
    assert report.exists() and "langchain-sync" in report.read_text()
    assert not alive(int(pid)) and not Path(data).exists()
    # The report is written after the embedded Milvus has stopped: its rows at the end were counted before that.
    [summary] = (tmp_path / "reports").glob("*/summary.json")
    workload = json.loads(summary.read_text())["workload"]
    assert workload["rows_at_start"] == 1000 and workload["rows_at_end"] > 0, workload


def _start_embedded_run(tmp_path):
    log = open(tmp_path / "locust.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r",
                             "4", "-t", "120s"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (tmp_path / "locust.log").read_text()
        if "All users spawned" in text:
            _, pid, data = EMBEDDED.search(text).groups()
            return proc, int(pid), data
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.5)
    proc.kill()
    pytest.fail("locust did not start")


def test_ctrl_c_stops_the_embedded_server_after_the_users(tmp_path):
    proc, pid, data = _start_embedded_run(tmp_path)
    time.sleep(2)  # load
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, (tmp_path / "locust.log").read_text()[-3000:]
    assert not alive(pid) and not Path(data).exists()
    # The users stopped before the embedded Milvus did: no call failed on a server going down under it (a Ctrl-C
    # used to end with "Fail connecting to server" failures and exit code 1).
    output = (tmp_path / "locust.log").read_text()
    assert re.search(r"locust-milvus monitor: .* requests=[1-9]\d* failures=0 ", output), output[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_mid_run_cuts_operations_off_as_unknown_outcomes_and_ends_the_run(milvus, collection, tmp_path, sig):
    """SIGTERM (CI runners and Kubernetes stop pods this way) or Ctrl-C while operations of both users are in
    flight: they are cut off and counted as unknown outcomes, never as failures; no traceback (Ctrl-C used to print
    a KeyboardInterrupt traceback from a user's greenlet mid-call, and SIGTERM async failures from a client closed
    under a user that went on to its next operation); the report is written and the process exits in bounded
    time (--stop-timeout 0 + 10 s, the shutdown deadline)."""
    log = open(tmp_path / "locust.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "6", "-r", "6", "-t", "60s",
         "--host", milvus.uri, "--collection", collection, "--prepopulate", "50", "--csv", str(tmp_path / "run"),
         "--reports-dir", str(tmp_path / "reports")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    try:
        deadline = time.monotonic() + 90
        while "All users spawned" not in (tmp_path / "locust.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "locust.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # load
        proc.send_signal(sig)
        sent = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (tmp_path / "locust.log").read_text()
    assert proc.returncode == 0, output[-3000:]
    assert took < 10, f"exited {took:.1f} s after the signal"
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    stats = read_stats_csv(tmp_path / "run")
    total = stats[("", "Aggregated")]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, output[-3000:]
    assert re.search(r"requests=\d+ failures=0 unknown_outcome=[1-9]", output), output[-3000:]
    assert "report written to" in output and list((tmp_path / "reports").glob("*/summary.json")), output[-3000:]


def test_sigkill_of_locust_leaves_no_orphan_server(tmp_path):
    proc, pid, data = _start_embedded_run(tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid)  # the parent-death signal stopped it (its temporary data cannot be removed then)


def test_server_command_prints_its_uri_and_stops_on_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-m", "locust_milvus.cli", "server"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        uri = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", uri), uri
        from pymilvus import MilvusClient

        client = MilvusClient(uri=uri)
        assert client.list_collections() == []
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        # communicate, not wait: it drains the server's log on stderr, which would otherwise fill the pipe and block
        # the server mid-write; what it wrote is shown if it does not stop
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"locust-milvus server did not stop on SIGINT; it wrote:\n{proc.communicate()[1][-3000:]}")
        assert proc.returncode == 0, err[-3000:]


# hybrid-rag.conf needs BM25, which Milvus 2.3.5 lacks: tests/test_milvus_lite.py runs it against Milvus Lite.
SCENARIOS = sorted(p.name for p in (ROOT / "scenarios").glob("*.conf") if p.name != "hybrid-rag.conf")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_runs_without_failures(milvus, collection, tmp_path, scenario):
    # The scenario as shipped, shortened and pointed at the session's Milvus (command line wins over the file).
    # capacity.conf sweeps in 30 s steps: two 2 s steps fit the 4 s here
    steps = ["--step-time", "2s", "--step-warmup", "0s"] if scenario == "capacity.conf" else []
    result = run_locust("--config", f"scenarios/{scenario}", "--host", milvus.uri, "--collection", collection,
                        "--run-time", "4s", "--users", "6", "--spawn-rate", "6", "--prepopulate", "100",
                        "--csv", str(tmp_path / "run"), *steps)
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    stats = read_stats_csv(tmp_path / "run")
    total = stats[("", "Aggregated")]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, total


def test_index_metric_and_partition_key_options_build_the_collection(milvus, collection, tmp_path):
    result = headless(milvus, collection, tmp_path, "SyncMilvusUser", "--index-type", "HNSW", "--metric", "COSINE",
                      "--index-params", '{"M": 16, "efConstruction": 64}', "--search-params", '{"ef": 32}',
                      "--partition-key-field", "category", users=4, seconds=4)
    assert result.returncode == 0, result.output[-3000:]
    assert int(read_stats_csv(tmp_path / "run")[("", "Aggregated")]["Failure Count"]) == 0
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus.uri)
    index = client.describe_index(collection, client.list_indexes(collection)[0])
    fields = {f["name"]: f for f in client.describe_collection(collection)["fields"]}
    client.close()
    assert index["index_type"] == "HNSW" and index["metric_type"] == "COSINE" and str(index["M"]) == "16"
    assert fields["category"].get("is_partition_key") is True


def test_existing_collection_with_other_field_names_is_read_as_it_is(milvus, collection, tmp_path):
    # A collection made by another tool: its own field names, no LangChain conventions.
    from pymilvus import DataType, MilvusClient

    from locust_milvus.workload.embeddings import make_embedding

    client = MilvusClient(uri=milvus.uri)
    schema = client.create_schema(auto_id=False)
    schema.add_field("doc_id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("content", DataType.VARCHAR, max_length=1024)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=32)
    index = client.prepare_index_params()
    index.add_index("embedding", index_type="FLAT", metric_type="L2")
    client.create_collection(collection, schema=schema, index_params=index, consistency_level="Strong")
    texts = [f"test document {i} from another tool" for i in range(200)]
    vectors = make_embedding(32).embed_documents(texts)
    client.insert(collection, [{"doc_id": f"d{i}", "content": t, "embedding": v}
                               for i, (t, v) in enumerate(zip(texts, vectors, strict=True))])
    before = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")

    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection",
                        collection, "--existing-collection", "--text-field", "content", "--vector-field", "embedding",
                        "--primary-field", "doc_id", "--dim", "32", "--add-weight", "0", "--delete-weight", "0",
                        "--search-weight", "1", "--search-by-vector-weight", "1", "--csv", str(tmp_path / "run"))
    assert result.returncode == 0, result.output[-3000:]
    stats = read_stats_csv(tmp_path / "run")
    assert int(stats[("", "Aggregated")]["Request Count"]) > 0
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0
    after = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
    assert before == after  # nothing written
    refused = run_locust("--headless", "-u", "1", "-t", "2s", "--host", milvus.uri, "--collection", collection,
                         "--existing-collection", "--vector-field", "embedding", "--text-field", "content",
                         "--primary-field", "doc_id", "--dim", "32")
    assert refused.returncode == 1 and "--existing-collection is read-only" in refused.output
    wrong = run_locust("--headless", "-u", "1", "-t", "2s", "--host", milvus.uri, "--collection", collection,
                       "--existing-collection", "--add-weight", "0", "--delete-weight", "0", "--dim", "32")
    assert wrong.returncode == 1 and "has no field 'vector'" in wrong.output
    client.close()
