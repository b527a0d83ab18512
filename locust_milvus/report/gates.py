"""CI gates: the ``--check-*`` thresholds, parsed before load and judged on a run's summary.

Grammar of every ``--check-*`` value: comma-separated items ``[OPERATION[@MODE]=]VALUE``. Without an operation
the threshold applies to every operation that ran; ``@sync`` / ``@async`` limits it to one mode (``*@async=5ms``
is every operation in async mode). Each (operation, mode) is judged separately, by its most specific threshold:
``search@async`` over ``search`` over ``*@async`` over a bare value, so ``50ms,search=200ms`` reads "every
operation 50 ms, search 200 ms". A named operation with no requests fails its gate: a gate that judges nothing
would pass by accident.

Latency values take ``us``, ``ms`` or ``s`` (a bare number is milliseconds); fail ratios are ``0.01`` or ``1%``
(a maximum); RPS values are a minimum of requests per second (count over the test's duration).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from locust_milvus.config.settings import ConfigError, UsageError
from locust_milvus.milvus.bm25 import NO_RECALL as _WHY
from locust_milvus.workload.operations import TABLE

# Locust exits 1 when requests failed (--exit-code-on-error), 2 for an unhandled error in a greenlet or event
# handler, and -1 (255) for some set-up errors; a failed gate is told apart from all of them.
GATE_EXIT_CODE = 3
LATENCY_METRICS = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
METRICS = (*LATENCY_METRICS, "fail_ratio", "rps", "recall")
MODES = ("sync", "async")
NO_RECALL = {name: _WHY for name, op in TABLE.items() if op.needs_bm25}  # operations --recall does not judge
_ITEM = re.compile(r"^(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*|\*)?(?:@(?P<mode>[A-Za-z]+))?=)?(?P<value>[^=]+)$")
_DURATION = re.compile(r"^(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>us|µs|ms|s)?$")
_UNIT_MS = {None: 1.0, "ms": 1.0, "s": 1000.0, "us": 0.001, "µs": 0.001}


@dataclass(frozen=True)
class Gate:
    metric: str  # one of METRICS
    name: str | None  # None: every operation
    mode: str | None  # None: each mode
    threshold: float  # ms for latencies, a ratio for fail_ratio, requests/s for rps
    text: str  # the value as given, for the CHECK lines

    @property
    def specificity(self) -> int:
        return 2 * (self.name is not None) + (self.mode is not None)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    line: str  # "CHECK PASSED: ..." or "CHECK FAILED: ..."
    metric: str
    name: str | None
    mode: str | None
    measured: float | None
    threshold: float

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("passed", "line", "metric", "name", "mode", "measured", "threshold")}


def option_name(metric: str) -> str:
    return "--check-" + metric.replace("_", "-")


def parse(metric: str, spec: str, known_names: set[str] | None = None) -> list[Gate]:
    """The gates of one ``--check-METRIC`` value; raises ConfigError with one line saying how to fix it."""
    spec = (spec or "").strip()
    if not spec:
        return []
    flag = option_name(metric)
    example = {"fail_ratio": "0.01, 1% or add=0.05", "rps": "100 or add=100",
               "recall": "0.95 or search_by_vector=0.9"}.get(metric, "50ms or search=5ms")
    gates: dict[tuple[str | None, str | None], Gate] = {}
    for item in (part.strip() for part in spec.split(",")):
        match = _ITEM.match(item)
        if not item or match is None:
            raise ConfigError(f"{flag} {spec!r}: cannot read {item!r}; use [OPERATION[@sync|@async]=]VALUE items "
                              f"separated by commas, e.g. {example}")
        name = None if match["name"] in (None, "*") else match["name"]
        mode = match["mode"].lower() if match["mode"] else None
        if mode is not None and mode not in MODES:
            raise ConfigError(f"{flag} {spec!r}: mode {match['mode']!r} is not sync or async, e.g. search@async=5ms")
        if name is not None and known_names is not None and name not in known_names:
            raise ConfigError(f"{flag} {spec!r}: no operation is named {name!r}; use one of "
                              f"{', '.join(sorted(known_names))}, or no name for every operation")
        if metric == "recall" and name in NO_RECALL:
            raise UsageError(f"{flag} {spec!r}: {name} is {NO_RECALL[name]}; gate its latency or rate instead")
        value = match["value"].strip()
        threshold = _threshold(metric, value, flag, spec, example)
        if (name, mode) in gates:
            raise ConfigError(f"{flag} {spec!r}: {item.split('=')[0] if '=' in item else 'the bare value'} is "
                              "given twice; give each operation (and mode) once")
        gates[(name, mode)] = Gate(metric, name, mode, threshold, value)
    return list(gates.values())


def _threshold(metric: str, value: str, flag: str, spec: str, example: str) -> float:
    if metric in LATENCY_METRICS:
        match = _DURATION.match(value)
        if match is None:
            raise ConfigError(f"{flag} {spec!r}: {value!r} is not a duration; use a number with us, ms or s "
                              f"(a bare number is ms), e.g. {example}")
        return float(match["number"]) * _UNIT_MS[match["unit"]]
    percent = value.endswith("%")
    try:
        number = float(value[:-1] if percent else value)
    except ValueError:
        number = float("nan")
    if metric in ("fail_ratio", "recall"):
        ratio = number / 100.0 if percent else number
        if not 0.0 <= ratio <= 1.0:  # also refuses nan
            if metric == "recall":
                raise ConfigError(f"{flag} {spec!r}: {value!r} is not a recall between 0 and 1 (or 0% and "
                                  f"100%), e.g. {example}")
            raise ConfigError(f"{flag} {spec!r}: {value!r} is not a fail ratio between 0 and 1 (or 0% and 100%), "
                              f"e.g. {example}")
        return ratio
    if percent or not number >= 0.0:
        raise ConfigError(f"{flag} {spec!r}: {value!r} is not a number of requests per second >= 0, e.g. {example}")
    return number


def parse_all(specs: dict[str, str], known_names: set[str] | None = None) -> list[Gate]:
    """Gates of every ``--check-*`` option: ``specs`` maps a metric of METRICS to its option value."""
    return [gate for metric in METRICS for gate in parse(metric, specs.get(metric, ""), known_names)]


def evaluate(gates: list[Gate], rows: list[dict]) -> list[Outcome]:
    """Judge each (operation, mode) row of a summary by its most specific gate of each metric.

    ``rows`` are summary rows: ``name``, ``mode``, ``count``, ``failures``, ``fail_ratio``, ``rps`` and
    ``p50_ms`` .. ``p999_ms``.
    """
    outcomes: list[Outcome] = []
    for metric in METRICS:
        of_metric = [g for g in gates if g.metric == metric]
        if not of_metric:
            continue
        judged: set[Gate] = set()
        named = {g.name for g in of_metric}
        # Recall exists only for the searches it sampled: a gate for every operation judges those rows alone.
        for row in rows if metric != "recall" else [r for r in rows if r.get("recall_samples") or r["name"] in named]:
            applicable = [g for g in of_metric if g.name in (None, row["name"]) and g.mode in (None, row["mode"])]
            if applicable:
                gate = max(applicable, key=lambda g: g.specificity)
                judged.add(gate)
                outcomes.append(_judge(gate, row))
        for gate in of_metric:
            if gate not in judged and (gate.name is not None or not rows):
                what = _what(metric, gate.name or "any operation", gate.mode)
                outcomes.append(Outcome(False, f"CHECK FAILED: {what}: no requests recorded", metric, gate.name,
                                        gate.mode, None, gate.threshold))
    return outcomes


def _what(metric: str, name: str, mode: str | None) -> str:
    label = {"fail_ratio": "fail ratio", "rps": "RPS", "recall": "mean recall"}.get(metric,
                                                                                 metric.replace("p999", "p99.9"))
    return f"{label} of {name}" + (f" ({mode})" if mode else "")


def _judge(gate: Gate, row: dict) -> Outcome:
    what = _what(gate.metric, row["name"], row["mode"])
    if gate.metric in LATENCY_METRICS:
        measured = row.get(f"{gate.metric}_ms")
        if measured is None:
            return Outcome(False, f"CHECK FAILED: {what}: no requests recorded", gate.metric, row["name"],
                           row["mode"], None, gate.threshold)
        passed = measured <= gate.threshold
        shown, limit = f"{measured:.3f} ms", f"{gate.threshold:g} ms"
    elif gate.metric == "fail_ratio":
        measured = row["fail_ratio"]
        passed = measured <= gate.threshold
        shown, limit = f"{measured:.4f}", f"{gate.threshold:g}"
    elif gate.metric == "recall":  # a minimum of the mean recall@k
        measured = row.get("recall_mean")
        if measured is None:
            return Outcome(False, f"CHECK FAILED: {what}: no recall measured (--recall 0, or no search judged)",
                           gate.metric, row["name"], row["mode"], None, gate.threshold)
        passed = measured >= gate.threshold
        shown, limit = f"{measured:.4f}", f"{gate.threshold:g}"
    else:  # rps: a minimum
        measured = row["rps"]
        passed = measured >= gate.threshold
        shown, limit = f"{measured:.1f}", f"{gate.threshold:g}"
    if gate.metric in ("rps", "recall"):
        line = f"{what} {shown} {'>=' if passed else '<'} {limit}"
    else:
        line = f"{what} {shown} {'<=' if passed else '>'} {limit}"
    return Outcome(passed, f"CHECK {'PASSED' if passed else 'FAILED'}: {line}", gate.metric, row["name"],
                   row["mode"], measured, gate.threshold)
