"""Benchmark: the soak scenario as a master and two workers, and whether every process's memory holds.

    python bench/soak.py [--minutes 10] [--workers 2] [--limit-pct 10]

Starts the embedded Milvus, then a headless master with scenarios/soak.conf (10 users, search 8 : add 1 : upsert 1
: delete 1) and the workers, all on this machine, for --minutes. The report samples each process's resident memory
(runtime/memory.py); this prints, per process, RSS at start, after the warm-up (60 s or the first fifth of the run,
whichever is longer), at the end and its peak, and the growth after warm-up, then the run's figures. Exit code 1
when any process grew by --limit-pct or more after warm-up, or the run did not end cleanly. Not a test: it takes
the whole of --minutes, and belongs on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locust_milvus.embedded.server import EmbeddedMilvus  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit-pct", type=float, default=10.0)
    args = parser.parse_args()
    seconds = int(args.minutes * 60)
    with EmbeddedMilvus() as server, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        common = [sys.executable, "-m", "locust", "--config", str(ROOT / "scenarios" / "soak.conf")]
        logs = [open(Path(tmp) / f"{name}.log", "w") for name in ("master", *(f"w{i}" for i in range(args.workers)))]
        master = subprocess.Popen([*common, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port",
                                   str(port), "--expect-workers", str(args.workers), "-t", f"{seconds}s", "--host",
                                   server.uri, "--collection", "bench_soak", "--drop-collection",
                                   "--reports-dir", tmp, "--exit-code-on-error", "0"],
                                  cwd=ROOT, stdout=logs[0], stderr=subprocess.STDOUT)
        workers = [subprocess.Popen([*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT) for log in logs[1:]]
        began = time.monotonic()
        code = master.wait(timeout=seconds + 600)
        worker_codes = [w.wait(timeout=60) for w in workers]
        elapsed = time.monotonic() - began
        for log in logs:
            log.close()
        folders = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if not folders:
            print((Path(tmp) / "master.log").read_text()[-3000:])
            raise SystemExit(f"no report (master exit {code})")
        data = json.loads((folders[0] / "summary.json").read_text())
    memory = (data.get("generator_health") or {}).get("memory") or []
    print(f"soak: {args.minutes:g} min, master + {args.workers} workers, scenarios/soak.conf; ended after "
          f"{elapsed:.0f} s, exit codes master {code}, workers {worker_codes}")
    print(f"{'process':<26} {'start MiB':>10} {'warm MiB':>10} {'end MiB':>10} {'peak MiB':>10} {'growth':>9}")
    worst = 0.0
    for m in memory:
        g = m.get("growth")
        if g is None:
            print(f"{m['process']:<26} {m['rss_mb'][0][1]:>10.1f} {'n/a':>10} {m['rss_mb'][-1][1]:>10.1f}")
            continue
        worst = max(worst, g["growth_pct"])
        print(f"{m['process']:<26} {g['start_mb']:>10.1f} {g['after_warmup_mb']:>10.1f} {g['end_mb']:>10.1f} "
              f"{g['peak_mb']:>10.1f} {g['growth_pct']:>+8.1f}%  (warm-up {g['warmup_s']:.0f} s)")
    total = sum(r["count"] for r in data["rows"])
    failures = sum(r["failures"] for r in data["rows"])
    print(f"requests {total}, failures {failures}, processes sampled {len(memory)}; worst growth after warm-up "
          f"{worst:+.1f}% (limit {args.limit_pct:g}%)")
    ok = code == 0 and worker_codes == [0] * args.workers and len(memory) == args.workers + 1 and \
        all(m.get("growth") for m in memory) and worst < args.limit_pct
    print("soak: " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
