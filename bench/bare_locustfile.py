"""The least a Locust user can do to time LangChain's search or add (bench/search_throughput.py, bench/async_split.py).

    LOCUST_BENCH_COLLECTION=bench [LOCUST_BENCH_MODE=async|sync] [LOCUST_BENCH_OP=search|add] \
        [LOCUST_BENCH_SHIELD=1] [LOCUST_BENCH_POOL=N] locust -f bench/bare_locustfile.py --host http://127.0.0.1:19530

One task, timed with perf_counter, one request event:

- async: ``asimilarity_search`` (k=3, the offline embedding), or ``aadd_documents`` of 10 tutorial-shaped
  documents with ids (LOCUST_BENCH_OP=add), handed to the async bridge;
- sync: ``similarity_search`` or ``add_documents`` called in the task itself, as contrib's users call pymilvus, with
  sync gRPC made gevent-cooperative as locust-milvus makes it (runtime/grpc_gevent.py: every call waits on the hub).

None of our users' machinery (operations table, pacing, ledger, recall, health, the report's listeners): against
contrib's raw pymilvus it shows what LangChain (and, for sync calls, waiting on the hub) costs or saves, and against
our users what our machinery costs.
"""

from locust import User, events

import itertools
import os
import random
import time

import gevent
from langchain_milvus import Milvus

from locust_milvus.runtime.bridge import close_bridge, get_bridge
from locust_milvus.runtime.grpc_gevent import make_grpc_cooperative
from locust_milvus.runtime.monitor import monitor
from locust_milvus.runtime.shield import call_shielded
from locust_milvus.workload.data import make_document
from locust_milvus.workload.embeddings import make_embedding

MODE = os.environ.get("LOCUST_BENCH_MODE", "async")
OP = os.environ.get("LOCUST_BENCH_OP", "search")
if MODE not in ("async", "sync") or OP not in ("search", "add"):
    raise SystemExit(f"bench/bare_locustfile.py: LOCUST_BENCH_MODE={MODE!r} LOCUST_BENCH_OP={OP!r}: the mode is "
                     "async or sync, the operation search or add")
ASYNC = MODE == "async"
# Sync only, to take our sync path apart: each call in a greenlet of its own (runtime/shield.py, which also grows
# the hub's pool to the calls in flight), or the pool set to a size.
SHIELD = os.environ.get("LOCUST_BENCH_SHIELD") == "1"
POOL = int(os.environ.get("LOCUST_BENCH_POOL", "0"))
BATCH = 10
_numbers = itertools.count()
_rng = random.Random()
_queries = [f"test document {i}" for i in range(50)]
_store = None


def _open(uri: str) -> Milvus:
    return Milvus(embedding_function=make_embedding(int(os.environ.get("LOCUST_BENCH_DIM", "128"))),
                  collection_name=os.environ["LOCUST_BENCH_COLLECTION"], connection_args={"uri": uri}, auto_id=False)


async def _open_async(uri: str) -> Milvus:
    return _open(uri)  # on the bridge's loop: pymilvus binds the async client to it


# The timed calls, one per mode, chosen once below: nothing is decided per request.
def _search_async(query: str) -> list:
    return get_bridge().run(_store.asimilarity_search(query, k=3))


def _search_shielded(query: str) -> list:
    return call_shielded(_store.similarity_search, query, k=3)


def _search_sync(query: str) -> list:
    return _store.similarity_search(query, k=3)


def _add_async(docs: list, ids: list) -> list:
    return get_bridge().run(_store.aadd_documents(docs, ids=ids))


def _add_sync(docs: list, ids: list) -> list:
    return _store.add_documents(docs, ids=ids)


_search = _search_async if ASYNC else _search_shielded if SHIELD else _search_sync
_add = _add_async if ASYNC else _add_sync
_REQUEST_TYPE = "langchain-async" if ASYNC else "langchain"


class BareUser(User):
    def add(self) -> None:
        # As our add and contrib's: new documents with explicit ids, made before the timed call; LangChain embeds
        # them inside it.
        docs = [make_document(next(_numbers), _rng) for _ in range(BATCH)]
        self._timed("add", BATCH, _add, docs, [f"bare-{os.getpid()}-{d.metadata['id']}" for d in docs])

    def search(self) -> None:
        self._timed("search", 3, _search, random.choice(_queries))

    def _timed(self, name: str, expected: int, call, *args) -> None:
        """One request event for ``call(*args)``: its perf_counter time, failed when it raises or returns other
        than ``expected`` items."""
        start = time.perf_counter()
        exception = None
        try:
            got = len(call(*args))
            if got != expected:
                exception = AssertionError(f"{got} items returned, {expected} expected")
        except Exception as exc:  # noqa: BLE001 - fired as the failure
            exception = exc
        self.environment.events.request.fire(
            request_type=_REQUEST_TYPE, name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=0, exception=exception, context={})

    tasks = [add] if OP == "add" else [search]


@events.init.add_listener
def _init(environment, **_):
    environment.events.request.add_listener(monitor.count_request)  # as locust_milvus/plugin.py does
    if not ASYNC:
        make_grpc_cooperative()
        if POOL:
            gevent.get_hub().threadpool.maxsize = POOL


@events.test_start.add_listener
def _start(environment, **_):
    global _store
    if ASYNC:
        bridge = get_bridge()
        _store = bridge.run(_open_async(environment.host))
        bridge.run(_store.asimilarity_search("warm up", k=3))
    else:
        _store = _open(environment.host)
        _store.similarity_search("warm up", k=3)
    monitor.start(environment.runner)


@events.test_stop.add_listener
def _stop(environment, **_):
    monitor.stop()


@events.quitting.add_listener
def _quit(environment, **_):
    if ASYNC:
        get_bridge().on_close(_store._async_milvus_client.close)
        close_bridge()
