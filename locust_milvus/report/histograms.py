"""Recording every request's response time at microsecond resolution, and merging recordings across processes.

Locust's own statistics round each response time into a bucket (``locust.stats.bucket_response_time``): whole
milliseconds below 100 ms, two significant digits above, so a 1.4 ms search is a 1 ms search and its p99 is a
whole number. Here each (request_type, name) gets an HdrHistogram in microseconds (1 us .. 1 h, 3 significant
digits: exact to 1 us up to 2 ms, within 0.1 % above) and per-second counts of successes and failures, for
throughput over time. Failed requests are recorded too, as Locust does, so counts match its statistics.

A worker sends what it recorded since its last report (``drain``) in Locust's ``report_to_master`` data and
starts afresh; the master adds it into its own recorder (``merge``). HdrHistogram's ``encode()`` is a compressed
base64 string of a few kB, so a report costs little bandwidth.
"""

from __future__ import annotations

import time

from hdrh.histogram import HdrHistogram

from locust_milvus.workload import pacing
from locust_milvus.workload.request_events import normalise

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # 1 hour
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
# A run that fails with a new message each time must not grow the failure table without bound (aiolocust caps its
# error keys the same way); further distinct messages are counted under one key.
MAX_ERRORS = 200
OTHER_ERRORS = "(other errors: more than 200 distinct messages)"
# Latency over time: per series, the requests of each INTERVAL_S (intervals aligned on epoch time, so the workers'
# intervals line up) at 2 significant digits, HdrHistogram's bucketing. A process that runs users counts them in a
# sparse dict {bucket's lowest value in us: count} (a dict increment per request, not a second ``record_value``: see
# Recorder), folded into a compact HdrHistogram (1 us .. 1 h at 2 digits: 3,328 counts, 27 kB, against 188 kB for the
# full one) only when a worker sends it; a master adds the workers' histograms. Once an interval can receive no more
# requests it is reduced to its figures and its histogram (or dict) dropped, so a two-hour soak keeps a few per
# series, not 1,440.
INTERVAL_S = 5
INTERVAL_HIGHEST_US = HIGHEST_US  # as the run's histograms: a 70 s timeout is 70 s here too, not clamped
INTERVAL_DIGITS = 2
_SUB_BUCKET_BITS = 8  # 2 significant digits: HdrHistogram's 256 sub-buckets (exact below 256 us, then 128 per octave)
# A percentile of an interval is kept only when the interval's requests support it (one beyond it, at least).
INTERVAL_MIN_SAMPLES = {50.0: 2, 95.0: 20, 99.0: 100}
# On a master, an interval is final once every worker report that can hold it has arrived. Workers report every 3 s,
# so an interval's last requests reach the master within about 2 reports of its end; the master settles an interval
# SETTLE_INTERVALS_MASTER intervals after the current one began, i.e. 15 to 20 s after the interval's end (two reports
# and 9 s or more of margin for a busy worker's late report). Locally an interval is final once the next has begun.
SETTLE_INTERVALS_MASTER = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def merge_into(target: HdrHistogram, source: HdrHistogram) -> None:
    """Add ``source``'s counts to ``target``.

    hdrhistogram 0.10's ``add`` takes the minimum of both histograms' ``get_min_value()``, which is 0 for an
    empty histogram, so every merge into an empty one (the master's first worker report) would report a minimum
    of 0 ms. The source's minimum is kept in that case.
    """
    was_empty = target.get_total_count() == 0
    target.add(source)
    if was_empty and source.get_total_count():
        target.min_value = source.min_value


def decode(encoded: str) -> HdrHistogram:
    """A histogram from ``HdrHistogram.encode()``, re-laid on our own range (a decoded one has the sender's)."""
    histogram = new_histogram()
    merge_into(histogram, HdrHistogram.decode(encoded))
    return histogram


def percentiles_ms(histogram: HdrHistogram) -> dict[float, float]:
    """p50 .. p99.9 in float milliseconds (HdrHistogram's highest equivalent value: never under-reported)."""
    if histogram.get_total_count() == 0:
        return {}
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES))
    return {p: values[p] / 1000.0 for p in PERCENTILES}


