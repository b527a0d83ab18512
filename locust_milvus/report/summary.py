"""A run's summary: built from a Recorder, written as ``summary.json``, ``summary.md`` and ``summary.html``.

The JSON is the machine-readable record (``locust-milvus compare`` and CI jobs read it); it keeps each row's
encoded HdrHistogram, so any percentile can be recomputed later. The Markdown and the HTML say the same things
for a person: both are rendered from one list of blocks, so they cannot drift apart. The HTML embeds its plots
(base64 PNG), so the one file can be opened anywhere, e.g. from a CI artifact.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from locust_milvus.config.secrets import REDACTED
from locust_milvus.report import server_metrics
from locust_milvus.report.histograms import PERCENTILES, Recorder, percentiles_ms

SCHEMA = 1
PERCENTILE_KEYS = {p: "p" + f"{p:g}".replace(".", "") for p in PERCENTILES}  # 99.9 -> "p999"
PERCENTILE_LABELS = {key: "p" + f"{p:g}" for p, key in PERCENTILE_KEYS.items()}  # "p999" -> "p99.9"

_NUMBER_LIST = re.compile(r"\[(\s*-?[\d.]+(?:,\s*-?[\d.]+)*\s*)\]")


def iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def build(recorder: Recorder, *, name: str, started_s: float, stopped_s: float, config: dict,
          meta: dict | None = None) -> dict:
    """The summary of one test. RPS is requests over the span from the test's first to its last request (of any
    operation), so set-up before the first request and the idle tail after the last do not dilute it."""
    first, last = recorder.first_s, recorder.last_s
    span_s = (last - first) if first is not None and last > first else max(stopped_s - started_s, 0.0)
    rows = []
    order = {"sync": 0, "async": 1}
    mode_of = recorder.mode_of
    for (request_type, op), series in sorted(recorder.series.items(),
                                             key=lambda kv: (kv[0][1], order.get(mode_of(kv[0][0]), 2), kv[0][0])):
        failures = sum(series.failed.values())
        count = sum(series.ok.values()) + failures
        h = series.histogram
        timed = h.get_total_count()
        row = {
            "name": op,
            "mode": recorder.mode_of(request_type),
            "request_type": request_type,
            "count": count,
            "failures": failures,
            "fail_ratio": failures / count if count else 0.0,
            "rps": count / span_s if span_s > 0 else 0.0,
            "min_ms": h.get_min_value() / 1000.0 if timed else None,
            "mean_ms": h.get_mean_value() / 1000.0 if timed else None,
            "max_ms": h.get_max_value() / 1000.0 if timed else None,
        }
        pct = percentiles_ms(h)
        row.update({f"{key}_ms": pct.get(p) for p, key in PERCENTILE_KEYS.items()})
        row["histogram"] = h.encode().decode("ascii") if timed else ""
        judged = sum(r[1] for r in series.recall.values())
        if judged:
            row["recall_mean"] = sum(r[0] for r in series.recall.values()) / judged
            row["recall_min"] = min(r[2] for r in series.recall.values())
            row["recall_samples"] = int(judged)
        if series.corrected is not None and series.corrected.get_total_count():
            # --target-rps: the same requests timed from their planned start (coordinated-omission corrected)
            corrected = percentiles_ms(series.corrected)
            row.update({f"corrected_{key}_ms": corrected.get(p) for p, key in PERCENTILE_KEYS.items()})
            row["corrected_max_ms"] = series.corrected.get_max_value() / 1000.0
        rows.append(row)
    return {
        "schema": SCHEMA,
        "name": name,
        "started": iso(started_s),
        "stopped": iso(stopped_s),
        "first_request": iso(first),
        "last_request": iso(last),
        "duration_s": round(span_s, 3),
        **(meta or {}),
        "rows": rows,
        "failures": _failure_table(recorder),
        "timeline": _timeline(recorder),
        "pacing": _pacing(recorder, config, span_s),
        "checks": [],
        "config": config,
    }


def _pacing(recorder: Recorder, config: dict, span_s: float) -> list[dict]:
    """--target-rps: per operation, the target, the starts planned, late (a user still busy) and dropped."""
    from locust_milvus.workload.operations import TABLE
    from locust_milvus.workload.pacing import NOT_MET_SHARE, parse_target_rps

    try:
        targets = parse_target_rps(str(config.get("target_rps") or ""), set(TABLE))
    except ValueError:  # checked at start already (a web UI form value may have changed since)
        targets = {}
    out = []
    for name, (started, late, dropped) in sorted(recorder.pacing_counts().items()):
        planned = started + dropped
        out.append({"name": name, "target_rps": targets.get(name), "planned": planned, "started": started,
                    "late": late, "dropped": dropped, "achieved_rps": started / span_s if span_s > 0 else 0.0,
                    "met": not planned or (late + dropped) / planned <= NOT_MET_SHARE})
    return out


def _failure_table(recorder: Recorder) -> list[dict]:
    table = []
    for error, by_op in recorder.errors.items():
        table.append({
            "error": error,
            "count": sum(by_op.values()),
            "operations": [{"name": n, "mode": recorder.mode_of(t), "count": c}
                           for (t, n), c in sorted(by_op.items(), key=lambda kv: -kv[1])],
        })
    return sorted(table, key=lambda e: -e["count"])


def _timeline(recorder: Recorder) -> dict:
    """Per-second counts of every (operation, mode) on one time axis: second t0 + i is index i."""
    seconds = [s for series in recorder.series.values() for s in (*series.ok, *series.failed)]
    if not seconds:
        return {"t0": None, "series": []}
    t0, n = min(seconds), max(seconds) - min(seconds) + 1
    out = []
    for (request_type, op), series in sorted(recorder.series.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ok, failed = [0] * n, [0] * n
        for sec, c in series.ok.items():
            ok[sec - t0] = c
        for sec, c in series.failed.items():
            failed[sec - t0] = c
        item = {"name": op, "mode": recorder.mode_of(request_type), "ok": ok, "failed": failed}
        if series.recall:  # mean recall@k per second (None: no search judged in that second)
            item["recall"] = [None] * n
            for sec, (total, judged, _low) in series.recall.items():
                if 0 <= sec - t0 < n:
                    item["recall"][sec - t0] = total / judged
        out.append(item)
    return {"t0": t0, "series": out}


# --- rendering: one list of blocks, two formats --------------------------------------------------------------------
# A block is ("h1" | "h2" | "p", text), ("list", [text]), ("table", headers, rows, right_aligned_from) or
# ("img", file name, alt text).


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def results_table(rows: list[dict]) -> tuple:
    headers = ["operation", "mode", "requests", "failures", "fail ratio", "RPS",
               *(f"{PERCENTILE_LABELS[k]} ms" for k in PERCENTILE_KEYS.values()), "max ms"]
    body = [[r["name"], r["mode"], str(r["count"]), str(r["failures"]), f"{r['fail_ratio']:.4f}", f"{r['rps']:.1f}",
             *(ms(r[f"{k}_ms"]) for k in PERCENTILE_KEYS.values()), ms(r["max_ms"])] for r in rows]
    return ("table", headers, body, 2)


def blocks(summary: dict, comparison: list[tuple] | None = None, images: list[tuple[str, str]] = (),
           first: list[tuple] = ()) -> list[tuple]:
    """The summary as blocks, for ``to_markdown`` and ``to_html``; ``first`` go right after the title (an answer
    such as --find-capacity's)."""
    out: list[tuple] = [
        ("h1", f"Load test: {summary['name']}"),
        ("p", f"Test started {summary['started']}, stopped {summary['stopped']}; requests from "
              f"{summary['first_request']} to {summary['last_request']} ({summary['duration_s']} s). "
              f"Target {summary.get('host') or 'n/a'}; {summary.get('runner', 'local runner')}; user classes "
              f"{', '.join(summary.get('user_classes', [])) or 'n/a'}; {summary.get('users', '?')} users; "
              f"Locust {summary.get('locust_version', '?')}."),
        *first,
        ("h2", "Results per operation and mode"),
        ("p", "Percentiles from an HdrHistogram per operation and mode, in milliseconds at microsecond resolution "
              "(Locust's own tables round to whole milliseconds below 100 ms). Failed requests are counted and timed, "
              "as in Locust's statistics. RPS is requests over the span from the first to the last request."),
        results_table(summary["rows"]) if summary["rows"] else ("p", "No requests were recorded."),
    ]
    corrected = [r for r in summary["rows"] if r.get("corrected_p50_ms") is not None]
    if corrected or summary.get("pacing"):
        out += [("h2", "Open model (--target-rps)"),
                ("p", "Operations started at planned times whatever the responses. 'From planned start' is each "
                      "request's latency from its planned start time (coordinated-omission corrected: what an "
                      "arrival stream at the target rate would have seen); 'service' is the call alone (Locust's "
                      "figure). A start is late when its user was still busy at the planned time, dropped when "
                      "the user was more than 5 s behind.")]
        if corrected:
            out.append(("table", ["operation", "mode", "p50 service", "p50 from planned start", "p99 service",
                                  "p99 from planned start", "max from planned start"],
                        [[r["name"], r["mode"], ms(r["p50_ms"]), ms(r["corrected_p50_ms"]), ms(r["p99_ms"]),
                          ms(r["corrected_p99_ms"]), ms(r["corrected_max_ms"])] for r in corrected], 2))
        if summary.get("pacing"):
            out.append(("table", ["operation", "target/s", "achieved/s", "planned", "late", "dropped", "met"],
                        [[p["name"], f"{p['target_rps']:g}" if p["target_rps"] else "?", f"{p['achieved_rps']:.1f}",
                          str(p["planned"]), str(p["late"]), str(p["dropped"]),
                          "yes" if p["met"] else "NO: add users or lower the rate"]
                         for p in summary["pacing"]], 1))
    recalled = [r for r in summary["rows"] if r.get("recall_samples")]
    if recalled:
        level = summary.get("config", {}).get("consistency_level", "?")
        out += [("h2", "Recall under load (--recall)"),
                ("p", f"recall@k of sampled searches against exact nearest neighbours (numpy) of the documents this "
                      f"run wrote, as Milvus acknowledged them, while the other operations ran. Consistency level: "
                      f"{level}. At Strong or Session a search must see every write acknowledged before it started; "
                      f"at Bounded or Eventually a fresh document may rightly be missing, which lowers recall "
                      f"without being an error. Per second in summary.json (timeline)."),
                ("table", ["operation", "mode", "searches judged", "mean recall", "lowest"],
                 [[r["name"], r["mode"], str(r["recall_samples"]), f"{r['recall_mean']:.4f}", f"{r['recall_min']:.3f}"]
                  for r in recalled], 2)]
    if comparison:
        out += [("h2", "Sync versus async"),
                ("p", "Both user classes ran: each operation's async figures beside its sync ones, and their ratio "
                      "(async / sync; below 1x is faster or fewer for latencies, above 1x is more for RPS).")]
        out += comparison
    if summary.get("server_side"):  # Milvus's own figures beside the client's (server_metrics.py)
        out += server_metrics.blocks(summary["server_side"])
    out += generator_health_blocks(summary.get("generator_health"))
    if summary["checks"]:
        passed = all(c["passed"] for c in summary["checks"])
        out += [("h2", f"Checks: {'all passed' if passed else 'FAILED'}"),
                ("list", [c["line"] for c in summary["checks"]])]
    out.append(("h2", "Failures"))
    if summary["failures"]:
        out.append(("table", ["error", "count", "operations"],
                    [[f["error"], str(f["count"]),
                      ", ".join(f"{o['name']} ({o['mode']}) {o['count']}" for o in f["operations"])]
                     for f in summary["failures"]], 1))
    else:
        out.append(("p", "None."))
    if images:
        out.append(("h2", "Plots"))
        out += [("img", file, alt) for file, alt in images]
    shown = {k: v for k, v in summary["config"].items() if v not in (None, "", False, [])}
    out += [("h2", "Run configuration"),
            ("p", "Options as the run read them (unset and off ones left out; all are in summary.json). Secrets "
                  f"are shown as {REDACTED}, URIs without credentials."),
            ("table", ["option", "value"], [[k, json.dumps(v) if not isinstance(v, str) else v]
                                            for k, v in shown.items()], 2)]
    return out


def generator_health_blocks(health: dict | None) -> list[tuple]:
    """The "Load generator health" section (locust_milvus/runtime/health.py): per process that ran users, its CPU
    and its hub and loop lags, and a warning when the client rather than Milvus was the bottleneck."""
    if not health:
        return []
    limits = health["limits"]
    out: list[tuple] = [
        ("h2", "Load generator health: " + ("SATURATED" if health["saturated"] else "ok")),
        ("p", f"Per Locust process that ran users, judged once a second while users ran: CPU (% of one core), gevent "
              f"hub lag and asyncio loop lag (how late a 10 ms timer fires). Saturated: lag above "
              f"{limits['hub_lag_ms']:g} ms or CPU above {limits['cpu_pct']:g} % for {limits['sustained_s']} s in "
              "a row, when the client rather than Milvus limits the figures."),
        ("table", ["process", "seconds", "CPU % mean", "CPU % max", "hub lag ms mean", "hub lag ms max",
                   "loop lag ms mean", "loop lag ms max", "peak in flight sync", "peak in flight async",
                   "seconds over a limit"],
         [[p["process"], str(p["seconds"]), *(_num(p[k]) for k in ("cpu_pct_mean", "cpu_pct_max", "hub_lag_ms_mean",
                                                                   "hub_lag_ms_max", "loop_lag_ms_mean",
                                                                   "loop_lag_ms_max")),
           str(p["peak_in_flight_sync"]), str(p["peak_in_flight_async"]),
           ", ".join(f"{k} {v}" for k, v in p["over_limit_s"].items() if v) or "none"]
          for p in health["processes"]], 1),
    ]
    out += [("p", "WARNING: " + text) for text in health["warnings"]]
    return out


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: list[tuple]) -> str:
    lines: list[str] = []
    for block in doc:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- `{item}`" for item in block[1]] + [""]
        elif kind == "table":
            _, headers, rows, right_from = block
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "|".join("---:" if i >= right_from else "---" for i in range(len(headers))) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px}td.n{text-align:right;font-variant-numeric:"
        "tabular-nums}th{background:#f3f3f3}img{max-width:100%}li code{white-space:pre-wrap}")


def to_html(doc: list[tuple], folder: Path, title: str) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for block in doc:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li><code>{e(i)}</code></li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            _, headers, rows, right_from = block
            head = "".join(f"<th>{e(h)}</th>" for h in headers)
            body = "".join("<tr>" + "".join(f"<td{' class=n' if i >= right_from else ''}>{e(str(c))}</td>"
                                            for i, c in enumerate(row)) + "</tr>" for row in rows)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
            parts.append(f"<p><img alt='{e(block[2])}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(folder: Path, stem: str, doc: list[tuple], data: dict | None, title: str,
          scrub: Callable[[str], str] = lambda text: text) -> list[Path]:
    """Write ``stem.md``, ``stem.html`` and (given ``data``) ``stem.json``; ``scrub`` is applied to each text."""
    written = []
    texts = {f"{stem}.md": to_markdown(doc), f"{stem}.html": to_html(doc, folder, title)}
    if data is not None:
        # indented for a person, but lists of numbers (the timeline) on one line each
        text = json.dumps(data, indent=1)
        texts[f"{stem}.json"] = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", "", m[1]) + "]", text)
    for file, text in texts.items():
        path = folder / file
        path.write_text(scrub(text), encoding="utf-8")
        written.append(path)
    return written
