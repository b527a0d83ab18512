"""Milvus's Prometheus latency histograms: picking this collection's series out of a metrics page, parsing them,
summing their increase scrape to scrape (a restart starts the counters again from 0), and bucket-interpolated
quantiles. Plain data and arithmetic; server_metrics.py scrapes and reports (its docstring says what Milvus exports).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

PARSE_CHUNK_LINES = 42  # two histogram series
COLLECTION_LABEL = "collection_name"
# The histograms per label, preferred first: the 2.4+ name (which carries the collection), then 2.3's per-collection
# twin. The first one that carries the collection label is used; without any, the first one exported, server-wide.
SOURCES = {
    "query_type": ("milvus_proxy_sq_latency", "milvus_proxy_collection_sq_latency"),
    "msg_type": ("milvus_proxy_mutation_latency", "milvus_proxy_collection_mutation_latency"),
}
# Milvus's operations, as its proxy labels them, and the label that names each. Which client operations make which
# call is the workload's knowledge, passed in (``Scraper(calls=...)``: client operation -> Milvus call, or None for
# one that makes several calls or writes elsewhere and is compared with nothing).
MILVUS_CALLS = {"search": "query_type", "query": "query_type", "insert": "msg_type", "delete": "msg_type",
                "upsert": "msg_type"}
ALL_NAMES = tuple(name for names in SOURCES.values() for name in names)
START_METRIC = "process_start_time_seconds"  # client_golang's process collector, which Milvus registers
_START_LINE = f"{START_METRIC} "
_LINE_PREFIXES = tuple(f"{name}{suffix}" for name in ALL_NAMES for suffix in ("_bucket", "_sum", "_count"))
Labels = tuple[tuple[str, str], ...]


@dataclass
class Histogram:
    """One Prometheus histogram series: cumulative counts per upper bound (ascending, +Inf last), sum and count."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float
    count: float

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram(self.bounds, tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
                         self.sum - earlier.sum, self.count - earlier.count)

    def plus(self, other: Histogram) -> Histogram:
        return Histogram(self.bounds, tuple(a + b for a, b in zip(self.cumulative, other.cumulative, strict=True)),
                         self.sum + other.sum, self.count + other.count)


@dataclass
class Scrape:
    series: dict[tuple[str, Labels], Histogram]  # (metric name, labels without le) -> histogram
    labelled: set[str]  # metric names whose series carry the collection label (any collection)
    started_s: float | None = None  # the Milvus process's start (process_start_time_seconds): a change is a restart


def pick_lines(text: str, collection: str | None) -> tuple[dict[str, list[str]], set[str]]:
    """The lines prometheus_client needs to parse, by metric: per label, those of one histogram (the first that
    carries the collection label, else the first exported), of this collection only, and the process's start time;
    and the names that carry the label (whatever the collection)."""
    ours = f'{COLLECTION_LABEL}="{collection}"' if collection else None
    lines: dict[str, list[str]] = {}
    labelled: set[str] = set()
    for line in text.splitlines():
        if line.startswith(_START_LINE):
            lines[START_METRIC] = [line]
        elif line.startswith(_LINE_PREFIXES):
            name = line.partition("{")[0].partition(" ")[0].rsplit("_", 1)[0]  # less its _bucket, _sum or _count
            if f'{COLLECTION_LABEL}="' in line:
                labelled.add(name)
                if ours is not None and ours not in line:
                    continue
            lines.setdefault(name, []).append(line)
    chosen = [name for name in (choose(label, labelled, set(lines))[0] for label in SOURCES) if name is not None]
    if START_METRIC in lines:
        chosen.append(START_METRIC)
    return {name: lines.get(name, []) for name in chosen}, labelled


def choose(label: str, labelled: set[str], present: set[str]) -> tuple[str | None, bool]:
    """The histogram read for a label's operations, and whether it is the collection's alone."""
    for name in SOURCES[label]:
        if name in labelled:
            return name, True
    for name in SOURCES[label]:
        if name in present:
            return name, False
    return None, False


def parse(text: str, collection: str | None = None, pause: Callable[[], object] = lambda: None) -> Scrape:
    """The histograms we read from one page of Prometheus text; raises ValueError when it is not Prometheus text or
    not a Milvus's (neither the histograms nor the process's start time: an HTML page, another exporter).

    prometheus_client's parser takes about 20 us a line here (a histogram series is 21 lines), so the lines go to it
    in chunks with ``pause()`` between them: the scraper passes ``gevent.sleep(0)``, which lets the users' greenlets
    run instead of waiting out the whole parse.
    """
    picked, labelled = pick_lines(text, collection)
    if not picked:
        raise ValueError(f"not Milvus's metrics: none of {', '.join((*ALL_NAMES, START_METRIC))} in the answer")
    series: dict[tuple[str, Labels], dict] = {}
    started_s = None
    chunks = [(name, lines[i:i + PARSE_CHUNK_LINES]) for name, lines in picked.items()
              for i in range(0, len(lines), PARSE_CHUNK_LINES)]
    samples = []
    for name, chunk in chunks:
        pause()
        kind = "gauge" if name == START_METRIC else "histogram"
        for family in text_string_to_metric_families("\n".join([f"# TYPE {name} {kind}", *chunk, ""])):
            samples += [(family.name, sample) for sample in family.samples]
    for family_name, sample in samples:
        if family_name == START_METRIC:
            started_s = sample.value
            continue
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        entry = series.setdefault((family_name, tuple(sorted(labels.items()))),
                                  {"buckets": {}, "sum": 0.0, "count": 0.0})
        if sample.name.endswith("_bucket"):
            entry["buckets"][float(sample.labels["le"])] = sample.value
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
    out = {}
    for key, entry in series.items():
        bounds = tuple(sorted(entry["buckets"]))
        if bounds:
            out[key] = Histogram(bounds, tuple(entry["buckets"][b] for b in bounds), entry["sum"], entry["count"])
    return Scrape(out, labelled, started_s)


