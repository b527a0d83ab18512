"""The web UI's run page (/milvus) and Locust's two extra tabs, seen in a real headless Chromium while a test runs
from Locust's own start form; and the page's figures on a master, summed from its workers' reports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import LOCUSTFILE, ROOT, child_env
from .test_web_ui import free_port, get, post

pytestmark = pytest.mark.locust

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CANARY = "canary-9d1c-s3cret-token"
# Without the background-networking flags Chromium keeps trying to reach Google's services, which on a closed
# network is a flood of refused connections.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@contextlib.contextmanager
def web_locust(tmp_path: Path, *args: str):
    """A locust with its web UI on a free loopback port; yields (base URL, log path)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "locust.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1",
                                 "--web-port", str(port), *args],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base + "/milvus/state")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.3)
        yield base, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"locust did not stop on SIGTERM; it printed:\n{log_path.read_text()[-4000:]}")


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.25, driver=None):
    """Poll ``check`` until it returns something truthy; fail naming ``what``, the last value and (given the
    ``driver``) the page's text. An element that React replaced while it was being read is read again."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(every)
    shown = f"\npage text:\n{driver.find_element('tag name', 'body').text[:3000]}" if driver is not None else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last seen: {value!r}{shown}")


@pytest.fixture
def chromium():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        # Visible in the summary (pytest -rs, set in pyproject.toml): CI must not lose this test silently.
        pytest.skip(f"NO BROWSER TEST: {' and '.join(missing)} missing; install them with "
                    "'apt-get install -y chromium chromium-driver' (make test does when apt is available)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="NO BROWSER TEST: selenium is not installed "
                                    "(pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit chromedriver: selenium would otherwise run selenium-manager, which looks for drivers online.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# The page as a person reads it, taken in one script run: the page rebuilds its tables every second, so reading
# cell by cell over WebDriver could straddle two renderings.
READ_PAGE = """
const text = id => document.getElementById(id).textContent;
const rows = sel => [...document.querySelectorAll(sel + " tbody tr")].map(
  tr => [...tr.querySelectorAll("th, td")].map(td => td.textContent));
return {state: text("state"), updated: text("updated"), in_flight: [text("in-flight-sync"), text("in-flight-async")],
        comparison: rows("#comparison"), processes: rows("#processes"), setup: rows("#setup"),
        config: rows("#config"), warnings: text("warnings")};
