"""Benchmark: what the embedded Milvus's loopback relay (locust_milvus/embedded/loopback.py) costs per call.

    python bench/loopback_relay.py [--searches 3000] [--seconds 10] [--threads 8]

Starts the embedded Milvus twice, once in its private network namespace behind the relay on 127.0.0.1 (the default)
and once in the host's network (``network="host"``, where Milvus listens on every interface), each with the same
1,000 random 128-dim vectors (FLAT index, k=3, Bounded consistency: Strong searches from MilvusClient
hung on the embedded 2.3.5 here, in both networks). Against each: sequential searches with pymilvus's MilvusClient
(latency percentiles, float ms from perf_counter), then searches from THREADS threads for SECONDS (searches/s, and
the relay process's CPU time per search from /proc). Prints a Markdown table and writes it to
reports/bench-loopback-<timestamp>.md. A benchmark, not a test: it asserts nothing; figures vary with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locust_milvus.embedded.server import EmbeddedMilvus  # noqa: E402

DIM, ROWS, K = 128, 1000, 3


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(network: str, searches: int, seconds: float, threads: int) -> dict:
    from pymilvus import DataType, MilvusClient

    rng = np.random.default_rng(7)
    vectors = rng.random((ROWS, DIM), dtype=np.float32)
    with EmbeddedMilvus(network=network) as server:
        client = MilvusClient(uri=server.uri)
        schema = MilvusClient.create_schema()
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        index = client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="L2")
        client.create_collection("bench", schema=schema, index_params=index, consistency_level="Bounded")
        client.insert("bench", [{"id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
        queries = rng.random((64, DIM), dtype=np.float32).tolist()
        for q in queries:  # warm-up
            client.search("bench", [q], limit=K)
        latencies = []
        for i in range(searches):
            start = time.perf_counter()
            client.search("bench", [queries[i % len(queries)]], limit=K)
            latencies.append((time.perf_counter() - start) * 1000)
        relay_pid = server.relay_pid
        relay_cpu_before = cpu_seconds(relay_pid) if relay_pid else 0.0
        done, stop = [0] * threads, time.perf_counter() + seconds

        def hammer(slot: int) -> None:
            while time.perf_counter() < stop:
                client.search("bench", [queries[(slot + done[slot]) % len(queries)]], limit=K)
                done[slot] += 1

        began = time.perf_counter()
        pool = [threading.Thread(target=hammer, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - began
        total = sum(done)
        relay_cpu = (cpu_seconds(relay_pid) - relay_cpu_before) if relay_pid else 0.0
        client.close()
    q = statistics.quantiles(latencies, n=100)
    return {"network": network, "isolated": server.isolated, "p50": q[49], "p90": q[89], "p99": q[98],
            "mean": statistics.fmean(latencies), "rps": total / elapsed, "relay_us": relay_cpu / total * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    rows = [measure(network, args.searches, args.seconds, args.threads) for network in ("private", "host")]
    lines = [
        f"Loopback relay cost: {args.searches} sequential searches, then {args.threads} threads for "
        f"{args.seconds:g} s (pymilvus MilvusClient, Bounded consistency, {ROWS} x {DIM}-dim FLAT, k={K}), "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| network | isolated | p50 ms | p90 ms | p99 ms | mean ms | searches/s (threads) | relay CPU µs per search |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        relay = f"{r['relay_us']:.0f}" if r["isolated"] else "(no relay)"
        lines.append(f"| {r['network']} | {'yes' if r['isolated'] else 'no'} | {r['p50']:.3f} | {r['p90']:.3f} | "
                     f"{r['p99']:.3f} | {r['mean']:.3f} | {r['rps']:.0f} | {relay} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "reports" / f"bench-loopback-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
