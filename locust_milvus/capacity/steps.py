"""--find-capacity in every process that runs users: the current step's rate, and what its judged seconds saw.

The driver (driver.py, on the master or the local runner) begins a step with a Locust message to every process that
runs users (a local runner delivers it to itself). Each such process then paces its users at the step's rates
(pacing.set_scale) and, from the end of the warm-up to the end of the step by its own clock, records every request
into the step's own Recorder (service time, latency from the planned start, failures), counts the planned starts,
late and dropped, and keeps the generator-health windows (runtime/health.py). A worker sends a closed step's
figures with its next regular report to the master (report_to_master), so no step's figures depend on when a report
happens to arrive.
"""

from __future__ import annotations

import os

import gevent

from locust_milvus.report.histograms import Recorder
from locust_milvus.runtime.health import LIMITS, SUSTAIN_S
from locust_milvus.workload import pacing
from locust_milvus.workload.request_events import MODE_NAMES

MESSAGE = "locust_milvus_capacity_step"
PAYLOAD_KEY = "locust_milvus_capacity"


class _Window:
    def __init__(self, index: int) -> None:
        self.index = index
        self.recorder = Recorder(modes=MODE_NAMES)
        self.open = False
        self.closed = False
        self.health: list[dict] = []
        self.started: dict[str, tuple[int, int, int]] = {}
        self.pacing: dict[str, list[int]] = {}


def _pacing_snapshot() -> dict[str, tuple[int, int, int]]:
    return {name: (c.started, c.late, c.dropped) for name, c in pacing.totals.items()}


class StepWindows:
    """This process's current step and the closed ones not yet handed over."""

    def __init__(self) -> None:
        self.current: _Window | None = None
        self.closed: list[_Window] = []
        self._timers: list[gevent.Greenlet] = []
        self.who = f"pid {os.getpid()}"

    def reset(self) -> None:
        for timer in self._timers:
            timer.kill(block=False)
        self._timers = []
        self.current = None
        self.closed = []

    def begin(self, index: int, scale: float, warmup_s: float, judged_s: float) -> None:
        """Step ``index`` starts now: the rates of step 1 times ``scale``; judged from warmup_s to warmup_s +
        judged_s from now."""
        if self.current is not None and not self.current.closed:
            self.current.open = False  # the previous step's window ends here (the driver has moved on)
        pacing.set_scale(scale)
        window = self.current = _Window(index)
        self._timers = [gevent.spawn_later(warmup_s, self._open, window),
                        gevent.spawn_later(warmup_s + judged_s, self._close, window)]

    def _open(self, window: _Window) -> None:
        if window is self.current:
            window.started = _pacing_snapshot()
            window.open = True

    def _close(self, window: _Window) -> None:
        if window is not self.current or window.closed:
            return
        window.open = False
        window.closed = True
        now = _pacing_snapshot()
        for name, (started, late, dropped) in now.items():
            s0, l0, d0 = window.started.get(name, (0, 0, 0))
            window.pacing[name] = [started - s0, late - l0, dropped - d0]
        self.closed.append(window)

    def record(self, request_type, name, response_time, exception=None, context=None, **kwargs) -> None:
        """A listener of ``environment.events.request``: the request counts in the step while it is judged."""
        window = self.current
        if window is not None and window.open:
            window.recorder.record(request_type, name, response_time, exception, context, **kwargs)

    def on_health_window(self, figures: dict) -> None:
        window = self.current
        if window is not None and window.open:
            window.health.append({k: figures.get(k) for k in ("cpu_pct", "hub_lag_ms", "loop_lag_ms")})

    def drain(self) -> list[dict]:
        """The closed steps' figures, as msgpack-friendly data (sent to the master, or merged locally)."""
        out = [{"index": w.index, "process": self.who, "recorder": w.recorder.drain(with_pacing=False),
                "pacing": w.pacing, "health": w.health} for w in self.closed]
        self.closed = []
        return out


windows = StepWindows()


def saturation(health_by_process: dict[str, list[dict]]) -> str | None:
    """One line when a process's CPU, hub lag or loop lag stayed over its limit for long in the step's judged
    windows (runtime/health.py's limits), else None. "Long" is SUSTAIN_S windows in a row, or half the windows of a
    shorter step."""
    found = []
    for who, windows_ in sorted(health_by_process.items()):
        need = max(2, min(SUSTAIN_S, len(windows_) // 2))
        for key, signal, unit in (("cpu_pct", "cpu", "% of one core"), ("hub_lag_ms", "hub_lag", "ms"),
                                  ("loop_lag_ms", "loop_lag", "ms")):
            streak = longest = 0
            peak = 0.0
            for w in windows_:
                value = w.get(key)
                if value is not None and value > LIMITS[signal]:
                    streak += 1
                    longest = max(longest, streak)
                    peak = max(peak, value)
                else:
                    streak = 0
            if longest >= need and windows_:
                label = {"cpu": "CPU", "hub_lag": "gevent hub lag", "loop_lag": "asyncio loop lag"}[signal]
                found.append(f"{who}: {label} over {LIMITS[signal]:g} {unit} for {longest} of {len(windows_)} s "
                             f"(up to {peak:.0f} {unit})")
    return "; ".join(found) if found else None
