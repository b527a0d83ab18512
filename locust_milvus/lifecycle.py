"""What happens around a run, per process: Locust event listeners for init, test start/stop and quitting.

- init (every process, after ``--processes`` forks): make sync gRPC cooperative; on the master or a local
  runner, check the options and start the embedded Milvus when no --host is given. In a headless run it also
  prepares the collection here: Locust starts its --run-time clock before test_start, and set-up (creating and
  pre-populating the collection) must not eat the measured time.
- test_start: the master or local runner prepares the collection (checks, drop, schema, pre-population) unless
  init already did for this start; every process that runs users opens its store. Options are read here
  because workers receive them only now.
- test_stop: log the concurrency evidence (monitor.py); with --verify, check the write ledger against the
  collection (verify.py) and hand the verdict on (run_verdict.py: the run's, or a worker's to its master).
- quitting: cancel async work, stop the embedded Milvus.
"""

from __future__ import annotations

from locust.runners import STATE_INIT, STATE_STOPPED, LocalRunner, MasterRunner, WorkerRunner

import atexit
import gc
import logging
import random

import gevent

from locust_milvus.config.load import run_options, settings_from, share_with_workers
from locust_milvus.config.secrets import check_worker_token, redact_uri
from locust_milvus.config.settings import ConfigError
from locust_milvus.embedded.server import EmbeddedMilvus, EmbeddedServerError
from locust_milvus.milvus.store import load_truth, open_async_store, open_store, open_stores, prepare_collection
from locust_milvus.milvus.verify import count_rows, verify
from locust_milvus.run_verdict import verdicts
from locust_milvus.runtime import quiet_logs, shutdown
from locust_milvus.runtime.bridge import close_bridge, get_bridge
from locust_milvus.runtime.grpc_gevent import abandoned_calls, make_grpc_cooperative
from locust_milvus.runtime.monitor import monitor
from locust_milvus.runtime.shield import calls_in_flight
from locust_milvus.workload import pacing
from locust_milvus.workload.base import own_user_classes
from locust_milvus.workload.data import DocSource, IdLedger
from locust_milvus.workload.dataset import load_dataset
from locust_milvus.workload.operations import RunState, bm25_kinds
from locust_milvus.workload.request_events import one_line

logger = logging.getLogger("locust_milvus")

_state: RunState | None = None
_server: EmbeddedMilvus | None = None
_created: set[tuple[str, str]] = set()  # (uri, collection) this process created, so a restart may replace it
_prepared: IdLedger | None = None  # set-up done at init for the first test, with the ids it wrote
_master_check: tuple | None = None  # a master's (settings, ledger of its pre-populated ids) with --verify


def current_state() -> RunState | None:
    """This process's run state, or None when set-up failed or never ran (the users then stop, fire no event)."""
    return _state


_said_why = False
_setup_failed = False


def say_why_users_stop() -> None:
    """Once per process, at error level: why the users stop without a request (no run state here)."""
    global _said_why
    if _said_why:
        return
    _said_why = True
    if _setup_failed:
        logger.error("locust-milvus: the users stop: this test's set-up failed (the error is above)")
    else:
        logger.error("locust-milvus: the users stop: locust-milvus's set-up never ran in this process. From a "
                     "locustfile, import the users from locust_milvus; with Locust as a library, call "
                     "locust_milvus.register(environment) before starting the runner (docs/extending.md)")


def _fatal(message: str, code: int = 1) -> None:
    logger.error("locust-milvus: %s", message)
    raise SystemExit(code)


def on_init(environment, runner=None) -> None:
    make_grpc_cooperative()
    # pymilvus loads scipy.sparse on its first search or insert (SciPyHelper._init, pymilvus/client/utils.py),
    # without a lock: a sync call on the hub's thread and an async one on the bridge's loop thread then imported it
    # at once, and both searches failed ("partially initialized module 'scipy.sparse._bsr'", seen in 1 of 12
    # stop-stress runs). Loaded here, once per process, before any user starts.
    from pymilvus.client.utils import SciPyHelper

    SciPyHelper.is_scipy_sparse(None)
    shutdown.install_sigint_handler()
    shutdown.stop_csv_writer_with_its_files()
    options = run_options(environment)
    quiet_logs.install(options.loglevel)  # pymilvus, httpx and langchain-milvus repeat what failure events record
    # (./.env was read by plugin.install, before Locust parsed the options.)
    if isinstance(runner, WorkerRunner) or not options.values:
        return
    try:  # bad options (and a malformed --dataset) stop here, before any server starts or load begins
        settings = settings_from(environment, host=environment.host or "http://127.0.0.1:19530")
        _check_own_users(environment.user_classes, settings)
        _source(settings)
    except ConfigError as e:
        _fatal(str(e), e.exit_code)
    if not environment.host:
        _start_embedded(environment, options.get("embedded_data") or None)
    if options.headless:
        global _prepared
        try:
            _prepared = _prepare(settings_from(environment))
        except ConfigError as e:
            _fatal(str(e), e.exit_code)
        except Exception as e:  # noqa: BLE001 - a Milvus error during set-up: one line, no traceback soup
            _fatal(f"set-up failed: {one_line(e)}")


