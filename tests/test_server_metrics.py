"""Server-side figures from Milvus's Prometheus endpoint (locust_milvus/report/server_metrics.py): the increase and
bucket-percentile arithmetic on hand-written Prometheus text, in the label layouts of Milvus 2.6 and of the embedded
2.3.5, and one real headless run against the embedded Milvus whose report holds the proxy's search figures beside
the client's."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from locust_milvus.config.settings import ConfigError
from locust_milvus.report import server_metrics as sm
from locust_milvus.report.histograms import Recorder
from locust_milvus.report.summary import blocks, build, to_markdown
from locust_milvus.workload.operations import TABLE
from locust_milvus.workload.request_events import MODE_NAMES

from .conftest import ROOT, run_locust

CALLS = {name: op.milvus_call for name, op in TABLE.items()}  # what the report's listeners pass (workload's data)
BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def histogram_text(name: str, labels: str, cumulative: dict[float, int], total_ms: float) -> str:
    """One Milvus-style histogram series: every bucket bound, cumulative counts carried forward, +Inf = count."""
    lines, count = [], 0
    for bound in BOUNDS:
        count = cumulative.get(bound, count)
        lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {count}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {count}')
    lines += [f"{name}_sum{{{labels}}} {total_ms}", f"{name}_count{{{labels}}} {count}"]
    return "\n".join(lines)


def page_26(search: dict[float, int], search_sum: float, insert: dict[float, int], insert_sum: float,
            other_search: dict[float, int], started: float = 1.7e9) -> str:
    """A Milvus 2.6 page: sq_latency and mutation_latency carry db_name and collection_name (pkg/metrics), with a
    second collection's searches, our queries and a gauge around them that must all be left out."""
    sq, mut = "milvus_proxy_sq_latency", "milvus_proxy_mutation_latency"
    ours = 'collection_name="lt",db_name="default",node_id="7"'
    return "\n".join([
        "# HELP milvus_proxy_executing_total_nq total nq of executing search/query",
        "# TYPE milvus_proxy_executing_total_nq gauge",
        'milvus_proxy_executing_total_nq{node_id="7"} 3',
        f"# HELP {sq} latency of search or query successfully",
        f"# TYPE {sq} histogram",
        histogram_text(sq, f'{ours},query_type="search"', search, search_sum),
        histogram_text(sq, f'{ours},query_type="query"', {1: 5}, 2),
        histogram_text(sq, 'collection_name="other",db_name="default",node_id="7",query_type="search"',
                       other_search, 9999),
        f"# TYPE {mut} histogram",
        histogram_text(mut, f'{ours},msg_type="insert"', insert, insert_sum),
        'milvus_proxy_req_count{collection_name="lt",db_name="default",function_name="Search",node_id="7",'
        'status="success"} 123',
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {started}",
        "",
    ])


# Searches: 30 before, 110 after; the 80 in between: 20 in (1, 2], 20 in (2, 4], 40 in (4, 8]; 400 ms in all.
BEFORE = page_26({1: 10, 2: 10, 4: 20, 8: 30}, 100, {1: 1}, 0, {1: 50})
AFTER = page_26({1: 10, 2: 30, 4: 60, 8: 110}, 500, {1: 1, 2: 3, 4: 5}, 9, {1: 50, 2: 500})


