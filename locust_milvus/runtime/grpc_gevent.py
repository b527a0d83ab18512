"""Make sync gRPC (pymilvus's ``MilvusClient``) cooperate with gevent, once per process, before any channel.

Locust monkey-patches the standard library with gevent, but gRPC's C core does its own blocking I/O. Without
``grpc.experimental.gevent.init_gevent()`` every sync Milvus call blocks the whole worker process: 20 users then
run one call at a time and Locust reports a 2 ms latency that is false (measured here: 489 req/s
serialised against about 1,080 req/s cooperative). Locust's own contrib/milvus.py does the same at import; we do
it at ``init`` so that nothing gRPC-shaped exists before ``locust --processes`` forks.

**Every sync unary call waits on the hub** (``install_hub_waits``). With ``init_gevent`` alone, gRPC waits for a
blocking unary call (pymilvus's search, query, has_collection...) by running its completion-queue poll in a thread
of gevent's hub pool (``g_gevent_threadpool.apply`` in grpc's ``_cython/_cygrpc/completion_queue.pyx.pxi``): a
native thread per call in flight. With the pool's default 10 threads, calls beyond 10 queue for a thread inside
their measured time, and future-based calls (pymilvus's insert and delete: ``Insert.future(...).result()``)
starve, because gRPC's channel-spin greenlet that completes them needs a pool thread for every event (upstream:
https://github.com/grpc/grpc/issues/27340; with 66 greenlets each of delete, insert and search against Milvus
2.3.5, delete p50 was 5 to 7 s). Growing the pool to a thread per call cost CPU on every call (a sleeping thread
woken, the GIL handed over), and a stop that killed a user inside gRPC's ``Condition.wait`` could leave gRPC's lock
half-restored (``RuntimeError: cannot release un-acquired lock``) and hang the run.

So a sync unary call is started as gRPC's own future (``future()``: the call runs on the channel's shared
completion queue, which gRPC's one channel-spin greenlet polls through a single pool thread), and the calling
greenlet waits for the future's done callback on a gevent ``Waiter``: no thread per call, no queue, and a kill
interrupts a plain gevent wait, never gRPC's locks (the call goes on, unobserved: ``abandoned_calls``). A future's
``result()`` and ``exception()`` wait the same way, so pymilvus's insert and delete do too. These are grpc's
private classes (``grpc._channel``); if they are not as expected, nothing is patched, a warning says so, and sync
calls take the shielded path with a grown pool instead (runtime/shield.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gevent import Timeout
from gevent.hub import Waiter
from gevent.monkey import get_original

logger = logging.getLogger(__name__)

# For the test that proves the concurrency check can fail: with this set, sync gRPC is left blocking.
UNSAFE_DISABLE_ENV = "LOCUST_MILVUS_UNSAFE_BLOCKING_GRPC"

_done_in_pid: int | None = None
# The native thread's id (gevent's patched get_ident names greenlets): the hub's thread is the one that installs.
_thread_id = get_original("threading", "get_ident")
_hub_thread: int | None = None
_hub_waits = False
_abandoned = 0


def make_grpc_cooperative() -> bool:
    """Call ``init_gevent`` once in this process, and make sync unary calls wait on the hub; return whether gRPC
    is now cooperative."""
    global _done_in_pid
    if _done_in_pid == os.getpid():
        return True
    if os.environ.get(UNSAFE_DISABLE_ENV) == "1":
        logger.warning("%s=1: sync gRPC calls block the gevent hub; latencies will be false", UNSAFE_DISABLE_ENV)
        return False
    from grpc.experimental import gevent as grpc_gevent

    grpc_gevent.init_gevent()
    install_hub_waits()
    global _hub_thread
    _hub_thread = _thread_id()  # again in a forked worker (locust --processes): the thread that runs its hub
    _done_in_pid = os.getpid()
    return True


def hub_waits() -> bool:
    """Whether sync unary calls wait on the hub (else each holds a pool thread, and needs runtime/shield.py)."""
    return _hub_waits


def abandoned_calls() -> int:
    """Calls whose waiting greenlet was killed (a stop) and that gRPC has not completed yet."""
    return _abandoned


def _wait(rendezvous, timeout: float | None = None) -> None:
    """Wait on the hub until a gRPC future is done (or ``timeout`` seconds pass); on the hub's thread only."""
    global _abandoned
    if rendezvous._state.code is not None:  # done already: what gRPC's own done() reads, without its lock
        return
    waiter = Waiter()
    loop = waiter.hub.loop

    def done(_future) -> None:
        # Waiter.switch must run in the hub itself, hence a callback of its loop. gRPC runs done callbacks in its
        # channel-spin greenlet, which may belong to another thread's hub (a native thread made the channel's
        # first future call): from there the loop must be woken, which run_callback alone does not do.
        if _thread_id() == _hub_thread:
            loop.run_callback(waiter.switch, None)
        else:
            loop.run_callback_threadsafe(waiter.switch, None)

    rendezvous.add_done_callback(done)  # a waiter nobody waits for any more just keeps the value
    timer = Timeout._start_new_or_dummy(timeout)
    try:
        waiter.get()
    except Timeout as exc:
        if exc is not timer:
            raise
    except BaseException:  # a kill (GreenletExit) at a stop: the call goes on in gRPC, unobserved
        if rendezvous._state.code is None:
            _abandoned += 1
            rendezvous.add_done_callback(_one_less_abandoned)
        raise
    finally:
        timer.close()


