"""shield.py (a stop abandons the wait, never the call) and shutdown.py (Ctrl-C, the shutdown deadline), with fakes
and small real processes; the real-Milvus cases are in test_users_milvus.py and test_locust_runs.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import gevent
import gevent.event
import pytest

from locust_milvus.runtime import shield
from locust_milvus.runtime.shutdown import FORCED_EXIT_CODE

from .conftest import ROOT, child_env


def test_a_shielded_call_returns_its_value_and_raises_its_error_without_a_greenlet_traceback(monkeypatch):
    printed = []
    monkeypatch.setattr(gevent.get_hub(), "print_exception", lambda *args: printed.append(args))
    assert shield.call_shielded(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ValueError, match="boom"):
        shield.call_shielded(lambda: (_ for _ in ()).throw(ValueError("boom")))
    gevent.sleep(0)
    assert printed == []  # gevent prints every greenlet that dies raising: the shield's greenlet never does
    assert shield.calls_in_flight() == 0


def test_killing_the_waiting_greenlet_abandons_the_wait_and_the_call_runs_to_its_end():
    release, finished = gevent.event.Event(), []

    def call():  # stands for a gRPC call waiting for its reply
        release.wait()
        finished.append(True)
        return "reply"

    waiter = gevent.spawn(shield.call_shielded, call)
    gevent.sleep(0.05)
    assert shield.calls_in_flight() == 1
    waiter.kill(block=True, timeout=1)  # what Locust does to a user mid-call when the test stops
    assert waiter.dead and isinstance(waiter.value, gevent.GreenletExit)
    assert finished == [] and shield.calls_in_flight() == 1  # the kill did not reach the call
    release.set()
    gevent.sleep(0.05)
    assert finished == [True] and shield.calls_in_flight() == 0


def test_the_hub_thread_pool_grows_with_the_calls_in_flight():
    # gRPC's gevent support waits on its completion queues in this pool: one thread per call in flight, or calls
    # queue (inside their measured time) and future-based ones (delete) starve.
    pool = gevent.get_hub().threadpool
    release = gevent.event.Event()
    waiters = [gevent.spawn(shield.call_shielded, release.wait) for _ in range(40)]
    gevent.sleep(0.05)
    try:
        assert pool.maxsize >= 40 + shield.SPARE_THREADS
    finally:
        release.set()
        gevent.joinall(waiters, timeout=5)
    assert shield.calls_in_flight() == 0


def _python(code: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=child_env())
    return proc, time.monotonic() - start


def test_the_shutdown_deadline_ends_a_process_whose_hub_is_stuck():
    proc, took = _python("""
        from gevent import monkey; monkey.patch_all()
        from gevent.monkey import get_original
        from locust_milvus.runtime import shutdown
        shutdown.GRACE_S = 1.0
        shutdown.arm(0.5, "the end of the test")
        get_original("time", "sleep")(60)  # the hub blocked for good: no greenlet could end the process
        print("not reached")
    """)
    assert proc.returncode == FORCED_EXIT_CODE, proc.stderr
    assert took < 20 and "not reached" not in proc.stdout
    assert "did not exit within 1.5 s of the end of the test" in proc.stderr
    assert "Current thread" in proc.stderr or "Thread 0x" in proc.stderr  # every thread's stack, for diagnosis


def test_a_run_that_never_stops_is_ended_after_its_run_time():
    proc, took = _python("""
        from gevent import monkey; monkey.patch_all()
        from gevent.monkey import get_original
        from locust_milvus.runtime import shutdown
        shutdown.GRACE_S = 0.5
        shutdown.expect_stop(1.0, 0)  # a 1 s --run-time whose stop never comes
        get_original("time", "sleep")(60)
    """)
    assert proc.returncode == FORCED_EXIT_CODE and took < 20, proc.stderr
    assert "the --run-time limit (1 s) passed and the run did not end within 1 s of it" in proc.stderr


def test_ctrl_c_is_a_keyboard_interrupt_in_the_main_greenlet_only():
    proc, _ = _python("""
        from gevent import monkey; monkey.patch_all()
        import os, signal, time
        import gevent
        from locust_milvus.runtime import shutdown
        shutdown.install_sigint_handler()

        def busy_user():  # a user mid-call: Python code running when the signal arrives
            while True:
                time.perf_counter(); gevent.sleep(0)

        users = [gevent.spawn(busy_user) for _ in range(4)]
        gevent.spawn_later(0.3, os.kill, os.getpid(), signal.SIGINT)
        try:
            gevent.sleep(30)
        except KeyboardInterrupt:
            print("main greenlet interrupted", flush=True)
        print("users alive:", sum(not u.dead for u in users), flush=True)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "main greenlet interrupted" in proc.stdout and "users alive: 4" in proc.stdout
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr


_CSV_WRITER_AFTER_CLOSE = """
from gevent import monkey; monkey.patch_all()
import sys, gevent
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter
from locust_milvus.runtime import shutdown

if sys.argv[2] == "guarded":
    shutdown.stop_csv_writer_with_its_files()
writer = StatsCSVFileWriter(Environment(), PERCENTILES_TO_REPORT, sys.argv[1], full_history=False)
failed = []
greenlet = gevent.spawn(writer.stats_writer)
greenlet.link_exception(lambda g: failed.append(repr(g.exception)))
gevent.sleep(0.2)
writer.close_files()  # as Locust's shutdown() does, then its atexit handlers yield to the hub (--processes)
gevent.sleep(1.5)  # past the writer's next turn (every second)
print("FAILED" if failed else "CLEAN", failed)
"""


@pytest.mark.parametrize("mode", ["guarded", "as Locust leaves it"])
def test_the_csv_writer_stops_when_its_files_close(tmp_path, mode):
    # Locust closes the --csv files at shutdown and leaves their writer greenlet running: anything that yields
    # afterwards (the --processes master's wait for its workers) let it write into a closed file, a traceback after
    # the report. The unguarded case shows the upstream behaviour the guard is for; once Locust stops the writer
    # itself it reads CLEAN, and the guard (shutdown.stop_csv_writer_with_its_files) can go.
    proc = subprocess.run([sys.executable, "-c", _CSV_WRITER_AFTER_CLOSE, str(tmp_path / "run"), mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=child_env(None))
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = "CLEAN" if mode == "guarded" else "FAILED"
    assert proc.stdout.split()[0] == expected, proc.stdout + proc.stderr[-2000:]