"""


def page_figures(driver) -> dict:
    """What the run page shows now, read from its DOM."""
    page = driver.execute_script(READ_PAGE)
    page["in_flight"] = tuple(int(v) for v in page["in_flight"])
    page["comparison"] = {cells[0]: {"sync_requests": int(cells[1] or 0), "async_requests": int(cells[7] or 0),
                                     "sync_p50": cells[4], "async_p50": cells[10]} for cells in page["comparison"]}
    page["config"] = dict(page["config"])
    return page


def test_run_page_and_tabs_in_a_real_browser(chromium, milvus, collection, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    started = time.monotonic()
    with web_locust(tmp_path, "--host", milvus.uri, "--collection", collection, "--prepopulate", "0",
                    "--search-by-vector-weight", "2", "--async-concurrency", "2", "--milvus-token", CANARY,
                    "--reports-dir", str(tmp_path / "reports")) as (base, log_path):
        # Before any test: the configuration is there, without the token; nothing is in flight.
        chromium.get(base + "/milvus")
        before = wait_for("the page's first poll", lambda: (f := page_figures(chromium))["updated"] != "never" and f)
        assert before["state"] == "ready" and before["in_flight"] == (0, 0), before
        assert before["config"]["Milvus"] == milvus.uri and before["config"]["collection"].startswith(collection)
        assert "search 8" in before["config"]["weights"] and "search_by_vector 2" in before["config"]["weights"]
        assert CANARY not in chromium.page_source

        # Start from Locust's own form, as a person would.
        chromium.get(base + "/")
        for name, value in (("userCount", "4"), ("spawnRate", "4")):
            field = wait_for(f"the form's {name} field", lambda n=name: chromium.find_elements(By.NAME, n))[0]
            field.send_keys(Keys.CONTROL, "a")  # the React field keeps its value through clear()
            field.send_keys(value)
        chromium.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

        # Locust's page: our tab, with a row per operation once requests come in.
        def tab(title: str):
            return [t for t in chromium.find_elements(By.CSS_SELECTOR, "[role=tab]") if title in t.text.lower()]

        wait_for("the 'Milvus: sync vs async' tab", lambda: tab("milvus: sync vs async"))[0].click()

        def tab_rows() -> dict:
            return {cells[0]: cells for tr in chromium.find_elements(By.CSS_SELECTOR, "table tbody tr")
                    if (cells := [td.text for td in tr.find_elements(By.TAG_NAME, "td")])}

        # per mode: requests, failures, RPS, p50, p95, p99
        rows = wait_for("sync and async searches in the tab",
                        lambda: (r := tab_rows()).get("search") and r["search"][1] not in ("", "0")
                        and r["search"][7] not in ("", "0") and r, driver=chromium)
        assert {"search", "search_by_vector"} <= set(rows), rows
        assert rows["search"][2] == "0" and rows["search"][8] == "0", rows  # the failures columns
        wait_for("the 'Milvus: load generator' tab", lambda: tab("milvus: load generator"))[0].click()
        # a history, not a single row of now: the last minute of CPU and lag as sparklines, a window a second
        process_rows = wait_for("a process row with its history in the generator tab",
                                lambda: [c for c in tab_rows().values() if len(c) > 7 and len(c[6]) >= 3
                                         and set(c[6]) <= set("▁▂▃▄▅▆▇█") and set(c[7]) <= set("▁▂▃▄▅▆▇█")],
                                driver=chromium)
        assert process_rows[0][0].startswith("local runner (pid "), process_rows

        # The run page, reached from Locust's "Download data" tab: operations in flight in both modes, and a
        # comparison whose counts keep growing.
        wait_for("the 'Download data' tab", lambda: tab("download data"))[0].click()
        wait_for("the link to the run page",
                 lambda: chromium.find_elements(By.PARTIAL_LINK_TEXT, "locust-milvus run page"))[0].click()
        wait_for("the run page", lambda: chromium.current_url == base + "/milvus", timeout=10)
        busy = wait_for("operations in flight in both modes",
                        lambda: (f := page_figures(chromium))["in_flight"][0] > 0 and f["in_flight"][1] > 0 and f,
                        timeout=30, every=0.1)
        first = wait_for("search rows for both modes",
                         lambda: (f := page_figures(chromium))["comparison"].get("search", {}).get("async_requests")
                         and f["comparison"]["search"]["sync_requests"] and f)
        later = wait_for("the comparison to update",
                         lambda: (f := page_figures(chromium))["comparison"]["search"]["async_requests"]
                         > first["comparison"]["search"]["async_requests"]
                         and f["comparison"]["search"]["sync_requests"]
                         > first["comparison"]["search"]["sync_requests"] and f, timeout=30)
        assert later["updated"] != first["updated"]
        assert float(later["comparison"]["search"]["sync_p50"]) > 0  # milliseconds, at microsecond resolution
        assert float(later["comparison"]["search"]["async_p50"]) > 0
        # CPU %, hub lag and loop lag of the one process (the loop's ticker starts with the first async user)
        [process] = wait_for("the process's CPU, hub lag and loop lag",
                             lambda: [p for p in page_figures(chromium)["processes"] if all(p[1:4])], timeout=15)
        assert process[0].startswith("local runner (pid ") and float(process[1]) > 0, process
        steps = {row[1]: row for row in later["setup"]}
        assert steps["pre-population"][3:5] == ["0 / 0 documents", "done"], steps
        assert steps["query pool embedding"][3:5] == ["50 / 50 texts", "done"], steps
        assert busy["state"] in ("spawning", "running")

        post(f"{base}/stop", {})
        stopped = wait_for("the page to show the test stopped",
                           lambda: (f := page_figures(chromium))["state"] == "stopped" and f["in_flight"] == (0, 0)
                           and f)
        assert stopped["comparison"]["search"]["async_requests"] >= later["comparison"]["search"]["async_requests"]
        assert CANARY not in chromium.page_source
        assert CANARY not in get(base + "/milvus/state") and CANARY not in get(base + "/stats/requests")
    output = log_path.read_text()
    assert "Traceback" not in output, output[-3000:]
    assert CANARY not in output
    print(f"browser test took {time.monotonic() - started:.1f} s")


def test_master_page_sums_its_workers(milvus, collection, tmp_path):
    """A master runs no users: the page's in-flight counts and generator figures come from its two workers."""
    reports = tmp_path / "reports"
    with web_locust(tmp_path, "--processes", "2", "--host", milvus.uri, "--collection", collection,
                    "--prepopulate", "0", "--async-concurrency", "3", "--reports-dir", str(reports)) \
            as (base, log_path):
        wait_for("two workers", lambda: json.loads(get(base + "/milvus/state"))["runner"] == "master with 2 workers")
        assert post(f"{base}/swarm", {"user_count": 6, "spawn_rate": 6, "host": milvus.uri})["success"]

        def reported() -> dict | None:
            s = json.loads(get(base + "/milvus/state"))
            procs = s["processes"]
            # A worker's first one-second health window may close after its first report: wait for it too.
            ok = (len(procs) == 2 and all(p.get("running") and p.get("age_s") is not None for p in procs)
                  and all(p["cpu_pct"] is not None and p["hub_lag_ms"] is not None for p in procs)
                  and s["in_flight"]["sync"] > 0 and s["in_flight"]["async"] > 0
                  and any(r["name"] == "search" and r.get("sync") and r.get("async") for r in s["comparison"]["rows"]))
            return ok and s

        state = wait_for("both workers' figures on the master's page", reported, every=0.5)
        procs = state["processes"]
        assert sorted(p["process"].split(" (")[0] for p in procs) == ["worker 0", "worker 1"], procs
        for mode in ("sync", "async"):
            assert state["in_flight"][mode] == sum(p[f"in_flight_{mode}"] for p in procs), state
        assert "workers report every" in state["comparison"]["source"]
        post(f"{base}/stop", {})
        # The report folder's "generator health": each worker's figures, as its last report had them.
        summary = wait_for("the report folder", lambda: [json.loads(p.read_text())
                                                         for p in reports.glob("*/summary.json")], timeout=30)[0]
    workers = summary["generator_health"]["processes"]
    assert sorted(p["process"].split(" (")[0] for p in workers) == ["worker 0", "worker 1"], workers
    assert all(p["seconds"] >= 1 and p["hub_lag_ms_max"] is not None for p in workers), workers
    # Locust hands out users class by class: one worker may run only sync users, the other only async ones.
    assert sum(p["peak_in_flight_sync"] for p in workers) >= 1 and sum(p["peak_in_flight_async"] for p in workers) >= 1
    output = log_path.read_text()
    assert "Traceback" not in output, output[-3000:]
