"""Server-side figures: Milvus's own latency histograms, scraped from its Prometheus endpoint during the test.

The client measures network, gRPC, pymilvus and LangChain as well as Milvus; the proxy's histograms measure Milvus
alone (from the request's arrival at the proxy to its reply). Side by side they show where the time goes. One
scraper per run, on the master or the local runner (the Milvus is the same for every worker): a baseline scrape when
the test starts, one every few seconds in a greenlet, a last one when it stops. The figures are the increase of each
series over the test, summed scrape to scrape so that a Milvus restarted mid-run (its counters start again from 0)
is counted rather than subtracted.

What Milvus exports (checked against the embedded 2.3.5 and milvus-io/milvus pkg/metrics/proxy_metrics.go of 2.6):

- ``milvus_proxy_sq_latency`` (search and query, label ``query_type``) and ``milvus_proxy_mutation_latency``
  (label ``msg_type``: insert, delete, upsert) are histograms in milliseconds with buckets 1, 2, 4 ... 131072 ms, of
  successful requests only, labelled ``node_id``. In 2.6 they also carry ``db_name`` and ``collection_name``; 2.3.5
  labels them with neither and exports per-collection twins, ``milvus_proxy_collection_sq_latency`` /
  ``milvus_proxy_collection_mutation_latency`` (labels ``collection_name``, ``node_id`` and the type). Whichever
  carries the collection is used (versions in between need no table of their own), so other traffic on a shared
  Milvus is left out; a Milvus labelling neither is read whole (the report says which).
- Milvus observes ``Duration.Milliseconds()``: whole milliseconds, rounded down.
- ``process_start_time_seconds`` (client_golang's process collector) tells a restart from a busy interval.

Nothing here imports Locust; listeners.py drives it. Every network wait is gevent-cooperative (Locust monkey-patches
the standard library before this module is imported), and the only CPU work, parsing, is kept small because it runs
on the hub beside the users: prometheus_client parsed the embedded Milvus's whole 150 kB page in 26 ms here, so the
lines of the two histograms read (of this collection) are picked out first and parsed in chunks, yielding between
them: about 3 ms a scrape, never more than 1 ms at a stretch.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import gevent

from locust_milvus.config.secrets import redact_uri
from locust_milvus.config.settings import ConfigError
from locust_milvus.report.histograms import decode, merge_into, new_histogram, percentiles_ms
from locust_milvus.report.prometheus import (
    ALL_NAMES,
    MILVUS_CALLS,
    SOURCES,
    Histogram,
    Increase,
    bucket_bounds,
    bucket_quantile,
    parse,
)

logger = logging.getLogger("locust_milvus")

SCRAPE_INTERVAL_S = 5.0
SCRAPE_TIMEOUT_S = 2.0  # the whole scrape, connection to last byte; a slower endpoint counts as a failed scrape
QUANTILES = (0.5, 0.95, 0.99)



def check_url(url: str) -> str:
    """``--milvus-metrics-url``: empty (off) or an http(s) URL with a host; raises ConfigError with one line."""
    url = (url or "").strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--milvus-metrics-url {redact_uri(url)!r} is not an http(s) URL: give Milvus's metrics "
                          "endpoint, e.g. http://HOST:9091/metrics")
    return url


def fetch(url: str, timeout_s: float) -> str:
    # urllib's timeout bounds each socket operation; gevent's Timeout bounds the whole scrape (a slow trickle too).
    with gevent.Timeout(timeout_s, TimeoutError(f"no complete answer in {timeout_s:g} s")):
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode("utf-8", errors="replace")


class Scraper:
    """Scrapes one Milvus metrics endpoint for one test. ``start`` takes the baseline (synchronously: load must not
    begin before it) and starts the periodic greenlet; ``finish`` takes the last scrape; both only wait on the
    network, cooperatively. A failed scrape is counted and the first one logged, never raised."""

    def __init__(self, url: str, collection: str | None, calls: dict[str, str | None],
                 interval_s: float = SCRAPE_INTERVAL_S, timeout_s: float = SCRAPE_TIMEOUT_S,
                 fetch: Callable[[str, float], str] = fetch) -> None:
        unknown = {call for call in calls.values() if call is not None} - set(MILVUS_CALLS)
        if unknown:
            raise ValueError(f"not Milvus calls the proxy reports: {sorted(unknown)}")
        self.url = url
        self.collection = collection
        self.calls = calls
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._fetch = fetch
        self.increase = Increase()
        self.scrapes = 0
        self.failed = 0
        self.first_error: str | None = None
        self.finished = False
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> Scraper:
        self._scrape()
        self._greenlet = gevent.spawn(self._loop)
        return self

    def restart(self) -> None:
        """Forget what was gained so far and take a new baseline (Locust's statistics were reset)."""
        self._stop_loop()
        self.increase = Increase()
        self.start()

    def finish(self) -> None:
        if self.finished:
            return
        self._stop_loop()
        self._scrape()
        self.finished = True
        logger.info("locust-milvus: server metrics from %s: %d scrapes, %d failed", redact_uri(self.url),
                    self.scrapes, self.failed)

    def _stop_loop(self) -> None:
        if self._greenlet is not None:
            # it can only be stopped where it waits (the network or its sleep), so the figures are never half-added
            self._greenlet.kill(block=True)
            self._greenlet = None

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.interval_s)
            self._scrape()

    def _scrape(self) -> None:
        # Counted once it has an outcome: a scrape the greenlet's kill cut off (GreenletExit) is not one.
        try:
            text = self._fetch(self.url, self.timeout_s)
            scrape = parse(text, self.collection, pause=lambda: gevent.sleep(0))
        except Exception as e:  # noqa: BLE001 - the endpoint is optional: a failure is a count in the report
            self.scrapes += 1
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                logger.warning("locust-milvus: scraping %s failed (%s); failures are counted in the report, "
                               "not logged again", redact_uri(self.url), self.first_error)
            return
        self.scrapes += 1
        self.increase.add(scrape, time.time())

    def result(self, rows: list[dict]) -> dict:
        """The report's ``server_side`` section: per Milvus operation the proxy's figures, the client's for the
        operations that make that call, and the gap. ``rows``: the summary's client-side rows."""
        inc = self.increase
        sources = {label: inc.source(label) for label in SOURCES}
        operations = []
        for operation, label in MILVUS_CALLS.items():
            client_names = tuple(name for name, call in self.calls.items() if call == operation)
            if sources[label][0] is None:  # this endpoint does not export the histogram at all
                continue
            h = inc.histogram(operation)
            client = client_figures(rows, client_names)
            if (h is None or h.count <= 0) and client is None:
                continue
            server = server_figures(h, inc.window_s)
            operations.append({"name": operation, "metric": sources[label][0], "server": server, "client": client,
                               "gap": gap(client, server)})
        return {
            "url": redact_uri(self.url),
            "interval_s": self.interval_s,
            "scrapes": self.scrapes,
            "failed_scrapes": self.failed,
            "successful_scrapes": self.scrapes - self.failed,
            "first_error": self.first_error,
            "window_s": round(inc.window_s, 3),
            "collection": self.collection if any(own for _, own in sources.values()) else None,
            "metrics": {label: name for label, (name, _) in sources.items()},
            "node_ids": inc.node_ids(),
            "not_compared": [r["name"] for r in rows
                             if r["name"] in self.calls and self.calls[r["name"]] is None and r["count"]],
            "operations": operations,
        }


