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

import gevent

from locust_milvus.runtime.bridge import BridgeClosed, get_bridge
from locust_milvus.runtime.monitor import monitor
from locust_milvus.runtime.shield import call_shielded
from locust_milvus.workload.base import AsyncLangChainUser, LangChainUser, RunUser
from locust_milvus.workload.embeddings import embedding_calls
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

    def on_start(self) -> None:
        super().on_start()
        self.pacer = _pacer(self.state)

    @task
    def operate(self) -> None:
        _operate(self)

    # SyncMilvusUser shields each call itself, so that a call cut off by a stop is accounted for (its ids marked
    # unknown in the ledger at once); LangChainUser leaves a task marked so as it is.
    operate.shielded = True

    def execute(self, op: Operation, planned: float | None = None) -> None:
        raise NotImplementedError


class SyncMilvusUser(_OperationMix, LangChainUser):
    """Calls LangChain's sync methods; gRPC is made gevent-cooperative (grpc_gevent.py), so N users have N calls
    in flight. Each call runs in a greenlet of its own (shield.py): stopping the user abandons the wait, never
    the call, so a stop cannot corrupt gRPC's locks."""

    def execute(self, op: Operation, planned: float | None = None) -> None:
        state = self.state
        call = op.prepare(state)
        if call is None:
            gevent.sleep(SKIP_PAUSE_S)
            return
        call.mode = 1  # the sync store's client (recall.py: Session consistency is per client)
        try:
            result, start, elapsed, exc, embeds = call_shielded(_timed_sync, state, op, call)
        except BaseException:  # GreenletExit: the user was stopped mid-call; the call goes on, its outcome unknown
            _cancelled(state, op, [call], SYNC)
            raise
        length, exc = op.complete(state, call, result, exc)
        fire_operation(self.environment, SYNC, op.name, elapsed, length, exc, embeds,
                       _context(call, planned, start + elapsed), deadline_s=state.settings.timeout)


def _timed_sync(state: RunState, op: Operation, call: Call):
    """One sync call, timed around the call alone; runs in its own greenlet (shield.py), so that the embedding
    calls collected here are this call's only."""
    method = getattr(state.target(op, sync=True), op.method)
    monitor.enter(SYNC, op.name)
    with embedding_calls() as embeds:
        start = time.perf_counter()
        try:
            result = method(**op.call_kwargs(state, call))
            return result, start, time.perf_counter() - start, None, embeds
        except Exception as e:  # noqa: BLE001 - handed back to the user's greenlet, fired as a failure
            return None, start, time.perf_counter() - start, e, embeds
        finally:
            monitor.leave(SYNC)


def _context(call: Call, planned: float | None, ended: float) -> dict | None:
    """What the report records of a request besides its time: its latency from the planned start under
    --target-rps (float ms), and its recall@k when --recall sampled it (not a request of its own)."""
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


async def _timed(state: RunState, op: Operation, call: Call):
    """One async call, timed inside the coroutine so the bridge's wake-up is not in the figure."""
    method = getattr(state.target(op, sync=False), op.async_method)
    monitor.enter(ASYNC)
    # gather runs this coroutine in its own task, so the embedding calls collected here are this call's only.
    with embedding_calls() as embeds:
        start = time.perf_counter()
        try:
            result = await method(**op.call_kwargs(state, call))
            return result, start, time.perf_counter() - start, None, embeds
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed back to the greenlet, fired as a failure
            return None, start, time.perf_counter() - start, e, embeds
        finally:
            monitor.leave(ASYNC)


async def _gather(state: RunState, op: Operation, batch: list[Call]):
    return await asyncio.gather(*(_timed(state, op, call) for call in batch))


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
        try:
            outcomes = get_bridge().run(_gather(state, op, batch))
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
