"""The one place that wires locust-milvus into Locust: every listener, registered here, in the order it runs.

Importing any other module of the package registers nothing. :func:`install` runs once, when a locustfile imports
the users (``from locust_milvus import SyncMilvusUser``); it registers the options and an ``init`` listener, and that
listener registers the rest on the run's own ``environment.events``. Locust calls a listener in the order it was
added (``quitting`` in reverse).

What happens, in order:

- import: ./.env is read, the process title is masked, the options are declared.
- init: URI credentials become the token; the report refuses unreadable --check-*/--reports-dir before any
  set-up; lifecycle makes gRPC cooperative, takes Ctrl-C, starts the embedded Milvus and, headless, prepares the
  collection; the web UI gets its run page.
- test_start: the report opens its folder; --find-capacity's plan is read; lifecycle prepares the collection and
  this process's stores; the health signals start; the server-metrics baseline is scraped after set-up; the run
  page learns set-up ended.
- spawning_complete: --find-capacity's sweep starts (capacity/driver.py).
- request: the report's recorder, the monitor's per-process totals and a capacity step's figures (processes that
  run users).
- test_stopping, test_stop, quitting: the shutdown deadline; the report's final scrape; the monitor's evidence
  and --verify (a master waits for its workers' verdicts, run_verdict.py); the users stopped, the bridge and the
  embedded Milvus closed; the report written.
"""

from __future__ import annotations

from locust import events
from locust.runners import MasterRunner, WorkerRunner

from locust_milvus import lifecycle
from locust_milvus.capacity import steps as capacity_steps
from locust_milvus.capacity.driver import driver as capacity
from locust_milvus.config import options, secrets
from locust_milvus.report import listeners as report
from locust_milvus.run_verdict import verdicts
from locust_milvus.runtime import health
from locust_milvus.runtime.monitor import monitor
from locust_milvus.web import page

_installed = False


