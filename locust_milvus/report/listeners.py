"""Locust event listeners of the report (the locustfile imports this module; nothing else here imports Locust).

- init: every process that runs users records each request (histograms.Recorder); a worker sends what it
  recorded in each ``report_to_master`` and a master merges it in ``worker_report``. On the master or local
  runner the ``--check-*`` thresholds and ``--reports-dir`` are checked here, before the embedded Milvus starts
  or set-up runs (the locustfile imports this module before lifecycle, so this init listener runs first): a bad
  one stops the run with one line and exit code 1.
- test_start (master or local runner): a new report folder; Locust's CSV writer starts writing into it. With
  --milvus-metrics-url (or the embedded Milvus) a scraper of Milvus's metrics (server_metrics.py) takes its
  baseline in a test_start listener added at init, so it runs after lifecycle's set-up (pre-population is not load).
- test_stop: in the web UI, each test's folder is written when it stops (on a master a little later, once the
  workers' last reports are in). Headless runs write it at quitting, after the workers' final reports.
- quitting: write what is pending, then the exit code: 3 when a gate failed (gates.GATE_EXIT_CODE).

Each folder records --verify's verdict for the run (run_verdict.py), waiting for it when it is not given yet.
"""

from __future__ import annotations

import locust
from locust import stats as locust_stats
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner, WorkerRunner

import csv
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gevent

from locust_milvus.capacity import answer as capacity_answer
from locust_milvus.capacity.driver import driver as capacity
from locust_milvus.config.load import RunOptions, run_options, settings_from
from locust_milvus.config.secrets import redact_uri
from locust_milvus.config.settings import ConfigError
from locust_milvus.report import describe, findings, gates, plots, server_metrics, summary
from locust_milvus.report import folder as report_folder
from locust_milvus.report.histograms import SETTLE_INTERVALS_MASTER, Recorder
from locust_milvus.workload.base import request_names
from locust_milvus.workload.operations import TABLE
from locust_milvus.workload.request_events import MODE_NAMES

logger = logging.getLogger("locust_milvus")
PAYLOAD_KEY = "locust_milvus_report"
# Request names besides the operations': the embedding provider's calls, reported apart (embeddings.py).
OTHER_REQUEST_NAMES = ("embed_query", "embed_documents")
# Locust's own files in the folder (its --csv naming under this prefix) and its HTML report.
CSV_PREFIX = "locust"
LOCUST_HTML = "report.html"

recorder = Recorder(modes=MODE_NAMES)


@dataclass
class _Test:
    """One test (start to stop) on the master or local runner, and its folder."""

    folder: Path
    name: str
    started_s: float
    stopped_s: float | None = None
    csv_writer: object = None
    csv_greenlet: gevent.Greenlet | None = None
    pending_write: gevent.Greenlet | None = None
    written: bool = False
    workers: int = 0  # on a master, the workers when the test started (they are gone by quitting)
    scraper: server_metrics.Scraper | None = None  # Milvus's own metrics, when scraped
    options: RunOptions = RunOptions({})  # as they were when the test started


_test: _Test | None = None
_gate_failed = False
_environment = None  # spawning_complete does not pass it


def _fatal(message: str, code: int = 1) -> None:
    logger.error("locust-milvus: %s", message)
    raise SystemExit(code)


def parse_gates(options: RunOptions, user_classes=()) -> list[gates.Gate]:
    """The run's gates; raises ConfigError (one line) for a value that cannot be read, or naming a request that no
    user class of the run fires (the built-in users: the table's operations; your own: their task names and
    ``request_names``)."""
    known = (request_names(user_classes) or set(TABLE)) | set(OTHER_REQUEST_NAMES)
    checks = options.checks
    return gates.parse_all({metric: checks.get(metric, "") for metric in gates.METRICS}, known)


def on_init(environment, runner=None) -> None:
    """Refuse unreadable --check-*, --reports-dir and --milvus-metrics-url before any set-up."""
    global _environment
    _environment = environment
    if isinstance(runner, WorkerRunner):
        recorder.settle_after = None  # a worker sends its open latency intervals to the master
        return
    if isinstance(runner, MasterRunner):
        recorder.settle_after = SETTLE_INTERVALS_MASTER
    plots.prepare_fonts()  # this process draws the charts: now, before any gRPC thread exists (plots.py says why)
    o = run_options(environment)
    if not o.values:
        return
    try:
        parse_gates(o, environment.user_classes)
        report_folder.check_reports_dir(o.get("reports_dir", ""))
        server_metrics.check_url(o.get("milvus_metrics_url", ""))
    except ConfigError as e:
        _fatal(str(e), e.exit_code)


def on_report_to_master(client_id, data: dict, **_kwargs) -> None:
    data[PAYLOAD_KEY] = recorder.drain()


def on_worker_report(client_id, data: dict, **_kwargs) -> None:
    payload = data.get(PAYLOAD_KEY)
    if payload:
        recorder.merge(payload)


