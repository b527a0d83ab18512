"""Both users against the real embedded Milvus, in-process: add, search and delete, failures, deadlines."""

from __future__ import annotations

from locust.env import Environment

import contextlib
import dataclasses
import os
import signal
import time

import pytest
from pymilvus import MilvusClient

from locust_milvus.config.settings import ConfigError
from locust_milvus.embedded.server import EmbeddedMilvus
from locust_milvus.milvus.store import open_async_store, open_store, prepare_collection
from locust_milvus.runtime.bridge import get_bridge
from locust_milvus.runtime.grpc_gevent import make_grpc_cooperative
from locust_milvus.workload.data import IdLedger
from locust_milvus.workload.operations import TABLE, RunState
from locust_milvus.workload.users import AsyncMilvusUser, SyncMilvusUser

from .conftest import make_settings

pytestmark = pytest.mark.milvus
make_grpc_cooperative()


def build_state(settings) -> RunState:
    ledger = IdLedger()
    prepare_collection(settings, ledger)
    astore = open_async_store(settings, get_bridge().run)
    # Every operation weighted, so that the pools every operation may use are built (tests call any of them).
    settings = dataclasses.replace(settings, weights={name: 1 for name, op in TABLE.items() if not op.needs_bm25})
    return RunState(settings=settings, store=open_store(settings), ledger=ledger, astore=astore)


def user_with_events(user_class, state):
    env = Environment(user_classes=[user_class])
    events = []
    env.events.request.add_listener(lambda **kw: events.append(kw))
    user = user_class(env)
    user.state = state
    return user, events


def count_rows(uri: str, collection: str) -> int:
    client = MilvusClient(uri=uri)
    try:
        rows = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])
    finally:
        client.close()


@pytest.mark.parametrize("user_class, request_type", [(SyncMilvusUser, "langchain-sync"),
                                                      (AsyncMilvusUser, "langchain-async")])
def test_user_adds_searches_and_deletes(milvus, collection, user_class, request_type):
    settings = make_settings(milvus.uri, collection, prepopulate=20, batch_size=5)
    state = build_state(settings)
    user, events = user_with_events(user_class, state)
    assert count_rows(milvus.uri, collection) == 20

    user.execute(TABLE["add"])
    assert count_rows(milvus.uri, collection) == 25 and len(state.ledger) == 25
    user.execute(TABLE["search"])
    for _ in range(5):  # deletes take the oldest owned ids: 25 -> 0
        user.execute(TABLE["delete"])
    assert count_rows(milvus.uri, collection) == 0 and len(state.ledger) == 0
    user.execute(TABLE["delete"])  # nothing owned any more: skipped, no event

    assert [(e["request_type"], e["name"]) for e in events] == (
        [(request_type, "add"), (request_type, "search")] + [(request_type, "delete")] * 5)
    assert all(e["exception"] is None for e in events), [e["exception"] for e in events]
    assert [e["response_length"] for e in events] == [5, 3, 5, 5, 5, 5, 5]
    assert all(isinstance(e["response_time"], float) and e["response_time"] > 0 for e in events)


def test_async_concurrency_fires_one_event_per_operation(milvus, collection):
    state = build_state(make_settings(milvus.uri, collection, async_concurrency=8))
    user, events = user_with_events(AsyncMilvusUser, state)
    user.execute(TABLE["search"])
    assert len(events) == 8 and all(e["exception"] is None and e["response_length"] == 3 for e in events)


ASYNC_DELETE_STATUS_UNCHECKED = pytest.mark.xfail(
    strict=True,
    reason="pymilvus 3.0.2's async delete does not check the server's status (the sync one does): a failed "
    "async delete returns {} and LangChain's adelete reports True. Strict: this turns red when upstream fixes it.",
)


@pytest.mark.parametrize("user_class", [SyncMilvusUser,
                                        pytest.param(AsyncMilvusUser, marks=ASYNC_DELETE_STATUS_UNCHECKED)])
