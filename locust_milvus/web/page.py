"""The web UI's locust-milvus page (``/milvus``) and two tabs in Locust's own page.

``/milvus`` polls ``/milvus/state`` (JSON) once a second and shows:

- the run configuration: the Milvus URI without credentials, collection, embedding, index, weights (never the
  token or an API key: they are not read here, and the JSON is scrubbed of them besides);
- set-up progress: pre-population and pool embedding (progress.py), of this process and of every worker;
- per process that runs users: operations in flight per mode, CPU, gevent hub lag, asyncio loop lag, and whether
  the generator is saturated (health.py). On a master, the workers' figures come with their regular reports
  (every 3 s), and the page shows each worker and the sum;
- sync against async, per operation: requests, RPS over the last 10 s, and p50/p95/p99 since the test started, from
  the report's recorder (report/histograms.py: HdrHistograms at microsecond resolution, merged from the workers
  on a master, the same figures the report folder gets), not from Locust's statistics, which round below 100 ms
  to whole milliseconds.

Locust's own page gets the same comparison and the per-process figures as two extra tabs (Locust's
``extended_tabs``), filled through its ``/stats/requests`` polling; they appear once a test has started.
"""

from __future__ import annotations

from locust.runners import STATE_INIT, STATE_STOPPED, WORKER_REPORT_INTERVAL, MasterRunner

import json
import logging
import time
from pathlib import Path

import gevent
from flask import Blueprint, Response, request

from locust_milvus.config.load import run_options
from locust_milvus.config.secrets import REDACTED, redact_uri
from locust_milvus.report.histograms import percentiles_ms
from locust_milvus.report.listeners import recorder
from locust_milvus.run_verdict import verdicts
from locust_milvus.runtime import health as health_module
from locust_milvus.runtime.progress import progress
from locust_milvus.workload.operations import TABLE
from locust_milvus.workload.request_events import MODE_NAMES

logger = logging.getLogger("locust_milvus")

RATE_WINDOW_S = 10
CACHE_S = 0.5  # several open pages share one computation
MODES = MODE_NAMES
TAB_COMPARISON = "milvus-sync-async"
TAB_PROCESSES = "milvus-generator"
_MASKED = REDACTED


def configuration(environment) -> list[list[str]]:
    """The run's configuration as [label, value] rows; options are read one by one, so a secret can only appear
    if it is also, say, the collection's name (``state`` scrubs those too)."""
    o = run_options(environment)
    if not o.values:
        return []

    def opt(name: str, default=""):
        return o.values.get(name, default)

    embedding = str(opt("embedding", "fake"))
    if embedding == "openai":
        dims = int(opt("openai_dimensions", 0) or 0)
        embedding += f" ({opt('openai_model')}, {dims or 'its own'} dimensions)"
        dim = "the model's"
    else:
        dim = str(opt("dim"))
    weights = ", ".join(f"{name} {opt(f'{name}_weight', 0)}" for name in TABLE
                        if str(opt(f"{name}_weight", 0)) not in ("0", ""))
    rows = [
        ["Milvus", redact_uri(environment.host) if environment.host else "embedded Milvus (started at init)"],
        ["collection", str(opt("collection")) + (" (existing, read as it is)" if opt("existing_collection", False)
                                                 else " (dropped and recreated)" if opt("drop_collection", False)
                                                 else "")],
        ["consistency level", str(opt("consistency_level"))],
        ["embedding", embedding],
        ["dimension", dim],
        ["index", f"{opt('index_type')} ({opt('metric')}) {opt('index_params') or ''}".strip()],
        ["search params", str(opt("search_params") or "LangChain's for the index")],
        ["weights", weights or "none"],
        ["batch size, top-k, fetch-k", f"{opt('batch_size')}, {opt('top_k')}, {opt('fetch_k')}"],
        ["filter", str(opt("filter") or "none")],
        ["pre-populate", f"{opt('prepopulate')} documents"],
        ["async concurrency", str(opt("async_concurrency"))],
        ["query pool, corpus pool", f"{opt('query_pool')}, {opt('corpus_pool')}"],
        ["dataset", str(opt("dataset") or "synthetic")],
        ["user classes", ", ".join(sorted(cls.__name__ for cls in environment.user_classes)) or "none"],
        ["users, spawn rate", "set when a test starts" if opt("num_users", None) is None
         else f"{opt('num_users')}, {opt('spawn_rate')}"],
        ["milvus timeout", f"{opt('milvus_timeout')} s"],
    ]
    return [[label, str(value)] for label, value in rows]


