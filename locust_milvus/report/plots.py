"""PNG charts of a summary: latency percentiles per operation, and throughput over time.

Figures are drawn with matplotlib's object API on the Agg canvas, not pyplot: no global figure state and no GUI
backend, in a locust process as in ``locust-milvus compare``. matplotlib is imported when a chart is drawn (about
0.5 s), never at import.
"""

from __future__ import annotations

from pathlib import Path

from locust_milvus.report.histograms import INTERVAL_MIN_SAMPLES
from locust_milvus.report.summary import PERCENTILE_KEYS, PERCENTILE_LABELS

MAX_LINES = 12  # series beyond this many (the smallest by requests) are not drawn, and the figure says so
DPI = 100
SMOOTH_S = 5  # throughput is drawn as a centred moving average over this many seconds
_MODE_STYLE = {"sync": "-", "async": "--"}  # sync and async of one operation: one hue, solid and dashed
# latency over time: the percentiles told apart by line width (and p99 by a marker of its own)
_PERCENTILE_STYLE = (("p50_ms", "p50", 0.8, None), ("p95_ms", "p95", 1.5, None), ("p99_ms", "p99", 2.4, "."))
# bars per side: sync and async keep their colours whatever the sides (async hatched, as its lines are dashed);
# other sides (runs in ``compare``) take tab10's colours in order
_SIDE_COLOURS = {"sync": "#1f77b4", "async": "#ff7f0e"}
_FAILURE_COLOUR = "#d62728"


def _hue(name: str, names: list[str]):
    """One colour per operation (its sync and async lines share it), from matplotlib's tab10 cycle."""
    from matplotlib import colormaps

    if name.startswith("all operations"):
        return "#333333"
    pool = sorted({n for n in names if not n.startswith("all operations")})
    return colormaps["tab10"](pool.index(name) % 10)


def _split(label: str) -> tuple[str, str]:
    """"search (sync)" -> ("search", "sync"); "all operations, async" -> ("all operations", "async"); a compare
    line "run-a: sync" -> ("run-a", "sync")."""
    if label.endswith(")") and " (" in label:
        name, mode = label[:-1].rsplit(" (", 1)
        return name, mode
    at = max(label.rfind(", "), label.rfind(": "))  # the last separator: a run's name may hold either
    return (label[:at], label[at + 2:]) if at > 0 else (label, "")


def spans(summary: dict) -> list[tuple[float, float, str, str]]:
    """Time spans to mark on a time axis, in seconds from the timeline's t0: (start, end, kind, label), kind one of
    "step" (a --find-capacity step's judged part; "step-failed" when it failed), "outage" (seconds where at least
    half the requests failed) and "stall" (seconds without any request between the first and the last)."""
    timeline = summary.get("timeline") or {}
    t0, series = timeline.get("t0"), timeline.get("series") or []
    out: list[tuple[float, float, str, str]] = []
    if t0 is None:
        return out
    for step in (summary.get("capacity") or {}).get("steps", ()):
        if step.get("judged_from_s") is not None:
            out.append((step["judged_from_s"] - t0, step["judged_to_s"] - t0,
                        "step" if step["verdict"] == "pass" else "step-failed", f"step {step['index']}"))
    n = len(series[0]["ok"]) if series else 0
    total = [sum(s["ok"][i] + s["failed"][i] for s in series) for i in range(n)]
    failed = [sum(s["failed"][i] for s in series) for i in range(n)]
    for kind, flags in (("outage", [t > 0 and f * 2 >= t for t, f in zip(total, failed, strict=True)]),
                        ("stall", [t == 0 for t in total])):
        start = None
        for i, flag in enumerate([*flags, False]):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                if kind == "outage" or i - start >= 2:  # a quiet second is no stall
                    out.append((float(start), float(i), kind, kind))
                start = None
    return out


_SPAN_STYLE = {"step": ("#2ca02c", 0.08), "step-failed": ("#d62728", 0.08), "outage": ("#d62728", 0.25),
               "stall": ("#7f7f7f", 0.25)}
