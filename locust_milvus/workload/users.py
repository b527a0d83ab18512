"""The built-in users: SyncMilvusUser (sync LangChain calls) and AsyncMilvusUser (async calls on the bridge), the
bases of base.py plus the operation mix.

Each task iteration picks an operation from the table (operations.py) by its weight, times the LangChain
call alone with ``time.perf_counter()`` and fires one request event per operation (events.py). With a remote
embedding provider, the embedding calls made inside the operation are fired as requests of their own and their
time is taken out of the operation's (embeddings.py), so the operation's figure is the Milvus side.
"""

from __future__ import annotations

from locust import task
from locust.exception import StopUser

import asyncio
import concurrent.futures
import time
from time import perf_counter

import gevent

from locust_milvus.runtime.bridge import BridgeClosed, get_bridge
from locust_milvus.runtime.grpc_gevent import hub_waits
from locust_milvus.runtime.monitor import monitor
from locust_milvus.runtime.shield import call_shielded
from locust_milvus.workload.base import AsyncLangChainUser, LangChainUser, RunUser
from locust_milvus.workload.embeddings import collect_embedding_calls, stop_collecting
from locust_milvus.workload.operations import TABLE, Call, Operation, RunState
from locust_milvus.workload.pacing import Pacer
from locust_milvus.workload.request_events import ASYNC, SYNC, fire_operation

# A skipped task (a delete with nothing owned to delete) yields this long, so that a delete-heavy mix does not
# spin the CPU while adds catch up. It is not a request and is not timed.
SKIP_PAUSE_S = 0.005


def _pacer(state: RunState | None) -> Pacer | None:
    """--target-rps: this user's schedule of planned starts (pacing.py), or None (closed loop)."""
    if state is not None and state.settings.target_rps:
        return Pacer(state.settings.target_rps, state.total_users, state.rng)
    return None


def _operate(user) -> None:
    """The built-in users' one task: an operation from the table, picked by its weight or by the pacer."""
    if user.state is None:  # set-up failed (logged at test start) or never ran: say so once, then stop
        user._ready()
    if user.pacer is None:
        user.execute(user.state.pick())
        return
    name, planned = user.pacer.wait()
    try:
        user.execute(TABLE[name], planned)
    finally:
        user.pacer.done(time.perf_counter())


class _OperationMix(RunUser):
    """The built-in users' part: one task, an operation of the table picked by weight (or by --target-rps's pacer),
    executed by the mode's ``execute``."""

    abstract = True
    builtin = True
    request_names = tuple(TABLE)
    pacer: Pacer | None = None
    bound: tuple | None = None  # (the run's state, {(operation, sync): (method, extra keywords)}): see _bound

    def on_start(self) -> None:
        super().on_start()
        self.pacer = _pacer(self.state)

    @task
    def operate(self) -> None:
        _operate(self)

    # SyncMilvusUser makes each call stop-safe itself (gRPC's waits on the hub, or a greenlet of its own), so that a
    # call cut off by a stop is accounted for (its ids marked unknown in the ledger at once); LangChainUser leaves
    # a task marked so as it is.
    operate.shielded = True

    def execute(self, op: Operation, planned: float | None = None) -> None:
        raise NotImplementedError


class SyncMilvusUser(_OperationMix, LangChainUser):
    """Calls LangChain's sync methods; gRPC is made gevent-cooperative and waits on the hub (grpc_gevent.py), so N
    users have N calls in flight. Stopping the user abandons the wait, never the call, so a stop cannot corrupt
    gRPC's locks."""

    def execute(self, op: Operation, planned: float | None = None) -> None:
        state = self.state
        call = op.prepare(state)
        if call is None:
            gevent.sleep(SKIP_PAUSE_S)
            return
        call.mode = 1  # the sync store's client (recall.py: whose writes a search is judged on)
        method, extra = _bound(self, op, True)
        try:
            # gRPC's waits are on the hub (grpc_gevent.py): a stop's kill interrupts a plain gevent wait and the
            # call goes on in gRPC, so the call needs no greenlet of its own; without them it does (shield.py).
            if hub_waits():
                result, start, elapsed, exc, embeds = _timed_sync(method, call.kwargs, extra, op.name)
            else:
                result, start, elapsed, exc, embeds = call_shielded(_timed_sync, method, call.kwargs, extra, op.name)
        except BaseException:  # GreenletExit: the user was stopped mid-call; the call goes on, its outcome unknown
            _cancelled(state, op, [call], SYNC)
            raise
        length, exc = op.complete(state, call, result, exc)
        fire_operation(self.environment, SYNC, op.name, elapsed, length, exc, embeds,
                       _context(call, planned, start + elapsed), deadline_s=state.settings.timeout)


