"""Benchmark: where the sync user's CPU gap to raw pymilvus goes, one layer added at a time, in one process.

    python -m gevent.monkey bench/sync_split.py [--seconds 8] [--users 20] [--op search|add]

Starts an embedded Milvus, writes 1,000 tutorial-shaped documents (128-dim), makes sync gRPC gevent-cooperative,
then runs 20 greenlets searching (k=3) for --seconds in each of these set-ups, in turn:

1. raw pymilvus ``MilvusClient.search`` by vector, each call holding a thread of gevent's hub pool at its default
   10 threads (``init_gevent`` alone: contrib's way);
2. the same with the pool grown to the calls in flight plus 4 (runtime/shield.py, the fallback path);
3. the same, each call in a greenlet of its own (``call_shielded``: the fallback path of the sync user);
4. LangChain's ``similarity_search`` (text, the offline embedding) through ``call_shielded``, the pool grown;
5. raw pymilvus with every call waiting on the hub (grpc_gevent.install_hub_waits: the sync user's way);
6. the same, asking for the fields LangChain's search asks for (the text and every metadata field; rows 1 to 5
   ask for the text alone, as the contrib user of bench/contrib_milvus_locustfile.py does);
7. LangChain's ``similarity_search`` waiting on the hub: the sync user's call without Locust.

With ``--op add``, adds of 10 new documents (the offline embedding inside the call, as LangChain embeds inside
``add_documents``), each set-up 20 greenlets for --seconds in turn:

1. raw pymilvus ``MilvusClient.insert`` with gevent's pool of 10 (contrib's way);
2. the same with every call waiting on the hub;
3. raw pymilvus ``has_collection`` then ``insert``, waiting on the hub: LangChain's two RPCs per add without
   LangChain's Python (langchain_milvus's ``add_texts`` asks whether the collection exists before every insert);
4. LangChain's ``add_documents`` waiting on the hub: the sync user's call without Locust;
5. row 2 again (this machine's figures move between runs; the hub waits cannot be taken out again).

Prints operations/s and process CPU per operation (all threads) for each. A benchmark, not a test: it asserts
nothing.
"""

from __future__ import annotations

import argparse
import itertools
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


def run(label: str, op, users: int, seconds: float) -> None:
    count = 0
    stop_at = time.perf_counter() + seconds

    def user() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            op()
            count += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(user) for _ in range(users)], raise_error=True)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    print(f"| {label} | {count / wall:.0f} | {cpu / count * 1e6:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--op", choices=("search", "add"), default="search")
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

        fields = store._get_output_fields()  # what LangChain's search asks for: the text and every metadata field

        def raw_fields() -> None:
            client.search("split", data=[random.choice(vectors)], anns_field="vector", limit=3, output_fields=fields,
                          timeout=10)

        def shielded_raw() -> None:
            shield.call_shielded(raw)

        def langchain() -> None:
            store.similarity_search(random.choice(queries), k=3, timeout=10)

        def shielded_langchain() -> None:
            shield.call_shielded(store.similarity_search, random.choice(queries), k=3, timeout=10)

        pool = gevent.get_hub().threadpool
        print("| set-up | ops/s | CPU per op (µs) |\n|---|---:|---:|")
        if args.op == "add":
            add_rows(client, store, embedding, args.users, args.seconds)
            return
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
        run("raw pymilvus, waits on the hub, the output fields LangChain asks for", raw_fields, args.users,
            args.seconds)
        run("LangChain similarity_search, waits on the hub (the sync user's call)", langchain, args.users,
            args.seconds)


def add_rows(client, store, embedding, users: int, seconds: float) -> None:
    """The --op add rows: adds of 10 new documents with explicit ids, one layer added at a time."""
    numbers, rng = itertools.count(1000), random.Random(1)

    def batch():
        docs = [make_document(next(numbers), rng) for _ in range(10)]
        return docs, [f"d-{d.metadata['id']}" for d in docs]

    def raw_insert() -> None:
        docs, ids = batch()
        vectors = embedding.embed_documents([d.page_content for d in docs])
        client.insert("split", [{"pk": i, "text": d.page_content, "vector": v, **d.metadata}
                                for i, d, v in zip(ids, docs, vectors, strict=True)], timeout=10)

    def raw_two_rpcs() -> None:
        client.has_collection("split", timeout=10)
        raw_insert()

    def langchain() -> None:
        docs, ids = batch()
        store.add_documents(docs, ids=ids, timeout=10)

    run("raw pymilvus insert, pool of 10 (contrib's way)", raw_insert, users, seconds)
    install_hub_waits()
    run("raw pymilvus insert, waits on the hub", raw_insert, users, seconds)
    run("raw pymilvus has_collection + insert, waits on the hub (LangChain's RPCs)", raw_two_rpcs, users, seconds)
    run("LangChain add_documents, waits on the hub (the sync user's call)", langchain, users, seconds)
    run("raw pymilvus insert, waits on the hub (again)", raw_insert, users, seconds)

if __name__ == "__main__":
    main()