_SPAN_LABEL = {"step": "capacity step, judged part (s1, s2 ...)", "step-failed": "capacity step that failed",
               "outage": "outage: half or more of the requests failed", "stall": "stall: no request for 2 s or more"}


def _mark_spans(ax, marks: list[tuple[float, float, str, str]]) -> list:
    """Shade the spans on ``ax``; returns one legend handle per kind drawn (a patch of its colour)."""
    from matplotlib.patches import Patch

    kinds: dict[str, object] = {}
    for start, end, kind, label in marks:
        colour, alpha = _SPAN_STYLE[kind]
        ax.axvspan(start, end, color=colour, alpha=alpha, linewidth=0)
        if kind.startswith("step"):
            ax.text((start + end) / 2, 1.0, label.replace("step ", "s"), transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7, color=colour)
        if kind not in kinds:
            kinds[kind] = Patch(color=colour, alpha=min(1.0, alpha * 2.5), label=_SPAN_LABEL[kind])
    return [kinds[k] for k in _SPAN_STYLE if k in kinds]


def _legend_outside(fig, ax, note: str | None = None, extra: list | None = None) -> None:
    """The legend right of the data area (``extra``: handles of their own, e.g. shaded spans), a note below."""
    handles, labels = ax.get_legend_handles_labels()
    for handle in extra or ():
        handles.append(handle)
        labels.append(handle.get_label())
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if note:
        fig.text(0.01, 0.01, note, fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))


def _failed_seconds(summary: dict) -> list[int]:
    """Seconds (from t0) with at least one failed request, of any series."""
    series = (summary.get("timeline") or {}).get("series") or []
    n = len(series[0]["failed"]) if series else 0
    return [i for i in range(n) if any(s["failed"][i] for s in series)]


def prepare_fonts() -> None:
    """Have matplotlib build (or load) its font list now.

    Without a font cache (a fresh machine, a new matplotlib) matplotlib builds it when the first chart is drawn,
    running ``fc-list`` in a subprocess; under gevent's patching that is a plain fork() of the whole process. At the
    end of a run gRPC's threads are live, and gRPC then skips its fork handlers ("Other threads are currently
    calling into gRPC, skipping fork() handlers"): a fork beside running gRPC threads is a known deadlock source
    (https://github.com/grpc/grpc/blob/master/doc/fork_support.md). Called at init, before any channel exists.
    """
    import matplotlib.font_manager  # noqa: F401 - builds or loads the font list (about 0.3 s)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def latency_chart(groups: list[str], sides: dict[str, dict[str, dict]], path: Path, title: str) -> Path:
    """One panel per percentile (p50 .. p99.9): for each group (an operation), one bar per side.

    ``sides`` maps a side's label (``sync``, ``async``, a run's name) to {group: summary row}; a group a side
    lacks has no bar. Log scale: searches of 2 ms and deletes of 300 ms share a panel.
    """
    from matplotlib import colormaps

    keys = list(PERCENTILE_KEYS.values())
    fig = _figure(max(8.0, 2.2 * len(keys) + 0.4 * len(groups) * len(keys)) + 1.2, 4.2)
    axes = fig.subplots(1, len(keys), sharey=True)
    width = 0.8 / max(len(sides), 1)
    others = iter(colormaps["tab10"].colors * 2)
    colours = {label: _SIDE_COLOURS.get(label) or next(others) for label in sides}
    for ax, key in zip(axes, keys, strict=True):
        for i, (label, rows) in enumerate(sides.items()):
            xs = [g + (i - (len(sides) - 1) / 2) * width for g in range(len(groups))]
            ys = [(rows.get(group) or {}).get(f"{key}_ms") or 0.0 for group in groups]
            ax.bar(xs, ys, width, label=label, color=colours[label], edgecolor="white", linewidth=0.5,
                   hatch="//" if label == "async" else None)
        ax.set_title(PERCENTILE_LABELS[key])
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("latency, ms (log scale)")
    fig.suptitle(title)
    # one legend for every panel, right of them: never over a bar
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8, title="side", title_fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=DPI)
    return path


