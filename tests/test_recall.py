"""--recall: recall@k under load against exact nearest neighbours (numpy), and --check-recall."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymilvus import MilvusClient

from locust_milvus.report import gates
from locust_milvus.workload.recall import GroundTruth

from .conftest import run_locust


def test_ground_truth_judges_exact_top_k_and_leaves_ambiguous_documents_out():
    truth = GroundTruth(2, "L2")
    truth.put(["a", "b", "c", "d"], [[0, 0], [1, 0], [2, 0], [10, 0]])
    q = [0.1, 0]
    visible = truth.visible()
    assert truth.recall(q, ["a", "b"], 2, visible) == 1.0
    assert truth.recall(q, ["a", "d"], 2, visible) == 0.5
    # "b" is being deleted when the search starts: whether it is returned or not, the search is not blamed.
    truth.begin(["b"])
    visible = truth.visible()
    assert truth.recall(q, ["a", "c"], 2, visible) == 1.0
    assert truth.recall(q, ["a", "b"], 2, visible) == 1.0
    truth.settle(["b"])
    # "b" is taken for deletion (and deleted) while the search runs: the server may have applied it before the
    # search's snapshot, so missing it is no fault. CI saw exactly this as a false recall of 2/3 on FLAT.
    visible = truth.visible()
    truth.begin(["b"])
    truth.remove(["b"])
    truth.settle(["b"])
    assert truth.recall(q, ["a", "c"], 2, visible) == 1.0
    assert truth.recall(q, ["a", "d"], 2, visible) == 0.5  # "c" was certainly there
    assert truth.recall(q, ["a", "c"], 2, truth.visible()) == 1.0
    truth.put(["b"], [[1, 0]])
    # Added during the search and returned: a fair candidate. Unknown to us (another writer): not judged.
    visible = truth.visible()
    truth.put(["e"], [[0.1, 0]])
    assert truth.recall(q, ["e", "a"], 2, visible) == 1.0
    assert truth.recall(q, ["x", "a"], 2, visible) == 1.0
    truth.remove(["a"])
    assert truth.recall(q, ["e", "b"], 2, truth.visible()) == 1.0
    for metric in ("IP", "COSINE"):
        t = GroundTruth(2, metric)
        t.put(["near", "far"], [[1, 0.1], [-1, 0]])
        assert t.recall(np.array([1.0, 0.0]), ["near"], 1, t.visible()) == 1.0
        assert t.recall(np.array([1.0, 0.0]), ["far"], 1, t.visible()) == 0.0


def test_recall_gate_is_a_minimum_and_judges_only_the_searches_it_sampled():
    rows = [{"name": "search", "mode": "sync", "recall_mean": 0.93, "recall_samples": 40},
            {"name": "add", "mode": "sync"}]
    [outcome] = gates.evaluate(gates.parse("recall", "0.95"), rows)
    assert not outcome.passed and outcome.line == "CHECK FAILED: mean recall of search (sync) 0.9300 < 0.95"
    [outcome] = gates.evaluate(gates.parse("recall", "search=90%"), rows)
    assert outcome.passed
    with pytest.raises(Exception, match="not a recall between 0 and 1"):
        gates.parse("recall", "1.5")


def summary_rows(reports):
    [path] = list(reports.glob("*/summary.json"))
    data = json.loads(path.read_text())
    return data, {(r["name"], r["mode"]): r for r in data["rows"]}


@pytest.mark.locust
def test_recall_is_one_on_flat_under_concurrent_writes_and_drops_on_a_poor_index(milvus, collection, tmp_path):
    common = ("--headless", "-u", "4", "-r", "4", "-t", "6s", "--host", milvus.uri, "--dim", "32",
              "--prepopulate", "1100", "--recall", "1", "--search-by-vector-weight", "2")
    # Exact index, adds and deletes running meanwhile, Session consistency: every judged search is exact.
    # (Not upserts: on Milvus 2.3.5 a search occasionally misses a document its own client just upserted; the
    # docs/limitations.md reports it.)
    flat = run_locust(*common, "--collection", collection, "--index-type", "FLAT", "--add-weight", "2",
                      "--retriever-weight", "4", "--reports-dir", str(tmp_path / "flat"), "--check-recall", "0.999")
    assert flat.returncode == 0, flat.output[-3000:]
    assert "CHECK PASSED: mean recall of search_by_vector (sync) 1.0000 >= 0.999" in flat.output
    data, rows = summary_rows(tmp_path / "flat")
    for mode in ("sync", "async"):
        for name in ("search", "search_by_vector", "retriever"):  # the retriever as a chain calls it, judged too
            assert rows[(name, mode)]["recall_samples"] > 2 and rows[(name, mode)]["recall_min"] == 1.0
        assert "recall_samples" not in rows[("add", mode)]  # a metric of the searches, not a request
    assert sum(r["count"] for r in data["rows"]) == sum(
        r["count"] for r in data["rows"] if r["name"] in ("add", "delete", "search", "search_by_vector", "retriever"))
    md = (next((tmp_path / "flat").glob("*/summary.md"))).read_text()
    assert "Recall under load" in md and "Consistency level: Session" in md
    # A deliberately poor index: 256 lists over 1,100 vectors, one probed. The gate fails, exit code 3.
    poor = run_locust(*common, "--collection", collection + "_ivf", "--index-type", "IVF_FLAT", "--index-params",
                      '{"nlist": 256}', "--search-params", '{"nprobe": 1}', "--search-weight", "0",
                      "--add-weight", "0", "--delete-weight", "0", "--reports-dir", str(tmp_path / "ivf"),
                      "--check-recall", "search_by_vector=0.9")
    assert poor.returncode == gates.GATE_EXIT_CODE, poor.output[-3000:]
    assert "CHECK FAILED: mean recall of search_by_vector" in poor.output
    _, rows = summary_rows(tmp_path / "ivf")
    assert rows[("search_by_vector", "sync")]["recall_mean"] < 0.6


def distributed(milvus, tmp_path, name: str, *args: str):
    """A headless master and two workers on loopback; returns (master's exit code, its output, workers' outputs)."""
    from .test_distributed import finish, start
    from .test_web_ui import free_port

    port = free_port()
    master = start("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--headless",
                   "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "8s", "--host", milvus.uri, "--dim", "32",
                   "--prepopulate", "1100", "--recall", "1", "--reports-dir", str(tmp_path / name), *args)
    workers = [start("--worker", "--master-host", "127.0.0.1", "--master-port", str(port)) for _ in range(2)]
    out = finish(master, timeout=200)
    return master.returncode, out, [finish(w, timeout=30) for w in workers]


@pytest.mark.locust
def test_recall_in_a_distributed_run_is_one_on_flat_with_writes_on_every_worker_and_drops_on_a_poor_index(
        milvus, collection, tmp_path):
    # Each worker holds the pre-populated documents (read back by the master's id prefix) and its own writes; a
    # document another worker wrote is in no worker's truth and is not judged (recall.py). Both workers add and
    # delete while they search: an exact index must still score 1.0 on every judged search.
    code, out, worker_outs = distributed(milvus, tmp_path, "flat", "--collection", collection, "--index-type", "FLAT",
                                         "--search-by-vector-weight", "2", "--add-weight", "3",
                                         "--check-recall", "0.999")
    assert code == 0, out[-3000:]
    for text in worker_outs:
        assert "ground truth of 1100 documents" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    assert "CHECK PASSED: mean recall of search_by_vector (sync) 1.0000 >= 0.999" in out
    data, rows = summary_rows(tmp_path / "flat")
    for mode in ("sync", "async"):
        for name in ("search", "search_by_vector"):
            assert rows[(name, mode)]["recall_samples"] > 5 and rows[(name, mode)]["recall_min"] == 1.0
    assert any(item.get("recall") for item in data["timeline"]["series"]), "recall over time in the master's report"
    [folder] = list((tmp_path / "flat").iterdir())
    assert (folder / "recall_over_time.png").stat().st_size > 10_000
    assert "recall over time (--recall)" in (folder / "summary.html").read_text()
    # Both workers' documents were in the collection while they searched (each judged around the other's).
    client = MilvusClient(uri=milvus.uri)
    try:
        owners = {r["pk"].split("-", 1)[0] for r in client.query(collection, filter="", output_fields=["pk"],
                                                                  limit=16384, consistency_level="Strong")}
    finally:
        client.close()
    assert {"w0", "w1"} <= owners, owners
    # The poor index of the local test, across master and workers: the gate fails with exit code 3.
    code, out, _ = distributed(milvus, tmp_path, "ivf", "--collection", collection + "_ivf", "--index-type",
                               "IVF_FLAT", "--index-params", '{"nlist": 256}', "--search-params", '{"nprobe": 1}',
                               "--search-weight", "0", "--search-by-vector-weight", "1", "--add-weight", "0",
                               "--delete-weight", "0", "--check-recall", "search_by_vector=0.9")
    assert code == gates.GATE_EXIT_CODE, out[-3000:]
    _, rows = summary_rows(tmp_path / "ivf")
    assert rows[("search_by_vector", "sync")]["recall_mean"] < 0.6
