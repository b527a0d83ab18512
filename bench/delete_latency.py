"""Benchmark: delete latency at 200 users, sync against async, one embedded Milvus.

    python bench/delete_latency.py [--users 200] [--seconds 30]

Runs the default mix (8 searches : 1 add : 1 delete) with SyncMilvusUser alone, then AsyncMilvusUser alone, each
against a fresh collection on the same embedded Milvus, and prints per mode the deletes made and their p50, p99
and max from the report's HdrHistogram, and the sync / async ratio of the p50. The target (issue "the edges users
hit first", item 4) is sync within 2x of async: before the sync path's redesign, sync deletes queued behind
gevent's 10-thread pool (p50 9 to 13 s at 200 users, past the 10 s deadline, unseen). A benchmark, not a test:
it asserts nothing, and its figures vary with the machine (this one also runs Milvus on the same 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locust_milvus.embedded.server import EmbeddedMilvus  # noqa: E402

LOCUSTFILE = ROOT / "locustfiles" / "locustfile.py"


def run(uri: str, user_class: str, users: int, seconds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", "50",
               "-t", f"{seconds}s", "--host", uri, "--collection", f"bench_{user_class.lower()}",
               "--drop-collection", "--reports-dir", tmp, "--exit-code-on-error", "0", user_class]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
        folders = list(Path(tmp).iterdir())
        if not folders:
            printed = (proc.stdout + proc.stderr)[-3000:]
            raise SystemExit(f"{user_class}: no report (exit {proc.returncode}):\n{printed}")
        summary = json.loads((folders[0] / "summary.json").read_text())
    return {r["name"]: r for r in summary["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    with EmbeddedMilvus() as server:
        rows = {mode: run(server.uri, cls, args.users, args.seconds)
                for mode, cls in (("sync", "SyncMilvusUser"), ("async", "AsyncMilvusUser"))}
    print(f"Delete latency at {args.users} users, {args.seconds} s each, default mix, embedded Milvus 2.3.5")
    print()
    print("| mode | deletes | failures | p50 ms | p99 ms | max ms | searches |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, by_name in rows.items():
        d, s = by_name.get("delete") or {}, by_name.get("search") or {}
        print(f"| {mode} | {d.get('count', 0):,} | {d.get('failures', 0):,} | {d.get('p50_ms') or 0:.1f} | "
              f"{d.get('p99_ms') or 0:.1f} | {d.get('max_ms') or 0:.1f} | {s.get('count', 0):,} |")
    sync_p50 = (rows["sync"].get("delete") or {}).get("p50_ms")
    async_p50 = (rows["async"].get("delete") or {}).get("p50_ms")
    if sync_p50 and async_p50:
        print(f"\nsync / async delete p50: {sync_p50 / async_p50:.2f}x (target: within 2x)")


if __name__ == "__main__":
    main()