def throughput_chart(lines: dict[str, tuple[list[float], list[float], list[float]]], path: Path, title: str,
                     marks: list[tuple[float, float, str, str]] | None = None) -> Path:
    """Requests per second over time: ``lines`` maps a label to (seconds since start, requests/s, failures/s).

    Requests (successes and failures) are drawn as a centred moving average over SMOOTH_S seconds (per-second
    counts jump with each second's share of slow requests); an operation's sync and async lines share a colour,
    solid and dashed. Failures are red crosses at each second's raw count. ``marks``: spans shaded on the time
    axis (``spans``). Lines beyond MAX_LINES, the smallest, are not drawn and the figure says so.
    """
    fig = _figure(12.0, 4.6)
    ax = fig.subplots()
    names = [_split(label)[0] for label in lines]
    drawn = sorted(list(lines.items())[:MAX_LINES], key=lambda kv: _legend_order(kv[0]))
    end, any_failed = 0.0, False
    for label, (seconds, ok, failed) in drawn:
        name, mode = _split(label)
        colour = _hue(name, names)
        xs = [x + 0.5 for x in seconds]  # second i is [i, i + 1): drawn at its middle, as the latency chart's intervals
        ax.plot(xs, _smooth(ok), label=label, linewidth=1.3, color=colour, linestyle=_MODE_STYLE.get(mode, ":"))
        end = max(end, float(seconds[-1]) + 1 if seconds else 0.0)
        bad = [(x, f) for x, f in zip(xs, failed, strict=True) if f]
        if bad:  # failures: red crosses at the seconds they happened, their count per second (not smoothed)
            ax.scatter(*zip(*bad, strict=True), marker="x", s=18, color=_FAILURE_COLOUR, zorder=5,
                       label=None if any_failed else "failures in that second (any line)")
            any_failed = True
    extra = _mark_spans(ax, marks or [])
    ax.set_xlabel("seconds from the test's first request")
    ax.set_ylabel(f"requests/s ({SMOOTH_S} s centred moving average)")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    if end:
        ax.set_xlim(0, end)
    ax.set_title(title, pad=14 if marks else 6)  # room for the step numbers above the axis
    left_out = len(lines) - len(drawn)
    _legend_outside(fig, ax, f"{left_out} more series not drawn (the smallest): see summary.json, timeline"
                    if left_out else None, extra)
    fig.savefig(path, dpi=DPI)
    return path


def _legend_order(label: str) -> tuple:
    """The largest lines are drawn; the legend lists them by operation, sync before async, totals first."""
    name, mode = _split(label)
    return (not name.startswith("all operations"), name, {"sync": 0, "async": 1}.get(mode, 2), mode)


def _smooth(values: list[float]) -> list[float]:
    half = SMOOTH_S // 2
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half):i + half + 1]
        out.append(sum(window) / len(window))
    return out