def _one_less_abandoned(_done) -> None:
    global _abandoned
    _abandoned -= 1


def install_hub_waits() -> bool:
    """Patch grpc's sync unary calls and futures to wait on the hub (module docstring); once per process."""
    global _hub_waits
    if _hub_waits:
        return True
    try:
        from grpc import _channel

        callable_cls, rendezvous_cls = _channel._UnaryUnaryMultiCallable, _channel._MultiThreadedRendezvous
        # Each class's own methods (vars), not the abstract ones of grpc's interfaces that a rename would leave.
        call, plain_call, plain_with_call = (vars(callable_cls)[name] for name in ("future", "__call__", "with_call"))
        result, exception = (vars(rendezvous_cls)[name] for name in ("result", "exception"))
    except (ImportError, AttributeError, KeyError) as exc:
        logger.warning("locust-milvus: this grpcio's internals are not as expected (%s); sync calls each hold a "
                       "thread of gevent's pool instead, which costs more CPU per call", exc)
        return False

    # Only the hub's thread waits on the hub. Other threads (the asyncio loop's executor, where LangChain runs the
    # sync method behind an async one it does not implement) keep gRPC's own waits, as before.
    def blocking_call(self, request: Any, timeout=None, metadata=None, credentials=None, wait_for_ready=None,
                      compression=None) -> Any:
        if _thread_id() != _hub_thread:
            return plain_call(self, request, timeout, metadata, credentials, wait_for_ready, compression)
        future = call(self, request, timeout, metadata, credentials, wait_for_ready, compression)
        _wait(future)
        return result(future)  # done: returns the response, or raises the call's RpcError

    def with_call(self, request: Any, timeout=None, metadata=None, credentials=None, wait_for_ready=None,
                  compression=None) -> tuple[Any, Any]:
        if _thread_id() != _hub_thread:
            return plain_with_call(self, request, timeout, metadata, credentials, wait_for_ready, compression)
        future = call(self, request, timeout, metadata, credentials, wait_for_ready, compression)
        _wait(future)
        return result(future), future

    def hub_result(self, timeout: float | None = None) -> Any:
        if _thread_id() != _hub_thread:
            return result(self, timeout)
        _wait(self, timeout)
        # Done, or our wait timed out: then 0 makes gRPC raise FutureTimeoutError at once, without waiting again.
        return result(self, None if self._state.code is not None or timeout is None else 0)

    def hub_exception(self, timeout: float | None = None):
        if _thread_id() != _hub_thread:
            return exception(self, timeout)
        _wait(self, timeout)
        return exception(self, None if self._state.code is not None or timeout is None else 0)

    global _hub_thread
    _hub_thread = _thread_id()
    callable_cls.__call__ = blocking_call
    callable_cls.with_call = with_call
    rendezvous_cls.result = hub_result
    rendezvous_cls.exception = hub_exception
    _hub_waits = True
    return True