def _check_own_users(user_classes, settings) -> None:
    """Your own users (workload/base.py): each has a task, and --target-rps paces the built-in operations only."""
    own = own_user_classes(user_classes)
    for cls in own:
        if not cls.tasks:
            raise ConfigError(f"user class {cls.__name__} has no tasks: give it a method decorated with @task "
                              "(LangChainUser and AsyncLangChainUser have none of their own)")
    if settings.target_rps and own:
        names = ", ".join(cls.__name__ for cls in own)
        raise ConfigError(f"--target-rps paces the built-in operations of SyncMilvusUser and AsyncMilvusUser; your "
                          f"own user classes ({names}) cannot be paced: run them without --target-rps")


_sources: dict[tuple[str, str, str], DocSource] = {}


def _source(settings) -> DocSource:
    """Documents and queries of the run: synthetic, or the --dataset file (read once per process)."""
    if not settings.dataset:
        return DocSource()
    key = (settings.dataset, settings.dataset_text_column, settings.dataset_vector_column)
    if key not in _sources:
        _sources[key] = DocSource(load_dataset(*key))
        logger.info("locust-milvus: --dataset %s: %d documents%s", settings.dataset, len(_sources[key].dataset),
                    " with vectors" if _sources[key].has_vectors else "")
    return _sources[key]


rows_at_start: int | None = None  # the collection's rows once set-up is done (the report's workload)
# (rows,) once counted at quitting, just before this process stops its embedded Milvus: the report is written after
# that, when the server no longer answers (every README main job had "rows at end" empty).
rows_at_quitting: tuple[int | None] | None = None


def _prepare(settings) -> IdLedger:
    """Prepare the collection once for a test; returns the ledger holding the pre-populated ids."""
    global rows_at_start
    ledger = IdLedger(track=settings.verify)
    key = (settings.uri, settings.collection)
    prepare_collection(settings, ledger, owned_here=key in _created, source=_source(settings))
    _created.add(key)
    rows_at_start = count_rows(settings)  # before any load, and before the monitor measures the hub
    return ledger


def _start_embedded(environment, data_dir: str | None) -> None:
    global _server
    _server = EmbeddedMilvus(data_dir=data_dir)
    atexit.register(_stop_embedded)  # also on an error exit that skips Locust's quitting event
    try:
        environment.host = _server.start()
    except EmbeddedServerError as e:
        _fatal(str(e))
    logger.info("locust-milvus: no --host given; using the embedded Milvus at %s", environment.host)


def _stop_embedded() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


def embedded_metrics_url() -> str | None:
    """The Prometheus endpoint of the embedded Milvus this process started (its health port serves /metrics too);
    None when there is none (--host)."""
    if _server is None or not _server.running() or _server.health_port is None:
        return None
    return f"http://127.0.0.1:{_server.health_port}/metrics"


def _fail_run(environment, message: str) -> None:
    global _setup_failed
    _setup_failed = True
    logger.error("locust-milvus: %s", message)
    runner = environment.runner
    if run_options(environment).headless:
        environment.process_exit_code = 1
        gevent.spawn(runner.quit)
    else:
        gevent.spawn(runner.stop)


