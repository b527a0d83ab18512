"""The async bridge: one asyncio event loop per Locust process, in a native thread beside the gevent hub.

A greenlet submits a coroutine with :meth:`AsyncBridge.run` and waits; the loop thread signals the bridge's one
gevent ``async_`` watcher when the coroutine is done: the hub keeps running other users meanwhile, and nothing
polls. Both directions are batched: coroutines submitted together cost the loop one wake-up, and coroutines that
finish together cost the hub one. A job is handed back from inside its task as its coroutine ends, not by a done
callback a turn of the loop later. If the waiting greenlet is killed (the user stops), the coroutine is cancelled
on the loop.

The traps this module handles (each one met and measured on this project's 2-core machines):

1. grpc.aio's completion-queue poller is started with the ``threading`` module (and its wake-up pipe with the
   ``socket`` module) that ``grpc._cython.cygrpc`` imported. Under monkey-patching that "thread" is a greenlet
   blocking forever in C and the first async call hangs. We initialise grpc.aio once, on the loop thread, with
   native replacements swapped into ``cygrpc`` for the duration of that call only (swapping
   ``threading._start_new_thread`` globally crashes the interpreter).
2. ``loop.run_in_executor`` (LangChain's default ``aembed_*``, asyncio's ``getaddrinfo``) uses the default
   executor, whose "threads" are greenlets of a hub that never runs in the loop thread: deadlock (see also
   gevent issue #2213). The loop gets an executor of native threads.
3. pymilvus binds an ``AsyncMilvusClient`` connection to the first loop that uses it; every async call goes
   through this one loop, so it is that loop.
4. Initialising grpc.aio and then forking (``locust --processes``) aborts the child in gRPC's fork handlers.
   Nothing here runs at import; the bridge starts lazily in the process that uses it, after the fork.
5. asyncio makes its sockets with the ``socket`` module, which monkey-patching made gevent's: the loop's are the
   standard library's own (``_NativeResolvingLoop``).
6. grpc.aio is reference-counted: ``init_grpc_aio`` and every channel take a reference, ``shutdown_grpc_aio``
   and every channel's deallocation give one back, and whichever gives back the last one shuts the completion
   queue down on its own thread: it removes the poller's reader from our loop and closes the poller's sockets.
   A channel a user held and freed on the hub's thread while the loop still ran did exactly that, across
   threads: the loop thread, woken by the poller, read a socket closed under it and logged
   ``OSError: [Errno 9] Bad file descriptor`` from ``PollerCompletionQueue._handle_events`` at the end of a
   run (seen once in a full run of the test suite, in CI). The bridge keeps its own reference until its loop
   thread has ended, so the last reference is given back with the loop closed, where removing a reader does
   nothing.
"""

from __future__ import annotations

import _queue  # the C SimpleQueue: real locks, untouched by gevent's patching
import _socket  # the C socket type: gevent patches the 'socket' module, not this one
import asyncio
import collections
import concurrent.futures
import inspect
import logging
import os
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import gevent
import gevent.hub
from gevent.monkey import get_original

T = TypeVar("T")
logger = logging.getLogger(__name__)

_start_native_thread = get_original("_thread", "start_new_thread")
_native_getaddrinfo = get_original("socket", "getaddrinfo")
_native_getnameinfo = get_original("socket", "getnameinfo")
_NativeSelector = get_original("selectors", "DefaultSelector")
_NativeSocket = get_original("socket", "socket")


def _native_socketpair():
    # socket.socketpair builds its pair with the module's (patched) socket class: wrap the C pair ourselves.
    a, b = _socket.socketpair()
    return (_NativeSocket(a.family, a.type, a.proto, fileno=a.detach()),
            _NativeSocket(b.family, b.type, b.proto, fileno=b.detach()))
_get_native_ident = get_original("_thread", "get_ident")
_allocate_native_lock = get_original("_thread", "allocate_lock")