class Comparison:
    """Per operation, sync and async side by side, from the report's recorder. Percentiles take about 1 ms per
    series on the hub: they are recomputed only for series that changed, with a yield after each."""

    def __init__(self) -> None:
        self._percentiles: dict[tuple[str, str], tuple[int, dict]] = {}

    def rows(self, delay_s: int) -> list[dict]:
        """``delay_s``: the newest seconds to leave out of the rate (still being counted, or, on a master, not yet
        reported by every worker)."""
        now = int(time.time())
        last = now - delay_s  # the newest second counted
        first_s = recorder.first_s
        span = RATE_WINDOW_S if first_s is None else max(1, min(RATE_WINDOW_S, last - int(first_s) + 1))
        by_name: dict[str, dict] = {}
        for (request_type, name), series in list(recorder.series.items()):
            mode = MODES.get(request_type)
            if mode is None:
                continue
            failures = sum(series.failed.values())
            count = sum(series.ok.values()) + failures
            recent = sum(series.ok.get(s, 0) + series.failed.get(s, 0) for s in range(last - span + 1, last + 1))
            cached = self._percentiles.get((request_type, name))
            if cached is None or cached[0] != count:
                cached = self._percentiles[(request_type, name)] = (count, percentiles_ms(series.histogram))
                gevent.sleep(0)
            pct = cached[1]
            by_name.setdefault(name, {"name": name})[mode] = {
                "count": count, "failures": failures, "rps": round(recent / span, 1),
                "p50_ms": _ms(pct.get(50.0)), "p95_ms": _ms(pct.get(95.0)), "p99_ms": _ms(pct.get(99.0)),
            }
        order = {name: i for i, name in enumerate(TABLE)}
        return sorted(by_name.values(), key=lambda row: (order.get(row["name"], len(order)), row["name"]))

    def reset(self) -> None:
        self._percentiles = {}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def processes(runner) -> list[dict]:
    """Every process that runs users: this one, or on a master each connected worker as it last reported."""
    if not isinstance(runner, MasterRunner):
        return [{**health_module.health.live(), "age_s": 0.0}]
    out = []
    now = time.time()
    for client_id, node in sorted(runner.clients.items()):
        report = health_module.workers.get(client_id)
        live = dict(report["live"]) if report else {"process": f"worker {client_id}", "running": False}
        live["age_s"] = round(now - report["received_s"], 1) if report else None
        live["worker_id"] = client_id
        live["users"] = node.user_count
        out.append(live)
    return out


def setup_steps(runner) -> list[dict]:
    own = "master" if isinstance(runner, MasterRunner) else "this process"
    steps = [{"process": own, **step} for step in progress.snapshot()]
    if isinstance(runner, MasterRunner):
        for client_id in sorted(runner.clients.keys()):
            report = health_module.workers.get(client_id) or {}
            who = (report.get("live") or {}).get("process", f"worker {client_id}")
            steps += [{"process": who, **step} for step in report.get("setup", ())]
    return steps