def test_delete_that_langchain_reports_false_is_a_failure(milvus, collection, user_class):
    state = build_state(make_settings(milvus.uri, collection, prepopulate=10))
    user, events = user_with_events(user_class, state)
    MilvusClient(uri=milvus.uri).drop_collection(collection)  # LangChain's delete now catches an error
    user.execute(TABLE["delete"])
    assert len(events) == 1 and "delete returned False" in str(events[0]["exception"])
    assert len(state.ledger) == 10  # the ids stay owned


def test_existing_collection_is_refused_without_drop(milvus, collection):
    settings = make_settings(milvus.uri, collection, prepopulate=7)
    prepare_collection(settings, IdLedger())
    with pytest.raises(ConfigError, match="already exists.*--drop-collection"):
        prepare_collection(settings, IdLedger())
    with pytest.raises(ConfigError, match="has dim 32 but --dim is 64"):
        prepare_collection(make_settings(milvus.uri, collection, dim=64), IdLedger())
    assert count_rows(milvus.uri, collection) == 7  # nothing written
    prepare_collection(make_settings(milvus.uri, collection, prepopulate=3, drop_collection=True), IdLedger())
    assert count_rows(milvus.uri, collection) == 3


def test_unreachable_host_is_a_clear_error():
    settings = make_settings("http://127.0.0.1:1", "c", timeout=2.0)
    with pytest.raises(ConfigError, match="cannot reach Milvus at http://127.0.0.1:1 within 2 s"):
        prepare_collection(settings, IdLedger())


@pytest.fixture
def doomed_milvus():
    """A second real Milvus that a test may pause or kill."""
    server = EmbeddedMilvus()
    server.start()
    yield server
    # A paused Milvus is resumed so that it can stop; a killed one is gone already (running() is about the
    # process that started it, which may outlive it: pid is Milvus's own).
    with contextlib.suppress(ProcessLookupError):
        if server.running():
            os.kill(server.pid, signal.SIGCONT)
    server.stop()


@pytest.mark.parametrize("how", ["hung", "dead"])
@pytest.mark.parametrize("user_class", [SyncMilvusUser, AsyncMilvusUser])
def test_a_broken_server_fails_within_the_deadline(doomed_milvus, collection, user_class, how):
    state = build_state(make_settings(doomed_milvus.uri, collection, timeout=2.0))
    user, events = user_with_events(user_class, state)
    user.execute(TABLE["search"])  # warm: the connection exists before the server breaks
    os.kill(doomed_milvus.pid, signal.SIGSTOP if how == "hung" else signal.SIGKILL)
    start = time.perf_counter()
    user.execute(TABLE["search"])
    wall = time.perf_counter() - start
    assert len(events) == 2 and events[1]["exception"] is not None
    # pymilvus retries only inside the deadline: the failure comes after about --milvus-timeout, not minutes.
    assert events[1]["response_time"] < 2000 + 1500 and wall < 2 + 2


@pytest.fixture(scope="module")
def shared_state(milvus):
    settings = make_settings(milvus.uri, f"t_all_ops_{os.getpid()}", prepopulate=60, batch_size=5,
                             drop_collection=True)
    return build_state(settings)


# hybrid_search and full_text_search need --bm25, which Milvus 2.3.5 lacks: tests/test_milvus_lite.py runs them.
@pytest.mark.parametrize("name", [name for name, op in TABLE.items() if not op.needs_bm25])
@pytest.mark.parametrize("user_class, request_type", [(SyncMilvusUser, "langchain-sync"),
                                                      (AsyncMilvusUser, "langchain-async")])
def test_every_operation_in_both_modes(shared_state, name, user_class, request_type):
    user, events = user_with_events(user_class, shared_state)
    user.execute(TABLE[name])
    assert [(e["request_type"], e["name"]) for e in events] == [(request_type, name)]
    assert events[0]["exception"] is None, events[0]["exception"]
    assert events[0]["response_length"] > 0


