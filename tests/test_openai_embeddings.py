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


@pytest.fixture(scope="module")
def openai_endpoint():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), str(port), KEY],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


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
    locustfile = ROOT / "locustfiles" / "langchain_milvus.py"
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
