"""Saturation signals (health.py): a load generator starved on purpose is reported as the bottleneck, in its log and
in its report folder; a light run is not. Also the judging rules, set-up progress and the run page's redaction,
without a server."""

from __future__ import annotations

import json
import logging
import re
import uuid
from types import SimpleNamespace

import pytest

from locust_milvus.config.secrets import scrubber
from locust_milvus.report.summary import blocks, to_markdown
from locust_milvus.runtime import health as health_module
from locust_milvus.runtime.health import CPU_LIMIT_PCT, SUSTAIN_S, Health
from locust_milvus.runtime.progress import SetupProgress
from locust_milvus.web import page as webui

from .conftest import LOCUSTFILE, ROOT, run_locust
from .test_unit import fake_environment

STARVE = ROOT / "tests" / "starve_generator.py"
HEALTH_LINE = re.compile(r"locust-milvus health: seconds=(\d+) .* hub_lag_max_ms=([\d.]+) loop_lag_max_ms=([\d.na/]+) "
                         r"over_limit_s=cpu:(\d+),hub_lag:(\d+),loop_lag:(\d+) saturated=(yes|no)")


def headless_run(milvus, tmp_path, *locustfiles):
    reports = tmp_path / "reports"
    result = run_locust("-f", ",".join(str(f) for f in (LOCUSTFILE, *locustfiles)), "--headless", "-u", "2", "-r", "2",
                        "-t", "10s", "--host", milvus.uri, "--collection", f"t_{uuid.uuid4().hex[:12]}",
                        "--prepopulate", "0", "--reports-dir", str(reports), "--report-name", "health")
    [folder] = list(reports.iterdir())
    return result, json.loads((folder / "summary.json").read_text()), (folder / "summary.md").read_text()


@pytest.mark.locust
def test_a_starved_generator_is_reported_as_the_bottleneck(milvus, tmp_path):
    # The add-on blocks the hub and the asyncio loop for 80 ms of every 100 ms (tests/starve_generator.py).
    result, summary, markdown = headless_run(milvus, tmp_path, STARVE)
    assert result.returncode == 0, result.output[-3000:]  # a warning, not a failure
    out = result.output
    # Said while it happens, once per episode, with the figure and what to do ...
    live = re.findall(r"WARNING/locust_milvus: locust-milvus: load generator saturated: (.*)", out)
    assert any("gevent hub lag above 50 ms for 5 s in a row" in w for w in live), live
    assert any("asyncio loop lag above 50 ms for 5 s in a row" in w for w in live), live
    assert all("--processes" in w and "--query-pool" in w for w in live), live
    # ... summed up at the stop ...
    [(seconds, hub_max, loop_max, _, hub_over, loop_over, saturated)] = HEALTH_LINE.findall(out)
    assert saturated == "yes" and int(hub_over) >= SUSTAIN_S and int(loop_over) >= SUSTAIN_S, out[-3000:]
    assert 60 < float(hub_max) < 1000 and 60 < float(loop_max) < 1000  # 80 ms blocks
    # ... and in the report folder's summary.
    h = summary["generator_health"]
    assert h["saturated"] and h["limits"] == {"hub_lag_ms": 50.0, "loop_lag_ms": 50.0, "cpu_pct": 90.0,
                                              "sustained_s": 5}
    [process] = h["processes"]
    assert process["process"].startswith("local runner (pid ") and process["seconds"] == int(seconds)
    assert process["longest_over_s"]["hub_lag"] >= SUSTAIN_S and process["hub_lag_ms_mean"] > 50
    assert process["peak_in_flight_sync"] >= 1 and process["peak_in_flight_async"] >= 1
    assert "## Load generator health: SATURATED" in markdown
    assert "WARNING: local runner" in markdown and "gevent hub lag above 50 ms" in markdown


