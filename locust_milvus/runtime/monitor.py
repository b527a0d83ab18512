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
import traceback

import gevent

from locust_milvus.workload.request_events import ASYNC, SYNC

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
        self.unknown: dict[tuple[str, str], int] = {}  # operations cut off in flight at stop, by (mode, name)
        # Sync calls in flight (greenlet -> [operation, start, reported]), for the stuck-call watchdog: a call far
        # past its deadline has lost its wake-up (gRPC's gevent integration has had such hangs: grpc/grpc#27340,
        # #20931), and its user silently sends nothing, which would make the run's figures quietly thinner.
        self._sync_calls: dict = {}
        self.stuck_after_s: float | None = None
        self.stuck = 0

    # enter/leave are called from the hub thread for sync calls and from the loop thread for async ones;
    # each mode's counter is written by one thread only.
    def enter(self, mode: str, name: str | None = None) -> None:
        n = self.in_flight[mode] + 1
        self.in_flight[mode] = n
        if n > self.peak[mode]:
            self.peak[mode] = n
        if name is not None:  # a sync call, on the hub thread
            self._sync_calls[gevent.getcurrent()] = [name, time.perf_counter(), False]

    def leave(self, mode: str) -> None:
        self.in_flight[mode] -= 1
        if mode == SYNC:
            self._sync_calls.pop(gevent.getcurrent(), None)

    def check_stuck(self) -> None:
        """Warn once, with its stack, about each sync call in flight for longer than ``stuck_after_s``."""
        if not self.stuck_after_s:
            return
        now = time.perf_counter()
        for glet, call in list(self._sync_calls.items()):
            name, start, reported = call
            if now - start > self.stuck_after_s and not reported:
                call[2] = True
                self.stuck += 1
                stack = "".join(traceback.format_stack(glet.gr_frame)) if glet.gr_frame is not None else ""
                logger.warning("locust-milvus: a sync %s has been in flight for %.0f s, far past its deadline "
                               "(--milvus-timeout): the call is stuck and its user sends nothing. Where it waits:\n%s",
                               name, now - start, stack)

    def cancelled(self, mode: str, name: str, n: int = 1) -> None:
        """``n`` calls of ``name`` were cut off by a stop: their outcome is unknown (a sync call goes on unobserved
        in its own greenlet, an async one is cancelled on the loop)."""
        self.unknown[(mode, name)] = self.unknown.get((mode, name), 0) + n

    def count_request(self, exception=None, **_kwargs) -> None:
        """A request listener: this process's own totals, logged at stop (in a distributed run the master's totals
        must be the sum of the workers', which the distributed tests check)."""
        self.requests += 1
        if exception is not None:
            self.failures += 1

    def start(self, runner, deadline_s: float | None = None) -> None:
        self._runner = runner
        self.stuck_after_s = max(3 * deadline_s, deadline_s + 10) if deadline_s else None
        self.requests = self.failures = self.stuck = 0
        self.unknown = {}
        self.peak = {SYNC: 0, ASYNC: 0}
        self.max_hub_lag_s = 0.0
        self._cpu_start = time.process_time()
        if self._ticker is None or self._ticker.dead:
            self._ticker = gevent.spawn(self._tick)

    def _tick(self) -> None:
        ticks = 0
        while True:
            ticks += 1
            if ticks % 100 == 0:  # once a second
                self.check_stuck()
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
            "requests=%d failures=%d unknown_outcome=%d stuck=%d",
            self.peak[SYNC], self.peak[ASYNC], self.max_hub_lag_s * 1000, time.process_time() - self._cpu_start,
            self.requests, self.failures, sum(self.unknown.values()), self.stuck,
        )
        if self.unknown:
            logger.info("locust-milvus: operations in flight at stop were cut off, outcome unknown (not counted as "
                        "requests): %s", ", ".join(f"{mode.removeprefix('langchain-')} {name} {n}"
                                                   for (mode, name), n in sorted(self.unknown.items())))


monitor = Monitor()