def test_the_increase_and_bucket_percentiles_of_two_scrapes_are_prometheus_arithmetic():
    inc = sm.Increase()
    inc.add(sm.parse(BEFORE, "lt"), 100.0)
    inc.add(sm.parse(AFTER, "lt"), 110.0)
    assert inc.source("query_type") == ("milvus_proxy_sq_latency", True)  # 2.6: the collection's own series
    figures = sm.server_figures(inc.histogram("search"), inc.window_s)
    # 80 searches in 10 s, 400 ms: the other collection's 450 and our 5 queries are not in them
    assert figures["count"] == 80 and figures["rate"] == pytest.approx(8.0)
    assert figures["mean_ms"] == pytest.approx(5.0)
    # histogram_quantile: rank 40 is the last of (2, 4]: 2 + 2 * 20/20; rank 76 is 36 into the 40 of (4, 8]
    assert figures["p50_ms"] == pytest.approx(4.0)
    assert figures["p95_ms"] == pytest.approx(4 + 4 * 36 / 40)
    assert figures["p99_ms"] == pytest.approx(4 + 4 * 39.2 / 40)
    assert figures["p95_bucket_ms"] == [4, 8] and figures["p50_bucket_ms"] == [2, 4]
    assert figures["buckets"][:4] == [[1, 0], [2, 20], [4, 40], [8, 80]] and figures["buckets"][-1] == ["+Inf", 80]
    # writes: 4 inserts, 9 ms, 2 in (1, 2] and 2 in (2, 4]; rank 2 is the last of (1, 2], rank 3.96 near the top of
    # (2, 4]
    inserts = sm.server_figures(inc.histogram("insert"), inc.window_s)
    assert (inserts["count"], inserts["mean_ms"]) == (4, pytest.approx(2.25))
    assert (inserts["p50_ms"], inserts["p99_ms"]) == (pytest.approx(2.0), pytest.approx(2 + 2 * 1.96 / 2))
    assert sm.server_figures(inc.histogram("query"), inc.window_s)["count"] == 0  # no queries in between
    assert inc.histogram("delete") is None and inc.node_ids() == ["7"]


def test_a_restarted_milvus_counts_its_new_counters_as_gain():
    inc = sm.Increase()
    inc.add(sm.parse(BEFORE, "lt"), 0.0)
    inc.add(sm.parse(AFTER, "lt"), 5.0)  # +80
    # Restarted (a new process start time), counters from 0: 4 searches since, then 2 more.
    inc.add(sm.parse(page_26({2: 4}, 6, {}, 0, {}, started=1.8e9), "lt"), 10.0)
    inc.add(sm.parse(page_26({2: 4, 4: 6}, 12, {}, 0, {}, started=1.8e9), "lt"), 15.0)
    # Restarted again, and busy: 200 searches by the next scrape, more than before the restart. Only the start time
    # tells this from 200 - 6 more searches of the same process.
    inc.add(sm.parse(page_26({2: 200}, 300, {}, 0, {}, started=1.9e9), "lt"), 20.0)
    figures = sm.server_figures(inc.histogram("search"), inc.window_s)
    assert figures["count"] == 80 + 4 + 2 + 200 and figures["mean_ms"] == pytest.approx((400 + 6 + 6 + 300) / 286)
    assert figures["rate"] == pytest.approx(286 / 20)


def test_milvus_2_3_is_read_from_its_per_collection_histograms():
    # The embedded 2.3.5 exports sq_latency without a collection label, and collection_sq_latency with one.
    def page(n: int) -> str:
        return "\n".join([
            "# TYPE milvus_proxy_sq_latency histogram",
            histogram_text("milvus_proxy_sq_latency", 'node_id="1",query_type="search"', {1: n + 1000}, 0),
            "# TYPE milvus_proxy_collection_sq_latency histogram",
            histogram_text("milvus_proxy_collection_sq_latency", 'collection_name="lt",node_id="1",query_type="search"',
                           {1: n, 2: 2 * n}, 3 * n),
            histogram_text("milvus_proxy_collection_sq_latency",
                           'collection_name="setup",node_id="1",query_type="search"', {1: 7 * n}, 0),
            "",
        ])

    inc = sm.Increase()
    inc.add(sm.parse(page(10), "lt"), 0.0)
    inc.add(sm.parse(page(30), "lt"), 1.0)
    assert inc.source("query_type") == ("milvus_proxy_collection_sq_latency", True)
    h = inc.histogram("search")
    assert (h.count, h.sum) == (40, 60)  # ours alone: not the server-wide 1000s, not the other collection's 7n
    # A Milvus whose histograms carry no collection label at all is read whole, and the report says so.
    whole = sm.Increase()
    for n in (10, 30):
        text = histogram_text("milvus_proxy_sq_latency", 'node_id="1",query_type="search"', {1: n}, 0)
        whole.add(sm.parse(f"# TYPE milvus_proxy_sq_latency histogram\n{text}\n", "lt"), float(n))
    assert whole.source("query_type") == ("milvus_proxy_sq_latency", False)
    assert whole.histogram("search").count == 20