# --- increases over the test ---------------------------------------------------------------------------------------


@dataclass
class Increase:
    """What each series gained from the first scrape to the latest, scrape by scrape (a counter that went down was
    reset by a restart: its new value is all gain)."""

    totals: dict[tuple[str, Labels], Histogram] = field(default_factory=dict)
    labelled: set[str] = field(default_factory=set)
    present: set[str] = field(default_factory=set)
    first_s: float | None = None
    last_s: float | None = None
    _previous: Scrape | None = None

    def add(self, scrape: Scrape, at_s: float) -> None:
        self.labelled |= scrape.labelled
        self.present |= {name for name, _ in scrape.series}
        if self._previous is None:  # the baseline
            self.first_s = at_s
        else:
            # A restarted Milvus starts its counters from 0: all they hold is gain. (A counter that went down says
            # the same when the start time is not exported.)
            restarted = None not in (scrape.started_s, self._previous.started_s) \
                and scrape.started_s != self._previous.started_s
            for key, now in scrape.series.items():
                before = None if restarted else self._previous.series.get(key)
                # A series first seen after the baseline was made during the test (client_golang creates a series on
                # its first observation): all of it is gain too.
                gain = now if before is None or before.bounds != now.bounds or now.count < before.count \
                    else now.minus(before)
                total = self.totals.get(key)
                self.totals[key] = gain if total is None or total.bounds != gain.bounds else total.plus(gain)
        self._previous = scrape
        self.last_s = at_s

    @property
    def window_s(self) -> float:
        return (self.last_s - self.first_s) if self.first_s is not None and self.last_s is not None else 0.0

    def source(self, label: str) -> tuple[str | None, bool]:
        """The histogram used for a label's operations, and whether it is this collection's alone."""
        return choose(label, self.labelled, self.present)

    def histogram(self, operation: str) -> Histogram | None:
        """The operation's gain over the test, summed over its series (nodes, databases), or None if never seen."""
        label = MILVUS_CALLS[operation]
        name, _ = self.source(label)
        total = None
        for (metric, labels), gain in self.totals.items():
            if metric == name and (label, operation) in labels:
                total = gain if total is None else total.plus(gain)
        return total

    def node_ids(self) -> list[str]:
        return sorted({v for (_, labels) in self.totals for k, v in labels if k == "node_id"})


def _rank_bucket(q: float, h: Histogram) -> tuple[int, float] | None:
    """The index of the bucket that holds the q-quantile's rank, and the rank; None for an empty histogram."""
    total = h.cumulative[-1] if h.cumulative else 0.0  # the +Inf bucket counts every observation
    if total <= 0:
        return None
    rank = q * total
    return next(i for i, cumulative in enumerate(h.cumulative) if cumulative >= rank), rank


def bucket_bounds(q: float, h: Histogram) -> tuple[float, float] | None:
    """The bounds of the bucket that holds the q-quantile: all the histogram knows of it (the report shows them)."""
    found = _rank_bucket(q, h)
    if found is None:
        return None
    i = found[0]
    return (h.bounds[i - 1] if i > 0 else 0.0), h.bounds[i]


def bucket_quantile(q: float, h: Histogram) -> float | None:
    """The q-quantile the way Prometheus's histogram_quantile estimates it: linear within the bucket that holds the
    rank, the lower bound of the first bucket being 0; in the +Inf bucket, the highest finite bound."""
    found = _rank_bucket(q, h)
    if found is None:
        return None
    i, rank = found
    bound, cumulative = h.bounds[i], h.cumulative[i]
    if math.isinf(bound):
        return h.bounds[-2] if len(h.bounds) > 1 else None
    if i == 0 and bound <= 0:
        return bound
    lower = h.bounds[i - 1] if i > 0 else 0.0
    below = h.cumulative[i - 1] if i > 0 else 0.0
    in_bucket = cumulative - below
    return lower + (bound - lower) * ((rank - below) / in_bucket if in_bucket > 0 else 0.0)


# --- the scraper ---------------------------------------------------------------------------------------------------
