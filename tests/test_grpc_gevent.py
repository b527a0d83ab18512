"""grpc_gevent.py: sync gRPC calls wait on the hub, not on a thread each; a kill abandons the wait, never the call.

A real gRPC channel to a real socket that accepts connections and never answers (a hung server): the calls wait
for their deadline, which gives a kill something to interrupt. The real-Milvus cases are in test_users_milvus.py,
test_locust_runs.py and test_stop_stress.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import gevent
import grpc
import pytest

from locust_milvus.runtime import grpc_gevent

from .conftest import ROOT, child_env


@pytest.fixture
def hung_channel():
    """A channel to a listening socket that never accepts: TCP connects (the backlog), HTTP/2 never starts."""
    assert grpc_gevent.make_grpc_cooperative() and grpc_gevent.hub_waits()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.getsockname()[1]}")
    try:
        yield channel
    finally:
        channel.close()
        server.close()


def _method(channel):
    return channel.unary_unary("/locust_milvus.Test/Hang", request_serializer=None, response_deserializer=None)


def _ticks_while(fn) -> tuple[int, float]:
    """Run ``fn`` while a ticker greenlet counts 10 ms ticks: (ticks, seconds)."""
    ticks = 0

    def tick():
        nonlocal ticks
        while True:
            gevent.sleep(0.01)
            ticks += 1

    ticker = gevent.spawn(tick)
    start = time.perf_counter()
    try:
        fn()
    finally:
        ticker.kill()
    return ticks, time.perf_counter() - start


def test_thirty_sync_calls_wait_at_once_on_the_hub_without_a_thread_each(hung_channel):
    method = _method(hung_channel)
    pool = gevent.get_hub().threadpool
    outcomes, peak_threads = [], 0

    def call(i):
        try:
            if i % 2:
                method(b"", timeout=1.0)
            else:
                method.with_call(b"", timeout=1.0)
        except grpc.RpcError as e:
            outcomes.append(e.code())

    def run():
        nonlocal peak_threads
        calls = [gevent.spawn(call, i) for i in range(30)]
        while not all(c.dead for c in calls):
            peak_threads = max(peak_threads, pool.size)
            gevent.sleep(0.05)

    ticks, seconds = _ticks_while(run)
    # All 30 waited at once (about one deadline in all, not 30 or 3 of them), each failed with its deadline...
    assert outcomes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 30
    assert seconds < 5
    # ...the hub ran other greenlets meanwhile...
    assert ticks > 0.5 * seconds / 0.01
    # ...and no call held a thread of gevent's pool (gRPC's channel-spin greenlet uses one for the channel).
    assert peak_threads <= 2


def test_killing_a_greenlet_mid_call_abandons_the_wait_and_the_call_ends_by_its_deadline(hung_channel):
    method = _method(hung_channel)
    caller = gevent.spawn(method, b"", timeout=2.0)
    gevent.sleep(0.3)
    assert not caller.dead and grpc_gevent.abandoned_calls() == 0
    started = time.perf_counter()
    caller.kill(block=True, timeout=1)  # what Locust does to a user mid-call when the test stops
    assert caller.dead and isinstance(caller.value, gevent.GreenletExit)
    assert time.perf_counter() - started < 0.5
    assert grpc_gevent.abandoned_calls() == 1  # the call goes on in gRPC, unobserved
    deadline = time.perf_counter() + 10
    while grpc_gevent.abandoned_calls() and time.perf_counter() < deadline:
        gevent.sleep(0.05)
    assert grpc_gevent.abandoned_calls() == 0  # gRPC ended it at its deadline
    # gRPC's locks are whole: the channel still takes calls, which fail by their own deadline as before.
    with pytest.raises(grpc.RpcError) as raised:
        method(b"", timeout=0.2)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_future_waited_with_a_timeout_raises_gRPCs_timeout_error_and_keeps_the_hub_running(hung_channel):
    future = _method(hung_channel).future(b"", timeout=3.0)

    def wait():
        with pytest.raises(grpc.FutureTimeoutError):
            future.result(timeout=0.3)
        with pytest.raises(grpc.FutureTimeoutError):
            future.exception(timeout=0.1)

    ticks, seconds = _ticks_while(wait)
    assert 0.35 < seconds < 1.5 and ticks > 0.5 * seconds / 0.01
    assert not future.done()
    # Waited without a timeout, the future ends with its deadline, as gRPC's own result() does.
    assert future.exception().code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError):
        future.result()


def test_an_unexpected_grpcio_leaves_grpc_unpatched_says_so_and_sync_calls_stay_cooperative(tmp_path):
    # In a process of its own: the patch is for the life of a process.
    script = tmp_path / "unexpected_grpcio.py"
    script.write_text(textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import logging
        logging.basicConfig(level=logging.WARNING)
        from grpc import _channel
        del _channel._MultiThreadedRendezvous.exception  # a grpcio release that renamed it
        from locust_milvus.runtime import grpc_gevent
        assert grpc_gevent.make_grpc_cooperative()  # init_gevent still makes gRPC cooperative
        assert not grpc_gevent.hub_waits()
        assert _channel._UnaryUnaryMultiCallable.__call__.__module__ == "grpc._channel"  # nothing was patched
        print("unpatched")
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "unpatched" in proc.stdout
    assert "this grpcio's internals are not as expected" in proc.stderr