def server_figures(h: Histogram | None, window_s: float) -> dict:
    if h is None or h.count <= 0:
        return {"count": 0, "rate": 0.0, "mean_ms": None, **{_key(q): None for q in QUANTILES},
                **{_key(q).replace("_ms", "_bucket_ms"): None for q in QUANTILES}, "buckets": []}
    return {
        "count": int(round(h.count)),
        "rate": h.count / window_s if window_s > 0 else 0.0,
        "mean_ms": h.sum / h.count,
        **{_key(q): bucket_quantile(q, h) for q in QUANTILES},
        **{_key(q).replace("_ms", "_bucket_ms"): _json_bounds(bucket_bounds(q, h)) for q in QUANTILES},
        # cumulative counts by upper bound, as Prometheus exports them, so any quantile can be recomputed
        "buckets": [["+Inf" if math.isinf(b) else b, int(round(c))]
                    for b, c in zip(h.bounds, h.cumulative, strict=True)],
    }


def _json_bounds(bounds: tuple[float, float] | None) -> list | None:
    return None if bounds is None else ["+Inf" if math.isinf(b) else b for b in bounds]


def client_figures(rows: list[dict], names: tuple[str, ...]) -> dict | None:
    """The client-side rows of these operations (every mode), merged: requests, failures, mean and percentiles."""
    mine = [r for r in rows if r["name"] in names and r["count"]]
    if not mine:
        return None
    merged = new_histogram()
    for r in mine:
        if r.get("histogram"):
            merge_into(merged, decode(r["histogram"]))
    pct = percentiles_ms(merged)
    timed = merged.get_total_count()
    return {
        "operations": sorted({r["name"] for r in mine}),
        "modes": sorted({r["mode"] for r in mine}),
        "count": sum(r["count"] for r in mine),
        "failures": sum(r["failures"] for r in mine),
        "rps": sum(r["rps"] for r in mine),
        "mean_ms": merged.get_mean_value() / 1000.0 if timed else None,
        **{_key(q): pct.get(q * 100) for q in QUANTILES},
    }