def install() -> None:
    """Register locust-milvus with Locust (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    # Before Locust parses the command line (it imports the locustfile first, and --processes forks after that, so
    # workers inherit both).
    secrets.read_dotenv()
    secrets.mask_process_title()
    events.init_command_line_parser.add_listener(options.add_arguments)
    events.init.add_listener(_on_init)


def register(environment, **options):
    """Wire locust-milvus into an Environment made in Python (Locust as a library: pytest, a notebook, a CI
    script), as ``locust -f`` does for a locustfile; returns the environment's runner (a local one is created when
    it has none).

    ``options`` are the command line's, by attribute name (``collection="loadtest"``, ``prepopulate=100``,
    ``target_rps="search=50"``); the rest keep their defaults, and the environment's ``host`` is the target
    (none: the embedded Milvus starts). The options are checked as on the command line: a bad one logs its line
    and raises SystemExit with the same exit code. Set-up runs at each test start, like the web UI's. At the end,
    fire ``environment.events.quitting`` (Locust's main does) to close the async bridge and stop an embedded
    Milvus; the report folder is written when the test stops.

        env = Environment(user_classes=[SyncMilvusUser], host="http://127.0.0.1:19530")
        runner = register(env, collection="loadtest", drop_collection=True)
        runner.start(10, spawn_rate=10); gevent.sleep(30); runner.quit()
        env.events.quitting.fire(environment=env, reason="done")
    """
    from locust.argument_parser import get_parser

    install()
    # No config file is read (a locust.conf in the working directory is the command line's, not this script's);
    # get_parser fires init_command_line_parser, so our options are declared on it.
    parsed = get_parser(default_config_files=[]).parse_args([])  # every option at its default
    for name, value in options.items():
        if not hasattr(parsed, name):
            raise TypeError(f"register(): no option is named {name!r} (options are the command line's, with _ for -)")
        setattr(parsed, name, value)
    if environment.host:
        parsed.host = environment.host
    environment.parsed_options = parsed
    runner = environment.runner or environment.create_local_runner()
    _on_init(environment, runner=runner, web_ui=environment.web_ui)
    return runner


def _on_init(environment, runner=None, web_ui=None, **_kwargs) -> None:
    ev = environment.events
    runs_users = not isinstance(runner, MasterRunner)
    draws_report = not isinstance(runner, WorkerRunner)

    # --- init, in this order ----------------------------------------------------------------------------------
    secrets.hide_host_credentials(environment)  # before anything shows or sends the host
    if isinstance(runner, MasterRunner):
        secrets.keep_secrets_home(runner)  # no secret option on the master-worker link, a fingerprint instead
    report.on_init(environment, runner)  # refuses bad --check-* / --reports-dir before any server starts
    capacity.on_init(environment, runner)  # refuses a --find-capacity that cannot sweep (exit 2); workers take steps
    lifecycle.on_init(environment, runner)  # gRPC cooperative, Ctrl-C, embedded Milvus, headless set-up
    verdicts.on_init(environment, runner)  # a master takes its workers' --verify verdicts
    run_page = page.install(environment, web_ui) if web_ui is not None else None

    # --- what the report records ------------------------------------------------------------------------------
    if runs_users:
        ev.request.add_listener(report.recorder.record)
        ev.request.add_listener(monitor.count_request)
        ev.request.add_listener(capacity_steps.windows.record)  # only while a --find-capacity step is judged
        health.window_listeners.append(capacity_steps.windows.on_health_window)
    if isinstance(runner, WorkerRunner):
        ev.report_to_master.add_listener(report.on_report_to_master)
        ev.report_to_master.add_listener(health.on_report_to_master)
        ev.report_to_master.add_listener(capacity.on_report_to_master)
    if isinstance(runner, MasterRunner):
        ev.worker_report.add_listener(report.on_worker_report)
        ev.worker_report.add_listener(health.on_worker_report)
        ev.worker_report.add_listener(capacity.on_worker_report)
    if draws_report:
        ev.reset_stats.add_listener(report.recorder.reset)  # the web UI's "reset stats"
        ev.reset_stats.add_listener(report.restart_scraping)
        ev.spawning_complete.add_listener(report.on_spawning_complete)  # --reset-stats
        ev.spawning_complete.add_listener(capacity.on_spawning_complete)  # the sweep starts once every user runs

    # --- each test ---------------------------------------------------------------------------------------------
    ev.test_start.add_listener(report.on_test_start)  # the test's folder and CSV writer
    ev.test_start.add_listener(secrets.hide_host_credentials_at_test_start)  # a host typed into the web UI's form
    ev.test_start.add_listener(capacity.on_test_start)  # the sweep's plan (or, on a worker, no step yet)
    ev.test_start.add_listener(verdicts.on_test_start)  # after the report's: it may write the last test's folder
    ev.test_start.add_listener(lifecycle.on_test_start)  # set-up: collection, stores, run state
    ev.test_start.add_listener(health.on_test_start)  # after set-up: the bridge, if any, exists now
    ev.test_start.add_listener(report.start_scraping)  # baseline after pre-population, before the first request
    if run_page is not None:
        ev.test_start.add_listener(run_page.new_test)
    ev.test_stopping.add_listener(lifecycle.on_test_stopping)  # a headless run's stop starts the exit deadline
    ev.test_stopping.add_listener(verdicts.on_test_stopping)  # a master notes the workers whose verdicts it awaits
    ev.test_stop.add_listener(capacity.on_test_stop)  # the answer, before the report uses it
    ev.test_stop.add_listener(report.on_test_stop)  # final server scrape; written now unless headless
    ev.test_stop.add_listener(lifecycle.on_test_stop)  # monitor evidence, --verify (the verdict to run_verdict)
    ev.test_stop.add_listener(health.on_test_stop)

    # --- quitting: Locust fires it in reverse order of registration, so the last one added runs first ---------
    ev.quitting.add_listener(report.on_quitting)  # third: the report folder and the gates' exit code
    ev.quitting.add_listener(lifecycle.on_quitting)  # second: deadline, users stopped, bridge and Milvus closed
    # first: a master waits for its workers' --verify verdicts (they query the embedded Milvus, closed just after)
    ev.quitting.add_listener(verdicts.on_quitting)