def test_bucket_quantile_edges():
    h = sm.Histogram((1.0, 2.0, math.inf), (0.0, 10.0, 20.0), 0.0, 20.0)
    assert sm.bucket_quantile(0.99, h) == 2.0  # in the +Inf bucket: the highest finite bound, as Prometheus does
    assert sm.bucket_bounds(0.99, h) == (2.0, math.inf)
    assert sm.bucket_quantile(0.5, h) == pytest.approx(2.0)  # rank 10 is the last of (1, 2]
    assert sm.bucket_quantile(0.25, h) == pytest.approx(1.5)
    assert sm.bucket_quantile(0.5, sm.Histogram((1.0, math.inf), (0.0, 0.0), 0.0, 0.0)) is None  # empty


def client_rows(requests: dict[str, list[float]]) -> list[dict]:
    recorder = Recorder(modes=MODE_NAMES)
    for name, times in requests.items():
        for ms in times:
            recorder.record("langchain-sync", name, ms)
    return build(recorder, name="t", started_s=0.0, stopped_s=1.0, config={})["rows"]


class FakeEndpoint:
    """Serves the given pages in turn (an exception is raised instead of served); the last one thereafter."""

    def __init__(self, *pages):
        self.pages = list(pages)
        self.urls = []

    def __call__(self, url: str, timeout_s: float) -> str:
        self.urls.append(url)
        page = self.pages.pop(0) if len(self.pages) > 1 else self.pages[0]
        if isinstance(page, Exception):
            raise page
        return page


def test_the_report_section_puts_server_and_client_side_by_side_with_the_gap():
    endpoint = FakeEndpoint(BEFORE, AFTER)
    scraper = sm.Scraper("http://user:pw@milvus:9091/metrics", "lt", CALLS, interval_s=3600, fetch=endpoint).start()
    scraper.finish()
    rows = client_rows({"search": [6.0] * 40 + [8.0] * 40, "search_with_score": [10.0] * 4, "mmr": [30.0]})
    section = scraper.result(rows)
    assert section["url"] == "http://***@milvus:9091/metrics" and section["collection"] == "lt"
    [search, insert] = section["operations"]  # an insert row: the server saw inserts though the client made none
    assert search["client"]["operations"] == ["search", "search_with_score"] and search["client"]["count"] == 84
    assert search["client"]["mean_ms"] == pytest.approx((40 * 6 + 40 * 8 + 4 * 10) / 84, abs=0.01)
    assert search["gap"]["mean_ms"] == pytest.approx(search["client"]["mean_ms"] - 5.0)
    assert search["gap"]["p50_ms"] == pytest.approx(search["client"]["p50_ms"] - 4.0)
    assert insert["name"] == "insert" and insert["client"] is None and insert["gap"] is None
    assert section["not_compared"] == ["mmr"]
    json.dumps(section)  # it goes into summary.json as it is

    md = to_markdown(sm.blocks(section))
    assert "## Server side (Milvus proxy)" in md and "http://***@milvus:9091/metrics" in md and "pw" not in md
    # (the rate is over the scrapes' own clock, here a few microseconds apart)
    assert re.search(r"\| search \| Milvus proxy \| 80 \| [\d.]+ \| 5\.000 \| ~4\.000 \(2-4\) \| ~7\.600 \(4-8\) \| "
                     r"~7\.920 \(4-8\) \|", md), md
    assert "| search | client: search, search_with_score (sync) | 84 |" in md
    assert "| search | gap (client - server) |  |  | " in md
    assert "approximate" in md and "collection 'lt' alone" in md and "In no client row: mmr (" in md
    # and the summary renders it between the client's tables and the rest
    summary = build(Recorder(), name="t", started_s=0.0, stopped_s=1.0, config={})
    summary["server_side"] = section
    assert "## Server side (Milvus proxy)" in to_markdown(blocks(summary))