def gap(client: dict | None, server: dict) -> dict | None:
    if client is None or not server["count"]:
        return None
    return {k: (client[k] - server[k] if client[k] is not None and server[k] is not None else None)
            for k in ("mean_ms", *(_key(q) for q in QUANTILES))}


def _key(q: float) -> str:
    return f"p{round(q * 100)}_ms"


# --- the report's section --------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _approx(value: float | None, bounds: list | None) -> str:
    """A bucket-based percentile with the bucket it lies in: ``~4.222 (4-8)``."""
    if value is None:
        return ""
    lower, upper = bounds if bounds else (None, None)
    if upper == "+Inf":
        return f"> {lower:g}"
    return f"~{_ms(value)} ({lower:g}-{upper:g})" if bounds else f"~{_ms(value)}"


def blocks(section: dict) -> list[tuple]:
    """The summary's "Server side" section, as summary.blocks renders them."""
    out: list[tuple] = [("h2", "Server side (Milvus proxy)")]
    where = section["url"]
    if section["successful_scrapes"] < 2:
        return out + [("p", f"No server-side figures: {section['successful_scrapes']} of {section['scrapes']} scrapes "
                            f"of {where} succeeded, and two are needed (first error: {section['first_error']}).")]
    if not section["operations"]:
        return out + [("p", f"No server-side figures: {where} exports none of {', '.join(ALL_NAMES)}. Is it "
                            "Milvus's metrics endpoint (port 9091, path /metrics)?")]
    scope = (f"collection {section['collection']!r} alone" if section["collection"]
             else "the whole server (this Milvus labels no latency histogram with its collection)")
    metrics = ", ".join(sorted({op["metric"] for op in section["operations"]}))
    failed = (f"; {section['failed_scrapes']} failed, the first with {section['first_error']}"
              if section["failed_scrapes"] else "")
    out.append(("p", f"Scraped from {where} every {section['interval_s']:g} s ({section['scrapes']} scrapes{failed}). "
                     f"Figures are what {metrics} gained from the first to the last scrape of the test "
                     f"({section['window_s']} s), for {scope}. Milvus times a request from its arrival at the proxy "
                     "to the proxy's reply and counts successful requests only; the client's time adds the network, "
                     "gRPC, pymilvus and LangChain, so the gap (client minus server) is what the same requests cost "
                     "outside Milvus."))
    out.append(("p", "Server-side percentiles (marked ~) are approximate: Milvus keeps a histogram with buckets at "
                     "1, 2, 4, 8, 16 ... ms, and a percentile is interpolated linearly within its bucket (shown in "
                     "brackets), as Prometheus's histogram_quantile does; all that is known is that it lies in that "
                     "bucket, so a percentile gap may be off by up to the bucket's width, and a negative one only "
                     "means the estimate is off. The mean is exact (sum over count), except that Milvus records whole "
                     "milliseconds rounded down, which makes the server's about 0.5 ms low: its gap is the one to "
                     "trust. Client figures include failed requests, as in the table above."))
    rows = []
    for op in section["operations"]:
        s, c, g = op["server"], op["client"], op["gap"]
        rows.append([op["name"], "Milvus proxy", str(s["count"]), f"{s['rate']:.1f}", _ms(s["mean_ms"]),
                     *(_approx(s[_key(q)], s[_key(q).replace("_ms", "_bucket_ms")]) for q in QUANTILES)])
        if c is not None:
            rows.append([op["name"], f"client: {', '.join(c['operations'])} ({', '.join(c['modes'])})",
                         f"{c['count']}" + (f" ({c['failures']} failed)" if c["failures"] else ""),
                         f"{c['rps']:.1f}", _ms(c["mean_ms"]), *(_ms(c[_key(q)]) for q in QUANTILES)])
        if g is not None:
            rows.append([op["name"], "gap (client - server)", "", "", _ms(g["mean_ms"]),
                         *(f"~{_ms(g[_key(q)])}" if g[_key(q)] is not None else "" for q in QUANTILES)])
    out.append(("table", ["operation", "measured at", "requests", "per s", "mean ms",
                          *(f"p{round(q * 100)} ms" for q in QUANTILES)], rows, 2))
    notes = []
    if section["not_compared"]:
        notes.append(f"In no client row: {', '.join(section['not_compared'])} (an MMR search makes a search and a "
                     "query; from_texts writes into a scratch collection), though Milvus counts their calls.")
    if len(section["node_ids"]) > 1:
        notes.append(f"The scrapes were answered by several Milvus nodes (node_id {', '.join(section['node_ids'])}): "
                     "behind a load-balanced service each scrape may reach another proxy, so these figures mix "
                     "them. Point --milvus-metrics-url at one proxy.")
    if notes:
        out.append(("p", " ".join(notes)))
    return out
