"""``locust-milvus tutorial``: the tutorials' sync-versus-async table and chart, against a real Milvus."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT, child_env

pytestmark = pytest.mark.milvus


def test_tutorial_writes_table_and_chart(milvus, tmp_path):
    out = tmp_path / "tutorial"
    proc = subprocess.run([sys.executable, "-m", "locust_milvus.cli", "tutorial", "--host", milvus.uri,
                           "--counts", "5,10", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "tutorial.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| add") or line.startswith("| search")
            or line.startswith("| delete")]
    assert len(rows) == 6  # 3 operations x 2 counts, sync and async each
    assert "tutorial sync (s)" in table and "OpenAI embeddings" in table  # their figures, with the caveat
    png = (out / "tutorial.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bad_counts_are_refused():
    proc = subprocess.run([sys.executable, "-m", "locust_milvus.cli", "tutorial", "--counts", "10,x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 2 and "--counts must be whole numbers" in proc.stderr


def test_plain_commands_do_not_import_locust():
    # Importing Locust monkey-patches the standard library with gevent: plain asyncio and sync gRPC then hang.
    code = ("import sys, locust_milvus, locust_milvus.cli, locust_milvus.tutorial, locust_milvus.embedded.server, "
            "locust_milvus.milvus.store, locust_milvus.report.compare, locust_milvus.report.folder; "
            "assert 'locust' not in sys.modules and 'gevent.monkey' not in sys.modules, 'locust imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
