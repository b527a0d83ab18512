"""Stopping users mid-call ends the run, every time: bench/stop_stress.py's loop, six runs (two per stop kind)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .conftest import ROOT, child_env

pytestmark = [pytest.mark.locust, pytest.mark.milvus]


def _bench():
    spec = importlib.util.spec_from_file_location("stop_stress", ROOT / "bench" / "stop_stress.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_time_limit_sigint_and_sigterm_mid_call_end_every_run(milvus, collection, tmp_path):
    """The -t limit, SIGINT and SIGTERM, 3-4 s into a delete-heavy load of 30 sync and async users with a CPU hog
    beside them: every run exits within --stop-timeout + 10 s with its report, and logs no lock error
    ("cannot release un-acquired lock"), no stuck call and no traceback (before shield.py, a kill thrown into a
    sync gRPC call could leave a user that survived its kill, and the run waited for it for ever)."""
    stress = _bench()
    result = stress.run_stress(runs=6, users=30, hog=1, host=milvus.uri, seed=1, folder=tmp_path,
                               collection=collection, delay_s=(3, 4), env=child_env())
    lines = "\n".join(run.line(len(result.runs)) for run in result.runs)
    summary = f"{result.table()}\n{lines}\noutputs in {tmp_path}"
    assert [run.kind for run in result.runs] == ["time", "sigint", "sigterm"] * 2
    assert all(run.stopped for run in result.runs), summary  # each run was stopped mid-load, not before
    assert result.count("hangs") == 0, summary
    assert result.count("lock_errors") == 0, summary
    assert result.count("stuck") == 0, summary
    assert result.count("tracebacks") == 0, summary
    assert result.count("missing_reports") == 0, summary
