"""Secrets stay home: the Milvus token never crosses the master-worker link. Each worker reads its own; the master
sends only a keyed fingerprint, so a worker without the token (or with another) refuses at start with one line.
The link is recorded through a TCP relay on loopback (tests/tcp_capture.py), for a headless run and for a test
started from the web UI's form."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import LOCUSTFILE, ROOT, child_env
from .test_distributed import finish
from .test_web_ui import free_port, post

pytestmark = pytest.mark.locust
CANARY = "canary-tok-7d2e4f9a-home"


def start(*args: str, token: str | None) -> subprocess.Popen:
    env = child_env({"LOCUST_MILVUS_TOKEN": token} if token else {})
    if token is None:
        env.pop("LOCUST_MILVUS_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture
def relay(tmp_path):
    """(the port workers connect to, the master's port, the capture file)."""
    master_port, relay_port = free_port(), free_port()
    capture = tmp_path / "link.bin"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "tcp_capture.py"), str(relay_port),
                             str(master_port), str(capture)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield relay_port, master_port, capture
    proc.kill()
    proc.wait()


def test_the_token_never_crosses_the_link_and_a_worker_without_it_refuses(milvus, collection, relay):
    relay_port, master_port, capture = relay
    master = start("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
                   "--headless", "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "6s", "--host", milvus.uri,
                   "--collection", collection, "--prepopulate", "50", token=CANARY)
    good = start("--worker", "--master-host", "127.0.0.1", "--master-port", str(relay_port), token=CANARY)
    bare = start("--worker", "--master-host", "127.0.0.1", "--master-port", str(relay_port), token=None)
    out = finish(master, timeout=150)
    good_out, bare_out = finish(good, timeout=30), finish(bare, timeout=30)
    assert master.returncode == 0, out[-3000:]
    link = capture.read_bytes()
    assert len(link) > 10_000 and b"locust_milvus_token_check" in link  # the options went through the relay
    assert CANARY.encode() not in link
    # the worker with the token ran its users; the one without said why, once, and ran none
    assert "Traceback" not in good_out + bare_out
    [line] = [x for x in bare_out.splitlines() if "has no Milvus token" in x]
    assert "ERROR" in line and "set LOCUST_MILVUS_TOKEN (or ./.env) on every worker" in line
    assert "has no Milvus token" not in good_out
    assert CANARY not in out + good_out + bare_out


def test_options_typed_into_the_web_ui_do_not_carry_the_token_either(milvus, collection, relay, tmp_path):
    relay_port, master_port, capture = relay
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    master = start("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
                   "--web-host", "127.0.0.1", "--web-port", str(web_port), "--host", milvus.uri, "--collection",
                   collection, "--prepopulate", "50", token=CANARY)
    worker = start("--worker", "--master-host", "127.0.0.1", "--master-port", str(relay_port), token=CANARY)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                workers = json.loads(urllib.request.urlopen(base + "/stats/requests", timeout=5).read())["workers"]
                if workers:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the worker did not connect"
            time.sleep(0.5)
        assert post(f"{base}/swarm", {"user_count": 2, "spawn_rate": 2, "host": milvus.uri, "search_weight": 3})[
            "success"]
        while b"locust_milvus_token_check" not in capture.read_bytes():
            assert time.monotonic() < deadline + 30, "no options crossed the link"
            time.sleep(0.5)
        time.sleep(3)
        post(f"{base}/stop", {})
    finally:
        master.terminate()
        out = finish(master, timeout=60)
        worker_out = finish(worker, timeout=30)
    link = capture.read_bytes()
    assert CANARY.encode() not in link
    assert "has no Milvus token" not in worker_out and "Traceback" not in out + worker_out
