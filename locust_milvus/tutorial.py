"""``locust-milvus tutorial``: the LangChain tutorial's sync-versus-async timing table, reproduced.

For add, search and delete at each count (10, 100 and 1000 by default), the tutorial's method: once
sequentially with the sync API, once concurrently with the async API and one ``asyncio.gather``. Same data
shape (``generate_test_documents``), same queries (``test document {i % 50}``, k=3), same deletes by metadata
expression (``id == 'doc_{i}'``). Writes ``tutorial.md`` (table) and ``tutorial.png`` (bar chart) under
``reports/<timestamp>-tutorial/``, beside the tutorial's published figures.

Plain asyncio, no gevent and no Locust: this is the tutorials' script, measured honestly (``perf_counter``), not
a load test.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

from langchain_milvus import Milvus

from locust_milvus.milvus.store import create_schema
from locust_milvus.workload.data import make_document
from locust_milvus.workload.embeddings import make_embedding

# Published in Milvus's tutorial "Asynchronous Functions in LangChain Milvus Integration"
# (https://milvus.io/docs/langchain_milvus_async.md; seconds; OpenAI embeddings, remote Milvus, 2025-06-05).
PUBLISHED = {
    ("add", 10): (5.36, 1.74), ("add", 100): (65.60, 2.77),
    ("search", 10): (6.07, 2.31), ("search", 100): (54.22, 3.72),
    ("delete", 10): (2.82, 0.58), ("delete", 100): (29.21, 0.61),
}
PUBLISHED_NOTE = (
    "The tutorial's figures went to a remote Milvus through OpenAI embeddings (one embedding request per add and "
    "per search), so network and provider latency dominate them; ours use the offline deterministic embedding "
    "against the Milvus named below, so they show Milvus and client time alone. The collection is created before "
    "each timed run (the tutorial's first add also paid for creating it). Deletes are by metadata expression, as "
    "in the tutorial: Milvus first queries the expression at the collection's consistency level (Session), so each "
    "sequential delete waits for the server's time tick; concurrent ones share the wait."
)
POPULATION = 1000  # the tutorial populates 1,000 documents before its search and delete runs
COLLECTION = "langchain_perf_test"


@dataclass
class Row:
    op: str
    count: int
    sync_s: float
    async_s: float


def _store(uri: str, dim: int, drop: bool) -> Milvus:
    store = Milvus(embedding_function=make_embedding(dim), collection_name=COLLECTION,
                   connection_args={"uri": uri}, auto_id=False, drop_old=drop)
    # Created before timing: the tutorial's first add also paid for creating the collection (about 2.5 s here).
    create_schema(store)
    return store


def _docs(n: int, rng: random.Random):
    return [make_document(i, rng) for i in range(n)]


def _populate(store: Milvus, rng: random.Random) -> None:
    docs = _docs(POPULATION, rng)
    store.add_documents(docs, ids=[f"pop-{i}" for i in range(POPULATION)])


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def _async_run(uri: str, dim: int, op: str, count: int, rng: random.Random) -> float:
    # The store is built inside the running loop: pymilvus binds its async connection to it.
    store = _store(uri, dim, drop=True)
    if op != "add":
        _populate(store, rng)
    if op == "add":
        docs = _docs(count, rng)
        calls = [store.aadd_documents([d], ids=[f"a-{i}"]) for i, d in enumerate(docs)]
    elif op == "search":
        calls = [store.asimilarity_search(f"test document {i % 50}", k=3) for i in range(count)]
    else:
        calls = [store.adelete(expr=f"id == 'doc_{i}'") for i in range(count)]
    start = time.perf_counter()
    results = await asyncio.gather(*calls)
    elapsed = time.perf_counter() - start
    _check(op, results)
    return elapsed


def _sync_run(uri: str, dim: int, op: str, count: int, rng: random.Random) -> float:
    store = _store(uri, dim, drop=True)
    if op != "add":
        _populate(store, rng)
    results = []
    if op == "add":
        docs = _docs(count, rng)
        elapsed = _timed(lambda: [results.append(store.add_documents([d], ids=[f"s-{i}"]))
                                  for i, d in enumerate(docs)])
    elif op == "search":
        elapsed = _timed(lambda: [results.append(store.similarity_search(f"test document {i % 50}", k=3))
                                  for i in range(count)])
    else:
        elapsed = _timed(lambda: [results.append(store.delete(expr=f"id == 'doc_{i}'")) for i in range(count)])
    _check(op, results)
    return elapsed


def _check(op: str, results: list) -> None:
    # The tutorial never looks at its results; a timing of failed calls would be worthless, so we do.
    if op == "add" and not all(len(r) == 1 for r in results):
        raise RuntimeError("an add returned no id")
    if op == "search" and not all(len(r) == 3 for r in results):
        raise RuntimeError("a search returned fewer than 3 documents")
    if op == "delete" and not all(r is True for r in results):
        raise RuntimeError("a delete returned False")


def run(uri: str, counts: list[int], dim: int = 128) -> list[Row]:
    rng = random.Random(0)
    rows = []
    for op in ("add", "search", "delete"):
        for count in counts:
            sync_s = _sync_run(uri, dim, op, count, rng)
            async_s = asyncio.run(_async_run(uri, dim, op, count, rng))
            rows.append(Row(op, count, sync_s, async_s))
            print(f"{op:6} x{count:<5} sync {sync_s:8.2f} s   async {async_s:8.2f} s", flush=True)
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    client.drop_collection(COLLECTION)
    client.close()
    return rows


def write_report(rows: list[Row], target: str, out_dir: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The LangChain tutorial's sync-versus-async table, reproduced",
        "",
        f"Target: {target}. Command: `locust-milvus tutorial`. Sequential sync calls against one "
        "`asyncio.gather` of the async calls; seconds from `time.perf_counter()`.",
        "",
        "| operation | count | sync (s) | async (s) | async speed-up | tutorial sync (s) | tutorial async (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pub = PUBLISHED.get((r.op, r.count))
        pub_text = f"{pub[0]:.2f} | {pub[1]:.2f}" if pub else "n/a | n/a"
        lines.append(f"| {r.op} | {r.count} | {r.sync_s:.2f} | {r.async_s:.2f} | {r.sync_s / r.async_s:.1f}x | "
                     f"{pub_text} |")
    lines += ["", PUBLISHED_NOTE, "", "![chart](tutorial.png)", ""]
    table = out_dir / "tutorial.md"
    table.write_text("\n".join(lines))

    labels = [f"{r.op}\n{r.count}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.1), 4.5))
    width = 0.2
    ax.bar([i - 1.5 * width for i in x], [r.sync_s for r in rows], width, label="ours, sync")
    ax.bar([i - 0.5 * width for i in x], [r.async_s for r in rows], width, label="ours, async")
    published = [PUBLISHED.get((r.op, r.count)) for r in rows]
    ax.bar([i + 0.5 * width for i in x], [p[0] if p else 0 for p in published], width, label="tutorial, sync",
           alpha=0.5)
    ax.bar([i + 1.5 * width for i in x], [p[1] if p else 0 for p in published], width, label="tutorial, async",
           alpha=0.5)
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log scale)")
    ax.set_title("LangChain + Milvus: sequential sync vs asyncio.gather")
    ax.legend(fontsize=8)
    fig.tight_layout()
    chart = out_dir / "tutorial.png"
    fig.savefig(chart, dpi=110)
    plt.close(fig)
    return table, chart
