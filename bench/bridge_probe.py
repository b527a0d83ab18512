"""In-process measurements for bench/search_throughput.py, run under gevent's monkey-patching as locust runs:

    python -m gevent.monkey bench/bridge_probe.py [--hops 3000]

- the async bridge's wake-up latency: from a coroutine's last statement on the loop thread (a perf_counter read it
  returns) to the greenlet that waited in ``AsyncBridge.run`` running again, p50 and p99, with one hop in flight
  and with 20 (20 greenlets, as 20 users), the 20 either finishing in the same turn of the loop (so that each
  greenlet's wake-up also waits for the batch-mates woken before it) or at random points of 2 ms, as RPCs in
  flight come back; and the process CPU per hop (both threads);
- the sync path's hop: process CPU per ``call_shielded`` of a trivial function (the greenlet each sync call runs in);
- our instrumentation per request, recall off: what our users run around each call (the monitor's enter/leave,
  the embedding-call collector) and the request event through our listeners only (the report's HDR recorder, the
  monitor's totals, the capacity windows), fired with ``fire_operation`` as the users fire it. Locust's own
  statistics listener is not ours and is left out (contrib's users pay it too).

Prints one JSON line. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust.event import Events  # noqa: E402

from locust_milvus import SyncMilvusUser  # noqa: E402, F401 - the users first, as a locustfile imports them
from locust_milvus.capacity import steps as capacity_steps  # noqa: E402
from locust_milvus.report import listeners as report  # noqa: E402
from locust_milvus.runtime.bridge import close_bridge, get_bridge  # noqa: E402
from locust_milvus.runtime.monitor import monitor  # noqa: E402
from locust_milvus.runtime.shield import call_shielded  # noqa: E402
from locust_milvus.workload.request_events import SYNC, fire_operation  # noqa: E402

try:  # what the users call around each call (since issue 18)
    from locust_milvus.workload.embeddings import collect_embedding_calls, stop_collecting
except ImportError:  # before it: the context manager (so that this probe measures older trees too)
    from locust_milvus.workload.embeddings import embedding_calls

    def collect_embedding_calls():
        manager = embedding_calls()
        return manager.__enter__(), manager

    def stop_collecting(manager):
        manager.__exit__(None, None, None)


async def _done_at(spread_s: float = 0.0) -> float:
    # A real suspension, as an RPC's await is. With spread_s, the coroutine finishes at a random point of that
    # interval, as RPCs in flight come back one by one; without, every coroutine in flight finishes in the same
    # turn of the loop, and all of them are handed back to the hub in one batch.
    await asyncio.sleep(random.random() * spread_s if spread_s else 0)
    return time.perf_counter()


SPREAD_S = 0.002  # 20 coroutines finishing at random points of 2 ms: about one every 100 µs, as 20 searches of
# about 2 ms each come back, one by one, against a Milvus that answers each in that time.


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def wake_ups(hops: int, in_flight: int, spread_s: float = 0.0) -> dict:
    bridge = get_bridge()
    for _ in range(200):  # warm-up
        bridge.run(_done_at())
    delays: list[float] = []

    def waiter(n: int) -> None:
        for _ in range(n):
            done = bridge.run(_done_at(spread_s))
            delays.append(time.perf_counter() - done)

    cpu0, t0 = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(waiter, hops // in_flight) for _ in range(in_flight)], raise_error=True)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"p50_us": _percentile(delays, 0.5) * 1e6, "p99_us": _percentile(delays, 0.99) * 1e6,
            "cpu_per_hop_us": cpu / len(delays) * 1e6, "hops_per_s": len(delays) / wall}


def _noop() -> None:
    return None


def shield_hop(calls: int) -> float:
    best = float("inf")
    for _ in range(3):
        cpu0 = time.process_time()
        for _ in range(calls):
            call_shielded(_noop)
        best = min(best, (time.process_time() - cpu0) / calls * 1e6)
    return best


def instrumentation(requests: int) -> dict:
    events = Events()
    environment = type("Env", (), {"events": events})()
    for listener in (report.recorder.record, monitor.count_request, capacity_steps.windows.record):
        events.request.add_listener(listener)  # as plugin.py registers them
    report.recorder.reset()

    def around() -> None:  # what a user runs around its call, and the event
        monitor.enter(SYNC, "search")
        embeds, token = collect_embedding_calls()
        stop_collecting(token)
        monitor.leave(SYNC)
        fire_operation(environment, SYNC, "search", 0.0123, 3, None, embeds, None, deadline_s=10.0)

    def bare() -> None:  # the event alone, no listener: what Locust's dispatch costs anyway
        empty.request.fire(request_type=SYNC, name="search", response_time=12.3, response_length=3, exception=None,
                           context={})

    empty = Events()
    out = {}
    for label, fn in (("ours_us", around), ("dispatch_only_us", bare)):
        best = float("inf")
        for _ in range(3):
            cpu0 = time.process_time()
            for _ in range(requests):
                fn()
            best = min(best, (time.process_time() - cpu0) / requests * 1e6)
        out[label] = best
    report.recorder.reset()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=3000)
    args = parser.parse_args()
    result = {
        "bridge_1": wake_ups(args.hops, 1),
        "bridge_20": wake_ups(args.hops * 2, 20),
        "bridge_20_spread": wake_ups(args.hops * 2, 20, SPREAD_S),
        "shield_cpu_per_call_us": shield_hop(20000),
        "instrumentation": instrumentation(50000),
    }
    close_bridge()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
