"""The bases for your own tasks: ``LangChainUser`` (sync) and ``AsyncLangChainUser`` (async); no tasks of their own.

    from locust import task
    from locust_milvus import LangChainUser

    class RetrieverUser(LangChainUser):
        @task
        def retrieve(self):
            retriever = self.store.as_retriever(search_kwargs={"k": 3})
            with self.measure("retrieve"):
                docs = retriever.invoke(self.query_text())

A locustfile that imports them runs only the users it defines. The run's set-up is the built-in users' (the
collection, pre-population, embeddings, once on the master): ``self.store`` / ``self.astore`` are the run's LangChain
stores. ``measure`` and ``measure_async`` time a block with ``time.perf_counter()`` and fire exactly one request
event (request type ``langchain-sync`` / ``langchain-async``, the name you give); an exception in the block is a
failure and is not re-raised, as in Locust's own ``request.measure``. Embedding calls inside the block are fired
apart and their time taken out, as for the built-in operations (embeddings.py). docs/extending.md has the whole API.

Stops: every task of a ``LangChainUser`` runs in a greenlet of its own that nothing kills (runtime/shield.py): a
stop abandons the wait, never a gRPC call halfway (a kill thrown into gRPC's wait corrupted its locks and hung the
run). A block still running when its user was stopped fires nothing; it is counted as an unknown outcome. An
``AsyncLangChainUser``'s coroutines run on the process's asyncio loop (runtime/bridge.py), cancelled at a stop.
"""

from __future__ import annotations

from locust import User
from locust.exception import StopUser

import contextlib
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from langchain_core.documents import Document

from locust_milvus import lifecycle
from locust_milvus.runtime.bridge import get_bridge
from locust_milvus.runtime.monitor import monitor
from locust_milvus.runtime.shield import call_shielded
from locust_milvus.workload.embeddings import embedding_calls
from locust_milvus.workload.operations import RunState
from locust_milvus.workload.request_events import ASYNC, SYNC, fire_operation

T = TypeVar("T")


class RunUser(User):
    """What every locust-milvus user has: the process's run state (set up once, lifecycle.py) and its data."""

    abstract = True
    # Request names this class fires besides its tasks' own names (gates and rates on other names are refused).
    request_names: tuple[str, ...] = ()
    mode = SYNC  # the request type of its events
    uses_async_bridge = False  # lifecycle builds the process's async store on the bridge for users that say so
    state: RunState | None = None
    stopped = False  # set when a stop cut the user off mid-task (its block then fires nothing)
    # Your own ``langchain_milvus.Milvus(...)`` keyword arguments (an index, search params, a partition key,
    # metadata_schema, ...), laid over the run's for every store the run makes: the collection set-up (once, on
    # the master) and each process's stores. All user classes of a run must agree (one collection, one schema).
    milvus_kwargs: dict = {}

    def on_start(self) -> None:
        self.state = lifecycle.current_state()  # None when set-up failed or never ran; the user then stops

    def _ready(self) -> RunState:
        if self.state is None:
            lifecycle.say_why_users_stop()  # once per process, at error level: a user never stops silently
            raise StopUser()
        return self.state

    def query_text(self) -> str:
        """A query from the run's query pool (the tutorial's, or --dataset's texts)."""
        return self._ready().query_text()

    def query_vector(self) -> list[float]:
        """A pre-embedded query vector from the pool (--query-pool), for ``*_by_vector`` calls."""
        return self._ready().query_vector()

    def documents(self, n: int) -> tuple[list[str], list[Document]]:
        """``n`` new documents (tutorial-shaped, or --dataset's) with ids unique to this process: ``(ids, docs)``.
        Adding them does not make them this process's to delete (the built-in delete takes only acknowledged ids)."""
        state = self._ready()
        return state.ledger.new_batch(n, state.rng, state.source)


def _shielded_task(fn: Callable) -> Callable:
    """A task that runs in a greenlet of its own (runtime/shield.py); a stop marks its user ``stopped``."""
    if isinstance(fn, type) or getattr(fn, "shielded", False):  # a TaskSet, or shielded already (or by itself)
        return fn

    @functools.wraps(fn)
    def shielded(user):
        user._ready()
        try:
            call_shielded(fn, user)
        except BaseException:  # GreenletExit: the user was stopped while its task ran on
            user.stopped = True
            raise

    shielded.shielded = True
    return shielded


