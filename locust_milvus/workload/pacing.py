"""--target-rps: the open model. Operations start at planned times, whatever the responses.

Closed-loop users (Locust's default) send nothing while they wait, so a stalled server slows the load down and
the percentiles never see the requests that would have arrived meanwhile (coordinated omission; wrk2 and k6's
constant-arrival-rate exist because of it). With ``--target-rps OP=N,...`` each user gets its share of the total
rate (N / the run's user count, so a distributed run adds up to N) and a schedule of planned start times, one
interval apart, from a random phase. A user that is still busy at a planned time starts its next operation late;
each request then records two latencies: the service time (Locust's figure: the call alone) and the latency from
the planned start (what a real arrival stream would have seen). A user more than DROP_AFTER_S behind drops the
starts it missed, counted, so that a long stall does not end in an unbounded burst.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass

import gevent

from locust_milvus.config.settings import ConfigError

logger = logging.getLogger("locust_milvus")
DROP_AFTER_S = 5.0
NOT_MET_SHARE = 0.01  # late or dropped starts above this share of the planned ones: the target was not met


def parse_target_rps(text: str, known: set[str], flag: str = "--target-rps") -> dict[str, float]:
    """``"search=200,add=20"`` -> {"search": 200.0, "add": 20.0}; raises ConfigError (one line) on bad input."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in str(text or "").split(","))):
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in known:
            raise ConfigError(f"{flag} {item!r}: use OPERATION=RATE items separated by commas, e.g. "
                              f"'search=200,add=20', with operations among: {', '.join(sorted(known))}")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not rate > 0:
            raise ConfigError(f"{flag} {item!r}: the rate must be a number of operations per second > 0")
        rates[name] = rates.get(name, 0.0) + rate
    return rates


@dataclass
class Counts:
    started: int = 0
    late: int = 0  # started after its planned time because the user was still busy
    dropped: int = 0  # never started: the user was more than DROP_AFTER_S behind


# --find-capacity multiplies every user's rate by the current step's factor (capacity/steps.py sets it when a step
# begins; 1 otherwise). Read at each planned start, so a new step's rate applies from the next start on.
_scale = 1.0
_step = 0  # counts set_scale calls: a user that sees it change starts its schedule afresh


def set_scale(scale: float) -> None:
    global _scale, _step
    _scale = float(scale)
    _step += 1


def current_scale() -> float:
    return _scale


class Pacer:
    """One user's schedule. ``wait()`` sleeps until the next planned start and returns (operation, planned)."""

    def __init__(self, rates: dict[str, float], users: int, rng: random.Random) -> None:
        total = sum(rates.values())
        self.interval = max(users, 1) / total
        self.names = list(rates)
        self.cum_weights = list(itertools.accumulate(rates.values()))
        self.rng = rng
        self.next = time.perf_counter() + rng.random() * self.interval  # spread the users' phases
        self.busy_until = 0.0  # when this user's previous operation ended
        self.step = _step

    def _name(self) -> str:
        return self.rng.choices(self.names, cum_weights=self.cum_weights)[0]

    def wait(self) -> tuple[str, float]:
        now = time.perf_counter()
        if self.step != _step:
            # A new --find-capacity step: the starts this user still owed the previous step (it was late) are not
            # carried into the new one, where they would start as a burst and be judged as its load.
            self.step = _step
            self.next = max(self.next, now)
        if now < self.next:
            gevent.sleep(self.next - now)
            now = time.perf_counter()
        interval = self.interval / _scale
        behind = now - self.next
        if behind > DROP_AFTER_S:
            missed = int(behind / interval)
            for _ in range(missed):
                _count(self._name(), "dropped")
            self.next += missed * interval
        planned, self.next = self.next, self.next + interval
        name = self._name()
        _count(name, "started")
        if self.busy_until > planned:
            _count(name, "late")
        return name, planned

    def done(self, ended: float) -> None:
        self.busy_until = ended


# This process's counts since the test started (for its log line), and those not yet handed to the report
# (report/histograms.py drains them into each worker report, so the master adds them up over the workers).
totals: dict[str, Counts] = {}
pending: dict[str, Counts] = {}


def _count(name: str, what: str) -> None:
    for table in (totals, pending):
        counts = table.get(name)
        if counts is None:
            counts = table[name] = Counts()
        setattr(counts, what, getattr(counts, what) + 1)


def drain() -> dict[str, list[int]]:
    """The counts since the last drain, as {name: [started, late, dropped]}."""
    out = {name: [c.started, c.late, c.dropped] for name, c in pending.items()}
    pending.clear()
    return out


def reset() -> None:
    totals.clear()
    pending.clear()
    set_scale(1.0)


def log_if_not_met(rates: dict[str, float]) -> None:
    """A warning per operation whose planned starts were too often late or dropped in this process."""
    for name, c in sorted(totals.items()):
        planned = c.started + c.dropped
        if planned and (c.late + c.dropped) / planned > NOT_MET_SHARE:
            logger.warning(
                "locust-milvus: --target-rps %s=%g was not met in this process: of %d planned starts %d were late "
                "and %d dropped because every user was busy; add users (concurrency) or lower the rate",
                name, rates.get(name, 0.0), planned, c.late, c.dropped)
