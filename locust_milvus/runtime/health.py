"""Is the load generator itself the bottleneck? Saturation signals of every process that runs users.

Once a second (a window) each such process takes its CPU use (process time over wall time, every thread counted,
so it can pass 100 %), the gevent hub's lag (monitor.py's 10 ms ticker), the asyncio loop's lag (a 10 ms ticker
on the bridge's loop, when async users run) and its operations in flight per mode. A signal past its limit for
SUSTAIN_S windows in a row means the client, not Milvus, limits the run: the latencies measured then include
time spent waiting on the client. That is logged when it happens (once per episode) with the figure and what to
do, summed up at test stop in a ``locust-milvus health:`` line, written to the report folder's summary ("Load
generator health") and shown live on the web UI's run page (webui.py). Only windows while the runner is spawning
or running are judged, as for monitor.py's peak hub lag.

In a distributed run every worker sends its figures (and its set-up progress) to the master in Locust's regular
``report_to_master`` data; the master keeps the latest of each worker for the report and the page.
"""

from __future__ import annotations

from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

import logging
import os
import time
from collections import deque

import gevent

from locust_milvus.runtime.bridge import current_bridge
from locust_milvus.runtime.lost_workers import lost_workers  # noqa: F401 - the report and web UI read it here
from locust_milvus.runtime.memory import growth, memory
from locust_milvus.runtime.monitor import monitor
from locust_milvus.runtime.progress import progress
from locust_milvus.workload.request_events import ASYNC, SYNC

logger = logging.getLogger("locust_milvus")

WINDOW_S = 1.0
LOOP_TICK_S = 0.01
# A lag of 50 ms means every operation finishing in that window waited up to 50 ms on the client before its
# greenlet (or coroutine) could stop the clock: a search on an idle embedded Milvus takes a few milliseconds, so that
# is no longer noise.
LAG_LIMIT_MS = 50.0
# One process runs Python on one core at a time (the GIL); near 100 % of a core it has no headroom left.
CPU_LIMIT_PCT = 90.0
SUSTAIN_S = 5  # windows in a row: a garbage collection or a burst of spawning is not saturation
RECENT_WINDOWS = 3  # the live figures: the last 3 s (a worker reports every 3 s)
HISTORY_WINDOWS = 60  # the web UI's sparklines: the last minute, a window a second
PAYLOAD_KEY = "locust_milvus_process"

LIMITS = {"hub_lag": LAG_LIMIT_MS, "loop_lag": LAG_LIMIT_MS, "cpu": CPU_LIMIT_PCT}
_WHAT = {
    "hub_lag": ("gevent hub lag", "ms", "the hub runs the sync users and Locust's own work: spread the users over "
                                        "more processes"),
    "loop_lag": ("asyncio loop lag", "ms", "the loop runs every async call of the process: lower "
                                           "--async-concurrency or spread the users over more processes"),
    "cpu": ("CPU", "% of one core", "the process has no CPU headroom left"),
}
ADVICE = ("Run more Locust processes (--processes N, or more workers) with fewer users each; searches with "
          "pre-embedded queries (--query-pool and the *_by_vector tasks) spend no client CPU on embedding.")


class LoopLag:
    """A ticker on the bridge's asyncio loop: how late each 10 ms timer fires."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.window_max_s = 0.0
        self._due = time.perf_counter()
        self._stopped = False
        loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if not self._stopped:
            self._due = time.perf_counter() + LOOP_TICK_S
            self.loop.call_later(LOOP_TICK_S, self._tick)

    def _tick(self) -> None:
        lag = time.perf_counter() - self._due
        if lag > self.window_max_s:
            self.window_max_s = lag
        self._schedule()

    def take(self) -> float:
        """The largest lag since the last call (seconds), a timer overdue now included (a loop stuck in one call
        never fires its timer). Read and reset from the hub thread while the loop thread writes: a tick landing
        between the two may be lost, which moves a window's maximum by one tick at most."""
        lag, self.window_max_s = self.window_max_s, 0.0
        return max(lag, time.perf_counter() - self._due)

    def stop(self) -> None:
        self._stopped = True


class _Signal:
    """One signal's figures over the judged windows of a test."""

    __slots__ = ("n", "total", "max", "over", "streak", "longest", "peak_in_streak")

    def __init__(self) -> None:
        self.n = self.over = self.streak = self.longest = 0
        self.total = self.max = self.peak_in_streak = 0.0

    def add(self, value: float, limit: float) -> bool:
        """Count one window; True when this window makes the streak sustained (once per episode)."""
        self.n += 1
        self.total += value
        self.max = max(self.max, value)
        if value <= limit:
            self.streak = 0
            return False
        self.over += 1
        self.streak += 1
        self.peak_in_streak = value if self.streak == 1 else max(self.peak_in_streak, value)
        self.longest = max(self.longest, self.streak)
        return self.streak == SUSTAIN_S

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