def test_a_failing_endpoint_is_counted_and_logged_once_never_raised(caplog):
    endpoint = FakeEndpoint(OSError("connection refused"), BEFORE, "<html>no</html>", AFTER)
    scraper = sm.Scraper("http://milvus:9091/metrics", "lt", CALLS, interval_s=3600, fetch=endpoint)
    with caplog.at_level(logging.WARNING, logger="locust_milvus"):
        scraper.start()
        for _ in range(2):
            scraper._scrape()  # what the greenlet does every interval
        scraper.finish()
    assert (scraper.scrapes, scraper.failed) == (4, 2)  # refused, and a page that is not Milvus's metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "OSError: connection refused" in warnings[0]
    # The two good scrapes still give figures: the HTML page between them is a failed scrape, not a Milvus whose
    # every series vanished (which would make all of AFTER's 110 searches look new)
    section = scraper.result([])
    assert section["failed_scrapes"] == 2 and section["operations"][0]["server"]["count"] == 80
    assert "2 failed, the first with OSError: connection refused" in to_markdown(sm.blocks(section))

    dead = sm.Scraper("http://milvus:9091/metrics", "lt", CALLS, interval_s=3600,
                      fetch=FakeEndpoint(TimeoutError("slow")))
    dead.start().finish()
    md = to_markdown(sm.blocks(dead.result(client_rows({"search": [1.0]}))))
    assert "No server-side figures: 0 of 2 scrapes of http://milvus:9091/metrics succeeded" in md

    elsewhere = sm.Scraper("http://web:80/", "lt", CALLS, interval_s=3600,
                           fetch=FakeEndpoint("# TYPE up gauge\nup 1\n"))
    elsewhere.start().finish()
    assert elsewhere.failed == 2 and "ValueError: not Milvus's metrics" in elsewhere.first_error
    # A Milvus that exports none of the histograms (renamed in some later version?) says so.
    renamed = sm.Scraper("http://milvus:9091/metrics", "lt", CALLS, interval_s=3600,
                         fetch=FakeEndpoint("# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1\n"))
    renamed.start().finish()
    assert renamed.failed == 0
    assert "exports none of milvus_proxy_sq_latency" in to_markdown(sm.blocks(renamed.result([])))


def test_the_scraper_greenlet_scrapes_on_its_interval_and_stops():
    import gevent

    endpoint = FakeEndpoint(BEFORE, AFTER)
    scraper = sm.Scraper("http://milvus:9091/metrics", "lt", CALLS, interval_s=0.05, fetch=endpoint).start()
    gevent.sleep(0.28)
    scraper.finish()
    scrapes = scraper.scrapes
    assert 5 <= scrapes <= 8, scrapes  # baseline, about 5 in the loop, the last
    gevent.sleep(0.15)
    assert scraper.scrapes == scrapes  # the greenlet is gone
    assert sm.server_figures(scraper.increase.histogram("search"), 1.0)["count"] == 80  # AFTER repeated: no gain


@pytest.mark.parametrize("url", ["milvus:9091/metrics", "ftp://milvus/metrics", "http:///metrics"])
def test_a_metrics_url_that_is_not_http_is_refused(url):
    with pytest.raises(ConfigError, match="--milvus-metrics-url .* is not an http"):
        sm.check_url(url)
    assert sm.check_url(" http://milvus:9091/metrics ") == "http://milvus:9091/metrics" and sm.check_url("") == ""


