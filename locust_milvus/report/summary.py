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
from locust_milvus.milvus import verdict as verify_verdict
from locust_milvus.report import server_metrics
from locust_milvus.report.findings import describe_lost
from locust_milvus.report.histograms import INTERVAL_S, PERCENTILES, Recorder, percentiles_ms

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
    """Per-second counts of every (operation, mode) on one time axis: second t0 + i is index i; and ``latency``,
    its figures per ``interval_s`` (``_latency_over_time``: a percentile only where the interval's requests support
    it, p50 from 2, p95 from 20, p99 from 100)."""
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
        item = {"name": op, "mode": recorder.mode_of(request_type), "ok": ok, "failed": failed,
                "latency": _latency_over_time(recorder, (request_type, op), t0, n)}
        if series.recall:  # mean recall@k per second (None: no search judged in that second)
            item["recall"] = [None] * n
            for sec, (total, judged, _low) in series.recall.items():
                if 0 <= sec - t0 < n:
                    item["recall"][sec - t0] = total / judged
        out.append(item)
    return {"t0": t0, "interval_s": INTERVAL_S, "series": out}


def _latency_over_time(recorder: Recorder, key: tuple[str, str], t0: int, n: int) -> list[dict]:
    """Per INTERVAL_S from the interval holding t0 to the one holding t0 + n - 1: requests and p50, p95, p99, max
    in ms (a percentile is None where the interval's requests do not support it: p99 needs 100, p95 20, p50 2).
    ``t`` is the interval's start in seconds from t0 (negative for the first, which may start before t0)."""
    figures = recorder.latency_over_time(key)
    first, last = t0 // INTERVAL_S, (t0 + n - 1) // INTERVAL_S
    out = []
    for index in range(first, last + 1):
        count, p50, p95, p99, top = figures.get(index, [0, None, None, None, None])
        out.append({"t": index * INTERVAL_S - t0, "count": count, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                    "max_ms": top})
    return out


# --- rendering: one list of blocks, two formats --------------------------------------------------------------------
# A block is ("h1" | "h2" | "p", text), ("list", [text]) (code-like lines), ("ul", [text]) (prose),
# ("table", headers, rows, right_aligned_from), ("img", file name, alt text) or ("details", summary, [blocks])
# (folded away in the HTML).


def sig3(value: float | None) -> str:
    """A figure with 3 significant digits (12.3, 0.412, 368), whole and thousands-separated from 1,000 up."""
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{float(f'{value:.3g}'):g}"


def ms(value: float | None) -> str:
    return sig3(value)


# A percentile is shown only when the sample count supports it: p99 needs at least 100 requests (one beyond it),
# p99.9 1,000, and so on; below that it would be the maximum under another name.
MIN_SAMPLES = {key: int(round(1 / (1 - p / 100.0))) for p, key in PERCENTILE_KEYS.items()}


def supported(row: dict, key: str) -> bool:
    """Does the row's request count support percentile ``key`` ("p999", ...)?"""
    return row.get("count", 0) >= MIN_SAMPLES[key]


def pct_cell(row: dict, key: str, prefix: str = "") -> str:
    value = row.get(f"{prefix}{key}_ms")
    if value is None:
        return ""
    return ms(value) if supported(row, key) else f"n/a (<{MIN_SAMPLES[key]:,})"


def results_table(rows: list[dict]) -> tuple:
    headers = ["operation", "mode", "requests", "failures", "fail ratio", "RPS",
               *(f"{PERCENTILE_LABELS[k]} ms" for k in PERCENTILE_KEYS.values()), "max ms"]
    body = [[r["name"], r["mode"], f"{r['count']:,}", f"{r['failures']:,}", sig3(r["fail_ratio"]), sig3(r["rps"]),
             *(pct_cell(r, k) for k in PERCENTILE_KEYS.values()), ms(r["max_ms"])] for r in rows]
    return ("table", headers, body, 2)


