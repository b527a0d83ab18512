"""Benchmark: where the async user's CPU gap to the plain asyncio script goes, one layer at a time, without Locust.

    python bench/async_split.py [--seconds 8] [--users 20]

Starts an embedded Milvus and writes 1,000 tutorial-shaped documents (128-dim), then runs each set-up below in a
child process of its own (grpc.aio binds to one loop per process) for --seconds, 20 searches in flight (k=3,
LangChain's ``asimilarity_search`` with the offline embedding), in turn:

1. ``plain``: plain asyncio, no gevent: 20 tasks each searching in a loop (the tutorial's way, kept 20 in flight);
2. ``loop-only``: under gevent's patching, the same 20 tasks run on the async bridge's loop thread, no hop per
   search: what the loop thread and grpc.aio cost beside a hub;
3. ``bridge``: under gevent's patching, 20 greenlets each handing every search to the async bridge
   (``AsyncBridge.run``): the async user's call without Locust;
4. ``hub-loop``: under gevent's patching, an asyncio loop run by a greenlet on the hub's own thread (gevent's
   patched selector), 20 greenlets handing every search to it; grpc.aio's poller a native thread as in the bridge.
   An experiment: one thread fewer per hop;
5. ``locust-bare``: a headless Locust run of the least user that does this (bench/bare_locustfile.py: the
   bridge hop, perf_counter timing, one request event);
6. ``AsyncMilvusUser``: a headless Locust run of our async user, search only.

The Locust rows take their CPU as bench/search_throughput.py does (the monitor's process CPU over the test).

Prints searches/s and process CPU per search (all threads) for each. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "async_split"


def _store(uri: str):
    from langchain_milvus import Milvus

    from locust_milvus.workload.embeddings import make_embedding

    return Milvus(embedding_function=make_embedding(128), collection_name=COLLECTION, connection_args={"uri": uri},
                  auto_id=False)


async def _searcher(store, queries, stop_at: float, counter: list[int]) -> None:
    import time as _time

    rng = random.Random()
    while _time.perf_counter() < stop_at:
        docs = await store.asimilarity_search(rng.choice(queries), k=3)
        assert len(docs) == 3
        counter[0] += 1


def _greenlets_searching(run, store, queries, users: int, stop_at: float) -> int:
    """``users`` greenlets, each handing one search after another to ``run`` until ``stop_at``; the searches made."""
    import gevent

    counter = [0]

    def user() -> None:
        rng = random.Random()
        while time.perf_counter() < stop_at:
            docs = run(store.asimilarity_search(rng.choice(queries), k=3))
            assert len(docs) == 3
            counter[0] += 1

    gevent.joinall([gevent.spawn(user) for _ in range(users)], raise_error=True)
    return counter[0]


def _measure(body, seconds: float) -> dict:
    cpu0, t0 = time.process_time(), time.perf_counter()
    count = body(t0 + seconds)
    return {"searches": count, "wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}


def child(mode: str, uri: str, seconds: float, users: int) -> dict:
    queries = [f"test document {i}" for i in range(50)]
    if mode == "plain":
        import asyncio

        async def main() -> dict:
            store = _store(uri)
            await store.asimilarity_search("warm up", k=3)

            counter = [0]
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(_searcher(store, queries, t0 + seconds, counter) for _ in range(users)))
            return {"searches": counter[0], "wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}

        return asyncio.run(main())

    import gevent

    from locust_milvus import SyncMilvusUser  # noqa: F401 - the package's modules import each other in this order
    from locust_milvus.runtime.grpc_gevent import make_grpc_cooperative

    make_grpc_cooperative()
    if mode in ("loop-only", "bridge"):
        from locust_milvus.runtime.bridge import get_bridge

        bridge = get_bridge()

        async def build():
            return _store(uri)

        store = bridge.run(build())
        bridge.run(store.asimilarity_search("warm up", k=3))
        if mode == "loop-only":
            import asyncio

            def body(stop_at: float) -> int:
                counter = [0]

                async def all_of_them() -> None:
                    await asyncio.gather(*(_searcher(store, queries, stop_at, counter) for _ in range(users)))

                bridge.run(all_of_them())
                return counter[0]
        else:
            def body(stop_at: float) -> int:
                return _greenlets_searching(bridge.run, store, queries, users, stop_at)
        return _measure(body, seconds)

    assert mode == "hub-loop", mode
    import asyncio

    import gevent.hub

    from locust_milvus.runtime.bridge import AsyncBridge

    loop = asyncio.SelectorEventLoop()  # gevent's patched selector: select() waits cooperatively on the hub
    hub = gevent.get_hub()

    def serve() -> None:
        loop.run_forever()

    gevent.spawn(serve)

    def run(coro):
        task = loop.create_task(coro)
        waiter = gevent.hub.Waiter()
        task.add_done_callback(lambda _t: hub.loop.run_callback(waiter.switch, None))
        loop._write_to_self()  # wake the loop greenlet's select()
        waiter.get()
        return task.result()

    run(AsyncBridge._init_grpc_aio())  # grpc.aio's poller as a native thread, as the bridge starts it

    async def build():
        return _store(uri)

    store = run(build())
    run(store.asimilarity_search("warm up", k=3))

    return _measure(lambda stop_at: _greenlets_searching(run, store, queries, users, stop_at), seconds)


MODES = ("plain", "loop-only", "bridge", "hub-loop", "locust-bare", "AsyncMilvusUser")


def locust_row(mode: str, uri: str, seconds: float, users: int) -> dict:
    import os

    sys.path.insert(0, str(ROOT / "bench"))
    from search_throughput import locust

    if mode == "locust-bare":
        env = {**os.environ, "LOCUST_BENCH_COLLECTION": COLLECTION, "LOCUST_BENCH_DIM": "128"}
        r = locust(ROOT / "bench" / "bare_locustfile.py", uri, users, int(seconds), env=env)
    else:
        r = locust(ROOT / "locustfiles" / "locustfile.py", uri, users, int(seconds), mode, "--collection", COLLECTION,
                   "--existing-collection", "--dim", "128", "--top-k", "3", "--add-weight", "0", "--delete-weight",
                   "0", "--search-weight", "1", "--reports-dir", tempfile.gettempdir())
    return {"rps": r["rps"], "cpu_us": r["cpu_us"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=1, help="run the set-ups this many times, interleaved")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(child(args.child, args.uri, args.seconds, args.users)), flush=True)
        return
    from locust_milvus.embedded.server import EmbeddedMilvus
    from locust_milvus.workload.data import make_document
    from locust_milvus.workload.embeddings import make_embedding

    with EmbeddedMilvus() as server:
        from langchain_milvus import Milvus

        rng = random.Random(0)
        store = Milvus(embedding_function=make_embedding(128), collection_name=COLLECTION,
                       connection_args={"uri": server.uri}, auto_id=False, drop_old=True, consistency_level="Session")
        store.add_documents([make_document(n, rng) for n in range(1000)], ids=[f"d-{n}" for n in range(1000)])
        print("| set-up | searches/s | CPU per search (µs) |\n|---|---:|---:|", flush=True)
        for _ in range(args.rounds):
            for mode in args.modes.split(","):
                if mode in ("locust-bare", "AsyncMilvusUser"):
                    r = locust_row(mode, server.uri, args.seconds, args.users)
                    print(f"| {mode} | {r['rps']:.0f} | {r['cpu_us']:.0f} |", flush=True)
                    continue
                cmd = [sys.executable] + ([] if mode == "plain" else ["-m", "gevent.monkey"]) + [
                    __file__, "--child", mode, "--uri", server.uri, "--seconds", str(args.seconds),
                    "--users", str(args.users)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 120)
                if out.returncode:
                    print(f"| {mode} | failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-1:]} | |",
                          flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {mode} | {r['searches'] / r['wall']:.0f} | {r['cpu'] / r['searches'] * 1e6:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
