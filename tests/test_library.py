"""Locust as a library: an Environment made in Python, wired with locust_milvus.register, runs the users against
the real embedded Milvus and writes its report; without register, the users say why they stop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT, child_env

pytestmark = pytest.mark.locust

SCRIPT = """
import json, sys
import gevent
from locust.env import Environment
import locust_milvus
from locust_milvus import AsyncMilvusUser, SyncMilvusUser

env = Environment(user_classes=[SyncMilvusUser, AsyncMilvusUser], host=sys.argv[1])
if sys.argv[3] == "register":
    runner = locust_milvus.register(env, collection=sys.argv[2], prepopulate=50, reports_dir=sys.argv[4])
else:
    runner = env.create_local_runner()
runner.start(4, spawn_rate=4)
gevent.sleep(5)
runner.quit()
env.events.quitting.fire(environment=env, reason="done")
total = env.stats.total
print("RESULT", json.dumps({"requests": total.num_requests, "failures": total.num_failures,
                            "names": sorted({name for name, _ in env.stats.entries})}))
"""


def run_script(*args: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=child_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), out


def test_register_wires_an_environment_made_in_python(milvus, collection, tmp_path):
    result, out = run_script(milvus.uri, collection, "register", str(tmp_path / "reports"))
    assert result["requests"] > 20 and result["failures"] == 0, out[-3000:]
    assert {"add", "search", "delete"} <= set(result["names"])
    [folder] = list((tmp_path / "reports").iterdir())  # written when the test stopped
    summary = json.loads((folder / "summary.json").read_text())
    assert {r["mode"] for r in summary["rows"]} == {"sync", "async"}
    assert "Traceback" not in out


def test_without_register_the_users_say_why_they_stop(milvus, collection, tmp_path):
    result, out = run_script(milvus.uri, collection, "none", str(tmp_path / "reports"))
    assert result["requests"] == 0
    lines = [line for line in out.splitlines() if "the users stop:" in line]
    # Once. (No logging is set up in such a script: Python's last-resort handler prints warnings and errors only.)
    assert len(lines) == 1 and "locust_milvus.register(environment)" in lines[0], out[-3000:]