class RunPage:
    """The state the page polls, computed at most every CACHE_S."""

    def __init__(self, environment) -> None:
        self.environment = environment
        self.comparison = Comparison()
        self._cached: tuple[float, str] | None = None
        self.setup_done_s = 0.0  # when the last test's set-up (lifecycle's test_start) ended

    def new_test(self, **_kwargs) -> None:
        """A test_start listener, after lifecycle's set-up."""
        self.comparison.reset()
        self.setup_done_s = time.time()

    def setting_up(self) -> bool:
        """A test was started and its set-up still runs: Locust's runner is then still "ready" (or "stopped")."""
        began = progress.began_s
        return began is not None and began > self.setup_done_s and \
            self.environment.runner.state in (STATE_INIT, STATE_STOPPED)  # STATE_INIT is "ready"

    def state(self) -> dict:
        environment, runner = self.environment, self.environment.runner
        distributed = isinstance(runner, MasterRunner)
        procs = processes(runner)
        live_warnings = [f"{p['process']}: over the limit now ({', '.join(p['over_limit'])})"
                         for p in procs if p.get("over_limit")]
        block = health_module.report_block(runner)
        lost = health_module.lost_workers.report() if distributed else []
        verdict = verdicts.result  # --verify's verdict of the last test that ended (run_verdict.py), else None
        return {
            "time": time.strftime("%H:%M:%S"),
            "state": "setting up" if self.setting_up() else runner.state,
            "runner": (f"master with {runner.worker_count} workers"
                       + (f" ({len(lost)} lost, {sum(w['users'] for w in lost)} users with them)" if lost else "")
                       if distributed else "local runner"),
            "lost_workers": lost,
            "verify": verdict["line"] if verdict else None,
            "user_count": runner.user_count,
            "configuration": configuration(environment),
            "setup": setup_steps(runner),
            "processes": procs,
            "in_flight": {mode: sum(p.get(f"in_flight_{mode}", 0) or 0 for p in procs) for mode in ("sync", "async")},
            "in_flight_note": f"as each worker last reported (every {WORKER_REPORT_INTERVAL:g} s)" if distributed
            else "now",
            "comparison": {
                "rows": self.comparison.rows(delay_s=1 + (int(WORKER_REPORT_INTERVAL) if distributed else 0)),
                "source": f"the report's recorder: requests and percentiles since the test started (HdrHistogram, "
                          f"microsecond resolution), RPS over the last {RATE_WINDOW_S} s"
                          + (f" up to {1 + WORKER_REPORT_INTERVAL:g} s ago (workers report every "
                             f"{WORKER_REPORT_INTERVAL:g} s)" if distributed else ""),
            },
            "limits": {"lag_ms": health_module.LAG_LIMIT_MS, "cpu_pct": health_module.CPU_LIMIT_PCT,
                       "sustained_s": health_module.SUSTAIN_S},
            "warnings": live_warnings + (block["warnings"] if block else [])
            + [f"LOST: {line} (not replaced without --enable-rebalancing)"
               for line in (health_module.lost_workers.lines() if distributed else [])]
            + ([verdict["line"]] if verdict and not verdict["ok"] else []),
        }

    def json_text(self) -> str:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > CACHE_S:
            self._cached = (now, run_options(self.environment).scrubber()(json.dumps(self.state())))
        return self._cached[1]

    def extended_stats(self) -> list[dict]:
        """The two tabs' rows, for Locust's page (``extended_stats`` of ``/stats/requests``)."""
        state = json.loads(self.json_text())
        comparison = []
        for row in state["comparison"]["rows"]:
            flat = {"name": row["name"]}
            for mode in ("sync", "async"):
                figures = row.get(mode) or {}
                for key in ("count", "failures", "rps", "p50_ms", "p95_ms", "p99_ms"):
                    flat[f"{mode}_{key}"] = "" if figures.get(key) is None else figures[key]
            comparison.append(flat)
        procs = [{"name": p.get("process", "?"),
                  **{k: "" if p.get(k) is None else p[k]
                     for k in ("cpu_pct", "hub_lag_ms", "loop_lag_ms", "in_flight_sync", "in_flight_async")},
                  "cpu_history": sparkline([h[0] for h in p.get("history") or ()], 100.0),
                  "lag_history": sparkline([max(h[1], h[2] or 0) for h in p.get("history") or ()],
                                           health_module.LAG_LIMIT_MS * 2),
                  "status": ", ".join(p.get("over_limit") or []) or "ok"} for p in state["processes"]]
        procs += [{"name": w["worker"], "status": (f"LOST {w['after_s']:.0f} s in" + (
                      f", back {w['rejoined_after_s']:.0f} s later" if w.get("rejoined_after_s") is not None
                      else f" ({w['users']} users)"))} for w in state.get("lost_workers", ())]
        return [{"key": TAB_COMPARISON, "data": comparison}, {"key": TAB_PROCESSES, "data": procs}]


