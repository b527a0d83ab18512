"""--find-capacity on the master (or the local runner): run the steps, judge each, say the answer, end the run.

Once every user runs (spawning_complete), a greenlet begins each step with a message to the processes that run
users (steps.py), waits --step-time, collects the step's figures (on a master: from every worker's next report),
judges them (plan.judge) and asks the sweep (plan.Sweep) for the next factor. When the sweep is over it logs the
answer line, keeps the result for the report (answer.py) and ends the run as --run-time would: a headless run
quits (its report is written), a web UI test stops.
"""

from __future__ import annotations

from locust.runners import STATE_MISSING, WORKER_REPORT_INTERVAL, MasterRunner, WorkerRunner

import logging
import time
from dataclasses import dataclass, field

import gevent

from locust_milvus.capacity import answer, steps
from locust_milvus.capacity.plan import CapacityPlan, Step, Sweep, judge
from locust_milvus.capacity.plan import check as check_plan
from locust_milvus.config.load import RunOptions, run_options
from locust_milvus.config.settings import ConfigError, UsageError
from locust_milvus.report.histograms import Recorder
from locust_milvus.workload.operations import TABLE
from locust_milvus.workload.pacing import parse_target_rps
from locust_milvus.workload.request_events import MODE_NAMES

logger = logging.getLogger("locust_milvus")
# On a master each step also waits for every worker's next report (they come every WORKER_REPORT_INTERVAL s).
COLLECT_TIMEOUT_S = 2 * WORKER_REPORT_INTERVAL + 2.0


def plan_from(options: RunOptions, gates, distributed: bool) -> CapacityPlan | None:
    """The run's checked plan, or None without --find-capacity; raises UsageError (one line, exit code 2)."""
    known = set(TABLE)
    rates = parse_target_rps(str(options.get("target_rps", "") or ""), known)
    minimum = parse_target_rps(str(options.get("check_capacity", "") or ""), known, flag="--check-capacity")
    run_time = options.get("run_time")
    return check_plan(
        enabled=bool(options.get("find_capacity", False)), rates=rates, gates=gates,
        factor=_float(options, "step_factor", 1.5), step_s=_float(options, "step_time", 30.0),
        warmup_s=_float(options, "step_warmup", 5.0), refinements=int(options.get("refine_steps", 2) or 0),
        run_time_s=float(run_time) if run_time else None, minimum=minimum,
        step_overhead_s=COLLECT_TIMEOUT_S / 2 if distributed else 0.0)


def _float(options: RunOptions, name: str, default: float) -> float:
    value = options.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--{name.replace('_', '-')} must be a number, got {value!r}") from None


@dataclass
class _Collected:
    """One step's figures, merged over the processes that ran users."""

    recorder: Recorder = field(default_factory=lambda: Recorder(modes=MODE_NAMES))
    pacing: dict[str, list[int]] = field(default_factory=dict)
    health: dict[str, list[dict]] = field(default_factory=dict)
    processes: set[str] = field(default_factory=set)

    def add(self, client_id: str, item: dict) -> None:
        self.recorder.merge(item["recorder"])
        for name, counts in item["pacing"].items():
            mine = self.pacing.setdefault(name, [0, 0, 0])
            for i, value in enumerate(counts):
                mine[i] += value
        self.health[f"{client_id} ({item['process']})" if client_id != "local" else item["process"]] = item["health"]
        self.processes.add(client_id)