class _NativeThread:
    """The part of ``threading.Thread`` that grpc.aio's poller uses (start, and join when grpc.aio shuts down),
    backed by a real OS thread."""

    def __init__(self, target: Callable[[], Any], daemon: bool = True, **_: Any) -> None:
        self._target = target
        self._running = _allocate_native_lock()  # held while the thread runs

    def start(self) -> None:
        self._running.acquire()
        _start_native_thread(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._running.release()

    def join(self, timeout: float | None = None) -> None:
        if self._running.acquire(True, -1 if timeout is None else timeout):
            self._running.release()


class NativeThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor whose workers are OS threads (trap 2).

    Subclassing ThreadPoolExecutor only because ``loop.set_default_executor`` insists on one; its own thread
    management is bypassed because ``threading.Thread`` is a greenlet under monkey-patching.
    """

    def __init__(self, workers: int = 4) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="locust-milvus-executor")
        self._jobs = _queue.SimpleQueue()
        self._workers = workers
        for _ in range(workers):
            _start_native_thread(self._work, ())

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                future.set_exception(exc)

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in range(self._workers):
            self._jobs.put(None)


class _NativeResolvingLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, resolving names with the operating system's resolver.

    asyncio's getaddrinfo runs ``socket.getaddrinfo`` in the executor; under monkey-patching that is gevent's
    resolver, which starts a hub and a resolver thread pool inside each native executor thread. The async HTTP
    clients of embedding providers (httpx through anyio) resolve through here; keep gevent out of this thread.
    """

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):  # noqa: A002 - asyncio's API
        return await self.run_in_executor(None, _native_getaddrinfo, host, port, family, type, proto, flags)

    # Trap 5: asyncio creates its sockets with ``socket.socket`` / ``socket.socketpair``, which monkey-patching
    # made gevent's: cooperative sockets bound to a gevent hub (the self-pipe to the main thread's, since the loop
    # is built there; a connection's to a hub started in this thread). Closing them here, or collecting them on
    # the hub thread, touched one thread's libev loop from another: the process crashed with SIGSEGV at exit
    # (seen 3 times in about 50 runs of AsyncMilvusUser with the OpenAI embedding, whose httpx client connects
    # through this loop). The self-pipe and the connections here are the standard library's own sockets.
    def _make_self_pipe(self) -> None:
        self._ssock, self._csock = _native_socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1
        self._add_reader(self._ssock.fileno(), self._read_from_self)

    async def create_connection(self, protocol_factory, host=None, port=None, *, sock=None, family=0, proto=0,
                                flags=0, local_addr=None, **kwargs):
        if sock is None and host is not None:
            if kwargs.get("ssl") and kwargs.get("server_hostname") is None:
                kwargs["server_hostname"] = host
            sock = await self._native_connect(host, port, family, proto, flags, local_addr)
            host = port = None
            for key in ("happy_eyeballs_delay", "interleave", "all_errors"):  # only for asyncio's own resolving
                kwargs.pop(key, None)
        return await super().create_connection(protocol_factory, host, port, sock=sock, **kwargs)

    async def _native_connect(self, host, port, family, proto, flags, local_addr):
        infos = await self.getaddrinfo(host, port, family=family, type=_socket.SOCK_STREAM, proto=proto, flags=flags)
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned an empty list")
        errors: list[OSError] = []
        for fam, kind, pro, _name, address in infos:
            sock = _NativeSocket(fam, kind, pro)
            try:
                sock.setblocking(False)
                if local_addr is not None:
                    sock.bind(local_addr)
                await self.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                errors.append(exc)
            except BaseException:
                sock.close()
                raise
        raise errors[0] if len(errors) == 1 else OSError(f"could not connect to {host}:{port}: {errors}")

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(None, _native_getnameinfo, sockaddr, flags)