def _bound(user, op: Operation, sync: bool) -> tuple:
    """``op``'s LangChain method on the run's store (or retriever) and the keywords every call of it adds (the
    deadline, the retry policy): the same for every request of a test, so looked up once per user and test, not
    per request (the run's state is new at each test start)."""
    cache = user.bound
    if cache is None or cache[0] is not user.state:
        cache = user.bound = (user.state, {})
    found = cache[1].get((op.name, sync))
    if found is None:
        state = user.state
        method = getattr(state.target(op, sync=sync), op.method if sync else op.async_method)
        found = cache[1][(op.name, sync)] = (method, state.settings.call_kwargs if op.takes_call_kwargs else {})
    return found


def _timed_sync(method, kwargs: dict, extra: dict, name: str):
    """One sync call, timed around the call alone, in the user's greenlet (or one of its own, shield.py): the
    embedding calls collected here are this call's only."""
    monitor.enter(SYNC, name)
    embeds, token = collect_embedding_calls()
    start = perf_counter()
    try:
        result = method(**kwargs, **extra)
        return result, start, perf_counter() - start, None, embeds
    except Exception as e:  # noqa: BLE001 - handed back to the user's greenlet, fired as a failure
        return None, start, perf_counter() - start, e, embeds
    finally:
        stop_collecting(token)
        monitor.leave(SYNC)


def _context(call: Call, planned: float | None, ended: float) -> dict | None:
    """What the report records of a request besides its time: its latency from the planned start under
    --target-rps (float ms), and its recall@k when --recall sampled it (not a request of its own)."""
    if planned is None and call.recall is None:  # most requests: no dict made for nothing
        return None
    context = {}
    if planned is not None:
        context["corrected_ms"] = (ended - planned) * 1000.0
    if call.recall is not None:
        context["recall"] = call.recall
    return context or None


def _cancelled(state: RunState, op: Operation, calls: list[Call], mode: str) -> None:
    """Calls cut off by a stop: not requests (they have no result), counted as unknown outcomes, and their
    writes marked unknown in the ledger (never as successes)."""
    for call in calls:
        op.abandon(state, call)
    monitor.cancelled(mode, op.name, len(calls))


async def _timed(method, kwargs: dict, extra: dict):
    """One async call, timed inside the coroutine so the bridge's wake-up is not in the figure."""
    monitor.enter(ASYNC)
    # The bridge runs this coroutine in a task of its own (gather, one each), so the embedding calls collected
    # here are this call's only.
    embeds, token = collect_embedding_calls()
    start = perf_counter()
    try:
        result = await method(**kwargs, **extra)
        return result, start, perf_counter() - start, None, embeds
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - handed back to the greenlet, fired as a failure
        return None, start, perf_counter() - start, e, embeds
    finally:
        stop_collecting(token)
        monitor.leave(ASYNC)


async def _gather(method, extra: dict, batch: list[Call]):
    return await asyncio.gather(*(_timed(method, call.kwargs, extra) for call in batch))


async def _one(method, extra: dict, call: Call):
    # One call (--async-concurrency 1, or paced): awaited in the bridge's own task, without gather's second task.
    return [await _timed(method, call.kwargs, extra)]


class AsyncMilvusUser(_OperationMix, AsyncLangChainUser):
    """Calls LangChain's async methods on this process's asyncio loop (bridge.py); each task iteration keeps
    --async-concurrency operations in flight with ``asyncio.gather``, one request event each."""

    def execute(self, op: Operation, planned: float | None = None) -> None:
        state = self.state
        # Paced, each planned start is one operation; unpaced, --async-concurrency of them at once.
        calls = (op.prepare(state) for _ in range(1 if planned is not None else state.settings.async_concurrency))
        batch = [call for call in calls if call is not None]
        if not batch:
            gevent.sleep(SKIP_PAUSE_S)
            return
        for call in batch:
            call.mode = 2  # the async store's client
        method, extra = _bound(self, op, False)
        try:
            outcomes = get_bridge().run(_one(method, extra, batch[0]) if len(batch) == 1
                                        else _gather(method, extra, batch))
        except (concurrent.futures.CancelledError, BridgeClosed):
            # The process is quitting (SIGTERM mid-run): the bridge cancelled these calls, or takes no more.
            # Unknown outcomes, not failures; and the user stops here instead of logging a traceback per task.
            _cancelled(state, op, batch, ASYNC)
            raise StopUser() from None
        except BaseException:  # GreenletExit at stop: the bridge cancelled the calls, mid-flight
            _cancelled(state, op, batch, ASYNC)
            raise
        for call, (result, start, elapsed, exc, embeds) in zip(batch, outcomes, strict=True):
            length, exc = op.complete(state, call, result, exc)
            fire_operation(self.environment, ASYNC, op.name, elapsed, length, exc, embeds,
                           _context(call, planned, start + elapsed), deadline_s=state.settings.timeout)