_MODE_COLUMNS = [("count", "requests"), ("failures", "failures"), ("rps", "RPS"), ("p50_ms", "p50 ms"),
                 ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms")]
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], top: float) -> str:
    """The last minute as a line of block characters, a window a second, scaled to ``top`` (CPU: 100 %; lag: twice
    its limit), so that the tab shows a history without a chart library."""
    if not values:
        return ""
    scale = max(top, max(values))
    return "".join(_BARS[min(len(_BARS) - 1, int(v / scale * len(_BARS)))] for v in values[-60:])
EXTENDED_TABS = [{"title": "Milvus: sync vs async", "key": TAB_COMPARISON},
                 {"title": "Milvus: load generator", "key": TAB_PROCESSES}]
EXTENDED_TABLES = [
    {"key": TAB_COMPARISON, "structure": [{"key": "name", "title": "operation"}] + [
        {"key": f"{mode}_{key}", "title": f"{mode} {title}"} for mode in ("sync", "async") for key, title in
        _MODE_COLUMNS]},
    {"key": TAB_PROCESSES, "structure": [
        {"key": "name", "title": "process"}, {"key": "cpu_pct", "title": "CPU %"},
        {"key": "hub_lag_ms", "title": "hub lag ms"}, {"key": "loop_lag_ms", "title": "loop lag ms"},
        {"key": "in_flight_sync", "title": "in flight sync"}, {"key": "in_flight_async", "title": "in flight async"},
        {"key": "cpu_history", "title": "CPU, last minute"}, {"key": "lag_history", "title": "lag, last minute"},
        {"key": "status", "title": "over a limit"}]},
]


def install(environment, web_ui) -> RunPage:
    """Serve the run page and add the tabs to Locust's web UI; returns the page (its ``new_test`` is a listener)."""
    page = RunPage(environment)
    base = run_options(environment).get("web_base_path", "")
    blueprint = Blueprint("locust_milvus", __name__, url_prefix=base or None)

    @blueprint.route("/milvus")
    @web_ui.auth_required_if_enabled
    def milvus_page() -> Response:
        return Response(PAGE, mimetype="text/html")

    @blueprint.route("/milvus/state")
    @web_ui.auth_required_if_enabled
    def milvus_state() -> Response:
        return Response(page.json_text(), mimetype="application/json", headers={"Cache-Control": "no-store"})

    web_ui.app.register_blueprint(blueprint)

    @web_ui.app.after_request
    def _add_tabs(response: Response) -> Response:
        # Locust's page polls /stats/requests every 2 s; its extra tabs read "extended_stats" from that response.
        if request.path.endswith("/stats/requests") and response.status_code == 200 and response.is_json:
            try:
                data = response.get_json()
                data["extended_stats"] = page.extended_stats()
                if page.setting_up() and data.get("state") in (STATE_INIT, STATE_STOPPED):
                    # Set-up runs inside Locust's test_start, before the runner leaves "ready" (or "stopped"). Told
                    # so, Locust's page goes back to its start form (or shows "stopped") and stops polling, as if
                    # the start had been lost. "spawning" keeps it on the running test's view until users start.
                    data["state"] = "spawning"
                response.set_data(json.dumps(data))
            except Exception:  # noqa: BLE001 - our tabs must never break Locust's own page
                logger.exception("locust-milvus: the web UI's extra tabs could not be filled")
        return response

    web_ui.template_args["extended_tabs"] = EXTENDED_TABS
    web_ui.template_args["extended_tables"] = EXTENDED_TABLES
    # Locust's "Download data" tab lists these links: the way from Locust's page to ours.
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./milvus", "title": "locust-milvus run page (configuration, set-up, in flight, sync vs async)"},
        {"href": "./milvus/state", "title": "locust-milvus run state (JSON)"},
    ]

    logger.info("locust-milvus: run page (configuration, set-up, in flight, sync vs async, generator health) at "
                "%s/milvus on the web UI", base)
    return page


# The page itself (HTML, CSS and the script that polls /milvus/state): a file beside this module.
PAGE = (Path(__file__).with_name("page.html")).read_text(encoding="utf-8")
