"""The async bridge, in-process under gevent: results, exceptions, cancellation, and a hub that never blocks."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import subprocess
import sys
import time

import gevent
import pytest

from locust_milvus.runtime.bridge import get_bridge

from .conftest import ROOT, child_env


def test_result_comes_back():
    async def add(a, b):
        await asyncio.sleep(0.01)
        return a + b

    assert get_bridge().run(add(2, 3)) == 5


def test_exception_propagates_with_its_type():
    async def boom():
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        get_bridge().run(boom())


def test_killing_the_waiting_greenlet_cancels_the_coroutine():
    events = []

    async def slow():
        events.append("started")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    g = gevent.spawn(get_bridge().run, slow())
    gevent.sleep(0.1)
    g.kill(block=True, timeout=2)
    deadline = time.monotonic() + 2
    while "cancelled" not in events and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert events == ["started", "cancelled"]


def test_hub_keeps_running_while_greenlets_wait():
    ticks = []

    def ticker():
        while True:
            ticks.append(time.perf_counter())
            gevent.sleep(0.01)

    # A full collection of pytest's heap takes ~70 ms and is not what this test is about (lifecycle.py freezes
    # the set-up heap in real runs); keep the collector out of the measured window.
    gc.collect()
    gc.disable()
    try:
        t = gevent.spawn(ticker)
        waiters = [gevent.spawn(get_bridge().run, asyncio.sleep(0.3)) for _ in range(20)]
        gevent.joinall(waiters, timeout=5, raise_error=True)
        t.kill()
    finally:
        gc.enable()
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) >= 20, "the hub did not run while 20 greenlets waited on the loop"
    assert max(gaps) < 0.05, f"hub blocked for {max(gaps) * 1000:.0f} ms"


def test_twenty_waits_overlap():
    start = time.perf_counter()
    gevent.joinall([gevent.spawn(get_bridge().run, asyncio.sleep(0.2)) for _ in range(20)], raise_error=True)
    assert time.perf_counter() - start < 2.0  # serialised it would take 4 s


def test_run_in_executor_uses_native_threads():
    # Trap 2: the default executor must not deadlock on greenlet "threads", and its jobs run in parallel.
    async def four_sleeps():
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.2) for _ in range(4))), 5)
        return time.perf_counter() - t0, await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 5)

    elapsed, addresses = get_bridge().run(four_sleeps())
    assert elapsed < 0.7 and addresses


def test_no_loop_exit_when_nothing_else_runs():
    # The waiting greenlet is the only one: a started async watcher must keep the hub from raising LoopExit.
    assert get_bridge().run(asyncio.sleep(0.05, result="ok")) == "ok"


def test_the_loop_uses_the_standard_librarys_sockets_not_geventss():
    # gevent's sockets bind a gevent hub; made or closed in the loop's thread they touched another thread's libev
    # loop, and the process crashed at exit (bridge.py, trap 5).
    import socket as patched_socket

    server = patched_socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    async def connect():
        loop = asyncio.get_running_loop()
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.getsockname()[1])
        kinds = {type(writer.get_extra_info("socket")._sock).__module__, type(loop._ssock).__module__,
                 type(loop._csock).__module__}
        writer.close()
        return kinds

    try:
        assert get_bridge().run(connect()) == {"socket"}
    finally:
        server.close()


def test_a_wait_killed_before_the_loop_took_its_coroutine_never_starts_it():
    # The loop is held busy (a native sleep on its thread), so the second coroutine is still queued when its
    # greenlet is killed: it must be closed there, never started, and the loop must go on serving others.
    from gevent.monkey import get_original

    native_sleep = get_original("time", "sleep")
    started = []

    async def hold_the_loop():
        native_sleep(0.3)

    async def never():
        started.append(True)

    bridge = get_bridge()
    holder = gevent.spawn(bridge.run, hold_the_loop())
    gevent.sleep(0.05)
    queued = gevent.spawn(bridge.run, never())
    gevent.sleep(0.05)
    queued.kill(block=True, timeout=2)
    holder.join(timeout=5)
    assert holder.successful(), holder.exception
    assert bridge.run(asyncio.sleep(0, result="still serving")) == "still serving"
    assert started == []


def test_one_killed_wait_does_not_lose_the_others_that_finish_with_it():
    async def at(t):
        await asyncio.sleep(t)
        return t

    bridge = get_bridge()
    waiters = [gevent.spawn(bridge.run, at(0.2)) for _ in range(10)]
    gevent.sleep(0.05)
    waiters[3].kill(block=True, timeout=2)
    gevent.joinall(waiters, timeout=5)
    assert [w.value for i, w in enumerate(waiters) if i != 3] == [0.2] * 9


def test_something_not_a_coroutine_is_refused_and_nothing_hangs():
    with gevent.Timeout(5), pytest.raises(TypeError):
        get_bridge().run(object())


_GRPC_AIO_ENDS_AFTER_THE_LOOP = """
from gevent import monkey; monkey.patch_all()
import gc, json, grpc
from grpc._cython import cygrpc
from locust_milvus.runtime import bridge