class Driver:
    """The sweep of one test."""

    def __init__(self) -> None:
        self.plan: CapacityPlan | None = None
        self.sweep: Sweep | None = None
        self.collected: dict[int, _Collected] = {}
        self.greenlet: gevent.Greenlet | None = None
        self.deadline_s: float | None = None
        self.result: dict | None = None  # the answer, once the sweep is over (answer.build)
        self.environment = None

    # --- listeners ---------------------------------------------------------------------------------------------
    def on_init(self, environment, runner=None) -> None:
        """Refuse a sweep that cannot work before any set-up (exit code 2); let workers receive the steps."""
        self.environment = environment
        if isinstance(runner, MasterRunner):
            pass
        elif runner is not None:
            runner.register_message(steps.MESSAGE, _on_step_message)
        if isinstance(runner, WorkerRunner):
            return
        o = run_options(environment)
        if not o.values:
            return
        from locust_milvus.report.listeners import parse_gates

        try:
            plan_from(o, parse_gates(o, environment.user_classes), isinstance(runner, MasterRunner))
        except ConfigError as e:
            logger.error("locust-milvus: %s", e)
            raise SystemExit(e.exit_code) from None

    def on_test_start(self, environment, **_kwargs) -> None:
        runner = environment.runner
        steps.windows.reset()
        if isinstance(runner, WorkerRunner):
            return
        self.stop_greenlet()
        self.plan = self.sweep = self.result = None
        self.collected = {}
        o = run_options(environment)
        from locust_milvus.report.listeners import parse_gates

        try:  # the web UI's form may have changed the options since init
            self.plan = plan_from(o, parse_gates(o, environment.user_classes), isinstance(runner, MasterRunner))
        except ConfigError as e:
            logger.error("locust-milvus: %s", e)
            gevent.spawn(runner.stop)
            return
        if self.plan is None:
            return
        self.sweep = Sweep(self.plan)
        run_time = o.get("run_time")
        self.deadline_s = time.time() + float(run_time) if run_time and o.headless else None
        logger.info("locust-milvus: --find-capacity: steps of %gs (%gs warm-up) from %s, x%g per step, judged by %s",
                    self.plan.step_s, self.plan.warmup_s, answer.rates_text(self.plan.rates), self.plan.factor,
                    self.plan.slo_text())

    def on_spawning_complete(self, **_kwargs) -> None:
        if self.sweep is not None and self.greenlet is None and not self.sweep.steps:
            self.greenlet = gevent.spawn(self._drive, self.environment)

    def on_report_to_master(self, client_id, data: dict, **_kwargs) -> None:
        items = steps.windows.drain()
        if items:
            data[steps.PAYLOAD_KEY] = items

    def on_worker_report(self, client_id, data: dict, **_kwargs) -> None:
        for item in data.get(steps.PAYLOAD_KEY, ()):
            collected = self.collected.get(item["index"])
            if collected is not None:
                collected.add(client_id, item)

    def on_test_stop(self, environment, **_kwargs) -> None:
        if isinstance(environment.runner, WorkerRunner):
            steps.windows.reset()
            return
        self.stop_greenlet()
        if self.sweep is not None and self.result is None:
            self.sweep.out_of_time()
            self._finish()

    def stop_greenlet(self) -> None:
        if self.greenlet is not None and self.greenlet is not gevent.getcurrent():
            self.greenlet.kill(block=False)
        self.greenlet = None

    # --- the sweep ---------------------------------------------------------------------------------------------
    def _drive(self, environment) -> None:
        runner, plan, sweep = environment.runner, self.plan, self.sweep
        master = isinstance(runner, MasterRunner)
        while True:
            step = sweep.next_step()
            if step is None:
                break
            if self.deadline_s is not None and time.time() + plan.step_s + (COLLECT_TIMEOUT_S / 2 if master else 0) \
                    > self.deadline_s:
                logger.info("locust-milvus: --find-capacity: no time left for step %d in --run-time", step.index)
                sweep.out_of_time()
                break
            expected = ({cid for cid, w in runner.clients.items() if w.state != STATE_MISSING} if master
                        else {"local"})
            collected = self.collected[step.index] = _Collected()
            step.started_s = time.time()
            runner.send_message(steps.MESSAGE, {"index": step.index, "scale": step.scale,
                                                "warmup_s": plan.warmup_s, "judged_s": plan.judged_s})
            gevent.sleep(plan.step_s)
            waited = 0.0
            while not expected <= collected.processes and waited < (COLLECT_TIMEOUT_S if master else 2.0):
                if not master:
                    for item in steps.windows.drain():
                        if item["index"] == step.index:
                            collected.add("local", item)
                    if "local" in collected.processes:
                        break
                gevent.sleep(0.1)
                waited += 0.1
            missing = expected - collected.processes
            if missing:
                logger.warning("locust-milvus: --find-capacity: step %d: no figures from %d of %d workers; judged on "
                               "the others", step.index, len(missing), len(expected))
            self._judge(step, collected)
        self._finish()
        if run_options(environment).headless:
            runner.quit()
        else:
            runner.stop()

    def _judge(self, step: Step, collected: _Collected) -> None:
        plan = self.plan
        figures = answer.step_figures(plan, step, collected.recorder, collected.pacing, plan.judged_s)
        saturation = steps.saturation(collected.health)
        figures["health"] = answer.health_figures(collected.health, saturation)
        verdict = judge(plan, corrected_rows=figures["corrected_rows"], service_rows=figures["rows"],
                        pacing=collected.pacing, saturation=saturation, achieved=figures["achieved"])
        step.figures = figures
        self.sweep.record(verdict)
        logger.info("locust-milvus: capacity step %d (%s, x%.4g): %s: %s", step.index, step.phase, step.scale,
                    answer.step_text(figures), verdict.as_text())

    def _finish(self) -> None:
        self.result = answer.build(self.plan, self.sweep)
        (logger.info if self.result["found"] else logger.warning)(self.result["line"])


driver = Driver()


def _on_step_message(environment, msg, **_kwargs) -> None:
    data = msg.data
    steps.windows.begin(int(data["index"]), float(data["scale"]), float(data["warmup_s"]), float(data["judged_s"]))