def headline_blocks(summary: dict) -> list[tuple]:
    """The answer first: throughput, latency per operation and mode, the verdicts, the generator's health and the
    findings that matter most."""
    rows = summary["rows"]
    total = sum(r["count"] for r in rows)
    failed = sum(r["failures"] for r in rows)
    span = summary.get("duration_s") or 0
    parts = [f"{total:,} requests in {sig3(span)} s, {sig3(total / span) if span else '0'} per second; "
             f"{failed:,} failed ({sig3(failed / total * 100) if total else '0'} %)."]
    checks = summary.get("checks") or []
    if checks:
        bad = [c for c in checks if not c["passed"]]
        parts.append(f"Checks: all {len(checks)} passed." if not bad else f"Checks: {len(bad)} of {len(checks)} "
                     "FAILED.")
    if summary.get("verify"):
        parts.append(verify_verdict.headline(summary["verify"]))
    health = summary.get("generator_health")
    if health:
        parts.append("Load generator: SATURATED, the client limited part of the test (below)." if health["saturated"]
                     else "Load generator: ok, not the bottleneck.")
    out: list[tuple] = [("h2", "The answer"), ("p", " ".join(parts))]
    if summary.get("capacity"):
        out.append(("p", summary["capacity"]["line"]))
    if rows:
        out.append(("table", ["operation", "mode", "requests/s", "p50 ms", "p99 ms", "failures"],
                    [[r["name"], r["mode"], sig3(r["rps"]), pct_cell(r, "p50"), pct_cell(r, "p99"),
                      f"{r['failures']:,}"] for r in rows], 2))
    if checks and any(not c["passed"] for c in checks):
        out.append(("list", [c["line"] for c in checks if not c["passed"]]))
    top = (summary.get("findings") or [])[:2]
    if top:
        out.append(("p", "What matters most here:"))
        out.append(("ul", [f"{f['severity'].upper()}: {f['text']}" for f in top]))
    return out


def tested_blocks(summary: dict) -> list[tuple]:
    """What was tested: the software's versions and the workload (report/describe.py)."""
    versions, workload = summary.get("versions"), summary.get("workload")
    if not versions and not workload:
        return []
    out: list[tuple] = [("h2", "What was tested")]
    if versions:
        out.append(("p", "Versions: " + ", ".join(f"{k.replace('_', '-')} {v or '?'}" for k, v in versions.items())
                    + "."))
    if workload:
        shown = {k: v for k, v in workload.items() if v not in (None, "", False, [], {})}
        out.append(("table", ["workload", "value"],
                    [[k.replace("_", " "), json.dumps(v) if not isinstance(v, str) else v] for k, v in shown.items()],
                    2))
    return out


def findings_blocks(summary: dict) -> list[tuple]:
    items = summary.get("findings") or []
    if not items:
        return []
    return [("h2", "Findings: what the figures mean"),
            ("p", "Each finding is read from this test's own figures (the evidence is in summary.json, findings)."),
            ("ul", [f"{f['severity'].upper()} ({f['kind'].replace('_', ' ')}): {f['text']}" for f in items])]


# Options that describe Locust's process rather than the test: folded away in the configuration table.
_LOCUST_INTERNALS = {"web_host", "web_port", "web_login", "web_base_path", "tls_cert", "tls_key", "master_host",
                     "master_port", "master_bind_host", "master_bind_port", "heartbeat_liveness", "heartbeat_interval",
                     "expect_workers_max_wait", "reset_stats", "html_file", "json", "json_file", "csv_prefix",
                     "csv_full_history", "print_stats", "only_summary", "show_task_ratio", "show_task_ratio_json",
                     "skip_log_setup", "loglevel", "logfile", "exit_code_on_error", "locustfile", "config",
                     "legacy_ui", "processes", "autostart", "autoquit", "stats_history_enabled", "profile",
                     "class_picker", "modern_ui", "list_commands", "equal_weights", "enable_rebalancing",
                     "locust_milvus_total_users", "locust_milvus_set_up_prefix", "headful", "stop_timeout", "worker",
                     "master", "headless",
                     "expect_workers", "parsed_locustfiles", "reports_dir", "report_name", "web_auth",
                     "web_host_display_name"}


