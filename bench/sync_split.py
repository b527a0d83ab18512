"""Benchmark: where the sync user's CPU gap to raw pymilvus goes, one layer added at a time, in one process.

    python -m gevent.monkey bench/sync_split.py [--seconds 8] [--users 20]

Starts an embedded Milvus, writes 1,000 tutorial-shaped documents (128-dim), makes sync gRPC gevent-cooperative,
then runs 20 greenlets searching (k=3) for --seconds in each of these set-ups, in turn:

1. raw pymilvus ``MilvusClient.search`` by vector, each call holding a thread of gevent's hub pool at its default
   10 threads (``init_gevent`` alone: contrib's way);
2. the same with the pool grown to the calls in flight plus 4 (runtime/shield.py, the fallback path);
3. the same, each call in a greenlet of its own (``call_shielded``: the fallback path of the sync user);
4. LangChain's ``similarity_search`` (text, the offline embedding) through ``call_shielded``, the pool grown;
5. raw pymilvus with every call waiting on the hub (grpc_gevent.install_hub_waits: the sync user's way);
6. LangChain's ``similarity_search`` waiting on the hub: the sync user's call without Locust.

Prints searches/s and process CPU per search (all threads) for each. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust_milvus import SyncMilvusUser  # noqa: E402, F401 - the package's modules import each other in this order
from locust_milvus.embedded.server import EmbeddedMilvus  # noqa: E402
from locust_milvus.runtime import shield  # noqa: E402
from locust_milvus.runtime.grpc_gevent import install_hub_waits  # noqa: E402
from locust_milvus.workload.data import make_document  # noqa: E402
from locust_milvus.workload.embeddings import make_embedding  # noqa: E402


def run(label: str, search, users: int, seconds: float) -> None:
    count = 0
    stop_at = time.perf_counter() + seconds

    def user() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            search()
            count += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(user) for _ in range(users)], raise_error=True)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    print(f"| {label} | {count / wall:.0f} | {cpu / count * 1e6:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    from grpc.experimental import gevent as grpc_gevent

    grpc_gevent.init_gevent()  # rows 1 to 4: without the hub waits, which are installed for rows 5 and 6
    from langchain_milvus import Milvus
    from pymilvus import MilvusClient

    embedding = make_embedding(128)
    rng = random.Random(0)
    with EmbeddedMilvus() as server:
        docs = [make_document(n, rng) for n in range(1000)]
        store = Milvus(embedding_function=embedding, collection_name="split", connection_args={"uri": server.uri},
                       auto_id=False, drop_old=True, consistency_level="Session")
        store.add_documents(docs, ids=[f"d-{n}" for n in range(1000)])
        client = MilvusClient(uri=server.uri)
        queries = [f"test document {i}" for i in range(50)]
        vectors = [embedding.embed_query(q) for q in queries]

        def raw() -> None:
            client.search("split", data=[random.choice(vectors)], anns_field="vector", limit=3, output_fields=["text"],
                          timeout=10)

        def shielded_raw() -> None:
            shield.call_shielded(raw)

        def langchain() -> None:
            store.similarity_search(random.choice(queries), k=3, timeout=10)

        def shielded_langchain() -> None:
            shield.call_shielded(store.similarity_search, random.choice(queries), k=3, timeout=10)

        pool = gevent.get_hub().threadpool
        print("| set-up | searches/s | CPU per search (µs) |\n|---|---:|---:|")
        pool.maxsize = 10
        run("raw pymilvus, pool of 10", raw, args.users, args.seconds)
        pool.maxsize = args.users + shield.SPARE_THREADS
        run(f"raw pymilvus, pool of {pool.maxsize}", raw, args.users, args.seconds)
        run("raw pymilvus in call_shielded, pool grown", shielded_raw, args.users, args.seconds)
        run("LangChain similarity_search in call_shielded, pool grown", shielded_langchain, args.users, args.seconds)
        pool.maxsize = 10
        run("raw pymilvus, pool of 10 (again)", raw, args.users, args.seconds)
        install_hub_waits()
        run("raw pymilvus, waits on the hub, pool of 10", raw, args.users, args.seconds)
        run("LangChain similarity_search, waits on the hub (the sync user's call)", langchain, args.users,
            args.seconds)


if __name__ == "__main__":
    main()
