"""Benchmark: searches/s and client CPU per search, four clients, one embedded Milvus, 20 in flight each.

    python bench/search_throughput.py [--seconds 20] [--users 20]

Clients, one after the other against the same server and the same 1,000 tutorial-shaped documents (128-dim, k=3):
SyncMilvusUser and AsyncMilvusUser (this project, search only), Locust's own locust.contrib.milvus.MilvusUser
searching by a pre-computed vector, and a plain asyncio.gather script of LangChain's asimilarity_search (the
tutorials' method). Client CPU is the load generator's process CPU time (all threads) over the measured window,
divided by the searches it made. Prints a Markdown table and writes it to reports/bench-<timestamp>.md.
This is a benchmark, not a test: it asserts nothing and its figures vary with the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locust_milvus.embedded.server import EmbeddedMilvus  # noqa: E402

MONITOR = re.compile(r"locust-milvus monitor: .* cpu_s=([\d.]+)")
COLLECTION = "bench"


def locust(locustfile: Path, uri: str, users: int, seconds: int, *extra: str, env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", str(users), "-r",
               str(users), "-t", f"{seconds}s", "--host", uri, "--csv", f"{tmp}/run", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=seconds + 300)
        output = proc.stdout + proc.stderr
        with open(f"{tmp}/run_stats.csv", newline="") as f:
            total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    cpu = MONITOR.search(output)
    if proc.returncode != 0 or cpu is None or int(total["Failure Count"]):
        raise SystemExit(f"benchmark run failed ({' '.join(cmd)}):\n{output[-3000:]}")
    requests = int(total["Request Count"])
    return {"rps": float(total["Requests/s"]), "requests": requests, "cpu_us": float(cpu.group(1)) / requests * 1e6,
            "p50_ms": float(total["50%"])}


def ours(user_class: str, uri: str, users: int, seconds: int) -> dict:
    return locust(ROOT / "locustfiles" / "locustfile.py", uri, users, seconds, user_class, "--collection",
                  COLLECTION, "--drop-collection", "--prepopulate", "1000", "--dim", "128", "--top-k", "3",
                  "--add-weight", "0", "--delete-weight", "0", "--search-weight", "1")


def contrib(uri: str, users: int, seconds: int) -> dict:
    import os

    env = {**os.environ, "LOCUST_BENCH_COLLECTION": COLLECTION, "LOCUST_BENCH_DIM": "128"}
    return locust(ROOT / "bench" / "contrib_milvus_locustfile.py", uri, users, seconds, env=env)


def gather(uri: str, users: int, seconds: int) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "asyncio_gather.py"), uri, COLLECTION, str(seconds),
                           str(users), "128"], cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    if proc.returncode != 0:
        raise SystemExit(f"asyncio.gather script failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rps": r["requests"] / r["seconds"], "requests": r["requests"], "cpu_us": r["cpu_s"] / r["requests"] * 1e6,
            "p50_ms": float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="measured seconds per client (default 20)")
    parser.add_argument("--users", type=int, default=20, help="users (or gathered searches) per client (default 20)")
    args = parser.parse_args()
    with EmbeddedMilvus() as server:
        results = {
            "SyncMilvusUser": ours("SyncMilvusUser", server.uri, args.users, args.seconds),
            "AsyncMilvusUser": ours("AsyncMilvusUser", server.uri, args.users, args.seconds),
            "contrib MilvusUser (raw pymilvus)": contrib(server.uri, args.users, args.seconds),
            "asyncio.gather script (tutorials)": gather(server.uri, args.users, args.seconds),
        }
    base_gather = results["asyncio.gather script (tutorials)"]["rps"]
    base_contrib = results["contrib MilvusUser (raw pymilvus)"]["rps"]
    lines = [
        f"Searches against one embedded Milvus 2.3.5, 1,000 documents, 128-dim, k=3, {args.users} in flight, "
        f"{args.seconds} s each (`python bench/search_throughput.py --seconds {args.seconds} --users {args.users}`).",
        "",
        "| client | searches/s | median ms | client CPU per search (µs) | vs asyncio.gather | vs contrib |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        median = "n/a" if r["p50_ms"] != r["p50_ms"] else f"{r['p50_ms']:.0f}"
        lines.append(f"| {name} | {r['rps']:.0f} | {median} | {r['cpu_us']:.0f} | {r['rps'] / base_gather:.2f}x | "
                     f"{r['rps'] / base_contrib:.2f}x |")
    lines += ["", "Median is Locust's (whole milliseconds below 100 ms); the gather script reports none. "
              "Server and generator share this machine's cores."]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "reports" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