class LangChainUser(RunUser):
    """A sync user for your own tasks: ``self.store`` and ``with self.measure(name):``. No tasks of its own."""

    abstract = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # Locust's metaclass has collected the class's tasks (its own and its bases') by now.
        cls.tasks = [_shielded_task(t) for t in cls.tasks]

    @property
    def store(self):
        """The run's LangChain ``Milvus`` store (sync calls)."""
        return self._ready().store

    @contextlib.contextmanager
    def measure(self, name: str, length: int = 0) -> Iterator[None]:
        """Time the block as one request named ``name``; an exception in it is a failure (not re-raised)."""
        monitor.enter(SYNC, name)
        exc = None
        with embedding_calls() as embeds:
            start = time.perf_counter()
            try:
                yield
            except Exception as e:  # noqa: BLE001 - a failure event, as Locust's request.measure does
                exc = e
            finally:
                elapsed = time.perf_counter() - start
                monitor.leave(SYNC)
        if self.stopped:  # its user was stopped meanwhile: no request, an unknown outcome
            monitor.cancelled(SYNC, name)
            return
        fire_operation(self.environment, self.mode, name, elapsed, length, exc, embeds)


# The measurements made inside one ``AsyncLangChainUser.run`` call, handed back to the user's greenlet to fire
# (Locust's events are fired from the hub's thread only, never from the loop's).
_measured: contextvars.ContextVar[list | None] = contextvars.ContextVar("locust_milvus_measured", default=None)


async def _collecting(coro: Awaitable[T]) -> tuple[T, list]:
    measured: list = []
    _measured.set(measured)  # this task's context: the coroutine's measure_async blocks see it
    return await coro, measured


class AsyncLangChainUser(RunUser):
    """An async user for your own tasks: ``self.astore``, ``self.run(coro)`` and ``async with
    self.measure_async(name):`` inside the coroutine. No tasks of its own."""

    abstract = True
    mode = ASYNC
    uses_async_bridge = True

    @property
    def astore(self):
        """The run's LangChain ``Milvus`` store for async calls, built on this process's event loop."""
        return self._ready().astore

    def run(self, coro: Awaitable[T]) -> T:  # noqa: D102 - Locust's User.run takes no argument; see below
        raise NotImplementedError  # replaced below: Locust calls User.run() to start the user

    @contextlib.asynccontextmanager
    async def measure_async(self, name: str, length: int = 0):
        """In a coroutine given to ``self.run``: time the block as one request named ``name``; an exception in it
        is a failure (not re-raised). Fired when ``self.run`` returns, in the user's greenlet."""
        measured = _measured.get()
        if measured is None:
            raise RuntimeError(f"measure_async({name!r}) is for a coroutine run with self.run(...) of an "
                               "AsyncLangChainUser, on the process's event loop")
        monitor.enter(ASYNC)
        exc = None
        with embedding_calls() as embeds:
            start = time.perf_counter()
            try:
                yield
            except Exception as e:  # noqa: BLE001 - a failure event
                exc = e
            finally:
                elapsed = time.perf_counter() - start
                monitor.leave(ASYNC)
        measured.append((name, start, elapsed, exc, embeds, length))


def _run_on_loop(self: AsyncLangChainUser, coro: Awaitable[T] | None = None) -> Any:
    """``self.run(coro)``: run a coroutine on this process's event loop while the greenlet waits, then fire the
    requests its ``measure_async`` blocks measured. A stop cancels the coroutine (its blocks: unknown outcomes).
    Called without a coroutine it is Locust's own ``User.run`` (what starts the user)."""
    if coro is None:
        return User.run(self)
    try:
        result, measured = get_bridge().run(_collecting(coro))
    except BaseException:
        self.stopped = True
        raise
    for name, _start, elapsed, exc, embeds, length in measured:
        fire_operation(self.environment, self.mode, name, elapsed, length, exc, embeds)
    return result


# Locust starts a user with ``user.run()``; your tasks call ``self.run(coro)``: one method serves both.
AsyncLangChainUser.run = _run_on_loop  # type: ignore[method-assign]


def request_names(user_classes) -> set[str]:
    """The request names the run's user classes may fire: each class's ``request_names`` and its tasks' names (what
    ``--check-*`` may name)."""
    names: set[str] = set()
    for cls in user_classes:
        names.update(getattr(cls, "request_names", ()))
        for t in getattr(cls, "tasks", ()):
            fn = getattr(t, "__wrapped__", t)
            if not isinstance(fn, type):
                names.add(fn.__name__)
    return names


def own_user_classes(user_classes) -> list[type]:
    """The run's user classes that are not the built-in ones (your own LangChainUser / AsyncLangChainUser)."""
    return [cls for cls in user_classes if not getattr(cls, "builtin", False)]
