"""--embedding openai: the real langchain-openai code against an OpenAI-compatible endpoint on localhost."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from .conftest import ROOT, child_env, read_stats_csv, run_locust
from .test_web_ui import free_port

pytestmark = pytest.mark.locust
KEY = "sk-test-not-a-real-key"


def _endpoint(delay_ms: int = 0):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), str(port), KEY,
                             str(delay_ms)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def openai_endpoint():
    yield from _endpoint()


EMBED_DELAY_MS = 60


@pytest.fixture(scope="module")
def slow_openai_endpoint():
    """A provider that takes EMBED_DELAY_MS per call: far slower than a Milvus search here."""
    yield from _endpoint(EMBED_DELAY_MS)


def embedding_requests(base: str) -> int:
    with urllib.request.urlopen(base + "/stats", timeout=5) as resp:
        return json.loads(resp.read())["embeddings"]


@pytest.mark.parametrize("user_class, request_type", [("SyncMilvusUser", "langchain-sync"),
                                                      ("AsyncMilvusUser", "langchain-async")])
def test_openai_embeddings_drive_both_users(milvus, collection, tmp_path, openai_endpoint, user_class, request_type):
    before = embedding_requests(openai_endpoint)
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": openai_endpoint + "/v1"}
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection",
                        collection, "--prepopulate", "50", "--embedding", "openai", "--openai-dimensions", "48",
                        "--csv", str(tmp_path / "run"), user_class, env=env)
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output and KEY not in result.output
    assert "dim 48, openai embedding" in result.output  # the collection took the model's dimension
    stats = read_stats_csv(tmp_path / "run")
    for name in ("add", "search"):
        assert int(stats[(request_type, name)]["Request Count"]) > 0
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0
    assert embedding_requests(openai_endpoint) > before + 10  # the load really embedded through the endpoint


def test_missing_key_is_a_clear_error_before_load(tmp_path):
    env = {"OPENAI_API_KEY": "", "HOME": str(tmp_path)}
    result = run_locust("--headless", "-u", "1", "-t", "2s", "--embedding", "openai", env=env)
    assert result.returncode == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if "needs OPENAI_API_KEY" in line]


def test_key_is_read_from_dotenv_without_overriding_the_environment(milvus, collection, tmp_path, openai_endpoint):
    # .env in the working directory: its key is used; an OPENAI_BASE_URL already set in the environment wins.
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\n")
    locustfile = ROOT / "locustfiles" / "locustfile.py"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "2", "-r", "2", "-t", "3s",
         "--host", milvus.uri, "--collection", collection, "--prepopulate", "10", "--embedding", "openai",
         "SyncMilvusUser"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={**{k: v for k, v in child_env().items() if k != "OPENAI_API_KEY"},
             "OPENAI_BASE_URL": openai_endpoint + "/v1"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "openai embedding" in output and KEY not in output


def test_wrong_key_is_a_clear_error_before_load(milvus, collection, openai_endpoint):
    env = {"OPENAI_API_KEY": "sk-wrong", "OPENAI_BASE_URL": openai_endpoint + "/v1"}
    result = run_locust("--headless", "-u", "1", "-t", "2s", "--host", milvus.uri, "--collection", collection,
                        "--embedding", "openai", env=env)
    assert result.returncode == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if "the openai embedding failed" in line]
    assert "sk-wrong" not in result.output


@pytest.mark.parametrize("user_class, request_type", [("SyncMilvusUser", "langchain-sync"),
                                                      ("AsyncMilvusUser", "langchain-async")])
def test_embedding_time_is_reported_apart_from_milvus_time(milvus, collection, tmp_path, slow_openai_endpoint,
                                                           user_class, request_type):
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": slow_openai_endpoint + "/v1"}
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection",
                        collection, "--prepopulate", "50", "--embedding", "openai", "--openai-dimensions", "32",
                        "--add-weight", "1", "--delete-weight", "0", "--search-weight", "4",
                        # Bounded: searches do not wait for the adds' time tick (up to 200 ms at Session), so
                        # Milvus's own time is far below the provider's here.
                        "--consistency-level", "Bounded", "--csv", str(tmp_path / "run"), user_class, env=env)
    assert result.returncode == 0, result.output[-3000:]
    stats = read_stats_csv(tmp_path / "run")
    search, embed_query = stats[(request_type, "search")], stats[(request_type, "embed_query")]
    add, embed_documents = stats[(request_type, "add")], stats[(request_type, "embed_documents")]
    # Every search embedded its query once and every add its batch once: one embed request each.
    assert int(search["Request Count"]) == int(embed_query["Request Count"]) > 0
    assert int(add["Request Count"]) == int(embed_documents["Request Count"]) > 0
    # The provider's delay is in the embed requests and out of the operations' own (Milvus) time.
    assert float(embed_query["Median Response Time"]) >= EMBED_DELAY_MS
    assert float(embed_documents["Median Response Time"]) >= EMBED_DELAY_MS
    assert float(search["Median Response Time"]) < EMBED_DELAY_MS / 2
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0


def test_query_pool_is_embedded_once_and_cached_on_disk(milvus, collection, tmp_path, openai_endpoint):
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": openai_endpoint + "/v1"}
    cache = tmp_path / "cache"
    args = ("--headless", "-u", "2", "-r", "2", "-t", "3s", "--host", milvus.uri, "--embedding", "openai",
            "--openai-dimensions", "32", "--prepopulate", "20", "--query-pool", "300", "--corpus-pool", "40",
            "--embedding-cache", str(cache), "--search-weight", "0", "--add-weight", "0", "--delete-weight", "1",
            "--search-by-vector-weight", "4", "--add-embeddings-weight", "1", "SyncMilvusUser")
    first = run_locust(*args, "--collection", collection, "--csv", str(tmp_path / "first"), env=env)
    assert first.returncode == 0, first.output[-3000:]
    assert "query pool of 300 vectors cached" in first.output and "corpus pool of 40 vectors cached" in first.output
    assert len(list(cache.glob("query-*.npy"))) == 1 and len(list(cache.glob("corpus-*.npy"))) == 1
    assert KEY not in "".join(p.name for p in cache.iterdir())

    before = embedding_requests(openai_endpoint)
    second = run_locust(*args, "--collection", collection + "_2", "--csv", str(tmp_path / "second"), env=env)
    assert second.returncode == 0, second.output[-3000:]
    assert "query pool of 300 vectors read from the cache" in second.output
    assert "corpus pool of 40 vectors read from the cache" in second.output
    stats = read_stats_csv(tmp_path / "second")
    assert int(stats[("langchain-sync", "search_by_vector")]["Request Count"]) > 0
    assert int(stats[("langchain-sync", "add_embeddings")]["Request Count"]) > 0
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0
    # The pools cost nothing the second time: the only provider calls were set-up's (the dimension probe and
    # pre-population), and no embed_* request was fired by the pooled tasks.
    assert embedding_requests(openai_endpoint) - before <= 2
    assert not [key for key in stats if key[1].startswith("embed_")]