def latency_over_time_chart(summary: dict, path: Path, title: str = "Latency over time") -> Path | None:
    """Per operation and mode, p50, p95 and p99 per interval (``timeline.latency``), log scale, in the operation's
    hue (sync solid, async dashed), the percentiles told apart by line width; a percentile is drawn only where its
    interval had the requests to support it (summary.py). Seconds with failures are red ticks on the time axis;
    capacity steps, outages and stalls are shaded. Series beyond MAX_LINES are not drawn and the figure says so.
    None when no interval has figures."""
    from matplotlib.lines import Line2D

    timeline = summary.get("timeline") or {}
    series = [s for s in timeline.get("series") or () if any(p["count"] for p in s.get("latency", ()))]
    if not series:
        return None
    series.sort(key=lambda s: -sum(p["count"] for p in s["latency"]))
    names = [s["name"] for s in series]
    n = len(series[0]["ok"])  # seconds on the time axis, as the throughput chart's
    fig = _figure(12.0, 4.8)
    ax = fig.subplots()
    width = timeline.get("interval_s", 5)
    drawn = sorted(series[:MAX_LINES], key=lambda s: _legend_order(f"{s['name']} ({s['mode']})"))
    for s in drawn:
        colour, style = _hue(s["name"], names), _MODE_STYLE.get(s["mode"], ":")
        # each point at the middle of its interval's part inside the test (the first and last are partial)
        xs = [(max(p["t"], 0) + min(p["t"] + width, n)) / 2 for p in s["latency"]]
        ax.plot([], [], color=colour, linestyle=style, linewidth=1.5, label=f"{s['name']} ({s['mode']})")
        for key, _label, lw, marker in _PERCENTILE_STYLE:
            ys = [p[key] if p[key] is not None else float("nan") for p in s["latency"]]
            if any(y == y for y in ys):  # not all NaN
                ax.plot(xs, ys, color=colour, linestyle=style, linewidth=lw, marker=marker or ".",
                        markersize=5 if marker else 2)
    failed = _failed_seconds(summary)
    if failed:  # a red tick at the foot of the axis for every second with a failure
        ax.plot([x + 0.5 for x in failed], [0] * len(failed), linestyle="none", marker="|", markersize=12,
                markeredgewidth=1.5, color=_FAILURE_COLOUR, transform=ax.get_xaxis_transform(), clip_on=False,
                label="a second with failures")
    extra = [Line2D([], [], color="#555", linewidth=lw, marker=marker, label=label)
             for _key, label, lw, marker in _PERCENTILE_STYLE]
    extra += _mark_spans(ax, spans(summary))
    ax.set_yscale("log")
    ax.set_xlim(0, n)
    ax.set_xlabel(f"seconds from the test's first request (a point per {width} s interval)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.grid(which="both", alpha=0.3)
    ax.set_title(title + ": p50, p95, p99 per interval", pad=14)  # room for the step numbers above the axis
    left_out = len(series) - len(drawn)
    notes = [f"{left_out} more series not drawn (the smallest): see summary.json, timeline"] if left_out else []
    notes.append("a percentile is drawn where its interval had enough requests ("
                 + ", ".join(f"p{p:g}: {n}" for p, n in INTERVAL_MIN_SAMPLES.items()) + ")")
    _legend_outside(fig, ax, "; ".join(notes), extra)
    fig.savefig(path, dpi=DPI)
    return path


def recall_over_time_chart(summary: dict, path: Path, title: str = "Recall over time") -> Path | None:
    """--recall: the mean recall@k of the judged searches per second (``timeline.series[].recall``), per operation
    and mode in the throughput chart's hues; a second with no judged search has no point. None when nothing was
    judged."""
    timeline = summary.get("timeline") or {}
    series = [s for s in timeline.get("series") or () if any(v is not None for v in s.get("recall") or ())]
    if not series:
        return None
    names = sorted({s["name"] for s in series})
    n = len(series[0]["recall"])
    fig = _figure(12.0, 3.6)
    ax = fig.subplots()
    for s in sorted(series, key=lambda s: _legend_order(f"{s['name']} ({s['mode']})"))[:MAX_LINES]:
        ys = [v if v is not None else float("nan") for v in s["recall"]]
        ax.plot([x + 0.5 for x in range(n)], ys, color=_hue(s["name"], names),
                linestyle=_MODE_STYLE.get(s["mode"], ":"), marker=".", markersize=3, linewidth=1.2,
                label=f"{s['name']} ({s['mode']})")
    low = min(v for s in series for v in s["recall"] if v is not None)
    ax.set_ylim(min(0.9, low - 0.05), 1.02)
    ax.set_xlim(0, n)
    ax.set_xlabel("seconds from the test's first request")
    ax.set_ylabel("mean recall@k of the judged searches")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    extra = _mark_spans(ax, spans(summary))
    _legend_outside(fig, ax, None, extra)
    fig.savefig(path, dpi=DPI)
    return path


def memory_chart(summary: dict, path: Path, title: str = "Memory over time") -> Path | None:
    """Resident memory of every process (generator_health.memory), a line each, with the warm-up after which growth
    is judged marked. None when the run was too short to judge growth in any process."""
    memory = [m for m in ((summary.get("generator_health") or {}).get("memory") or ()) if len(m.get("rss_mb")
                                                                                              or ()) > 1]
    if not any(m.get("growth") for m in memory):  # too short a run for a warm-up: the table says so
        return None
    fig = _figure(12.0, 3.6)
    ax = fig.subplots()
    for m in memory[:MAX_LINES]:
        ax.plot([p[0] for p in m["rss_mb"]], [p[1] for p in m["rss_mb"]], marker=".", markersize=3, linewidth=1.2,
                label=m["process"])
    warmups = [m["growth"]["warmup_s"] for m in memory if m.get("growth")]
    if warmups:
        ax.axvline(warmups[0], color="#888", linestyle=":", linewidth=1, label="end of warm-up (growth judged after)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds from the test's start")
    ax.set_ylabel("resident memory, MiB")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    _legend_outside(fig, ax)
    fig.savefig(path, dpi=DPI)
    return path


def timeline_lines(summary: dict, by: str = "operation", prefix: str = "") -> dict[str, tuple]:
    """Throughput lines of one summary: one per (operation, mode), or, with ``by="mode"``, one per mode (all of its
    operations added). Largest first."""
    timeline = summary["timeline"]
    if not timeline["series"]:
        return {}
    sums: dict[str, tuple[list[int], list[int]]] = {}
    for s in timeline["series"]:
        label = prefix + (s["mode"] if by == "mode" else f"{s['name']} ({s['mode']})")
        ok, failed = sums.setdefault(label, ([0] * len(s["ok"]), [0] * len(s["ok"])))
        for i, (o, f) in enumerate(zip(s["ok"], s["failed"], strict=True)):
            ok[i] += o + f  # all requests; failures also get a line of their own
            failed[i] += f
    xs = list(range(len(next(iter(sums.values()))[0])))
    ranked = sorted(sums.items(), key=lambda kv: -sum(kv[1][0]))
    return {label: (xs, ok, failed) for label, (ok, failed) in ranked}


def capacity_chart(offered: list[float], latency: dict[str, list[float]], achieved: list[float], failed: list[bool],
                   knee: float | None, slo: str, path: Path, limits: list[tuple[str, float]] = ()) -> Path:
    """--find-capacity: per step (x: the offered rate), the latency percentiles (left, log scale) and the achieved
    rate (right), failing steps marked with a cross, the capacity found as a vertical line."""
    fig = _figure(10.0, 4.8)
    ax = fig.subplots()
    for label, ys in latency.items():
        ax.plot(offered, ys, marker="o", linewidth=1.2, label=f"{label} from planned start")
    bad = [(x, y) for x, y, f in zip(offered, latency.get("p99", []), failed, strict=False) if f]
    if bad:
        ax.scatter(*zip(*bad, strict=True), marker="x", s=80, color="red", zorder=5, label="step failed")
    for label, ms in limits:  # the SLO's latency thresholds
        ax.axhline(ms, color="red", linewidth=0.8, alpha=0.6, linestyle="-.", label=f"SLO {label}")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.yaxis,):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("offered rate (requests/s, all operations)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.grid(which="both", alpha=0.3)
    right = ax.twinx()
    right.plot(offered, achieved, color="black", linestyle=":", marker="s", markersize=4, label="achieved rate")
    right.plot(offered, offered, color="grey", linewidth=0.8, alpha=0.6, label="achieved = offered")
    right.set_ylabel("achieved rate (requests/s)")
    right.set_ylim(bottom=0)
    if knee:
        ax.axvline(knee, color="green", linestyle="--", linewidth=1.5, label=f"capacity {knee:,.0f}/s")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    # outside the data, to the right of both axes
    fig.legend(handles[0] + more[0], handles[1] + more[1], loc="center left", bbox_to_anchor=(0.78, 0.5), fontsize=8)
    ax.set_title(f"Capacity sweep: latency and achieved rate per step (SLO {slo})")
    fig.tight_layout(rect=(0, 0, 0.77, 1))
    fig.savefig(path, dpi=DPI)
    return path