@pytest.mark.locust
def test_a_light_run_is_not_reported(milvus, tmp_path):
    result, summary, markdown = headless_run(milvus, tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    assert "load generator saturated" not in result.output
    [(seconds, hub_max, _, _, hub_over, loop_over, saturated)] = HEALTH_LINE.findall(result.output)
    assert saturated == "no" and int(seconds) >= 5, result.output[-3000:]
    h = summary["generator_health"]
    assert not h["saturated"] and not h["warnings"]
    [process] = h["processes"]
    assert process["seconds"] == int(seconds) and process["cpu_pct_mean"] < CPU_LIMIT_PCT
    assert process["loop_lag_ms_max"] is not None  # the loop's ticker ran (async users)
    assert "## Load generator health: ok" in markdown and "WARNING: local runner" not in markdown
    assert "generator_saturated" not in [f["kind"] for f in summary["findings"]]


def judged_health(monkeypatch) -> Health:
    """A Health judging windows as if users were running, with no hub or loop lag."""
    monkeypatch.setattr(health_module, "current_bridge", lambda: None)
    monkeypatch.setattr(health_module.monitor, "take_window_hub_lag", lambda: 0.0)
    h = Health()
    h._runner = SimpleNamespace(state="running")
    h.running = True
    return h


def test_cpu_near_one_core_for_five_seconds_in_a_row_is_saturation(monkeypatch, caplog):
    h = judged_health(monkeypatch)
    for cpu in (95.0, 97.0, 120.0, 96.0, 99.0):
        h.close_window(cpu)
    [episode] = h.episodes
    assert "CPU above 90 % of one core for 5 s in a row (up to 120 % of one core)" in episode
    assert "--processes" in episode and "in a row" in caplog.text
    s = h.summary()
    assert s["saturated"] and s["over_limit_s"]["cpu"] == 5 and s["cpu_pct_max"] == 120.0
    assert s["loop_lag_ms_max"] is None  # no asyncio loop in this process: nothing claimed about it
    assert h.live()["over_limit"] == ["cpu"]


def test_interrupted_or_unjudged_windows_are_not_saturation(monkeypatch):
    h = judged_health(monkeypatch)
    for cpu in (95.0, 95.0, 95.0, 95.0, 50.0, 95.0, 95.0, 95.0, 95.0):  # never 5 in a row
        h.close_window(cpu)
    h._runner.state = "stopped"  # windows after the users stopped are not judged
    for _ in range(SUSTAIN_S):
        h.close_window(100.0)
    s = h.summary()
    assert not h.episodes and not s["saturated"] and s["over_limit_s"]["cpu"] == 8 and s["longest_over_s"]["cpu"] == 4
    assert s["seconds"] == 9
    md = to_markdown(blocks({"name": "x", "started": None, "stopped": None, "first_request": None,
                             "last_request": None, "duration_s": 0, "rows": [], "checks": [], "failures": [],
                             "config": {}, "generator_health": health_module.report_block(None) or {}}))
    assert "Load generator health" not in md  # the module-level health judged nothing here


def test_setup_progress_steps_end_done_or_failed():
    progress = SetupProgress()
    progress.reset()
    with progress.step("pre-population", 3000, "documents") as step:
        step.advance(1000)
        [running] = progress.snapshot()
        assert (running["done"], running["total"], running["state"]) == (1000, 3000, "running")
        step.advance(3000)
    with pytest.raises(RuntimeError), progress.step("query pool embedding", 50, "texts"):
        raise RuntimeError("provider down")
    assert [(s["name"], s["done"], s["state"]) for s in progress.snapshot()] == [
        ("pre-population", 3000, "done"), ("query pool embedding", 0, "failed")]
    progress.reset()
    assert progress.snapshot() == []


def test_the_run_page_shows_no_secret(monkeypatch):
    token = "tok-5e3c-very-secret"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdef123456")
    env = fake_environment(milvus_token=token)
    env.host = "http://127.0.0.1:19530"
    env.user_classes = []
    rows = dict(webui.configuration(env))
    assert rows["Milvus"] == "http://127.0.0.1:19530" and token not in json.dumps(rows)
    # Belt and braces, for a secret that crept into some other value (a collection name, a host).
    crept = json.dumps({"collection": f"x{token}y", "host": "http://u:sk-test-abcdef123456@h", "rows": rows})
    scrubbed = scrubber(env.parsed_options)(crept)
    assert token not in scrubbed and "sk-test-abcdef123456" not in scrubbed and "x(redacted)y" in scrubbed


def test_a_step_prints_a_progress_bar_with_rate_and_eta(monkeypatch):
    from locust_milvus.runtime import progress as progress_module

    step = progress_module.Step("pre-population", 1000, "documents", started_s=100.0)
    monkeypatch.setattr(progress_module.time, "time", lambda: 102.0)
    step.advance(250)  # 250 in 2 s: 125/s, 750 left: 6 s
    assert step.line() == "pre-population [#####...............] 250/1000 documents 25% (125/s, ETA 6 s)"
    assert step.as_dict()["eta_s"] == 6.0


def test_a_sync_call_stuck_past_its_deadline_is_reported_once_with_its_stack(caplog):
    import gevent

    from locust_milvus.runtime.monitor import Monitor
    from locust_milvus.workload.request_events import SYNC

    m = Monitor()
    m.stuck_after_s = 0.05

    def wedged_search():
        m.enter(SYNC, "search")
        try:
            gevent.sleep(0.3)  # a call that never comes back in time
        finally:
            m.leave(SYNC)

    glet = gevent.spawn(wedged_search)
    gevent.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="locust_milvus.runtime.monitor"):
        m.check_stuck()
        assert m.stuck == 0 and not caplog.records  # not yet past the limit
        gevent.sleep(0.1)
        m.check_stuck()
        m.check_stuck()
    [record] = caplog.records
    assert "a sync search has been in flight for 0 s" in record.getMessage()
    assert "in wedged_search" in record.getMessage() and m.stuck == 1
    glet.join()
    assert m._sync_calls == {}  # left: nothing more to watch
