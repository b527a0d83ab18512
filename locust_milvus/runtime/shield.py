"""Sync work that a stop cannot corrupt, and enough native threads for every gRPC call in it.

Used for your own ``LangChainUser`` tasks (which may wait anywhere), for clean-up that must run at a stop, and
for every sync call when gRPC's waits could not be moved to the hub (runtime/grpc_gevent.py, which makes the
built-in sync calls safe without a greenlet each). What follows is why it exists.

**A stop never reaches into gRPC.** Locust stops a user by killing its greenlet: ``GreenletExit`` is thrown
wherever the greenlet waits. A sync pymilvus call waits inside gRPC's Python code (``grpc/_channel.py``,
``grpc/_common.py``), on a ``threading.Condition`` that gevent's patching turned into gevent locks, while gRPC's
channel-spin greenlet notifies it. A kill thrown there can leave gRPC's lock half-restored: it surfaced as
``RuntimeError: cannot release un-acquired lock``, which pymilvus wraps as ``MilvusException(code=1, Unexpected
error)`` and LangChain's ``delete`` logs and swallows. The user then *survives* its kill, and Locust's stop, which
waits for every killed user greenlet to end (``Group.killone(block=True)``), waits for ever: the run never ends.

So every sync call runs in a greenlet of its own, which nothing kills, and the user's greenlet only waits for it
(``Greenlet.get``: a plain gevent wait, which a kill interrupts cleanly). A stopped user abandons the *wait*, not
the call; the call ends by itself within its deadline, unobserved, and its outcome is counted as unknown.

**A native thread per call in flight.** With ``grpc.experimental.gevent.init_gevent()``, gRPC waits on its
completion queues through the gevent hub's thread pool (``g_gevent_threadpool.apply`` in grpc's
``_cython/_cygrpc/completion_queue.pyx.pxi``): a blocking unary call (insert, search) holds one pool thread for
its whole duration, and a future-based call (pymilvus's ``delete``: ``Delete.future(...).result()``) needs the
channel-spin greenlet to win a pool thread for every event. The pool's default size is 10. With more than 10 sync
calls in flight, calls queued for a thread, inside their measured time, and deletes starved: against Milvus 2.3.5
with 66 greenlets each of delete, insert and search, delete p50 was 5,186 ms (130 deletes in 10 s) with the
default pool and 97 ms (6,248 deletes) with a pool of 250, close to native threads without gevent (82 ms). The
pool grows here so that every call in flight, and the spin greenlet, has a thread.
Upstream: https://github.com/grpc/grpc/issues/27340 (gevent client stuck under load),
https://github.com/grpc/grpc/pull/28276 (the thread-pool design of gRPC's gevent support).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import gevent
from gevent import spawn_raw
from gevent.hub import Waiter

T = TypeVar("T")

# Threads beyond the calls in flight: gRPC's channel-spin greenlet (future-based calls), gevent's resolver.
SPARE_THREADS = 4
_in_flight = 0


def _reserve() -> None:
    global _in_flight
    _in_flight += 1
    pool = gevent.get_hub().threadpool
    if pool.maxsize < _in_flight + SPARE_THREADS:
        # Grow in steps (a thread each time would resize the pool on every new peak).
        pool.maxsize = max(2 * pool.maxsize, _in_flight + SPARE_THREADS)


def _release() -> None:
    global _in_flight
    _in_flight -= 1


def _shielded(waiter: Waiter, fn: Callable[..., T], args: tuple, kwargs: dict) -> None:
    # A raw greenlet, not a gevent.Greenlet: no links, no spawn tree, no traceback printed when it dies raising,
    # and the outcome handed to the waiter in one hub callback (gevent.spawn(...).get() cost about 15 us a call).
    # Whatever it raises, even a BaseException, goes back to the waiter: a lost outcome would be a user that
    # waits for ever.
    try:
        outcome = (True, fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - re-raised in the waiting greenlet
        outcome = (False, exc)
    finally:
        _release()
    waiter.hub.loop.run_callback(waiter.switch, outcome)  # Waiter.switch runs in the hub, as gevent requires


def call_shielded(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` (a sync gRPC call, or a function around one) in a greenlet that nothing kills,
    and wait for it.

    Returns what ``fn`` returned, raises what it raised. If the calling greenlet is killed while it waits, the kill
    is raised here and ``fn`` goes on to its end in its own greenlet, its result discarded (a waiter whose
    greenlet is gone just keeps the value).
    """
    _reserve()
    waiter = Waiter()
    spawn_raw(_shielded, waiter, fn, args, kwargs)
    ok, value = waiter.get()
    if ok:
        return value  # type: ignore[return-value]
    raise value  # type: ignore[misc]


def calls_in_flight() -> int:
    """Shielded calls still running in this process, abandoned ones included."""
    return _in_flight