def on_spawning_complete(**_kwargs) -> None:
    # Locust's --reset-stats empties its statistics once all users are running; ours follow, or the counts of
    # the summary and of Locust's CSV would disagree.
    if _environment is not None and _environment.reset_stats:
        recorder.reset()
        restart_scraping()


def on_test_start(environment, **_kwargs) -> None:
    global _test
    if isinstance(environment.runner, WorkerRunner):
        recorder.reset()
        return
    if _test is not None and not _test.written:  # a web UI test restarted before its folder was written
        _write(environment, _test)
    recorder.reset()
    o = run_options(environment)
    try:  # values typed into the web UI's form arrive here
        parse_gates(o, environment.user_classes)
        name = report_folder.report_name(o.get("report_name", ""), o.get("config"))
        test = _Test(folder=report_folder.new_folder(o.get("reports_dir", ""), name), name=name, started_s=time.time(),
                     options=o)
    except ConfigError as e:
        logger.error("locust-milvus: %s", e)
        _test = None
        gevent.spawn(environment.runner.stop)
        return
    # Locust chose its CSV writer before init, from --csv; ours is one more writer of the same files into the
    # folder, whatever --csv says (the folder is complete either way).
    test.csv_writer = locust_stats.StatsCSVFileWriter(
        environment, locust_stats.PERCENTILES_TO_REPORT, str(test.folder / CSV_PREFIX),
        full_history=bool(o.get("stats_history_enabled", False)),
    )
    test.csv_greenlet = gevent.spawn(test.csv_writer.stats_writer)
    if isinstance(environment.runner, MasterRunner):
        test.workers = environment.runner.worker_count
    _test = test
    logger.info("locust-milvus: this test's report folder is %s", test.folder)


def _count_rows(environment) -> int | None:
    from locust_milvus.milvus.verify import count_rows  # imports pymilvus: only once a test runs

    try:
        return count_rows(settings_from(environment))
    except ConfigError:
        return None


def on_test_stop(environment, **_kwargs) -> None:
    test = _test
    if isinstance(environment.runner, WorkerRunner) or test is None or test.written:
        return
    test.stopped_s = time.time()
    if test.scraper is not None:
        # Now, before lifecycle's test_stop (--verify queries the collection): users have stopped, and on a master
        # the workers too (Locust fires test_stop once they report no users).
        test.scraper.finish()
    if test.options.headless:
        return  # written at quitting, once the workers' final reports are in
    if isinstance(environment.runner, MasterRunner):
        # Workers report every WORKER_REPORT_INTERVAL s; their last requests arrive after test_stop.
        test.pending_write = gevent.spawn_later(WORKER_REPORT_INTERVAL + 0.5, _write, environment, test)
    elif _verdicts().pending():
        # --verify checks the collection in lifecycle's test_stop, after this listener: write once it has.
        test.pending_write = gevent.spawn(_write, environment, test)
    else:
        _write(environment, test)


def on_quitting(environment, **_kwargs) -> None:
    o = run_options(environment)
    if isinstance(environment.runner, WorkerRunner) or not o.values:
        return
    test = _test
    if test is not None and not test.written:
        if test.stopped_s is None:
            test.stopped_s = time.time()
        _write(environment, test)
    try:
        configured = bool(parse_gates(o, environment.user_classes))
    except ConfigError:
        configured = True  # refused at test start, and no test was judged
    if configured and test is None:
        logger.error("CHECK FAILED: no test ran, so no --check-* threshold was judged")
    failed = _gate_failed or (configured and test is None)
    if failed and not environment.process_exit_code:  # a set-up failure (exit code 1) keeps its own code
        environment.process_exit_code = gates.GATE_EXIT_CODE
        logger.error("locust-milvus: a --check-* gate failed: exit code %d", gates.GATE_EXIT_CODE)