given_back = []
real_shutdown = cygrpc.shutdown_grpc_aio
def spy():  # the bridge's own reference given back: was its loop still running?
    given_back.append({"loop_thread_ended": bridge._bridge._stopped, "loop_closed": bridge._bridge.loop.is_closed()})
    real_shutdown()
cygrpc.shutdown_grpc_aio = spy

async def open_channel():
    return grpc.aio.insecure_channel("127.0.0.1:9")
held = bridge.get_bridge().run(open_channel())  # a channel the hub's thread holds, as a user's client does
bridge.close_bridge()
del held  # its reference, given back on the hub's thread after the bridge closed
gc.collect()
print(json.dumps(given_back))
"""


def test_grpc_aio_is_given_back_only_after_the_loop_has_ended():
    # bridge.py, trap 6: whoever gives back grpc.aio's last reference shuts its poller down on their own thread.
    # The bridge gave its reference back on the loop while a channel still lived; that channel, freed later on
    # the hub's thread while the loop still ran, then closed the poller's socket under the loop (EBADF logged).
    proc = subprocess.run([sys.executable, "-c", _GRPC_AIO_ENDS_AFTER_THE_LOOP], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=child_env(None))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [{"loop_thread_ended": True, "loop_closed": True}]
    assert "Traceback" not in proc.stderr and "Exception in callback" not in proc.stderr, proc.stderr[-2000:]


def test_close_hands_every_waiting_greenlet_a_cancellation():
    # Each job is handed back from inside its task (_drive), not by a done callback: a task cancelled by close()
    # must still wake its greenlet, with the CancelledError users.py takes for a process shutting down.
    import concurrent.futures

    from locust_milvus.runtime.bridge import AsyncBridge

    bridge = AsyncBridge()
    waiters = [gevent.spawn(bridge.run, asyncio.sleep(10)) for _ in range(5)]
    gevent.sleep(0.1)
    bridge.close()
    gevent.joinall(waiters, timeout=5)
    assert all(w.ready() for w in waiters)
    assert all(isinstance(w.exception, concurrent.futures.CancelledError) for w in waiters), \
        [w.exception for w in waiters]


def test_a_job_cancelled_before_its_first_step_leaves_no_coroutine_unawaited(recwarn):
    # A greenlet killed between its task's creation and the task's first step: _drive never runs, so the bridge
    # closes the coroutine itself (else Python warns "coroutine ... was never awaited" when it is collected).
    from locust_milvus.runtime.bridge import _Job

    bridge = get_bridge()
    states = []

    async def never():
        states.append("started")

    def on_the_loop():
        job = _Job(never(), None)
        job.task = bridge.loop.create_task(bridge._drive(job))
        job.abandoned = True
        bridge._cancel(job)
        states.append(inspect.getcoroutinestate(job.coro))

    bridge.loop.call_soon_threadsafe(on_the_loop)
    deadline = time.monotonic() + 2
    while not states and time.monotonic() < deadline:
        gevent.sleep(0.01)
    gevent.sleep(0.05)
    gc.collect()
    assert states == [inspect.CORO_CLOSED]
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
