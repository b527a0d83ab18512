"""Side-by-side comparisons: sync against async within a run, and ``locust-milvus compare DIR_A DIR_B``.

Both read summary rows (summary.py), never Locust: ``locust-milvus compare`` runs without importing it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from locust_milvus.config.settings import ConfigError
from locust_milvus.report import plots
from locust_milvus.report.summary import PERCENTILE_KEYS, PERCENTILE_LABELS, ms, sig3, write

_HEADERS = ["operation", "side", "requests", "failures", "RPS",
            *(f"{PERCENTILE_LABELS[k]} ms" for k in PERCENTILE_KEYS.values())]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.2f}x" if a and b is not None else ""


def side_by_side(groups: list[str], left: tuple[str, dict[str, dict]], right: tuple[str, dict[str, dict]]) -> tuple:
    """A table block: per group, the left side's row, the right side's, and right / left."""
    (left_label, left_rows), (right_label, right_rows) = left, right
    body = []
    for group in groups:
        a, b = left_rows.get(group), right_rows.get(group)
        for label, row in ((left_label, a), (right_label, b)):
            if row is None:
                body.append([group, label, "0", "", "", *([""] * len(PERCENTILE_KEYS))])
            else:
                body.append([group, label, f"{row['count']:,}", f"{row['failures']:,}", sig3(row["rps"]),
                             *(ms(row[f"{k}_ms"]) for k in PERCENTILE_KEYS.values())])
        if a is not None and b is not None:
            body.append([group, f"{right_label} / {left_label}", _ratio(a["count"], b["count"]), "",
                         _ratio(a["rps"], b["rps"]),
                         *(_ratio(a[f"{k}_ms"], b[f"{k}_ms"]) for k in PERCENTILE_KEYS.values())])
    return ("table", _HEADERS, body, 2)


def tested_side_by_side(a: dict, b: dict, label_a: str, label_b: str) -> tuple | None:
    """A table block of what each run tested (summary.json's ``versions`` and ``workload``), differences marked."""
    body = []
    for section in ("versions", "workload"):
        left, right = a.get(section) or {}, b.get(section) or {}
        for key in dict.fromkeys([*left, *right]):
            va, vb = left.get(key), right.get(key)
            if va in (None, "", {}, []) and vb in (None, "", {}, []):
                continue
            shown = [v if isinstance(v, str) else json.dumps(v) for v in (va, vb)]
            body.append([key.replace("_", "-") if section == "versions" else key.replace("_", " "), *shown,
                         "" if va == vb else "differs"])
    return ("table", ["what", label_a, label_b, ""], body, 4) if body else None


def sync_vs_async(summary: dict) -> tuple[list[str], dict[str, dict[str, dict]]] | None:
    """(operations, {"sync": rows, "async": rows}) when both modes ran, else None."""
    sides: dict[str, dict[str, dict]] = {"sync": {}, "async": {}}
    for row in summary["rows"]:
        if row["mode"] in sides:
            sides[row["mode"]][row["name"]] = row
    if not (sides["sync"] and sides["async"]):
        return None
    groups = sorted(sides["sync"].keys() | sides["async"].keys(), key=lambda n: (n not in sides["sync"], n))
    return groups, sides


def load(folder: Path) -> dict:
    path = Path(folder) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{folder} has no summary.json: give a report folder written by a locust-milvus run "
                          "(reports/<timestamp>-<name>/)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}): give a report folder written by a locust-milvus run") from None
    if not isinstance(summary, dict) or "rows" not in summary:
        raise ConfigError(f"{path} is not a locust-milvus summary: give a report folder written by a run")
    return summary


def compare_folders(dir_a: Path, dir_b: Path, out: Path | None = None) -> list[Path]:
    """Write ``compare.md``, ``compare.html`` and two PNG charts comparing two report folders; returns the files."""
    a, b = load(dir_a), load(dir_b)
    label_a, label_b = Path(dir_a).resolve().name, Path(dir_b).resolve().name
    if label_a == label_b:
        label_a, label_b = f"A: {label_a}", f"B: {label_b}"
    out = Path(out or f"reports/{time.strftime('%Y%m%d-%H%M%S')}-compare")
    out.mkdir(parents=True, exist_ok=True)

    def keyed(summary: dict) -> dict[str, dict]:
        return {f"{r['name']} ({r['mode']})": r for r in summary["rows"]}

    rows_a, rows_b = keyed(a), keyed(b)
    order = {"sync": 0, "async": 1}
    every = {**rows_a, **rows_b}
    groups = sorted(every, key=lambda g: (every[g]["name"], order.get(every[g]["mode"], 2), every[g]["mode"]))
    plots.latency_chart(groups, {label_a: rows_a, label_b: rows_b}, out / "compare_latency.png",
                        f"Latency percentiles: {label_a} vs {label_b}")
    lines = {**plots.timeline_lines(a, by="mode", prefix=f"{label_a}: "),
             **plots.timeline_lines(b, by="mode", prefix=f"{label_b}: ")}
    plots.throughput_chart(lines, out / "compare_throughput.png", "Throughput over time, per run and mode")
    doc = [
        ("h1", f"{label_a} versus {label_b}"),
        ("p", f"{label_a}: {a.get('started')}, {a.get('duration_s')} s, {a.get('users', '?')} users, target "
              f"{a.get('host') or 'n/a'}. {label_b}: {b.get('started')}, {b.get('duration_s')} s, "
              f"{b.get('users', '?')} users, target {b.get('host') or 'n/a'}."),
        ("p", f"Per operation and mode, each run's figures and their ratio ({label_b} / {label_a}); percentiles in "
              "milliseconds from each run's HdrHistogram."),
        side_by_side(groups, (label_a, rows_a), (label_b, rows_b)),
        *([("h2", "What each run tested"), tested] if (tested := tested_side_by_side(a, b, label_a, label_b))
          else []),
        ("h2", "Plots"),
        ("img", "compare_latency.png", "latency percentiles per operation"),
        ("img", "compare_throughput.png", "throughput over time"),
    ]
    files = write(out, "compare", doc, None, f"{label_a} versus {label_b}")
    return [*files, out / "compare_latency.png", out / "compare_throughput.png"]