def _write(environment, test: _Test) -> None:
    """Judge the gates on the test's figures, print the CHECK lines, then write the folder."""
    global _gate_failed
    if test.written:
        return
    test.written = True
    if test.pending_write is not None and test.pending_write is not gevent.getcurrent():
        test.pending_write.kill(block=False)
    o = test.options
    data = summary.build(recorder, name=test.name, started_s=test.started_s,
                         stopped_s=test.stopped_s or time.time(), config=o.redacted(environment.host),
                         meta=_meta(environment, test))
    store = sys.modules.get("locust_milvus.milvus.store")  # loaded by set-up; None if set-up never ran
    data["versions"] = describe.versions(getattr(store, "server_version", None))
    # Rows at start: counted by set-up, before the monitor measures the hub; at the end: now, with the users stopped
    # (a new client's connect waits on a gRPC future, which would count as hub lag while users run), or, when this
    # process stopped its embedded Milvus before writing, as lifecycle counted them just before that.
    lifecycle = sys.modules.get("locust_milvus.lifecycle")
    counted = getattr(lifecycle, "rows_at_quitting", None)
    rows_at_end = counted[0] if counted is not None else _count_rows(environment)
    data["workload"] = describe.workload(o, getattr(lifecycle, "rows_at_start", None), rows_at_end)
    data["workload"]["user_classes"] = data["user_classes"]
    data["workload"]["milvus_kwargs"] = describe.own_store(environment.user_classes)
    if test.scraper is not None:
        test.scraper.finish()  # a web UI test restarted before it stopped
        data["server_side"] = test.scraper.result(data["rows"])
    if capacity.plan is not None and capacity.result is not None:
        # A sweep: the --check-* options were its SLO, judged per step (steps past the limit fail them by design);
        # the run's gate is --check-capacity.
        data["capacity"] = capacity.result
        outcomes = capacity_answer.check_outcomes(capacity.plan, capacity.result)
    else:
        try:
            outcomes = gates.evaluate(parse_gates(o, environment.user_classes), data["rows"])
        except ConfigError as e:  # the web UI's form changed a value mid-test
            logger.error("locust-milvus: %s", e)
            outcomes = []
    data["checks"] = [outcome.as_dict() for outcome in outcomes]
    data["verify"] = _verdicts().settle(environment)  # --verify's verdict for the run (None without it)
    data["findings"] = findings.find(data)  # last: the rules read the checks, server side and health above
    for outcome in outcomes:
        (logger.info if outcome.passed else logger.error)(outcome.line)
    _gate_failed = _gate_failed or not all(outcome.passed for outcome in outcomes)
    try:
        scrub = o.scrubber()
        _write_locust_files(environment, test, scrub)
        report_folder.write_run(test.folder, data, scrub)
        logger.info("locust-milvus: report written to %s (summary.html, summary.md, summary.json, %s, %s_*.csv)",
                    test.folder, LOCUST_HTML, CSV_PREFIX)
    except Exception as e:  # noqa: BLE001 - a report that cannot be written must not hide the run's result
        logger.error("locust-milvus: the report could not be written to %s: %s: %s", test.folder,
                     type(e).__name__, e)


def _verdicts():
    # Not at import: run_verdict imports the health signals, which the report itself does not load (_meta says why).
    from locust_milvus.run_verdict import verdicts

    return verdicts


def start_scraping(environment, **_kwargs) -> None:
    test = _test
    if isinstance(environment.runner, WorkerRunner) or test is None or test.written or test.scraper is not None:
        return
    o = test.options
    try:  # a value typed into the web UI's form arrives here
        url = server_metrics.check_url(o.get("milvus_metrics_url", ""))
    except ConfigError as e:
        logger.error("locust-milvus: %s; no server-side figures for this test", e)
        return
    if not url:
        from locust_milvus.lifecycle import embedded_metrics_url  # lifecycle imports LangChain: only when needed

        url = embedded_metrics_url()
    if url:
        calls = {name: op.milvus_call for name, op in TABLE.items()}
        test.scraper = server_metrics.Scraper(url, o.get("collection") or None, calls).start()


def restart_scraping(**_kwargs) -> None:
    # Locust's statistics were reset (--reset-stats once every user runs, or the web UI's button): the server-side
    # figures start again too, so that both sides count the same span.
    test = _test
    if test is not None and test.scraper is not None and not test.scraper.finished:
        test.scraper.restart()


def _write_locust_files(environment, test: _Test, scrub) -> None:
    """Locust's HTML report and its final CSVs, with Locust's own functions."""
    from locust.html import get_html_report

    if test.csv_greenlet is not None:
        test.csv_greenlet.kill(block=True)
        test.csv_writer.close_files()  # keeps the per-second history it appended
    # The writer rewrites stats, failures and exceptions once a second; write them once more, final.
    final = locust_stats.StatsCSV(environment, locust_stats.PERCENTILES_TO_REPORT)
    for suffix, method in (("stats", final.requests_csv), ("failures", final.failures_csv),
                           ("exceptions", final.exceptions_csv)):
        with open(test.folder / f"{CSV_PREFIX}_{suffix}.csv", "w", newline="") as f:
            method(csv.writer(f))
    (test.folder / LOCUST_HTML).write_text(scrub(get_html_report(environment, show_download_link=False)),
                                           encoding="utf-8")


def _meta(environment, test: _Test) -> dict:
    # Only when the locustfile loaded the health signals (the main one does); importing them here, at the end of a
    # test, would start them in the middle of a run.
    health = sys.modules.get("locust_milvus.runtime.health")

    runner = environment.runner
    if isinstance(runner, MasterRunner):
        kind = f"master with {test.workers} workers"
        if lost := health.lost_workers.report() if health else []:
            kind += f" ({len(lost)} lost during the test, {sum(w['users'] for w in lost)} users with them)"
    else:
        kind = "local runner"
    return {
        "host": redact_uri(environment.host) if environment.host else None,
        "runner": kind,
        "user_classes": sorted(cls.__name__ for cls in environment.user_classes),
        "users": test.options.get("num_users"),
        "locust_version": locust.__version__,
        "generator_health": health.report_block(runner) if health else None,  # is the client the bottleneck?
    }