def warning_text(who: str, signal: str, seconds: int, peak: float) -> str:
    label, unit, why = _WHAT[signal]
    return (f"{who}: {label} above {LIMITS[signal]:g} {unit} for {seconds} s in a row (up to {peak:.0f} {unit}): "
            f"the load generator, not Milvus, limited this run, and latencies include time waiting on the client; "
            f"{why}. {ADVICE}")


class Health:
    """The saturation signals of this process (one instance per process that runs users)."""

    def __init__(self) -> None:
        self._sampler: gevent.Greenlet | None = None
        self._loop_lag: LoopLag | None = None
        self._runner = None
        self.who = f"pid {os.getpid()}"
        self.reset()

    def reset(self) -> None:
        self.signals = {name: _Signal() for name in LIMITS}
        self.recent: deque[dict] = deque(maxlen=RECENT_WINDOWS)
        self.history: deque[tuple] = deque(maxlen=HISTORY_WINDOWS)  # (cpu %, hub lag ms, loop lag ms or None)
        self.episodes: list[str] = []
        self.running = False

    def start(self, runner) -> None:
        self.stop_sampler()
        self.reset()
        self._runner = runner
        index = getattr(runner, "worker_index", -1)
        self.who = f"worker {index} (pid {os.getpid()})" if isinstance(runner, WorkerRunner) else \
            f"local runner (pid {os.getpid()})"
        self.running = True
        monitor.take_window_hub_lag()
        self._sampler = gevent.spawn(self._sample)

    def _sample(self) -> None:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while True:
            gevent.sleep(WINDOW_S)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            self.close_window(100.0 * (cpu1 - cpu0) / (wall1 - wall0))
            cpu0, wall0 = cpu1, wall1

    def close_window(self, cpu_pct: float) -> None:
        """Judge one window: take the lags measured since the last one, log a saturation as it becomes
        sustained."""
        bridge = current_bridge()
        if bridge is not None and (self._loop_lag is None or self._loop_lag.loop is not bridge.loop):
            self._loop_lag = LoopLag(bridge.loop)  # the bridge starts at test start, only with async users
            loop_lag_s = None  # no full window measured yet
        else:
            loop_lag_s = self._loop_lag.take() if self._loop_lag is not None else None
        window = {"cpu_pct": cpu_pct, "hub_lag_ms": monitor.take_window_hub_lag() * 1000.0,
                  "loop_lag_ms": None if loop_lag_s is None else loop_lag_s * 1000.0,
                  "judged": self._runner is not None and self._runner.state in (STATE_SPAWNING, STATE_RUNNING)}
        self.recent.append(window)
        self.history.append((round(cpu_pct), round(window["hub_lag_ms"]),
                             None if window["loop_lag_ms"] is None else round(window["loop_lag_ms"])))
        if not window["judged"]:
            return
        for listener in window_listeners:  # --find-capacity's step figures (capacity/steps.py)
            listener(window)
        for name, value in (("cpu", window["cpu_pct"]), ("hub_lag", window["hub_lag_ms"]),
                            ("loop_lag", window["loop_lag_ms"])):
            if value is None:
                continue
            signal = self.signals[name]
            if signal.add(value, LIMITS[name]):
                text = warning_text(self.who, name, SUSTAIN_S, signal.peak_in_streak)
                self.episodes.append(text)
                logger.warning("locust-milvus: load generator saturated: %s", text)

    def stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None
        if self._loop_lag is not None:
            self._loop_lag.stop()
            self._loop_lag = None

    def stop(self) -> None:
        if not self.running:
            return
        self.stop_sampler()
        self.running = False
        s = self.summary()
        logger.info(
            "locust-milvus health: seconds=%d cpu_mean_pct=%s cpu_max_pct=%s hub_lag_max_ms=%s loop_lag_max_ms=%s "
            "over_limit_s=cpu:%d,hub_lag:%d,loop_lag:%d saturated=%s",
            s["seconds"], _fmt(s["cpu_pct_mean"]), _fmt(s["cpu_pct_max"]), _fmt(s["hub_lag_ms_max"]),
            _fmt(s["loop_lag_ms_max"]), s["over_limit_s"]["cpu"], s["over_limit_s"]["hub_lag"],
            s["over_limit_s"]["loop_lag"], "yes" if s["saturated"] else "no",
        )
        for text in s["warnings"]:
            logger.warning("locust-milvus: load generator saturated during the test: %s", text)

    def summary(self) -> dict:
        """This process's figures for the test so far (final after stop), for the report and the master."""
        sig = self.signals
        warnings = [warning_text(self.who, name, sig[name].longest, sig[name].max)
                    for name in LIMITS if sig[name].longest >= SUSTAIN_S]
        return {
            "process": self.who,
            "seconds": sig["hub_lag"].n,
            "cpu_pct_mean": _round(sig["cpu"].mean()), "cpu_pct_max": _round(sig["cpu"].max if sig["cpu"].n else None),
            "hub_lag_ms_mean": _round(sig["hub_lag"].mean()),
            "hub_lag_ms_max": _round(sig["hub_lag"].max if sig["hub_lag"].n else None),
            "loop_lag_ms_mean": _round(sig["loop_lag"].mean()),
            "loop_lag_ms_max": _round(sig["loop_lag"].max if sig["loop_lag"].n else None),
            "peak_in_flight_sync": monitor.peak[SYNC], "peak_in_flight_async": monitor.peak[ASYNC],
            "over_limit_s": {name: s.over for name, s in sig.items()},
            "longest_over_s": {name: s.longest for name, s in sig.items()},
            "saturated": bool(warnings),
            "warnings": warnings,
            "rss_mb": memory.points,  # (seconds since test start, MiB): the report's memory over time
        }

    def live(self) -> dict:
        """What the run page shows of this process now: the last few windows, the operations in flight."""
        recent = list(self.recent) if self.running else []  # a stopped test's last seconds are not "now"
        loop = [w["loop_lag_ms"] for w in recent if w["loop_lag_ms"] is not None]
        over = {
            "cpu": bool(recent) and all(w["cpu_pct"] > CPU_LIMIT_PCT for w in recent),
            "hub_lag": bool(recent) and all(w["hub_lag_ms"] > LAG_LIMIT_MS for w in recent),
            "loop_lag": bool(loop) and all(v > LAG_LIMIT_MS for v in loop),
        }
        return {
            "process": self.who,
            "running": self.running,
            "cpu_pct": _round(sum(w["cpu_pct"] for w in recent) / len(recent)) if recent else None,
            "hub_lag_ms": _round(max(w["hub_lag_ms"] for w in recent)) if recent else None,
            "loop_lag_ms": _round(max(loop)) if loop else None,
            "in_flight_sync": monitor.in_flight[SYNC], "in_flight_async": monitor.in_flight[ASYNC],
            "peak_in_flight_sync": monitor.peak[SYNC], "peak_in_flight_async": monitor.peak[ASYNC],
            "over_limit": [name for name, flag in over.items() if flag],
            "saturated_episodes": len(self.episodes),
            "history": list(self.history) if self.running else [],  # the last minute, oldest first
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


health = Health()
# Called with each judged window of this process (a dict: cpu_pct, hub_lag_ms, loop_lag_ms).
window_listeners: list = []

# On a master: the latest report of each worker, by client id ({"live", "summary", "setup", "received_s"}).
workers: dict[str, dict] = {}




def process_report() -> dict:
    """What a worker sends the master about itself with each regular report."""
    return {"live": health.live(), "summary": health.summary(), "setup": progress.snapshot()}


def report_block(runner) -> dict | None:
    """The report's "generator health" figures: every process that ran users (on a master, its workers as last
    reported), or None when none did."""
    lost = lost_workers.report() if isinstance(runner, MasterRunner) else []
    if isinstance(runner, MasterRunner):
        summaries = [w["summary"] for _, w in sorted(workers.items()) if w.get("summary", {}).get("seconds")]
    else:
        summaries = [health.summary()] if health.signals["hub_lag"].n else []
    if not summaries and not lost:
        return None
    # A master runs no users, so no summary carries its memory: it adds its own.
    rss = [(f"master (pid {os.getpid()})", memory.points)] if isinstance(runner, MasterRunner) else []
    rss += [(s["process"], s.get("rss_mb") or []) for s in summaries]
    return {
        "lost_workers": lost,
        "limits": {"hub_lag_ms": LAG_LIMIT_MS, "loop_lag_ms": LAG_LIMIT_MS, "cpu_pct": CPU_LIMIT_PCT,
                   "sustained_s": SUSTAIN_S},
        "processes": [{k: v for k, v in s.items() if k != "rss_mb"} for s in summaries],
        "saturated": any(s["saturated"] for s in summaries),
        "warnings": [w for s in summaries for w in s["warnings"]],
        # Every process's resident memory over the test, and its growth after a warm-up (memory.py).
        "memory": [{"process": who, "rss_mb": [list(p) for p in points], "growth": growth(points)}
                   for who, points in rss if points],
    }


def on_report_to_master(client_id, data: dict, **_kwargs) -> None:
    data[PAYLOAD_KEY] = process_report()


def on_worker_report(client_id, data: dict, **_kwargs) -> None:
    payload = data.get(PAYLOAD_KEY)
    if payload:
        workers[client_id] = {**payload, "received_s": time.time()}


def on_test_start(environment, **_kwargs) -> None:
    runner = environment.runner
    memory.start()  # every process, the master too
    if isinstance(runner, MasterRunner):
        workers.clear()  # last test's figures; every worker reports again within a few seconds
        lost_workers.start(runner)
        return
    health.start(runner)  # after lifecycle's test_start (imported first): the bridge, if any, exists now


def on_test_stop(environment, **_kwargs) -> None:
    memory.stop()
    if isinstance(environment.runner, MasterRunner):
        lost_workers.check(environment.runner)
        lost_workers.stop()  # its findings stay for the report
    else:
        health.stop()
