"""PNG charts of a summary: latency percentiles per operation, and throughput over time.

Figures are drawn with matplotlib's object API on the Agg canvas, not pyplot: no global figure state and no GUI
backend, in a locust process as in ``locust-milvus compare``. matplotlib is imported when a chart is drawn (about
0.5 s), never at import.
"""

from __future__ import annotations

from pathlib import Path

from locust_milvus.report.summary import PERCENTILE_KEYS, PERCENTILE_LABELS

MAX_LINES = 10  # throughput lines beyond this many (the smallest by requests) would be unreadable
DPI = 100


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
    keys = list(PERCENTILE_KEYS.values())
    fig = _figure(max(8.0, 2.2 * len(keys) + 0.4 * len(groups) * len(keys)), 4.2)
    axes = fig.subplots(1, len(keys), sharey=True)
    width = 0.8 / max(len(sides), 1)
    for ax, key in zip(axes, keys, strict=True):
        for i, (label, rows) in enumerate(sides.items()):
            xs = [g + (i - (len(sides) - 1) / 2) * width for g in range(len(groups))]
            ys = [(rows.get(group) or {}).get(f"{key}_ms") or 0.0 for group in groups]
            ax.bar(xs, ys, width, label=label)
        ax.set_title(PERCENTILE_LABELS[key])
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("milliseconds (log scale)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def throughput_chart(lines: dict[str, tuple[list[float], list[float], list[float]]], path: Path, title: str) -> Path:
    """Requests per second over time: ``lines`` maps a label to (seconds since start, requests/s, failures/s).

    Failures, when a line has any, are drawn dashed in the same colour. Per-second counts are plotted as they are
    (no smoothing); the first and last seconds are partial.
    """
    fig = _figure(10.0, 4.2)
    ax = fig.subplots()
    for label, (xs, ok, failed) in list(lines.items())[:MAX_LINES]:
        (line,) = ax.plot(xs, ok, label=label, linewidth=1.2)
        if any(failed):
            ax.plot(xs, failed, linestyle="--", color=line.get_color(), linewidth=1, label=f"{label} failures")
    ax.set_xlabel("second of the test (0: the second of its first request)")
    ax.set_ylabel("requests per second")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    if lines:
        ax.legend(fontsize=8, ncol=2)
    ax.set_title(title)
    fig.tight_layout()
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
