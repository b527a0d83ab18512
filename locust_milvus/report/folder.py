"""The report folder of a test: its name, and writing our summary files and plots into it.

``reports/<YYYYmmdd-HHMMSS>-<name>/`` (``--reports-dir``), where name is ``--report-name``, else the
``--config`` file's name without ``.conf``, else ``run``. Locust's own HTML report and CSVs are written beside
these by listeners.py.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from locust_milvus.config.settings import ConfigError
from locust_milvus.report import compare, plots, summary


def report_name(report_name: str | None, config_file: str | None) -> str:
    name = (report_name or "").strip()
    if not name and config_file:
        name = os.path.basename(str(config_file))
        name = name[: -len(".conf")] if name.endswith(".conf") else name
    # one path component, readable in a shell: anything else becomes "-"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def check_reports_dir(reports_dir: str) -> Path:
    base = Path(reports_dir or "reports")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--reports-dir {str(base)!r} cannot be created ({e.strerror}): give a writable folder") \
            from None
    if not os.access(base, os.W_OK):
        raise ConfigError(f"--reports-dir {str(base)!r} is not writable: give a writable folder")
    return base


def new_folder(reports_dir: str, name: str) -> Path:
    """A fresh folder named after now; a second test in the same second gets ``-2``."""
    base = check_reports_dir(reports_dir)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    for n in range(1, 1000):
        folder = base / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise ConfigError(f"too many report folders named {stem} in {base}")


def write_run(folder: Path, data: dict, scrub: Callable[[str], str] = lambda text: text) -> list[Path]:
    """Plots, then summary.md, summary.html (plots embedded) and summary.json; returns the files written."""
    images: list[tuple[str, str]] = []
    comparison = None
    rows = {f"{r['name']} ({r['mode']})": r for r in data["rows"]}
    both = compare.sync_vs_async(data)
    if both is not None:
        groups, sides = both
        comparison = [compare.side_by_side(groups, ("sync", sides["sync"]), ("async", sides["async"]))]
        plots.latency_chart(groups, sides, folder / "latency.png", "Latency percentiles per operation: sync vs async")
    elif rows:
        groups = sorted({r["name"] for r in data["rows"]})
        modes = sorted({r["mode"] for r in data["rows"]})
        sides = {m: {r["name"]: r for r in data["rows"] if r["mode"] == m} for m in modes}
        plots.latency_chart(groups, sides, folder / "latency.png", "Latency percentiles per operation")
    if rows:
        images.append(("latency.png", "latency percentiles per operation and mode"))
        lines = plots.timeline_lines(data, by="operation")
        if both is not None:  # the two modes' totals first: the comparison a reader looks for
            lines = {**plots.timeline_lines(data, by="mode", prefix="all operations, "), **lines}
        plots.throughput_chart(lines, folder / "throughput.png", "Throughput over time", plots.spans(data))
        images.append(("throughput.png", "throughput over time"))
        if plots.latency_over_time_chart(data, folder / "latency_over_time.png"):
            images.append(("latency_over_time.png", "latency percentiles over time"))
        if plots.recall_over_time_chart(data, folder / "recall_over_time.png"):
            images.append(("recall_over_time.png", "recall over time (--recall)"))
        if plots.memory_chart(data, folder / "memory.png"):
            images.append(("memory.png", "memory over time"))
    first: list[tuple] = []
    if data.get("capacity"):  # --find-capacity: the answer comes first
        from locust_milvus.capacity import answer

        image = answer.chart(data["capacity"], folder / "capacity.png")
        first = answer.blocks(data["capacity"], image)
        if image:
            images.append((image, "capacity sweep"))
    doc = summary.blocks(data, comparison, [i for i in images if i[0] != "capacity.png"], first)
    written = summary.write(folder, "summary", doc, data, f"Load test: {data['name']}", scrub)
    return [*written, *(folder / file for file, _ in images)]
