"""Your own workload: a user-written locustfile (in a temporary folder, not an example) with sync and async tasks on
LangChainUser / AsyncLangChainUser, run by real locust processes against the real embedded Milvus."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from locust_milvus.runtime.bridge import get_bridge

from .conftest import read_stats_csv, run_locust

pytestmark = [pytest.mark.locust, pytest.mark.milvus]

OWN = textwrap.dedent('''
    """A user's own locustfile: a retriever and a cheap re-ranking step, sync and async; one task always fails."""
    from locust import constant, task

    from locust_milvus import AsyncLangChainUser, LangChainUser


    def rerank(query, docs):  # an offline re-ranker: the documents sharing most words with the query first
        words = set(query.lower().split())
        return sorted(docs, key=lambda d: -len(words & set(d.page_content.lower().split())))


    class RetrieverUser(LangChainUser):
        wait_time = constant(0.01)

        @task(4)
        def retrieve(self):
            query = self.query_text()
            retriever = self.store.as_retriever(search_kwargs={"k": 3})
            with self.measure("retrieve"):
                # (In a distributed run a worker's fresh client may briefly see none of the master's pre-populated
                # documents at Session consistency: an empty result is no failure here.)
                docs = rerank(query, retriever.invoke(query))
                assert len(docs) <= 3, docs

        @task
        def broken_chain(self):
            with self.measure("broken_chain"):
                raise ValueError("my chain failed on purpose")


    class AsyncRetrieverUser(AsyncLangChainUser):
        wait_time = constant(0.01)

        @task
        def aretrieve(self):
            async def chain():
                query = self.query_text()
                async with self.measure_async("aretrieve"):
                    docs = rerank(query, await self.astore.as_retriever(search_kwargs={"k": 3}).ainvoke(query))
                    assert len(docs) <= 3, docs
                return docs

            self.run(chain())
