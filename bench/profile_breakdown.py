"""Benchmark: where a search's client CPU goes, by layer, for each user class (issue "generator efficiency").

    python bench/profile_breakdown.py [--seconds 10] [--users 20] [--rate 200]

Against one embedded Milvus with 1,000 documents (128-dim, k=3), search only, 20 users: each client runs headless
and, once all users are spawned, py-spy samples every thread of the load generator for --seconds (on-CPU samples
only). Each sample is given to the layer of its innermost frame that belongs to a known package (a standard-library
frame counts for the package that called it), so the shares add up to the process's CPU:

- ours: instrumentation (report/, runtime/monitor.py and health.py, request_events.py: the figures themselves),
  ours: glue (the rest of locust_milvus: users, shield, bridge, operations, pacing);
- the offline embedding (langchain_core's DeterministicFakeEmbedding and workload/embeddings.py);
- LangChain (langchain_core, langchain_milvus), pymilvus, gRPC, gevent (the hub, greenlets), asyncio, Locust,
  protobuf, numpy, and other.

Searches in the window come from Locust's per-second history, so each layer is also given in µs per search.
Needs py-spy (`pip install -e '.[bench]'`) and the right to ptrace the child (root, or ptrace_scope 0).
A benchmark, not a test: it asserts nothing and its figures vary with the machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locust_milvus.embedded.server import EmbeddedMilvus  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")
INSTRUMENTATION = ("locust_milvus/report/", "locust_milvus/runtime/monitor.py", "locust_milvus/runtime/health.py",
                   "locust_milvus/workload/request_events.py", "locust_milvus/runtime/memory.py")
EMBEDDING = ("langchain_core/embeddings/fake.py", "locust_milvus/workload/embeddings.py")
PACKAGES = (("locust_milvus/", "ours: glue"), ("langchain_milvus/", "LangChain"), ("langchain_core/", "LangChain"),
            ("pymilvus/", "pymilvus"), ("grpc/", "gRPC"), ("grpc._cython", "gRPC"), ("gevent/", "gevent"),
            ("greenlet", "gevent"), ("asyncio/", "asyncio"), ("locust/", "Locust"), ("google/protobuf", "protobuf"),
            ("numpy/", "numpy"), ("hdrh/", "HdrHistogram"), ("contrib", "Locust"))
PY_SPY = "py-spy"
ORDER = ("ours: instrumentation", "ours: glue", "offline embedding", "LangChain", "pymilvus", "gRPC", "protobuf",
         "gevent", "asyncio", "Locust", "HdrHistogram", "numpy", "other")


# Frames where a thread waits in a native lock, the GIL released: py-spy's --nonblocking sampling still counts them
# as active. They are gevent's thread-pool workers waiting for work (the sync user keeps a thread per call in
# flight, so most of its pool waits): not CPU, so left out (a first run of this script counted them, and the sync
# user's "gevent" row was then larger than the process's whole measured CPU per search).
IDLE = ("acquire_with_timeout (gevent/_threading.py",)


def layer(stack: list[str]) -> str:
    if stack and any(part in stack[-1] for part in IDLE):
        return "idle"
    files = []
    for frame in stack:
        m = FRAME.match(frame)
        files.append(m.group("file") if m else frame)
    if any(f.endswith(EMBEDDING) for f in files):
        return "offline embedding"
    for f in reversed(files):  # innermost first
        if "locust_milvus/" in f and any(part in f for part in INSTRUMENTATION):
            return "ours: instrumentation"
        for part, name in PACKAGES:
            if part in f:
                return name
    return "other"


def profile(label: str, args: list[str], uri: str, seconds: int, users: int, rate: int, env=None,
            keep: str = "") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "locust", *args, "--headless", "-u", str(users), "-r", str(users),
               "-t", f"{seconds + 20}s", "--host", uri, "--csv", f"{tmp}/run", "--csv-full-history"]
        log = open(f"{tmp}/out.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        began = time.monotonic()
        while "All users spawned" not in Path(f"{tmp}/out.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - began > 180:
                raise SystemExit(f"{label}: did not start:\n{Path(f'{tmp}/out.log').read_text()[-3000:]}")
            time.sleep(0.2)
        time.sleep(3)  # past the first seconds' connection set-up
        t0 = time.time()
        raw = f"{tmp}/samples.txt"
        subprocess.run([PY_SPY, "record", "--pid", str(proc.pid), "--duration", str(seconds), "--rate", str(rate),
                        "--format", "raw", "--nonblocking", "-o", raw], capture_output=True, check=True)
        t1 = time.time()
        if keep:  # py-spy's raw stacks, for a look by function (flamegraph.pl or a grep)
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, Path(keep) / f"{label.replace(' ', '_')}.txt")
        proc.wait(timeout=120)
        log.close()
        searches = _requests_between(Path(f"{tmp}/run_stats_history.csv"), t0, t1)
        layers: Counter = Counter()
        for line in Path(raw).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            layers[layer(stack.split(";"))] += int(count)
    idle = layers.pop("idle", 0)
    total = sum(layers.values())
    cpu_us = total / rate / max(searches, 1) * 1e6
    return {"label": label, "searches": searches, "seconds": t1 - t0, "cpu_us": cpu_us,
            "layers": {name: layers.get(name, 0) / total * cpu_us for name in ORDER}, "samples": total,
            "idle_share": idle / max(idle + total, 1)}


def _requests_between(history: Path, t0: float, t1: float) -> int:
    """Requests made between t0 and t1, from Locust's per-second cumulative counts (the Aggregated rows)."""
    rows = [r for r in csv.DictReader(history.open()) if r["Name"] == "Aggregated"]
    at = [(int(r["Timestamp"]), int(r["Total Request Count"])) for r in rows]

    def count(t: float) -> int:
        before = [c for ts, c in at if ts <= t]
        return before[-1] if before else 0

    return count(t1) - count(t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--keep", default="", help="a folder to keep py-spy's raw stacks in, one file per client")
    parser.add_argument("--clients", default="SyncMilvusUser,AsyncMilvusUser,contrib",
                        help="which clients to profile (default all three)")
    args = parser.parse_args()
    global PY_SPY
    PY_SPY = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if PY_SPY is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    ours = ["-f", str(ROOT / "locustfiles" / "locustfile.py"), "--collection", "bench", "--drop-collection",
            "--prepopulate", "1000", "--dim", "128", "--top-k", "3", "--add-weight", "0", "--delete-weight", "0",
            "--search-weight", "1", "--reports-dir", tempfile.gettempdir()]
    results = []
    with EmbeddedMilvus() as server:
        clients = args.clients.split(",")
        for cls in ("SyncMilvusUser", "AsyncMilvusUser"):
            if cls in clients:
                results.append(profile(cls, [*ours, cls], server.uri, args.seconds, args.users, args.rate,
                                       keep=args.keep))
        if "contrib" in clients:
            env = {**os.environ, "LOCUST_BENCH_COLLECTION": "bench", "LOCUST_BENCH_DIM": "128"}
            results.append(profile("contrib MilvusUser", ["-f", str(ROOT / "bench" / "contrib_milvus_locustfile.py")],
                                   server.uri, args.seconds, args.users, args.rate, env=env, keep=args.keep))
    print(f"Client CPU per search by layer, µs ({args.users} users, search only, py-spy {args.rate}/s for "
          f"{args.seconds} s after spawn)\n")
    print("| layer | " + " | ".join(r["label"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in ORDER:
        if any(r["layers"][name] >= 0.5 for r in results):
            print(f"| {name} | " + " | ".join(f"{r['layers'][name]:.0f}" for r in results) + " |")
    print("| **total** | " + " | ".join(f"**{r['cpu_us']:.0f}**" for r in results) + " |")
    print("| searches/s in the window | " + " | ".join(f"{r['searches'] / r['seconds']:.0f}" for r in results) + " |")
    print("| samples left out as idle (pool threads waiting) | "
          + " | ".join(f"{r['idle_share']:.0%}" for r in results) + " |")


if __name__ == "__main__":
    main()
