"""Evidence that load is really concurrent: peak in-flight operations per mode and gevent hub lag.

A blocked hub (a sync gRPC call that does not cooperate, CPU saturation) shows up as ticker lag; serialised
calls show up as a peak of 1 in flight. Both figures are logged when a test stops, on every process that ran
users, as ``locust-milvus monitor: ...`` (tests read that line). Lag counts while the runner is spawning or
running: killing users that are mid-call at shutdown blocks the hub briefly, but no measured request sees it.
"""

from __future__ import annotations

from locust.runners import STATE_RUNNING, STATE_SPAWNING

import logging
import time

import gevent

from locust_milvus.events import ASYNC, SYNC

logger = logging.getLogger(__name__)
TICK_S = 0.01


class Monitor:
    def __init__(self) -> None:
        self.in_flight = {SYNC: 0, ASYNC: 0}
        self.peak = {SYNC: 0, ASYNC: 0}
        self.max_hub_lag_s = 0.0
        self.window_hub_lag_s = 0.0  # largest lag since health.py last took it (its one-second windows)
        self._ticker: gevent.Greenlet | None = None
        self._runner = None
        self._cpu_start = 0.0
        self.requests = 0
        self.failures = 0
        self.unknown: dict[str, int] = {}  # operations cancelled in flight at stop, by name
        self._listening: set[int] = set()

    # enter/leave are called from the hub thread for sync calls and from the loop thread for async ones;
    # each mode's counter is written by one thread only.
    def enter(self, mode: str) -> None:
        n = self.in_flight[mode] + 1
        self.in_flight[mode] = n
        if n > self.peak[mode]:
            self.peak[mode] = n

    def leave(self, mode: str) -> None:
        self.in_flight[mode] -= 1

    def cancelled(self, name: str, n: int = 1) -> None:
        self.unknown[name] = self.unknown.get(name, 0) + n

    def _count(self, exception=None, **_kwargs) -> None:
        self.requests += 1
        if exception is not None:
            self.failures += 1

    def start(self, runner) -> None:
        self._runner = runner
        # This process's own request count, logged at stop: in a distributed run the master's totals must be the
        # sum of the workers' (the distributed tests check that).
        if id(runner.environment) not in self._listening:
            runner.environment.events.request.add_listener(self._count)
            self._listening.add(id(runner.environment))
        self.requests = self.failures = 0
        self.unknown = {}
        self.peak = {SYNC: 0, ASYNC: 0}
        self.max_hub_lag_s = 0.0
        self._cpu_start = time.process_time()
        if self._ticker is None or self._ticker.dead:
            self._ticker = gevent.spawn(self._tick)

    def _tick(self) -> None:
        while True:
            t0 = time.perf_counter()
            gevent.sleep(TICK_S)
            lag = time.perf_counter() - t0 - TICK_S
            if lag > self.window_hub_lag_s:
                self.window_hub_lag_s = lag
            if lag > self.max_hub_lag_s and self._runner.state in (STATE_SPAWNING, STATE_RUNNING):
                self.max_hub_lag_s = lag

    def take_window_hub_lag(self) -> float:
        """The largest hub lag since the last call (seconds), and start a new window."""
        lag, self.window_hub_lag_s = self.window_hub_lag_s, 0.0
        return lag

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.kill(block=False)
            self._ticker = None
        # process_time covers every thread of the process: the hub, the asyncio loop and gRPC's own threads.
        logger.info(
            "locust-milvus monitor: peak_in_flight_sync=%d peak_in_flight_async=%d max_hub_lag_ms=%.1f cpu_s=%.3f "
            "requests=%d failures=%d unknown_outcome=%d",
            self.peak[SYNC], self.peak[ASYNC], self.max_hub_lag_s * 1000, time.process_time() - self._cpu_start,
            self.requests, self.failures, sum(self.unknown.values()),
        )
        if self.unknown:
            logger.info("locust-milvus: operations in flight at stop were cancelled, outcome unknown (not counted "
                        "as requests): %s", ", ".join(f"{name} {n}" for name, n in sorted(self.unknown.items())))


monitor = Monitor()