@pytest.fixture(scope="module")
def cosine_state(milvus):
    # LangChain's relevance score is 1 - d/4 for L2, meant for unit vectors; the offline embedding's vectors are
    # not, so its L2 relevance is below 0. COSINE maps to (1 + cos)/2, within 0..1 for any vectors.
    settings = make_settings(milvus.uri, f"t_retriever_{os.getpid()}", prepopulate=30, batch_size=5,
                             drop_collection=True, metric="COSINE")
    return build_state(settings)


@pytest.mark.parametrize("search_type, threshold, found", [("similarity", 0.0, True), ("mmr", 0.0, True),
                                                           ("similarity_score_threshold", 0.0, True),
                                                           ("similarity_score_threshold", 1.0, False)])
@pytest.mark.parametrize("user_class", [SyncMilvusUser, AsyncMilvusUser])
def test_retriever_search_types(cosine_state, user_class, search_type, threshold, found):
    # A threshold of 1.0 (an exact match) keeps nothing: an empty result is then the retriever's answer, not a
    # failure. A threshold of 0.0 keeps all the search found.
    settings = dataclasses.replace(cosine_state.settings, retriever_search_type=search_type,
                                   retriever_score_threshold=threshold)
    state = dataclasses.replace(cosine_state, settings=settings)
    user, events = user_with_events(user_class, state)
    user.execute(TABLE["retriever"])
    assert [e["name"] for e in events] == ["retriever"]
    assert events[0]["exception"] is None, events[0]["exception"]
    assert (events[0]["response_length"] > 0) is found
    assert state.target(TABLE["retriever"], sync=user_class is SyncMilvusUser).search_type == search_type


def test_verify_finds_lost_resurrected_and_duplicated_writes(milvus, collection):
    from locust_milvus.milvus.verify import verify

    settings = make_settings(milvus.uri, collection, prepopulate=0, batch_size=5, verify=True)
    ledger = IdLedger(track=True)
    prepare_collection(settings, ledger)
    state = RunState(settings=settings, store=open_store(settings), ledger=ledger)
    user, events = user_with_events(SyncMilvusUser, state)
    for _ in range(3):
        user.execute(TABLE["add"])
    user.execute(TABLE["delete"])  # the 5 oldest: acknowledged deletes
    assert all(e["exception"] is None for e in events)
    clean = verify(settings, ledger)
    assert clean.ok and clean.checked == 15 and clean.unknown == 0, clean.line()

    present = [i for i, s in ledger.states.items() if s == "present"]
    deleted = [i for i, s in ledger.states.items() if s == "deleted"]
    client = MilvusClient(uri=milvus.uri)
    try:  # behind the ledger's back: lose an acknowledged write, bring back a deleted one, write one twice
        client.delete(collection, ids=[present[0]])
        row = {"pk": deleted[0], "vector": [0.0] * settings.dim, "text": "back", "id": "x", "score": 0.0,
               "category": "cat_0"}
        client.insert(collection, [row])
        client.insert(collection, [{**row, "pk": present[1]}])
    finally:
        client.close()
    ledger.uncertain([present[2]])  # an unknown outcome is never judged
    bad = verify(settings, ledger)
    assert not bad.ok and bad.missing == [present[0]] and bad.resurrected == [deleted[0]], bad.line()
    assert bad.duplicate_rows >= 1 and bad.unknown == 1 and bad.checked == 14
    assert "verify: FAILED" in bad.line()