''')


@pytest.fixture
def own_locustfile(tmp_path):
    path = tmp_path / "my_chain.py"
    path.write_text(OWN)
    return path


def own_run(milvus, collection, locustfile, tmp_path, *extra: str):
    return run_locust("-f", str(locustfile), "--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri,
                      "--collection", collection, "--prepopulate", "100", "--csv", str(tmp_path / "run"),
                      "--reports-dir", str(tmp_path / "reports"), *extra)


def test_only_its_own_tasks_run_in_both_modes_and_failures_are_failures(milvus, collection, own_locustfile, tmp_path):
    result = own_run(milvus, collection, own_locustfile, tmp_path, "--check-p99", "retrieve=30s,aretrieve@async=30s")
    assert "Traceback" not in result.output, result.output[-3000:]
    assert result.returncode == 1, result.output[-3000:]  # Locust's exit code for failed requests (broken_chain)
    stats = read_stats_csv(tmp_path / "run")
    names = {key for key in stats if key[1] != "Aggregated"}
    assert names == {("langchain-sync", "retrieve"), ("langchain-sync", "broken_chain"),
                     ("langchain-async", "aretrieve")}, names  # no built-in add/search/delete beside them
    assert int(stats[("langchain-sync", "retrieve")]["Request Count"]) > 10
    assert int(stats[("langchain-sync", "retrieve")]["Failure Count"]) == 0
    assert int(stats[("langchain-async", "aretrieve")]["Request Count"]) > 10
    assert int(stats[("langchain-async", "aretrieve")]["Failure Count"]) == 0
    broken = stats[("langchain-sync", "broken_chain")]
    assert int(broken["Request Count"]) > 0 and broken["Failure Count"] == broken["Request Count"]
    assert "ValueError: my chain failed on purpose" in (tmp_path / "run_failures.csv").read_text()
    assert "CHECK PASSED: p99 of retrieve (sync)" in result.output
    assert "CHECK PASSED: p99 of aretrieve (async)" in result.output
    [folder] = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    rows = json.loads((folder / "summary.json").read_text())["rows"]
    assert {(r["name"], r["mode"]) for r in rows} == {("retrieve", "sync"), ("broken_chain", "sync"),
                                                      ("aretrieve", "async")}


def test_a_gate_on_its_own_name_fails_as_it_should(milvus, collection, own_locustfile, tmp_path):
    result = own_run(milvus, collection, own_locustfile, tmp_path, "--check-p50", "retrieve=1us")
    assert result.returncode == 3, result.output[-3000:]
    assert re.search(r"CHECK FAILED: p50 of retrieve \(sync\) [\d.]+ ms > 0\.001 ms", result.output), \
        result.output[-3000:]


def test_a_distributed_run_of_it_adds_up(milvus, collection, own_locustfile, tmp_path):
    result = own_run(milvus, collection, own_locustfile, tmp_path, "--processes", "2")
    assert "Traceback" not in result.output, result.output[-6000:]
    failures = (tmp_path / "run_failures.csv").read_text()
    assert [line for line in failures.splitlines()[1:] if "broken_chain" not in line] == [], failures
    assert result.output.count("documents pre-populated") == 1  # set-up once, on the master
    workers = [int(n) for n in re.findall(r"locust-milvus monitor: .* requests=(\d+)", result.output)]
    stats = read_stats_csv(tmp_path / "run")
    total = int(stats[("", "Aggregated")]["Request Count"])
    assert len(workers) == 2 and all(workers) and sum(workers) == total, (workers, total)
    assert {key[1] for key in stats} == {"retrieve", "broken_chain", "aretrieve", "Aggregated"}


@pytest.mark.parametrize("source, extra, says", [
    ("from locust_milvus import LangChainUser\n\nclass Empty(LangChainUser):\n    pass\n", (),
     "user class Empty has no tasks: give it a method decorated with @task"),
    (OWN, ("--check-p99", "retreive=10ms"), "no operation is named 'retreive'"),
    (OWN, ("--target-rps", "search=5"), "your own user classes (RetrieverUser, AsyncRetrieverUser) cannot be paced"),
    (OWN.replace("class RetrieverUser(LangChainUser):",
                 "class RetrieverUser(LangChainUser):\n    milvus_kwargs = {'num_shards': 2}"),
     (), "user classes AsyncRetrieverUser, RetrieverUser give different milvus_kwargs"),
], ids=["no-task", "gate-on-unknown-name", "target-rps", "two-schemas"])
def test_bad_input_is_one_line_before_load(milvus, collection, tmp_path, source, extra, says):
    path = tmp_path / "mine.py"
    path.write_text(source)
    result = own_run(milvus, collection, path, tmp_path, *extra)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output[-3000:]
    assert [line for line in result.output.splitlines() if says in line], result.output[-3000:]
    assert "All users spawned" not in result.output  # no load


def test_measure_async_outside_self_run_says_how_to_use_it():
    from locust.env import Environment

    from locust_milvus import AsyncLangChainUser

    class Mine(AsyncLangChainUser):
        def nothing(self):
            pass

    user = Mine(Environment(user_classes=[Mine]))

    async def chain():
        async with user.measure_async("x"):
            pass

    with pytest.raises(RuntimeError, match=r"measure_async\('x'\) is for a coroutine run with self.run"):
        get_bridge().run(chain())


def test_the_retriever_rerank_example_runs_both_modes(milvus, collection, tmp_path):
    from .conftest import ROOT

    result = run_locust("-f", str(ROOT / "locustfiles" / "examples" / "retriever_rerank.py"), "--headless", "-u", "4",
                        "-r", "4", "-t", "5s", "--host", milvus.uri, "--collection", collection, "--prepopulate", "100",
                        "--csv", str(tmp_path / "run"), "--check-p99", "retrieve=10s,aretrieve=10s")
    assert result.returncode == 0, result.output[-3000:]
    stats = read_stats_csv(tmp_path / "run")
    named = {key: row for key, row in stats.items() if key[0]}
    assert set(named) == {("langchain-sync", "retrieve"), ("langchain-async", "aretrieve")}, set(named)
    assert all(int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0 for row in named.values()), named
    assert "CHECK PASSED: p99 of retrieve (sync)" in result.output


def test_the_own_schema_example_makes_its_collection_once_with_its_own_arguments(milvus, collection, tmp_path):
    from pymilvus import MilvusClient

    from .conftest import ROOT

    result = run_locust("-f", str(ROOT / "locustfiles" / "examples" / "own_schema.py"), "--headless", "-u", "4",
                        "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection", collection, "--prepopulate", "200",
                        "--processes", "2", "--csv", str(tmp_path / "run"), "--reports-dir", str(tmp_path / "reports"),
                        "--check-fail-ratio", "0")
    assert result.returncode == 0, result.output[-3000:]
    assert result.output.count("documents pre-populated") == 1  # set up once, on the master
    stats = read_stats_csv(tmp_path / "run")
    named = {key: row for key, row in stats.items() if key[0]}
    assert set(named) == {("langchain-sync", "tenant_search"), ("langchain-async", "atenant_search")}, set(named)
    assert all(int(row["Request Count"]) > 0 for row in named.values()), named
    client = MilvusClient(uri=milvus.uri)
    try:
        described = client.describe_collection(collection)
        index = client.describe_index(collection, client.list_indexes(collection)[0])
    finally:
        client.close()
    assert described["num_partitions"] == 16 and described["enable_dynamic_field"], described
    assert [f["name"] for f in described["fields"] if f.get("is_partition_key")] == ["category"], described
    assert (index["index_type"], index["metric_type"]) == ("HNSW", "COSINE"), index
    summary = json.loads(next((tmp_path / "reports").glob("*/summary.json")).read_text())
    assert summary["workload"]["milvus_kwargs"]["index_params"]["index_type"] == "HNSW"
    assert summary["workload"]["milvus_kwargs"]["partition_key_field"] == "category"
