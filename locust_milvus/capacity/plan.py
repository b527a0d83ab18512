"""--find-capacity, the pure part: the options checked, the steps' schedule and refinement, and each step's verdict.

No Locust, no I/O: the driver (driver.py) feeds it the figures of each step and asks for the next rate; unit tests
drive it with made-up figures (tests/test_capacity.py).

The sweep: step 1 holds the --target-rps rates; each further step multiplies them by --step-factor, until a step
fails. Then it bisects between the last good and the first bad factor (--refine-steps times) and stops. A step
that fails because the *generator* could not keep up (its CPU or event-loop lag saturated, or every user was busy
while Milvus still answered within the SLO) ends the sweep too, without a capacity: a limit of the client must
never be reported as the server's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from locust_milvus.config.settings import UsageError
from locust_milvus.report import gates as gates_mod

# Verdict kinds of a step.
PASS = "pass"
SERVER = "server"  # Milvus broke the SLO: an SLO check failed on the service time, or too many requests failed
USERS = "users"  # every user was busy: starts were late while Milvus answered within the SLO (add users)
CLIENT = "client"  # the generator saturated (CPU, hub or loop lag): the figures include waiting on the client
CLIENT_KINDS = (USERS, CLIENT)
# Steps at most when the run has no --run-time (the web UI): 1.5 ** 30 is 190,000 times the starting rates.
MAX_STEPS = 30
# A step's judged part lasts at least this long: fewer seconds say little about a p99.
MIN_JUDGED_S = 2.0
SLO_METRICS = (*gates_mod.LATENCY_METRICS, "fail_ratio")


@dataclass(frozen=True)
class CapacityPlan:
    """The checked --find-capacity options of a run."""

    rates: dict[str, float]  # --target-rps: the rates of step 1
    slo: tuple[gates_mod.Gate, ...]  # the --check-* latency and fail-ratio gates, judged per step
    factor: float = 1.5
    step_s: float = 30.0
    warmup_s: float = 5.0
    refinements: int = 2
    minimum: dict[str, float] = field(default_factory=dict)  # --check-capacity

    @property
    def judged_s(self) -> float:
        return self.step_s - self.warmup_s

    def slo_text(self) -> str:
        """``p99<=50ms, fail ratio<=0.01``: the SLO as the answer line states it."""
        parts = []
        for g in self.slo:
            who = "".join(filter(None, (g.name, f"@{g.mode}" if g.mode else None)))
            what = "fail ratio" if g.metric == "fail_ratio" else g.metric.replace("p999", "p99.9")
            value = f"{g.threshold:g}" if g.metric == "fail_ratio" else f"{g.threshold:g}ms"
            parts.append(f"{who + ' ' if who else ''}{what}<={value}")
        return ", ".join(parts)


def check(*, enabled: bool, rates: dict[str, float], gates: list[gates_mod.Gate], factor: float, step_s: float,
          warmup_s: float, refinements: int, run_time_s: float | None, minimum: dict[str, float],
          step_overhead_s: float = 0.0) -> CapacityPlan | None:
    """The plan, or None without --find-capacity; raises UsageError (one line) for options that cannot make a sweep.

    ``step_overhead_s``: the seconds each step waits beyond --step-time for the workers' last figures (distributed).
    """
    if not enabled:
        if minimum:
            raise UsageError("--check-capacity judges the capacity a sweep finds: add --find-capacity")
        return None
    if not rates:
        raise UsageError("--find-capacity needs starting rates: add --target-rps, e.g. --target-rps search=100,add=10")
    slo = tuple(g for g in gates if g.metric in SLO_METRICS)
    if not slo:
        raise UsageError("--find-capacity needs an SLO to judge each step by: add a latency or fail-ratio check, e.g. "
                         "--check-p99 search=50ms --check-fail-ratio 0.01")
    if not (math.isfinite(factor) and factor > 1.0):
        raise UsageError(f"--step-factor must be a number > 1 (each step multiplies the rates by it), got {factor:g}")
    if not (math.isfinite(step_s) and step_s > 0 and warmup_s >= 0):
        raise UsageError(f"--step-time must be > 0 and --step-warmup >= 0 seconds, got {step_s:g} and {warmup_s:g}")
    if step_s - warmup_s < MIN_JUDGED_S:
        raise UsageError(f"--step-time {step_s:g}s leaves less than {MIN_JUDGED_S:g} s after the --step-warmup of "
                         f"{warmup_s:g}s to judge: make --step-time longer than the warm-up (default 30s and 5s)")
    if refinements < 0:
        raise UsageError(f"--refine-steps must be >= 0, got {refinements}")
    if run_time_s is not None and run_time_s < 2 * (step_s + step_overhead_s):
        need = math.ceil(2 * (step_s + step_overhead_s))
        eight = math.ceil(8 * (step_s + step_overhead_s))
        raise UsageError(f"--run-time {run_time_s:g}s is too short for two steps of --step-time {step_s:g}s: give "
                         f"at least --run-time {need}s (a sweep of 8 steps needs about {eight}s)")
    unknown = set(minimum) - set(rates)
    if unknown:
        raise UsageError(f"--check-capacity names {', '.join(sorted(unknown))}, which --target-rps does not run: name "
                         f"operations among {', '.join(sorted(rates))}")
    return CapacityPlan(rates=dict(rates), slo=slo, factor=factor, step_s=step_s, warmup_s=warmup_s,
                        refinements=refinements, minimum=dict(minimum))


@dataclass
class Verdict:
    kind: str  # PASS, SERVER, USERS or CLIENT
    reasons: list[str]  # one line each, e.g. "search p99 82 ms at 1,480/s"

    @property
    def passed(self) -> bool:
        return self.kind == PASS

    def as_text(self) -> str:
        return "ok" if self.passed else "; ".join(self.reasons)


def judge(plan: CapacityPlan, *, corrected_rows: list[dict], service_rows: list[dict],
          pacing: dict[str, list[int]], saturation: str | None, achieved: dict[str, float]) -> Verdict:
    """A step's verdict from its judged seconds.

    ``corrected_rows`` / ``service_rows``: summary-shaped rows (name, mode, count, failures, fail_ratio, p50_ms ..)
    with the latency from the planned start and the service time; ``pacing``: {operation: [started, late,
    dropped]}; ``saturation``: the generator's saturation in the step as one line, or None; ``achieved``: requests
    per second per operation, for the reasons' text.
    """
    from locust_milvus.workload.pacing import NOT_MET_SHARE

    if saturation:
        return Verdict(CLIENT, [f"client-bound: {saturation}"])
    on_corrected = [o for o in gates_mod.evaluate(list(plan.slo), corrected_rows) if not o.passed]
    on_service = [o for o in gates_mod.evaluate(list(plan.slo), service_rows) if not o.passed]
    if on_service:  # Milvus itself answered too slowly (or failed): the server's limit
        return Verdict(SERVER, [_reason(o, achieved) for o in on_service])
    late = {name: c for name, c in pacing.items() if c[0] + c[2] and (c[1] + c[2]) / (c[0] + c[2]) > NOT_MET_SHARE}
    reasons = [f"{_reason(o, achieved)} from the planned start, within the SLO as service time" for o in on_corrected]
    if late:
        # Milvus answered within the SLO, yet requests started late: each user starts one request every
        # users / rate seconds, and a user still busy with a slow response starts its next one late. The run had
        # too few users for this rate and this tail latency: the generator's limit, not Milvus's.
        reasons += [f"{name}: {c[1] + c[2]} of {c[0] + c[2]} starts late or dropped (their user was still busy "
                    "with its previous request)" for name, c in sorted(late.items())]
        return Verdict(USERS, ["client-bound (users): " + "; ".join(reasons)])
    if on_corrected:
        # Slow only from the planned start, yet no user was busy: the requests started late because the process
        # woke its users late (gevent hub or asyncio loop lag), short of the sustained saturation above.
        return Verdict(CLIENT, ["client-bound: " + "; ".join(reasons) + "; the generator started requests late "
                                "(gevent hub or asyncio loop lag), with users free"])
    return Verdict(PASS, [])


def _reason(outcome: gates_mod.Outcome, achieved: dict[str, float]) -> str:
    who = f"{outcome.name}" + (f" ({outcome.mode})" if outcome.mode else "")
    rate = achieved.get(outcome.name or "")
    at = f" at {rate:,.0f}/s" if rate else ""
    if outcome.measured is None:
        return f"{who}: no requests"
    if outcome.metric == "fail_ratio":
        return f"{who} fail ratio {outcome.measured:.3g} > {outcome.threshold:g}{at}"
    label = outcome.metric.replace("p999", "p99.9")
    return f"{who} {label} {outcome.measured:.3g} ms > {outcome.threshold:g} ms{at}"


@dataclass
class Step:
    index: int  # 1, 2, ...
    phase: str  # "ramp" or "refine"
    scale: float  # the rates of step 1 times this
    verdict: Verdict | None = None
    figures: dict = field(default_factory=dict)  # what the report shows of it (driver.py)
    started_s: float | None = None  # wall-clock time the step began (its judged part starts a warm-up later)


class Sweep:
    """Which factor to run next, from the verdicts so far."""

    def __init__(self, plan: CapacityPlan) -> None:
        self.plan = plan
        self.steps: list[Step] = []
        self.good: float | None = None  # the highest factor that passed
        self.bad: float | None = None  # the lowest factor that failed on the server's side
        self.refined = 0
        self.ended: str | None = None  # why the sweep ended: "found", "client", "first", "time"
        self.cut_short: Step | None = None  # a refinement step the client could not drive (the bracket stands)

    def next_step(self) -> Step | None:
        """The next step to run, or None when the sweep is over (``ended`` says why)."""
        if self.ended:
            return None
        if self.steps and self.steps[-1].verdict is None:
            raise RuntimeError("the previous step has no verdict yet")
        if len(self.steps) >= MAX_STEPS:  # a web UI sweep has no --run-time to end it
            self.out_of_time()
            return None
        if self.bad is None:
            scale = 1.0 if not self.steps else self.steps[-1].scale * self.plan.factor
            phase = "ramp"
        elif self.good is None:
            self.ended = "first"  # the starting rates already broke the SLO
            return None
        elif self.refined < self.plan.refinements:
            scale, phase = (self.good + self.bad) / 2.0, "refine"
        else:
            self.ended = "found"
            return None
        step = Step(index=len(self.steps) + 1, phase=phase, scale=scale)
        self.steps.append(step)
        return step

    def record(self, verdict: Verdict) -> None:
        step = self.steps[-1]
        step.verdict = verdict
        if step.phase == "refine":
            self.refined += 1
        if verdict.kind in CLIENT_KINDS:
            # A refinement runs between a passed and a server-failed rate: Milvus's limit already lies in that
            # bracket, so a client that cannot drive the midpoint ends the refinement, not the answer.
            if step.phase == "refine" and self.good is not None and self.bad is not None:
                self.cut_short, self.ended = step, "found"
            else:
                self.ended = "client"
        elif verdict.passed:
            self.good = step.scale if self.good is None else max(self.good, step.scale)
        else:
            self.bad = step.scale if self.bad is None else min(self.bad, step.scale)

    def out_of_time(self) -> None:
        """The run ends before the sweep does (its --run-time, or a stop)."""
        if self.steps and self.steps[-1].verdict is None:
            self.steps.pop()  # a step cut short is not judged
        if not self.ended:
            self.ended = "found" if self.good is not None and self.bad is not None else "time"

    @property
    def limiting_step(self) -> Step | None:
        """The failing step that set the limit: the lowest failing factor on the server's side, else the step
        that ended the sweep on the client's side."""
        if self.ended == "client":
            return self.steps[-1]
        failing = [s for s in self.steps if s.verdict is not None and s.verdict.kind == SERVER]
        return min(failing, key=lambda s: s.scale) if failing else None
