"""Findings: the report explains what it saw. Each rule on made-up summaries, then the consistency finding on real
runs against the embedded Milvus: present for a Session mix with writes, absent for a Bounded search-only run."""

from __future__ import annotations

import json
import uuid

import pytest

from locust_milvus.report import findings
from locust_milvus.report.histograms import new_histogram, percentiles_ms

from .conftest import run_locust


def row(name: str, mode: str, values_ms: list[float], failures: int = 0) -> dict:
    h = new_histogram()
    for v in values_ms:
        h.record_value(int(v * 1000))
    pct = percentiles_ms(h)
    return {"name": name, "mode": mode, "count": len(values_ms), "failures": failures, "fail_ratio": 0.0,
            "rps": 10.0, "p50_ms": pct[50.0], "p90_ms": pct[90.0], "p99_ms": pct[99.0],
            "mean_ms": h.get_mean_value() / 1000,
            "histogram": h.encode().decode("ascii")}


def summary(rows, level="Session", **extra) -> dict:
    return {"rows": rows, "config": {"consistency_level": level}, "failures": [], **extra}


BIMODAL = [5.0] * 850 + [300.0] * 150  # 15 % of the searches wait for a time tick


def test_a_bimodal_search_beside_writes_at_session_is_a_consistency_wait():
    [f] = findings.find(summary([row("search", "sync", BIMODAL), row("add", "sync", [20.0] * 100)]))
    assert f["kind"] == "consistency_wait" and f["severity"] == "warning"
    assert "consistency wait, not search work" in f["text"] and "--consistency-level Bounded" in f["text"]
    assert f["evidence"]["slow_share"] == pytest.approx(0.15) and f["evidence"]["writes"] == ["add"]
    # the same figures without writes, or at Bounded, are not explained away as a consistency wait
    assert findings.find(summary([row("search", "sync", BIMODAL)])) == []
    assert findings.find(summary([row("search", "sync", BIMODAL), row("add", "sync", [20.0] * 100)],
                                 level="Bounded")) == []
    # a unimodal search at Session is not one either, fast or slow
    assert findings.find(summary([row("search", "sync", [5.0] * 1000), row("add", "sync", [20.0] * 100)])) == []
    assert findings.find(summary([row("search", "sync", [300.0] * 1000), row("add", "sync", [20.0] * 100)])) == []


def test_a_slow_mode_holding_most_searches_median_included_is_found():
    # As a one-minute default run measured it (8:1:1 at Session, 20 users): 35 % of the searches under 30 ms, the
    # rest waiting for one or more time ticks, the median among them.
    values = [12.0] * 350 + [200.0] * 300 + [370.0] * 250 + [590.0] * 100
    [f] = findings.find(summary([row("search", "async", values), row("delete", "async", [7.0] * 100)]))
    assert f["kind"] == "consistency_wait" and f["evidence"]["slow_share"] == pytest.approx(0.65)
    [mode] = f["evidence"]["modes"]
    assert mode["p50_ms"] == pytest.approx(200.0, rel=0.01) and mode["p10_ms"] == pytest.approx(12.0, rel=0.01)
    assert "65% over 100 ms, p10 12 ms, median 200 ms" in f["text"]


def test_known_failures_are_grouped_and_named():
    s = summary([row("mmr", "async", [10.0] * 8, failures=3)], level="Bounded",
                failures=[{"error": "KeyError: 'doc_17'", "count": 3, "operations": []},
                          {"error": "MilvusException: (code=101, message=collection not loaded)", "count": 2,
                           "operations": []},
                          {"error": "OperationFailed('no documents returned from a collection known to be "
                                    "non-empty')", "count": 1, "operations": []},
                          {"error": 'MilvusException: (code=2, message=Fail connecting to server on 127.0.0.1:19530) '
                                    '<- status = StatusCode.UNAVAILABLE details = "Too many pings"', "count": 1,
                           "operations": []}],
                versions={"langchain_milvus": "0.4.0"})
    kinds = {f["kind"]: f for f in findings.find(s)}
    assert set(kinds) == {"upstream_mmr_race", "collection_not_loaded", "keepalive_refused", "missed_documents"}
    missed = kinds["missed_documents"]
    assert missed["severity"] == "warning" and "1 failed requests" in missed["text"]
    assert "issues/15524" in missed["text"]
    assert "1 failed requests" in kinds["keepalive_refused"]["text"] and "not the server's load" in \
        kinds["keepalive_refused"]["text"]
    assert "3 failed requests" in kinds["upstream_mmr_race"]["text"]
    assert "langchain-milvus 0.4.0" in kinds["upstream_mmr_race"]["text"]
    assert "not a Milvus failure" in kinds["upstream_mmr_race"]["text"]


