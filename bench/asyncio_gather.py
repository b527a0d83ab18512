"""The tutorials' method: LangChain async searches run with asyncio.gather, 20 at a time, for a fixed time.

    python bench/asyncio_gather.py URI COLLECTION SECONDS [CONCURRENCY] [DIM]

Prints one JSON line: {"requests": N, "seconds": S, "cpu_s": C}. Plain asyncio, no gevent.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from langchain_milvus import Milvus

from locust_milvus.workload.data import query_text
from locust_milvus.workload.embeddings import make_embedding


async def main(uri: str, collection: str, seconds: float, concurrency: int, dim: int) -> dict:
    store = Milvus(embedding_function=make_embedding(dim), collection_name=collection,
                   connection_args={"uri": uri}, auto_id=False)
    rng = random.Random(0)
    await asyncio.gather(*(store.asimilarity_search(query_text(rng), k=3) for _ in range(concurrency)))  # warm-up
    requests, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        results = await asyncio.gather(*(store.asimilarity_search(query_text(rng), k=3) for _ in range(concurrency)))
        assert all(len(r) == 3 for r in results)
        requests += concurrency
    return {"requests": requests, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}


if __name__ == "__main__":
    uri, collection, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    dim = int(sys.argv[5]) if len(sys.argv) > 5 else 128
    print(json.dumps(asyncio.run(main(uri, collection, seconds, concurrency, dim))))