async def _close_pymilvus_connections() -> None:
    """Close the connections pymilvus keeps for this loop after its clients have closed.

    pymilvus (3.x) shares one gRPC channel per address among the AsyncMilvusClients of a loop, in a per-loop
    ``AsyncConnectionManager``; ``AsyncMilvusClient.close()`` only detaches the client, and the channel stays in
    the manager's registry. Each grpc.aio channel object holds a reference to grpc.aio until it is freed, so its
    poller (a native thread, trap 1) outlived the bridge and still ran in the interpreter's finalisation, which
    printed an empty "Error in sys.excepthook" at the exit of the test session. Emptying the registry frees the
    channels; the poller then ends with our own reference, given back once the loop has ended (trap 6).
    """
    try:
        from pymilvus.client.connection_manager import AsyncConnectionManager
    except ImportError:  # a pymilvus without the manager closes its channel with the client
        return
    await AsyncConnectionManager.get_instance().close_all()


class _Job:
    """One coroutine handed to the loop, its outcome, and the greenlet's way back."""

    __slots__ = ("coro", "waiter", "task", "abandoned", "value", "error", "cancelled")

    def __init__(self, coro, waiter) -> None:
        self.coro = coro
        self.waiter = waiter
        self.task: asyncio.Task | None = None  # set on the loop thread
        self.abandoned = False  # set by the greenlet when it was killed while waiting
        self.value: Any = None
        self.error: BaseException | None = None  # what the coroutine raised, or what kept it from starting
        self.cancelled = False