def test_client_server_gap_saturation_and_asymmetry():
    gap = {"server_side": {"operations": [{"name": "search", "client": {"mean_ms": 10.0, "count": 500},
                                           "server": {"mean_ms": 2.0}, "gap": {"mean_ms": 8.0}}]}}
    [f] = findings.find(summary([], level="Bounded", **gap))
    assert f["kind"] == "client_server_gap" and "80% is spent outside Milvus" in f["text"]
    assert "has_collection" not in f["text"]
    gap["server_side"]["operations"][0]["name"] = "insert"  # LangChain's adds make a second round trip
    [f] = findings.find(summary([], level="Bounded", **gap))
    assert "80% is spent outside Milvus" in f["text"] and "has_collection" in f["text"]
    health = {"saturated": True, "warnings": ["pid 1: gevent hub lag above 50 ms for 5 s in a row"],
              "processes": [{"hub_lag_ms_max": 90.0, "loop_lag_ms_max": None, "cpu_pct_max": 99.0}]}
    rows = [row("search", "sync", [40.0] * 200), row("search", "async", [5.0] * 200)]
    found = findings.find(summary(rows, level="Bounded", generator_health=health))
    assert [f["kind"] for f in found] == ["generator_saturated", "sync_async_asymmetry"]  # warnings first
    assert "hub, which runs every sync user, was up to 90 ms late" in found[1]["text"]


def test_hybrid_search_slower_than_search_is_explained():
    rows = [row("search", "async", [4.0] * 200), row("hybrid_search", "async", [10.0] * 200),
            row("full_text_search", "async", [5.0] * 200), row("hybrid_search", "sync", [4.2] * 200),
            row("search", "sync", [4.0] * 200)]
    [f] = findings.find(summary(rows, level="Bounded"))  # sync: 1.05x, not worth a word
    assert f["kind"] == "hybrid_cost" and f["evidence"]["mode"] == "async"
    assert "2.5x search's (4 ms, full_text_search's 5 ms)" in f["text"] and "dense and a BM25 search" in f["text"]


def _run(milvus, tmp_path, *args) -> dict:
    reports = tmp_path / "reports"
    result = run_locust("--headless", "-u", "8", "-r", "8", "-t", "10s", "--host", milvus.uri, "--collection",
                        f"f_{uuid.uuid4().hex[:10]}", "--prepopulate", "200", "--reports-dir", str(reports), *args)
    assert result.returncode == 0, result.output[-3000:]
    [folder] = list(reports.iterdir())
    return json.loads((folder / "summary.json").read_text()), (folder / "summary.html").read_text()


@pytest.mark.locust
def test_session_mix_explains_its_slow_searches_and_bounded_search_only_does_not(milvus, tmp_path):
    # The default mix (8 searches : 1 add : 1 delete) at Session: searches that follow this client's writes wait
    # for the server's time tick (about 200 ms on the embedded Milvus).
    data, page = _run(milvus, tmp_path / "session", "SyncMilvusUser")
    waits = [f for f in data["findings"] if f["kind"] == "consistency_wait"]
    assert waits and waits[0]["evidence"]["consistency_level"] == "Session", json.dumps(data["findings"])[:2000]
    assert waits[0]["evidence"]["slow_share"] >= findings.SLOW_SHARE
    assert "consistency wait, not search work" in page  # shown in the HTML, in the answer and the findings
    data, page = _run(milvus, tmp_path / "bounded", "--consistency-level", "Bounded", "--add-weight", "0",
                      "--delete-weight", "0", "SyncMilvusUser")
    assert not [f for f in data["findings"] if f["kind"] == "consistency_wait"], data["findings"]
    assert {r["name"] for r in data["rows"]} == {"search"}