def blocks(summary: dict, comparison: list[tuple] | None = None, images: list[tuple[str, str]] = (),
           first: list[tuple] = ()) -> list[tuple]:
    """The summary as blocks, for ``to_markdown`` and ``to_html``: the answer first, then what was tested, the
    findings, and the details; ``first`` go right after the answer (--find-capacity's section). ``comparison`` is
    accepted for callers that still pass it; the results table already holds both modes' figures."""
    out: list[tuple] = [("h1", f"Load test: {summary['name']}")]
    out += headline_blocks(summary)
    out += list(first)
    out += tested_blocks(summary)
    out += findings_blocks(summary)
    out += [
        ("h2", "Results per operation and mode"),
        ("p", f"Test started {summary['started']}, stopped {summary['stopped']}; requests from "
              f"{summary['first_request']} to {summary['last_request']} ({sig3(summary['duration_s'])} s). "
              f"Target {summary.get('host') or 'n/a'}; {summary.get('runner', 'local runner')}; user classes "
              f"{', '.join(summary.get('user_classes', [])) or 'n/a'}; {summary.get('users', '?')} users. "
              "Percentiles from an HdrHistogram per operation and mode, in milliseconds (3 significant digits; "
              "Locust's own tables round to whole milliseconds below 100 ms); a percentile is shown only from "
              "1/(1-p) requests up (p99: 100, p99.9: 1,000), n/a below. Failed requests are counted and timed, as "
              "in Locust's statistics. RPS is requests over the span from the first to the last request."),
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
                        [[r["name"], r["mode"], pct_cell(r, "p50"), pct_cell(r, "p50", "corrected_"),
                          pct_cell(r, "p99"), pct_cell(r, "p99", "corrected_"), ms(r["corrected_max_ms"])]
                         for r in corrected], 2))
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
    if summary.get("server_side"):  # Milvus's own figures beside the client's (server_metrics.py)
        out += server_metrics.blocks(summary["server_side"])
    out += generator_health_blocks(summary.get("generator_health"))
    if summary["checks"]:
        passed = all(c["passed"] for c in summary["checks"])
        out += [("h2", f"Checks: {'all passed' if passed else 'FAILED'}"),
                ("list", [c["line"] for c in summary["checks"]])]
    if summary.get("verify"):
        out += verify_verdict.blocks(summary["verify"])
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
    test_options = {k: v for k, v in shown.items() if k not in _LOCUST_INTERNALS}
    internals = {k: v for k, v in shown.items() if k in _LOCUST_INTERNALS}

    def option_rows(options: dict) -> list[list[str]]:
        return [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in options.items()]

    out += [("h2", "Run configuration"),
            ("p", "Options as the run read them (unset and off ones left out; all are in summary.json). Secrets "
                  f"are shown as {REDACTED}, URIs without credentials."),
            ("table", ["option", "value"], option_rows(test_options), 2)]
    if internals:
        out.append(("details", "Locust's process options (not the test's)",
                    [("table", ["option", "value"], option_rows(internals), 2)]))
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
    out += [("p", f"LOST: {describe_lost(w)}.") for w in health.get("lost_workers", ())]
    memory = [m for m in health.get("memory") or () if m.get("rss_mb")]
    if memory:
        out += [("p", "Resident memory (RSS) of every process over the test, sampled from its start; growth is from "
                      "the first sample after a warm-up (60 s or the first fifth of the run, whichever is longer: "
                      "caches and pools fill first) to the end. Drawn over time in \"Memory over time\"."),
                ("table", ["process", "RSS at start MiB", "after warm-up MiB", "at end MiB", "peak MiB",
                           "growth after warm-up"],
                 [[m["process"], _num(m["rss_mb"][0][1]),
                   *((_num(g["after_warmup_mb"]), _num(g["end_mb"]), _num(g["peak_mb"]),
                      f"{g['growth_pct']:+.1f} % (from {g['warmup_s']:.0f} s)") if (g := m.get("growth"))
                     else ("n/a", _num(m["rss_mb"][-1][1]), _num(max(p[1] for p in m["rss_mb"])),
                           "n/a (run too short)"))] for m in memory], 1)]
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
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "details":
            lines += [f"**{block[1]}**", "", to_markdown(block[2])]
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
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "details":
            inner = to_html(block[2], folder, "")
            body = inner[inner.index("<body>") + len("<body>"):inner.rindex("</body>")]
            parts.append(f"<details><summary>{e(block[1])}</summary>{body}</details>")
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