class AsyncBridge:
    """An asyncio loop in a native thread, and a cooperative way for greenlets to run coroutines on it."""

    def __init__(self, executor_workers: int = 4) -> None:
        self.pid = os.getpid()
        self.loop = _NativeResolvingLoop(_NativeSelector())
        self.loop.set_default_executor(NativeThreadExecutor(executor_workers))
        self._thread_ident: int | None = None
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self._stopped = False
        self.closing = False  # close() has begun: no new work (the clients are being closed under it)
        # The two hand-over queues (deque's append and popleft are atomic: one thread appends, the other takes),
        # and whether a wake-up of the other side is already on its way.
        self._submitted: collections.deque[_Job] = collections.deque()
        self._done: collections.deque[_Job] = collections.deque()
        self._submit_pending = False
        self._wake_pending = False
        self._hub = None
        self._watcher = None
        self._waiting = 0  # greenlets waiting in run(): the watcher is referenced while there are any
        self._holds_grpc_aio = False  # our own init_grpc_aio's reference (trap 6)
        _start_native_thread(self._run_loop, ())
        self.run(self._init_grpc_aio())
        self._holds_grpc_aio = True

    def _run_loop(self) -> None:
        self._thread_ident = _get_native_ident()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()
            self._stopped = True

    @staticmethod
    async def _init_grpc_aio() -> None:
        # Trap 1: start grpc.aio's poller as a native thread, bound to this (the running) loop.
        from grpc._cython import cygrpc

        saved = cygrpc.threading, cygrpc.socket
        cygrpc.threading = types.SimpleNamespace(Thread=_NativeThread)
        cygrpc.socket = types.SimpleNamespace(socketpair=_socket.socketpair)
        try:
            cygrpc.init_grpc_aio()
        finally:
            cygrpc.threading, cygrpc.socket = saved

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the loop; the calling greenlet yields to the hub until it is done.

        Must be called from a greenlet of the hub thread. Raises what the coroutine raised. If the greenlet
        is killed while waiting, the coroutine is cancelled on the loop before the kill propagates.
        """
        if os.getpid() != self.pid:
            raise RuntimeError("AsyncBridge used in a forked child; call get_bridge() in the child instead")
        if self.closing:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise BridgeClosed("the process is shutting down: the async bridge takes no new work")
        return self._run(coro)

    def _run(self, coro: Awaitable[T]) -> T:
        # One hop, both ways batched: the greenlet queues a job and the loop is woken once for every job queued
        # meanwhile (one self-pipe write); each finished task queues its job back and the hub is woken once for
        # every job finished meanwhile (one libev async send). With 20 users in flight most hops share a wake-up.
        # A hop through run_coroutine_threadsafe, a concurrent Future (gevent-patched locks) and an async watcher
        # made, started and closed per call cost 19 to 42 us of process CPU at 20 in flight, this 6 to 10 us
        # (bench/bridge_probe.py, docs/benchmarks.md).
        hub = gevent.get_hub()
        if hub is not self._hub:
            self._bind(hub)
        job = _Job(coro, gevent.hub.Waiter())
        if not self._waiting:
            # A started, referenced watcher keeps the hub from exiting while a greenlet waits (LoopExit when the
            # waiting greenlet is the only one); unreferenced when nothing waits, so it never holds a hub up.
            self._watcher.ref = True
        self._waiting += 1
        try:
            self._submitted.append(job)
            if not self._submit_pending:
                self._submit_pending = True
                try:
                    self.loop.call_soon_threadsafe(self._take_submitted)
                except RuntimeError:  # the loop is closed
                    self._submit_pending = False
                    raise
            job.waiter.get()
        except BaseException:
            job.abandoned = True  # read on the loop thread: a job not taken yet is closed there, never started
            if self.loop.is_closed():  # nothing runs there any more, nor will take the job
                if asyncio.iscoroutine(coro):
                    coro.close()
            else:
                try:
                    self.loop.call_soon_threadsafe(self._cancel, job)
                except RuntimeError:  # the loop closed meanwhile: the kill, not this, is what goes on up
                    pass
            raise
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._watcher.ref = False
        if job.cancelled:  # as concurrent.futures reports it (users.py takes it for a process shutting down)
            raise concurrent.futures.CancelledError()
        if job.error is not None:
            raise job.error
        return job.value

    def _bind(self, hub) -> None:
        """The hub's wake-up watcher, started once (libev drops a send() made to a stopped async watcher)."""
        if self._watcher is not None and self._hub is not None and not self._hub.dead:
            raise RuntimeError("the async bridge is used from the hub of another thread")
        self._hub = hub
        self._watcher = hub.loop.async_()
        self._watcher.start(self._wake)
        self._watcher.ref = False

    def _take_submitted(self) -> None:
        """On the loop thread: start a task for every job queued since the last call."""
        self._submit_pending = False  # before taking: a job queued from here on schedules another call
        submitted, create_task = self._submitted, self.loop.create_task
        while submitted:
            job = submitted.popleft()
            if job.abandoned:  # its greenlet was killed before the job got here
                if asyncio.iscoroutine(job.coro):
                    job.coro.close()
                continue
            try:
                job.task = create_task(self._drive(job))
            except BaseException as exc:  # noqa: BLE001 - the loop refused it: raised in the waiting greenlet
                job.error = exc
                self._finished(job)

    async def _drive(self, job: _Job) -> None:
        """The job's task: run its coroutine, keep the outcome and hand the job back from within the task.

        A done callback would hand it back one turn of the loop later (asyncio schedules done callbacks with
        call_soon: one more pass through the selector before the hub is woken, on every hop).
        """
        try:
            job.value = await job.coro
        except asyncio.CancelledError:
            job.cancelled = True
            raise  # the task ends cancelled, as it was
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting greenlet
            job.error = exc
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the loop's to see too, as for any task
        finally:
            self._finished(job)

    @staticmethod
    def _cancel(job: _Job) -> None:
        """On the loop thread, for a job whose greenlet was killed: cancel its task (nobody waits for it now)."""
        if job.task is not None:
            job.task.cancel()
            # A task cancelled before its first step never enters _drive, so its coroutine would never be
            # awaited (and Python would warn so at collection): close it.
            if asyncio.iscoroutine(job.coro) and inspect.getcoroutinestate(job.coro) == inspect.CORO_CREATED:
                job.coro.close()

    def _finished(self, job: _Job) -> None:
        """On the loop thread, from the job's task: hand the job back, waking the hub once per batch."""
        self._done.append(job)
        if not self._wake_pending:
            self._wake_pending = True
            self._watcher.send()

    def _wake(self) -> None:
        """On the hub, the watcher's callback: resume every greenlet whose job finished."""
        self._wake_pending = False  # before taking: a job finished from here on sends again
        done = self._done
        while done:
            done.popleft().waiter.switch(None)  # a killed greenlet's waiter just keeps the value

    def on_close(self, closer: Callable[[], Awaitable[object]]) -> None:
        """Register an async resource's ``close`` (a client's connections) to await on the loop at close()."""
        self._closers.append(closer)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, close the registered clients and grpc.aio, stop the loop and wait
        for its thread to end.

        Leaving the loop thread (and grpc.aio's poller, and open HTTP/2 and HTTP connections) to the interpreter's
        finalisation crashed the process at exit with SIGSEGV, twice in 40 runs of AsyncMilvusUser with the OpenAI
        embedding: native threads still ran C extension code while the interpreter tore down. Close in order.
        """
        if self.loop.is_closed():
            return
        # From here on a user's next operation would meet half-closed clients and fail ("the client has been
        # closed", seen at SIGTERM mid-run): run() refuses it instead, and the user stops (users.py).
        self.closing = True
        closers, self._closers = self._closers, []

        async def _shutdown() -> None:
            # A task cancelled before its first step never enters _drive, never hands its job back, and its
            # greenlet would wait on. Every other job's task was made before this one (closing refuses new jobs),
            # so its first step came first; one turn of the loop makes sure of it.
            await asyncio.sleep(0)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for closer in closers:
                try:
                    await closer()
                except Exception as exc:  # noqa: BLE001 - closing is best effort; say what did not close
                    logger.warning("async bridge: closing %r failed: %r", closer, exc)
            await self.loop.shutdown_asyncgens()
            try:
                await _close_pymilvus_connections()
            except Exception as exc:  # noqa: BLE001 - as for the closers: say what did not close, go on closing
                logger.warning("async bridge: closing pymilvus's connections failed: %r", exc)

        try:
            with gevent.Timeout(timeout):
                self._run(_shutdown())
        except (gevent.Timeout, RuntimeError) as exc:
            logger.warning("async bridge: not shut down cleanly: %r", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        deadline = time.monotonic() + timeout
        while not self._stopped and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if not self._stopped:
            logger.warning("async bridge: the loop thread did not end in %.0f s; grpc.aio is left running", timeout)
            return
        if self._watcher is not None:  # nothing sends to it any more
            self._watcher.stop()
            self._watcher.close()
            self._watcher = self._hub = None
        if self._holds_grpc_aio:  # trap 6: the loop is closed, so whoever ends grpc.aio now touches no live loop
            self._holds_grpc_aio = False
            from grpc._cython import cygrpc

            cygrpc.shutdown_grpc_aio()


class BridgeClosed(RuntimeError):
    """The bridge is closing or closed: the process is shutting down."""


_bridge: AsyncBridge | None = None


def get_bridge() -> AsyncBridge:
    """The bridge of this process, started on first use (after any fork, so per process)."""
    global _bridge
    if _bridge is None or _bridge.pid != os.getpid():
        _bridge = AsyncBridge()
    return _bridge


def current_bridge() -> AsyncBridge | None:
    """The bridge of this process if one was started (never starts one: a process without async users has none)."""
    if _bridge is not None and _bridge.pid == os.getpid() and not _bridge.loop.is_closed():
        return _bridge
    return None


def close_bridge() -> None:
    global _bridge
    if _bridge is not None and _bridge.pid == os.getpid():
        _bridge.close()
    _bridge = None