def on_test_start(environment, **_kwargs) -> None:
    global _state, _prepared, _said_why, _setup_failed, _master_check
    _state = _master_check = None
    _said_why = _setup_failed = False
    runner = environment.runner
    options = run_options(environment)
    if options.headless and options.get("run_time") and not isinstance(runner, WorkerRunner):
        # Locust's own timer ends the run; should the run stall so that no stop ever begins, this ends it.
        shutdown.expect_stop(float(options.get("run_time")), environment.stop_timeout)
    try:
        if isinstance(runner, WorkerRunner):
            check_worker_token(environment)  # its own token, never sent: is it the master's?
        settings = settings_from(environment)
        if isinstance(runner, WorkerRunner):
            # Ids carry the worker's index, so each worker owns its own documents: its deletes and upserts take
            # ids from its own ledger only and never touch another worker's (or the pre-populated) documents.
            ledger = IdLedger(prefix=f"w{runner.worker_index}-{random.getrandbits(32):08x}", track=settings.verify)
        elif _prepared is not None:  # done at init, before Locust's run-time clock started
            ledger, _prepared = _prepared, None
        else:
            ledger = _prepare(settings)
        if isinstance(runner, MasterRunner):
            # --target-rps shares the rate among all users of the run; workers know only their own users, so
            # the total travels with the options (a custom attribute, which Locust forwards to workers).
            share_with_workers(environment, runner.target_user_count, ledger.prefix)
            if settings.verify:  # the pre-populated documents are the master's: it checks them (on_test_stop)
                _master_check = (settings, ledger)
                verdicts.expect_master_check()
            return  # the master runs no users
        total_users = (run_options(environment).total_users if isinstance(runner, WorkerRunner)
                       else runner.target_user_count)
        needs_async = any(getattr(cls, "uses_async_bridge", False) for cls in environment.user_classes)
        astore = open_async_store(settings, get_bridge().run) if needs_async else None
        stores = open_stores(settings, bm25_kinds(settings), get_bridge().run if needs_async else None)
        for store in (astore, *(store for (_, sync), store in stores.items() if not sync)):
            if store is not None:
                _close_at_exit(store)
        truth = None
        if settings.recall:
            # A worker knows the pre-populated documents (read back by the master's prefix) and its own writes;
            # another worker's documents in a result are not judged (recall.py).
            prefix = options.set_up_prefix if isinstance(runner, WorkerRunner) else ledger.prefix
            truth = load_truth(settings, prefix)
        _state = RunState(settings=settings, store=open_store(settings), ledger=ledger, astore=astore,
                          source=_source(settings), total_users=int(total_users or 1), truth=truth, stores=stores)
        pacing.reset()
        logger.info("locust-milvus: target %s, collection %r, weights %s", redact_uri(settings.uri),
                    settings.collection, settings.weights)
        # A full collection of the heap that LangChain, pymilvus and numpy leave after import took 74 ms here,
        # blocking the hub (and every user's timing) mid-run. Freezing the set-up objects into the permanent
        # generation leaves later collections only what the load itself allocates.
        gc.collect()
        gc.freeze()
        monitor.start(runner, settings.timeout)
    except ConfigError as e:
        _fail_run(environment, str(e))
    except Exception as e:  # noqa: BLE001 - a Milvus error during set-up: one line, no traceback soup
        _fail_run(environment, f"set-up failed: {one_line(e)}")


def _close_at_exit(astore) -> None:
    """Have the bridge close the async store's connections (pymilvus's async client, and an embedding provider's
    async HTTP client) on its loop before it stops (bridge.AsyncBridge.close says why)."""
    bridge = get_bridge()
    client = getattr(astore, "_async_milvus_client", None)
    if client is not None:
        bridge.on_close(client.close)
    embedding = getattr(astore.embeddings, "inner", astore.embeddings)
    http = getattr(getattr(embedding, "async_client", None), "_client", None)  # openai.AsyncOpenAI
    if http is not None and hasattr(http, "close"):
        bridge.on_close(http.close)


def on_test_stopping(environment, **_kwargs) -> None:
    # A headless run that stops is ending (the --run-time limit): from here it must exit in bounded time.
    # (A stop from the web UI, or a worker told to stop by its master, goes on to wait for the next test.)
    if run_options(environment).headless and not isinstance(environment.runner, WorkerRunner):
        shutdown.arm(environment.stop_timeout, "the end of the test")


def on_test_stop(environment, **_kwargs) -> None:
    if isinstance(environment.runner, MasterRunner):
        if _master_check is not None:
            settings, ledger = _master_check
            verdicts.check_master(environment, lambda: verify(settings, ledger))
        return
    monitor.stop()
    if abandoned := calls_in_flight() + abandoned_calls():
        logger.info("locust-milvus: %d sync call(s) cut off at stop are still running; they end within "
                    "--milvus-timeout, unobserved", abandoned)
    if _state is not None and _state.settings.target_rps:
        pacing.log_if_not_met(_state.settings.target_rps)
    # Users are stopped by now (test_stop fires after they are killed): the ledger is final. The verdict is the
    # run's in a local run; a worker's goes to the master, which gives the run's (run_verdict.py).
    if _state is not None and _state.settings.verify:
        verdicts.own(environment, verify(_state.settings, _state.ledger))
    elif _state is None and run_options(environment).get("verify"):
        verdicts.own(environment, None)


def on_quitting(environment, **_kwargs) -> None:
    shutdown.arm(environment.stop_timeout, "quitting")
    runner = environment.runner
    if isinstance(runner, LocalRunner) and runner.state not in (STATE_INIT, STATE_STOPPED):
        # Ctrl-C and SIGTERM fire quitting while users still run (Locust stops them after its quitting
        # listeners). Stop them first: otherwise they go on calling the embedded Milvus and the bridge that are
        # closed just below, and their failures would land in the report.
        runner.stop()
    close_bridge()
    if _server is not None:
        global rows_at_quitting
        try:
            rows_at_quitting = (count_rows(settings_from(environment)),)
        except ConfigError:
            rows_at_quitting = (None,)
    _stop_embedded()