def test_verify_gives_up_before_the_exit_deadline_so_that_the_report_is_written(milvus, collection, monkeypatch):
    """A Milvus slow to answer after an outage once took the whole of the exit grace, and the process was ended
    before its report. The check's waits, and the count of rows for the report, are bounded by the time left, less
    the report's margin."""
    from locust_milvus.milvus import verify as verify_module
    from locust_milvus.runtime import shutdown

    settings = make_settings(milvus.uri, collection, prepopulate=0, batch_size=5, verify=True)
    ledger = IdLedger(track=True)
    prepare_collection(settings, ledger)
    user, _ = user_with_events(SyncMilvusUser, RunState(settings=settings, store=open_store(settings), ledger=ledger))
    user.execute(TABLE["add"])
    left = [shutdown.WRITE_MARGIN_S + 0.05]  # the deadline is all but here: nothing may wait
    monkeypatch.setattr(shutdown, "seconds_left", lambda: left[0])
    began = time.monotonic()
    verdict = verify_module.verify(settings, ledger)
    assert time.monotonic() - began < 2.0
    assert not verdict.ok and "exit deadline" in verdict.error and "--stop-timeout" in verdict.error, verdict.line()
    began = time.monotonic()
    assert verify_module.count_rows(settings) is None  # the report's rows at the end: not counted, not waited for
    assert time.monotonic() - began < 0.5
    left[0] = shutdown.WRITE_MARGIN_S + 30  # enough time: the same check passes, the rows are counted
    assert verify_module.verify(settings, ledger).ok
    assert verify_module.count_rows(settings) == 5


@pytest.mark.parametrize("user_class", [SyncMilvusUser, AsyncMilvusUser])
def test_calls_cut_off_at_stop_are_unknown_outcomes_never_requests(milvus, collection, user_class):
    import gevent

    from locust_milvus.runtime.monitor import monitor

    settings = make_settings(milvus.uri, collection, prepopulate=10, batch_size=5, verify=True)
    ledger = IdLedger(track=True)
    prepare_collection(settings, ledger)
    state = RunState(settings=settings, store=open_store(settings), ledger=ledger,
                     astore=open_async_store(settings, get_bridge().run))
    user, events = user_with_events(user_class, state)
    user.execute(TABLE["search"])  # warm: connections exist
    events.clear()
    monitor.unknown = {}
    os.kill(milvus.pid, signal.SIGSTOP)  # the add below stays in flight
    try:
        greenlet = gevent.spawn(user.execute, TABLE["add"])
        gevent.sleep(1.0)
        greenlet.kill()  # what Locust does to a user mid-call when the test stops
    finally:
        os.kill(milvus.pid, signal.SIGCONT)
    assert events == []  # neither a success nor a failure: no result
    assert monitor.unknown == {(user_class.mode, "add"): 1}
    assert sum(1 for s in ledger.states.values() if s == "unknown") == 5  # its ids: maybe written, maybe not


_BRIDGE_CLOSE_CHILD = """
import sys, time, traceback
from locust_milvus.runtime.bridge import close_bridge, get_bridge
from pymilvus import AsyncMilvusClient

async def open_client():
    return AsyncMilvusClient(uri=sys.argv[1])

bridge = get_bridge()
client = bridge.run(open_client())
assert bridge.run(client.has_collection("none_such")) is False  # a real call: the client's channel is open
bridge.on_close(client.close)
close_bridge()

def bridge_threads():  # the loop's, grpc.aio's poller, the executor's: every native thread running bridge.py code
    return [tid for tid, frame in sys._current_frames().items()
            if any(f.f_code.co_filename.endswith("bridge.py") for f, _ in traceback.walk_stack(frame))]

deadline = time.monotonic() + 5  # the executor's threads end a moment after the loop closes, told by a queue
while bridge_threads() and time.monotonic() < deadline:
    time.sleep(0.05)
print("bridge threads left:", len(bridge_threads()))
"""


def test_closing_the_bridge_ends_its_threads_and_the_process_exits_quietly(milvus, tmp_path):
    """pymilvus keeps a loop's channels after its clients close; the bridge closes them, so that grpc.aio's poller
    ends with the bridge instead of running into the interpreter's finalisation (an empty "Error in
    sys.excepthook" at exit)."""
    import subprocess
    import sys

    from .conftest import ROOT, child_env

    child = tmp_path / "child.py"
    child.write_text(_BRIDGE_CLOSE_CHILD)
    proc = subprocess.run([sys.executable, "-m", "gevent.monkey", str(child), milvus.uri], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bridge threads left: 0" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "Error in sys.excepthook" not in proc.stderr, proc.stderr[-3000:]