class Series:
    """One (request_type, name): its histogram and its per-second success and failure counts."""

    __slots__ = ("histogram", "corrected", "ok", "failed", "recall", "intervals", "merged", "settled")

    def __init__(self) -> None:
        self.histogram = new_histogram()
        # --target-rps: latency from the planned start (coordinated-omission corrected); made on first use
        self.corrected: HdrHistogram | None = None
        # --recall: epoch second -> [sum of recall@k, searches judged, lowest]; a metric, not requests
        self.recall: dict[int, list[float]] = {}
        self.ok: dict[int, int] = {}  # epoch second -> requests that succeeded in it
        self.failed: dict[int, int] = {}
        # Latency over time, by interval index (epoch seconds // INTERVAL_S): the open intervals this process
        # recorded ({bucket's lowest us: count}), those its workers sent (a master), and the settled ones' figures,
        # [count, p50, p95, p99, max] in ms (a percentile None where the count does not support it).
        self.intervals: dict[int, dict[int, int]] = {}
        self.merged: dict[int, HdrHistogram] = {}
        self.settled: dict[int, list] = {}


class Recorder:
    """Everything one process recorded since its last reset (a master: what its workers reported).

    ``record`` is a listener of ``environment.events.request`` and runs on the gevent hub for every request:
    it is kept to a dict lookup, one ``record_value``, one per-interval and one per-second increment. Measured on
    this project's machine (tests/test_report.py::test_recording_is_cheap prints it): about 1.7 us per request
    (1.3 us before latency over time; a second ``record_value`` into the interval's histogram would have made it
    2.6 us), about 0.3 % of the 650 us of client CPU a search costs (docs/benchmarks.md).
    """

    def __init__(self, modes: dict[str, str] | None = None) -> None:
        # Request type -> the mode the report shows it as ("langchain-sync" -> "sync"): the workload's to say, so
        # the report knows no request type by name. A request type not in it is its own mode.
        self.modes = modes or {}
        self.series: dict[tuple[str, str], Series] = {}
        self.errors: dict[str, dict[tuple[str, str], int]] = {}
        self.first_s: float | None = None  # wall-clock time of the first and last request recorded
        self.last_s: float | None = None
        self.pacing: dict[str, list[int]] = {}  # --target-rps: name -> [started, late, dropped] (pacing.py)
        self._interval = 0  # the newest interval recorded here (settling runs when it changes)
        # Interval i is settled once the current interval is past i + settle_after: 0 locally (once closed),
        # SETTLE_INTERVALS_MASTER on a master, None on a worker (it sends its open intervals and keeps none).
        self.settle_after: int | None = 0

    def reset(self) -> None:
        settle_after = self.settle_after
        self.__init__(self.modes)
        self.settle_after = settle_after

    def mode_of(self, request_type: str) -> str:
        return self.modes.get(request_type, request_type)

    def record(self, request_type: str, name: str, response_time: float | None, exception=None, context=None,
               **_kwargs) -> None:
        now = time.time()
        series = self.series.get((request_type, name))
        if series is None:
            series = self.series[(request_type, name)] = Series()
        if response_time is not None:
            us = int(response_time * 1000.0 + 0.5)
            # out of range values would be dropped silently by record_value: clamp them into the histogram
            series.histogram.record_value(us if 0 <= us <= HIGHEST_US else (0 if us < 0 else HIGHEST_US))
            index = int(now // INTERVAL_S)
            buckets = series.intervals.get(index)
            if buckets is None:
                buckets = series.intervals[index] = {}
                if index != self._interval and self.settle_after is not None:  # once per interval, not per request
                    self._interval = index
                    self.settle(index - self.settle_after)
            # HdrHistogram's bucket at 2 significant digits, as its lowest value: two integer operations and a dict
            # increment (0.4 us), where a second record_value would cost 1.2 us (its index arithmetic is Python)
            shift = us.bit_length() - _SUB_BUCKET_BITS
            key = us if shift <= 0 else us >> shift << shift
            buckets[key] = buckets.get(key, 0) + 1
        if context:
            if "corrected_ms" in context:
                if series.corrected is None:
                    series.corrected = new_histogram()
                _record_ms(series.corrected, context["corrected_ms"])
            if "recall" in context:
                _add_recall(series.recall, int(now), [context["recall"], 1, context["recall"]])
        second = int(now)
        if exception is None:
            series.ok[second] = series.ok.get(second, 0) + 1
        else:
            series.failed[second] = series.failed.get(second, 0) + 1
            self._error(error_key(exception), request_type, name)
        if self.first_s is None:
            self.first_s = now
        self.last_s = now

    def _error(self, key: str, request_type: str, name: str, count: int = 1) -> None:
        by_op = self.errors.get(key)
        if by_op is None:
            if len(self.errors) >= MAX_ERRORS:
                key = OTHER_ERRORS
            by_op = self.errors.setdefault(key, {})
        by_op[(request_type, name)] = by_op.get((request_type, name), 0) + count

    def pacing_counts(self) -> dict[str, list[int]]:
        """--target-rps start counts: what workers reported plus what this process has not drained."""
        out = {name: list(c) for name, c in self.pacing.items()}
        for name, c in pacing.pending.items():
            mine = out.setdefault(name, [0, 0, 0])
            for i, value in enumerate((c.started, c.late, c.dropped)):
                mine[i] += value
        return out

    def settle(self, before: int) -> None:
        """Reduce every interval older than ``before`` to its figures and drop its counts (tens of us each: once per
        interval locally, once per worker report on a master; never per request)."""
        for series in self.series.values():
            for index in {i for i in (*series.intervals, *series.merged) if i < before}:
                buckets, merged = series.intervals.pop(index, None), series.merged.pop(index, None)
                if index in series.settled:  # requests after it was settled (the clock set back): see _late
                    _late(series.settled[index], _fold(buckets, merged))
                else:
                    series.settled[index] = _figures(buckets, merged)

    def drain(self, with_pacing: bool = True) -> dict:
        """What was recorded since the last drain, as msgpack-friendly data for ``report_to_master``; then reset.
        ``with_pacing``: also hand over this process's --target-rps start counts (the run's recorder does; a
        capacity step's, which counts its own, does not)."""
        payload = {
            "pacing": pacing.drain() if with_pacing else {},
            "series": [
                {
                    "type": request_type,
                    "name": name,
                    "histogram": s.histogram.encode().decode("ascii") if s.histogram.get_total_count() else "",
                    "corrected": s.corrected.encode().decode("ascii") if s.corrected is not None
                    and s.corrected.get_total_count() else "",
                    "recall": [[sec, *r] for sec, r in s.recall.items()],
                    "seconds": [[sec, s.ok.get(sec, 0), s.failed.get(sec, 0)]
                                for sec in sorted(s.ok.keys() | s.failed.keys())],
                    # a worker's open intervals, folded into compact histograms (merged ones: none on a worker)
                    "intervals": [[index, _fold(buckets, s.merged.get(index)).encode().decode("ascii")]
                                  for index, buckets in s.intervals.items()]
                    + [[index, h.encode().decode("ascii")] for index, h in s.merged.items()
                       if index not in s.intervals],
                }
                for (request_type, name), s in self.series.items()
            ],
            "errors": [[error, t, n, count] for error, by_op in self.errors.items() for (t, n), count in by_op.items()],
            "first_s": self.first_s,
            "last_s": self.last_s,
        }
        self.reset()
        return payload

    def merge(self, payload: dict) -> None:
        """Add a worker's ``drain()`` into this recorder."""
        for item in payload.get("series", ()):
            key = (item["type"], item["name"])
            series = self.series.get(key)
            if series is None:
                series = self.series[key] = Series()
            if item["histogram"]:
                merge_into(series.histogram, HdrHistogram.decode(item["histogram"]))
            for sec, *r in item.get("recall", ()):
                _add_recall(series.recall, sec, r)
            if item.get("corrected"):
                if series.corrected is None:
                    series.corrected = new_histogram()
                merge_into(series.corrected, HdrHistogram.decode(item["corrected"]))
            for index, encoded in item.get("intervals", ()):
                theirs = HdrHistogram.decode(encoded)
                if index in series.settled:
                    _late(series.settled[index], theirs)
                    continue
                h = series.merged.get(index)
                if h is None:
                    h = series.merged[index] = new_interval_histogram()
                h.add(theirs)
            for sec, ok, failed in item["seconds"]:
                if ok:
                    series.ok[sec] = series.ok.get(sec, 0) + ok
                if failed:
                    series.failed[sec] = series.failed.get(sec, 0) + failed
        for name, counts in payload.get("pacing", {}).items():
            mine = self.pacing.setdefault(name, [0, 0, 0])
            for i, value in enumerate(counts):
                mine[i] += value
        for error, request_type, name, count in payload.get("errors", ()):
            self._error(error, request_type, name, count)
        for attr, pick in (("first_s", min), ("last_s", max)):
            theirs, ours = payload.get(attr), getattr(self, attr)
            if theirs is not None:
                setattr(self, attr, theirs if ours is None else pick(ours, theirs))
        if self.settle_after is not None:
            self.settle(int(time.time() // INTERVAL_S) - self.settle_after)

    def latency_over_time(self, key: tuple[str, str]) -> dict[int, list]:
        """A series' figures per interval index, settled or still open: [count, p50, p95, p99, max] in ms."""
        series = self.series[key]
        out = dict(series.settled)
        for index in series.intervals.keys() | series.merged.keys():
            if index not in out:
                out[index] = _figures(series.intervals.get(index), series.merged.get(index))
        return out


def new_interval_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, INTERVAL_HIGHEST_US, INTERVAL_DIGITS)


def _bucket(us: int) -> int:
    """The lowest value of ``us``'s bucket at 2 significant digits (as recorded), within the interval's range."""
    us = 0 if us < 0 else min(us, INTERVAL_HIGHEST_US)
    shift = us.bit_length() - _SUB_BUCKET_BITS
    return us if shift <= 0 else us >> shift << shift


def _fold(buckets: dict[int, int] | None, into: HdrHistogram | None = None) -> HdrHistogram:
    """An interval's compact histogram from its bucket counts (one record_value per bucket, not per request)."""
    h = new_interval_histogram()
    if into is not None:
        h.add(into)
    for us, count in (buckets or {}).items():
        h.record_value(_bucket(us), count)
    return h


def _figures(buckets: dict[int, int] | None, merged: HdrHistogram | None) -> list:
    """An interval's [count, p50, p95, p99, max] in ms, from what this process recorded and what it was sent."""
    if merged is None:
        return bucket_figures(buckets or {})
    return interval_figures(_fold(buckets, merged) if buckets else merged)


def interval_figures(h: HdrHistogram) -> list:
    """[count, p50, p95, p99, max] in ms; a percentile the interval's count does not support is None (p50 needs 2
    requests in the interval, p95 20, p99 100: INTERVAL_MIN_SAMPLES)."""
    count = h.get_total_count()
    if not count:
        return [0, None, None, None, None]
    values = h.get_percentile_to_value_dict(list(INTERVAL_MIN_SAMPLES))
    return [count, *(round(values[p] / 1000.0, 3) if count >= n else None for p, n in INTERVAL_MIN_SAMPLES.items()),
            round(h.get_max_value() / 1000.0, 3)]


def bucket_figures(buckets: dict[int, int]) -> list:
    """``interval_figures`` from bucket counts without building a histogram: the same figures (HdrHistogram's
    target count per percentile, a bucket's highest equivalent value), in a sort of the few hundred buckets."""
    count = sum(buckets.values())
    if not count:
        return [0, None, None, None, None]
    merged: dict[int, int] = {}
    for us, c in buckets.items():
        key = _bucket(us)
        merged[key] = merged.get(key, 0) + c
    ordered = sorted(merged.items())
    targets = [(n, max(int(p * count / 100 + 0.5), 1)) for p, n in INTERVAL_MIN_SAMPLES.items()]
    out: list = [count]
    seen, i = 0, 0
    for n, target in targets:
        while seen < target:
            seen += ordered[i][1]
            i += 1
        out.append(round(_highest_equivalent(ordered[i - 1][0]) / 1000.0, 3) if count >= n else None)
    out.append(round(_highest_equivalent(ordered[-1][0]) / 1000.0, 3))
    return out


def _highest_equivalent(bucket: int) -> int:
    shift = bucket.bit_length() - _SUB_BUCKET_BITS
    return bucket if shift <= 0 else bucket + (1 << shift) - 1


def _late(figures: list, h: HdrHistogram) -> None:
    """Requests of an interval that arrived after it was settled (a worker's report later than the settling margin,
    the clock set back): counted, and its max raised if need be; its percentiles stay those of the requests that
    arrived in time."""
    if h.get_total_count():
        figures[0] += h.get_total_count()
        top = round(h.get_max_value() / 1000.0, 3)
        figures[4] = top if figures[4] is None else max(figures[4], top)


def _add_recall(by_second: dict[int, list[float]], second: int, value: list[float]) -> None:
    mine = by_second.get(second)
    if mine is None:
        by_second[second] = list(value)
    else:
        mine[0] += value[0]
        mine[1] += value[1]
        mine[2] = min(mine[2], value[2])


def _record_ms(histogram: HdrHistogram, ms: float) -> None:
    us = int(ms * 1000.0 + 0.5)
    # out of range values would be dropped silently by record_value: clamp them into the histogram
    histogram.record_value(us if 0 <= us <= HIGHEST_US else (0 if us < 0 else HIGHEST_US))


def error_key(exception) -> str:
    """The failure table's key: our users' exceptions are already normalised (events.normalise, one line,
    ids masked); anything else (a string, another locustfile's exception) is normalised the same way here."""
    if isinstance(exception, BaseException):
        return str(normalise(exception))
    text = str(exception).strip()
    return text.splitlines()[0][:300] if text else "(empty error)"