def test_the_deployment_files_scrape_the_milvus_they_load(monkeypatch):
    from locust.argument_parser import get_parser

    import yaml

    import locust_milvus.config.options  # noqa: F401  (registers --milvus-metrics-url with Locust's parser)

    for name in [n for n in os.environ if n.startswith("LOCUST_")]:
        monkeypatch.delenv(name)  # a developer's own settings must not decide this
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    helm = yaml.safe_load((ROOT / "deploy" / "helm" / "locust-values.yaml").read_text())
    commands = {
        "compose": compose["services"]["master"]["command"],
        # the chart's own --master and --host, then our args (as tests/test_deploy_files.py builds them)
        "helm": ["--master", f"--host={helm['loadtest']['locust_host']}", *helm["master"]["args"]],
    }
    for where, argv in commands.items():
        options = get_parser(default_config_files=[]).parse_args(argv)
        metrics, milvus = urlsplit(sm.check_url(options.milvus_metrics_url)), urlsplit(options.host)
        # Milvus's metrics port on the same service as its gRPC port: the Milvus the workers load
        assert (metrics.hostname, metrics.port, metrics.path) == (milvus.hostname, 9091, "/metrics"), where
    assert "http://localhost:9091/healthz" in compose["services"]["milvus"]["healthcheck"]["test"]


def test_every_operation_names_a_milvus_call_the_proxy_reports_or_none():
    assert {op.milvus_call for op in TABLE.values()} <= set(sm.MILVUS_CALLS) | {None}
    assert sm.Scraper("http://m:9091/metrics", "lt", CALLS).calls == CALLS
    with pytest.raises(ValueError, match="not Milvus calls"):
        sm.Scraper("http://m:9091/metrics", "lt", {"add": "insertt"})


# --- a real run --------------------------------------------------------------------------------------------------

CANCELLED = re.compile(r"operations in flight at stop were cut off, outcome unknown \(not counted as requests\): "
                       r"(.*)$", re.MULTILINE)


@pytest.mark.locust
@pytest.mark.milvus
def test_a_run_against_the_embedded_milvus_reports_the_proxys_figures_beside_the_clients(tmp_path: Path):
    # No --host: the run starts its own Milvus and scrapes that Milvus's metrics port by itself.
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "5s", "--prepopulate", "100",
                        "--reports-dir", str(tmp_path), "--report-name", "server-side")
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    assert re.search(r"server metrics from http://127\.0\.0\.1:\d+/metrics: [2-9] scrapes, 0 failed", result.output)
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((folder / "summary.json").read_text())
    section = summary["server_side"]
    assert section["failed_scrapes"] == 0 and section["collection"] == "locust_milvus"
    assert section["metrics"]["query_type"] == "milvus_proxy_collection_sq_latency"  # Milvus 2.3.5's layout
    cancelled: dict[str, int] = {}  # per operation, both modes ("sync add 3, async add 2")
    for op, n in re.findall(r"(\w+) (\d+)", ";".join(CANCELLED.findall(result.output))):
        cancelled[op] = cancelled.get(op, 0) + int(n)
    operations = {op["name"]: op for op in section["operations"]}
    for server_name, client_name in (("search", "search"), ("insert", "add"), ("delete", "delete")):
        server, client = operations[server_name]["server"], operations[server_name]["client"]
        rows = [r for r in summary["rows"] if r["name"] == client_name]
        assert client["count"] == sum(r["count"] for r in rows) > 0
        ok = client["count"] - client["failures"]
        # Milvus counts every successful call, once: those the client saw succeed, plus at most the calls cut off
        # at stop (their outcome is unknown to the client). Pre-population (set-up) came before the baseline.
        assert ok <= server["count"] <= client["count"] + cancelled.get(client_name, 0), (server_name, server, client)
        assert server["mean_ms"] is not None and server["rate"] > 0
        # Milvus's share of the call cannot exceed what the client waited (the mean: exact but for Milvus's
        # rounding down to whole milliseconds)
        assert operations[server_name]["gap"]["mean_ms"] > 0
    md = (folder / "summary.md").read_text()
    assert "## Server side (Milvus proxy)" in md and f"Scraped from {section['url']} every 5 s" in md
    assert re.search(r"^\| search \| Milvus proxy \| \d+ \| [\d.]+ \| [\d.]+ \| ~[\d.]+ \(\d+-\d+\) \|", md, re.M)
    assert "| search | gap (client - server) |" in md
    assert "<h2>Server side (Milvus proxy)</h2>" in (folder / "summary.html").read_text()
