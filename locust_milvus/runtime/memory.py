"""Resident memory (RSS) of this process over a test: the evidence a soak run needs that nothing leaks.

Every process samples itself (the master too) from test start to test stop; workers send their samples to the
master with their health figures, and the report draws them over time and gives each process's growth after a
warm-up (``growth``). A sample is one read of /proc/self/statm (psutil elsewhere), every EVERY_S seconds at first;
a long run keeps at most MAX_POINTS samples by dropping every other one and doubling the interval, so a worker's
regular report stays small however long the soak.
"""

from __future__ import annotations

import os
import time

import gevent

EVERY_S = 5.0
MAX_POINTS = 400
WARMUP_MIN_S = 60.0  # growth is judged after max(this, WARMUP_SHARE of the run): caches and pools fill first
WARMUP_SHARE = 0.2
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:  # not Linux
        import psutil

        return psutil.Process().memory_info().rss / 2**20


class Memory:
    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []  # (seconds since test start, RSS MiB)
        self.every_s = EVERY_S
        self._t0 = 0.0
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.stop(sample=False)
        self.points, self.every_s, self._t0 = [], EVERY_S, time.time()
        self._take()
        self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.every_s)
            self._take()

    def _take(self) -> None:
        self.points.append((round(time.time() - self._t0, 1), round(rss_mb(), 1)))
        if len(self.points) > MAX_POINTS:
            self.points = self.points[::2]
            self.every_s *= 2

    def stop(self, sample: bool = True) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
            if sample:
                self._take()


def growth(points: list, warmup_s: float | None = None) -> dict | None:
    """RSS at the first sample after the warm-up and at the end, and the growth between them in percent; None when
    the run is too short to have samples after a warm-up."""
    if len(points) < 3:
        return None
    end_s = points[-1][0]
    warmup = warmup_s if warmup_s is not None else max(WARMUP_MIN_S, WARMUP_SHARE * end_s)
    after = [p for p in points if p[0] >= warmup]
    if len(after) < 2:
        return None
    base, last = after[0][1], points[-1][1]
    return {"warmup_s": round(warmup, 1), "start_mb": points[0][1], "after_warmup_mb": base, "end_mb": last,
            "peak_mb": max(p[1] for p in points), "growth_pct": round(100.0 * (last - base) / base, 1)}


memory = Memory()
