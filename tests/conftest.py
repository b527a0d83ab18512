# ruff: noqa: E402  (GRPC_ENABLE_FORK_SUPPORT must be set before anything imports gRPC)
"""Fixtures: one real embedded Milvus per test session, real locust processes, run-state helpers."""

from __future__ import annotations

import os

# This pytest process runs gRPC in-process (the bridge and store tests) and also starts many subprocesses, which
# gevent's subprocess starts with a Python-level fork. gRPC's fork handlers then ran in a child while other
# threads were in gRPC, and the child aborted (SIGABRT, "epoll_wait error: Bad file descriptor") before it could
# exec. Tests need no fork support: turn it off before gRPC is imported. The children get the user's environment.
_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"
_USER_FORK_SUPPORT = os.environ.get(_FORK_SUPPORT)
os.environ[_FORK_SUPPORT] = "false"

import locust  # noqa: E402,F401,I001  first: Locust monkey-patches the standard library with gevent, as in a real run

import atexit
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from locust_milvus import plugin
from locust_milvus.config.options import DEFAULT_WEIGHTS
from locust_milvus.embedded.server import EmbeddedMilvus
from locust_milvus.config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# What a locustfile's import does: the options reach Locust's parser (tests build options with get_parser()).
plugin.install()
LOCUSTFILE = ROOT / "locustfiles" / "locustfile.py"
MONITOR = re.compile(
    r"locust-milvus monitor: peak_in_flight_sync=(\d+) peak_in_flight_async=(\d+) max_hub_lag_ms=([\d.]+)"
)


@pytest.fixture(scope="session", autouse=True)
def _close_the_bridge_at_the_end():
    """Shut this process's asyncio bridge down in order when the session ends, as locust does at quitting
    (bridge.AsyncBridge.close), instead of leaving its threads to the interpreter's finalisation."""
    yield
    from locust_milvus.runtime.bridge import close_bridge

    close_bridge()


@pytest.fixture(scope="session")
def milvus():
    """The session's real Milvus standalone (embedded wheel), on loopback."""
    server = EmbeddedMilvus()
    server.start()
    yield server
    server.stop()


@dataclass
class SecureMilvus:
    """The embedded Milvus with TLS and authentication on: ``https://127.0.0.1:PORT``, user root, password Milvus."""

    server: EmbeddedMilvus
    uri: str
    ca_file: Path  # the CA that signed the server's certificate (for 127.0.0.1 and localhost)
    other_ca_file: Path  # a CA that signed nothing of this server's
    token: str = "root:Milvus"  # Milvus's default superuser


@pytest.fixture(scope="session")
def secure_milvus(tmp_path_factory) -> SecureMilvus:
    """A second real Milvus, with one-way TLS (a test CA) and authorization on; started only by the tests that
    ask for it (TLS, credentials)."""
    from .tls_certs import make_ca, make_server_cert

    folder = tmp_path_factory.mktemp("tls")
    ca_file, ca_key, ca_subject = make_ca(folder)
    other_ca_file, _, _ = make_ca(folder, "another test CA")
    cert, key = make_server_cert(folder, ca_key, ca_subject)
    server = EmbeddedMilvus(config={
        "common.security.tlsMode": 1, "tls.serverPemPath": str(cert), "tls.serverKeyPath": str(key),
        "tls.caPemPath": str(ca_file), "common.security.authorizationEnabled": True,
    })
    server.start()
    yield SecureMilvus(server, server.uri.replace("http://", "https://"), ca_file, other_ca_file)
    server.stop()


@dataclass
class LiteMilvus:
    """A Milvus Lite 3.x server (``milvus-lite server``, installed with langchain-milvus): the Milvus Lite engine
    behind the real gRPC API, with BM25 full-text search, which the embedded 2.3.5 lacks. Started through
    tests/milvus_lite_server.py, which gives its gRPC server Milvus's keepalive policy (see there why)."""

    uri: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="session")
def lite_milvus(tmp_path_factory) -> LiteMilvus:
    """A second real server for the tests that need Milvus >= 2.5 features: on a free loopback port, its data in a
    temporary folder; started only by the tests that ask for it, stopped at the session's end."""
    import socket
    import time

    folder = tmp_path_factory.mktemp("milvus_lite")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.milvus_lite_server", "--data-dir", str(folder / "data"),
                                 "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=child_env(), start_new_session=True)
    deadline = time.monotonic() + 60
    while "listening" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"milvus-lite server did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    yield LiteMilvus(f"http://127.0.0.1:{port}", proc, log)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def collection() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def make_settings(uri: str, collection: str, **overrides) -> Settings:
    values = dict(
        uri=uri, token="", collection=collection, drop_collection=False, consistency_level="Session",
        timeout=10.0, retry_rate_limit=False, weights=dict(DEFAULT_WEIGHTS), batch_size=5, top_k=3,
        prepopulate=50, dim=32, async_concurrency=1,
    )
    values.update(overrides)
    return Settings(**values)


@dataclass
class LocustResult:
    returncode: int
    output: str

    def monitor(self) -> list[tuple[int, int, float]]:
        """The ``locust-milvus monitor`` figures of each process that ran users."""
        return [(int(a), int(b), float(c)) for a, b, c in MONITOR.findall(self.output)]


# Report folders of runs that do not choose one go here, not into the checkout's reports/ (which is the user's).
_TEST_REPORTS = tempfile.mkdtemp(prefix="locust-milvus-test-reports-")
atexit.register(shutil.rmtree, _TEST_REPORTS, True)


def child_env(extra: dict | None = None) -> dict:
    """The environment a subprocess gets: the user's (fork support as they had it), reports in a temporary
    folder unless a test says otherwise (--reports-dir wins over the variable), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != _FORK_SUPPORT}
    if _USER_FORK_SUPPORT is not None:
        env[_FORK_SUPPORT] = _USER_FORK_SUPPORT
    env["LOCUST_REPORTS_DIR"] = _TEST_REPORTS
    return {**env, **(extra or {})}


def run_locust(*args: str, env: dict | None = None, timeout: float = 180) -> LocustResult:
    """Run a real ``locust`` process on the main locustfile; returns its exit code and combined output."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=child_env(env))
    except subprocess.TimeoutExpired as e:  # keep what it printed: a hang is worth diagnosing
        printed = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                          for part in (e.stdout or "", e.stderr or ""))
        pytest.fail(f"locust did not finish in {timeout} s; it printed:\n{printed[-4000:]}")
    return LocustResult(proc.returncode, proc.stdout + proc.stderr)


def read_stats_csv(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    import csv

    with open(f"{prefix}_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
