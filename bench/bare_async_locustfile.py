"""The least a Locust user can do to time LangChain's async search through the async bridge, for bench/async_split.py.

    LOCUST_BENCH_COLLECTION=bench locust -f bench/bare_async_locustfile.py --host http://127.0.0.1:19530

One task: ``asimilarity_search`` (k=3, the offline embedding) handed to the async bridge, timed with perf_counter,
one request event. None of our users' machinery (operations table, pacing, ledger, recall, health, the report's
listeners): what is left against the plain asyncio script is Locust's and the bridge's.
"""

from locust import User, events, task

import os
import random
import time

from langchain_milvus import Milvus

from locust_milvus.runtime.bridge import close_bridge, get_bridge
from locust_milvus.runtime.monitor import monitor
from locust_milvus.workload.embeddings import make_embedding

_queries = [f"test document {i}" for i in range(50)]
_store = None


async def _open(uri: str) -> Milvus:
    return Milvus(embedding_function=make_embedding(int(os.environ.get("LOCUST_BENCH_DIM", "128"))),
                  collection_name=os.environ["LOCUST_BENCH_COLLECTION"], connection_args={"uri": uri}, auto_id=False)


class BareAsyncUser(User):
    @task
    def search(self) -> None:
        fire = self.environment.events.request.fire
        start = time.perf_counter()
        exception = None
        try:
            docs = get_bridge().run(_store.asimilarity_search(random.choice(_queries), k=3))
            if len(docs) != 3:
                exception = AssertionError(f"{len(docs)} documents")
        except Exception as exc:  # noqa: BLE001 - fired as the failure
            exception = exc
        fire(request_type="langchain-async", name="search", response_time=(time.perf_counter() - start) * 1000,
             response_length=0, exception=exception, context={})


@events.init.add_listener
def _init(environment, **_):
    environment.events.request.add_listener(monitor.count_request)  # as locust_milvus/plugin.py does


@events.test_start.add_listener
def _start(environment, **_):
    global _store
    bridge = get_bridge()
    _store = bridge.run(_open(environment.host))
    bridge.run(_store.asimilarity_search("warm up", k=3))
    monitor.start(environment.runner)


@events.test_stop.add_listener
def _stop(environment, **_):
    monitor.stop()


@events.quitting.add_listener
def _quit(environment, **_):
    bridge = get_bridge()
    bridge.on_close(_store._async_milvus_client.close)
    close_bridge()
