"""--verify's verdict as the log, the report and the master see it: one process's, or the run's (no pymilvus here).

A process's ``Verdict`` (verify.py makes it) becomes a ``summary``: counts, a few example ids and the error, small
enough for a Locust message, and what summary.json's ``verify`` holds. In a distributed run the master ``merge``s
its workers' summaries into the run's: counts added up, examples put together, and every worker whose check did
not happen (no verdict arrived, or it could not query Milvus) named, which makes the run's verdict FAILED.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

VERIFY_EXIT_CODE = 4  # distinct from Locust's 1 (failures) and the gates' 3
SHOWN = 5  # example ids in a line, and per process in a summary
COUNTS = ("checked", "missing", "deleted_but_present", "duplicate_rows", "unknown_outcome")


@dataclass
class Verdict:
    checked: int = 0
    unknown: int = 0
    missing: list[str] = field(default_factory=list)  # acknowledged as written, not in the collection
    resurrected: list[str] = field(default_factory=list)  # acknowledged as deleted, back in the collection
    duplicate_rows: int = 0  # rows beyond one per id, as count(*) sees them
    error: str = ""  # the check itself could not be done

    @property
    def ok(self) -> bool:
        return not (self.missing or self.resurrected or self.duplicate_rows or self.error)

    def summary(self) -> dict:
        """Counts, up to SHOWN example ids of each kind, and the error (msgpack- and JSON-friendly)."""
        return {"ok": self.ok, "checked": self.checked, "missing": len(self.missing),
                "deleted_but_present": len(self.resurrected), "duplicate_rows": self.duplicate_rows,
                "unknown_outcome": self.unknown, "missing_examples": self.missing[:SHOWN],
                "deleted_but_present_examples": self.resurrected[:SHOWN], "error": self.error}

    def line(self, who: str = "") -> str:
        return line_of(self.summary(), who)


def line_of(summary: dict, who: str = "") -> str:
    """``locust-milvus verify: OK|FAILED checked=...``; ``who`` names a process whose verdict is not the run's
    (a worker's: ``verify (worker 0)``)."""
    label = f"verify ({who})" if who else "verify"
    text = (f"locust-milvus {label}: {'OK' if summary['ok'] else 'FAILED'} checked={summary['checked']} "
            f"missing={summary['missing']} deleted_but_present={summary['deleted_but_present']} "
            f"duplicate_rows={summary['duplicate_rows']} unknown_outcome={summary['unknown_outcome']}")
    if "processes_expected" in summary:
        text += f" processes_verified={summary['processes_verified']}/{summary['processes_expected']}"
    if summary["missing_examples"]:
        text += f"; missing e.g. {', '.join(summary['missing_examples'][:SHOWN])}"
    if summary["deleted_but_present_examples"]:
        text += f"; deleted but present e.g. {', '.join(summary['deleted_but_present_examples'][:SHOWN])}"
    if summary.get("not_verified"):
        text += "".join(f"; not verified by {reason}" for reason in summary["not_verified"])
    elif summary["error"]:
        text += f"; could not verify: {summary['error']}"
    return text


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def merge(reports: dict[str, dict | None], no_verdict: str) -> dict:
    """The run's verdict from its processes' summaries (name -> summary, or None when none arrived, said as
    ``no_verdict``): the workers', and the master's for the documents it pre-populated. Only processes that checked
    their ledger add to the counts; one that did not is named in ``not_verified`` and the run is FAILED, as it is
    when no worker at all took part."""
    run: dict = {"ok": False, **dict.fromkeys(COUNTS, 0), "missing_examples": [],
                 "deleted_but_present_examples": [], "error": "", "processes_expected": len(reports),
                 "processes_verified": 0, "not_verified": [], "processes": []}
    for name in sorted(reports, key=_natural):
        summary = reports[name]
        if summary is None:
            run["not_verified"].append(f"{name}: {no_verdict}")
            run["processes"].append({"process": name, "ok": False, "error": no_verdict})
            continue
        run["processes"].append({"process": name, **{k: summary.get(k) for k in ("ok", *COUNTS, "error")}})
        if summary.get("error"):
            run["not_verified"].append(f"{name}: {summary['error']}")
            continue
        run["processes_verified"] += 1
        for key in COUNTS:
            run[key] += int(summary.get(key) or 0)
        run["missing_examples"] += summary.get("missing_examples") or []
        run["deleted_but_present_examples"] += summary.get("deleted_but_present_examples") or []
    if not any(name.startswith("worker") for name in reports):
        run["not_verified"].append("any worker: none was connected when the test stopped")
    run["error"] = "; ".join(run["not_verified"])
    run["ok"] = not (run["missing"] or run["deleted_but_present"] or run["duplicate_rows"] or run["not_verified"])
    return run


def headline(verdict: dict) -> str:
    """The summary's answer, in one sentence."""
    if verdict["ok"]:
        return f"Verify: OK, all {verdict['checked']:,} acknowledged writes are in the collection as acknowledged."
    return "Verify: FAILED (below)."


def blocks(verdict: dict) -> list[tuple]:
    """The summary's --verify section (report/summary.py's blocks): the run's line and, from a master, each worker's."""
    out: list[tuple] = [
        ("h2", f"Write ledger (--verify): {'OK' if verdict['ok'] else 'FAILED'}"),
        ("p", "After the load, every id whose write Milvus acknowledged was looked up in the collection: each add or "
              "upsert must be there once, each delete gone. Writes whose outcome is unknown (failed, timed out or "
              "cut off at stop) may rightly be either and are counted apart, never judged."
              + (" Each worker checked its own documents and sent its verdict to the master, and the master checked "
                 "the documents it pre-populated; a process that did not check makes the run FAILED."
                 if "processes_expected" in verdict else "")),
        ("list", [verdict.get("line") or line_of(verdict)]),
    ]
    if verdict.get("processes"):
        out.append(("table", ["process", "verdict", *COUNTS, "not verified because"],
                    [[p["process"], "OK" if p["ok"] else "FAILED",
                      *("" if p.get(k) is None else f"{p[k]:,}" for k in COUNTS), p.get("error") or ""]
                     for p in verdict["processes"]], 2))
    return out
