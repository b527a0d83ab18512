"""--find-capacity's answer: each step's figures, the one-line answer, the ``capacity`` object of summary.json, the
--check-capacity verdicts and the summary's section (a table of steps and the capacity chart)."""

from __future__ import annotations

import math

from locust_milvus.capacity import usl
from locust_milvus.capacity.plan import PASS, SERVER, USERS, CapacityPlan, Step, Sweep
from locust_milvus.report import gates as gates_mod
from locust_milvus.report.histograms import Recorder

PERCENTILES = ("p50", "p95", "p99")


def rate(value: float | None) -> str:
    """A rate with three significant digits, thousands separated: 1,240 / 124 / 12.4 / 0.124."""
    if value is None:
        return "?"
    if value >= 100:
        return f"{float(f'{value:.3g}'):,.0f}"
    return f"{value:.3g}"


def rates_text(rates: dict[str, float]) -> str:
    return " ".join(f"{name}={rate(value)}/s" for name, value in rates.items())


def step_figures(plan: CapacityPlan, step: Step, recorder: Recorder, pacing: dict[str, list[int]],
                 judged_s: float) -> dict:
    """What a step's judged seconds saw: rates planned and achieved, per-operation percentiles (service time and from
    the planned start), fail ratio, and the concurrency in flight by Little's law."""
    from locust_milvus.report import summary

    data = summary.build(recorder, name=f"step {step.index}", started_s=0.0, stopped_s=judged_s, config={})
    rows, corrected_rows = [], []
    achieved: dict[str, float] = {}
    in_flight = 0.0
    for r in data["rows"]:
        rps = r["count"] / judged_s
        row = {"name": r["name"], "mode": r["mode"], "count": r["count"], "failures": r["failures"],
               "fail_ratio": r["fail_ratio"], "rps": rps, "mean_ms": r["mean_ms"],
               **{f"{k}_ms": r.get(f"{k}_ms") for k in ("p50", "p90", "p95", "p99", "p999")}}
        rows.append(row)
        corrected_rows.append({**row, **{f"{k}_ms": r.get(f"corrected_{k}_ms", r.get(f"{k}_ms"))
                                         for k in ("p50", "p90", "p95", "p99", "p999")}})
        if r["name"] in plan.rates:
            achieved[r["name"]] = achieved.get(r["name"], 0.0) + rps
            in_flight += rps * (r["mean_ms"] or 0.0) / 1000.0  # Little's law: L = lambda * W
    planned = {name: value * step.scale for name, value in plan.rates.items()}
    return {
        "index": step.index, "phase": step.phase, "scale": step.scale,
        "planned": planned, "achieved": achieved,
        "offered_rps": sum(planned.values()), "throughput_rps": sum(achieved.values()),
        "concurrency": in_flight,
        "rows": rows, "corrected_rows": corrected_rows,
        "pacing": {name: {"started": c[0], "late": c[1], "dropped": c[2]} for name, c in sorted(pacing.items())},
    }


def health_figures(health: dict[str, list[dict]], saturation: str | None) -> dict:
    def peak(key):
        values = [w[key] for ws in health.values() for w in ws if w.get(key) is not None]
        return round(max(values), 1) if values else None

    return {"processes": len(health), "cpu_pct_max": peak("cpu_pct"), "hub_lag_ms_max": peak("hub_lag_ms"),
            "loop_lag_ms_max": peak("loop_lag_ms"), "saturated": saturation is not None, "saturation": saturation}


def step_text(figures: dict) -> str:
    """``search=225/s (achieved 224/s, p99 12.3 ms) add=22.5/s (...)``"""
    parts = []
    for name, planned in figures["planned"].items():
        rows = [r for r in figures["corrected_rows"] if r["name"] == name]
        p99 = max((r["p99_ms"] for r in rows if r["p99_ms"] is not None), default=None)
        parts.append(f"{name}={rate(planned)}/s (achieved {rate(figures['achieved'].get(name, 0.0))}/s"
                     + (f", p99 {p99:.3g} ms" if p99 is not None else "") + ")")
    return " ".join(parts)


def build(plan: CapacityPlan, sweep: Sweep) -> dict:
    """The ``capacity`` object of summary.json, with its one-line answer."""
    judged = [s for s in sweep.steps if s.verdict is not None]
    good = [s for s in judged if s.verdict.passed]
    best = max(good, key=lambda s: s.scale) if good else None
    limiting = sweep.limiting_step
    slo = plan.slo_text()
    held = _scaled(plan, best.scale) if best else {}
    of = f"of {len(judged)}"
    found = sweep.ended == "found"
    if found:
        limit = "; ".join(limiting.verdict.reasons) if limiting else "?"
        line = f"capacity: {rates_text(held)} at {slo} (step {best.index} {of}; limited by: {limit})"
        if sweep.cut_short is not None:
            cut = sweep.cut_short
            line += (f"; refinement stopped at step {cut.index}, {rates_text(_scaled(plan, cut.scale))}: "
                     f"client-bound, {_more(cut)} to narrow it")
    elif sweep.ended == "client":
        why = (": each user starts a request every users/rate seconds, so a response slower than that delays its "
               "next start" if limiting.verdict.kind == USERS else "")
        limit = f"client-bound; {_more(limiting)}{why}"
        at_least = f"; Milvus held at least {rates_text(held)} at {slo}" if best else ""
        line = (f"capacity: not found: {limit} (step {limiting.index} {of}: "
                f"{'; '.join(limiting.verdict.reasons)}){at_least}")
    elif sweep.ended == "first":
        limit = "; ".join(limiting.verdict.reasons)
        line = (f"capacity: not found: the starting rates {rates_text(plan.rates)} already break {slo} (step 1: "
                f"{limit}); lower --target-rps")
    else:  # "time": no step failed before the run ended
        limit = "not reached"
        line = (f"capacity: not reached: Milvus held {rates_text(held) if held else 'no step'} at {slo} "
                f"(step {best.index if best else 0} {of}) and no step failed before the run ended; give a longer "
                "--run-time or higher --target-rps")
    fit = _fit(judged)
    return {
        "found": found,
        "ended": sweep.ended,
        "refinement_cut_short_at_step": sweep.cut_short.index if sweep.cut_short else None,
        "rates": held if found else None,
        "at_least": held if not found and held else None,
        "slo": slo,
        "limited_by": limit,
        "line": line,
        "factor": plan.factor, "step_time_s": plan.step_s, "warmup_s": plan.warmup_s,
        "latency_limits": [{"what": " ".join(filter(None, (g.name, g.metric))), "ms": g.threshold}
                           for g in plan.slo if g.metric != "fail_ratio"],
        "steps": [_step_record(plan, s) for s in judged],
        "usl": fit,
    }


def _scaled(plan: CapacityPlan, scale: float) -> dict[str, float]:
    return {name: value * scale for name, value in plan.rates.items()}


def _more(step: Step) -> str:
    """What a step limited by the client asks for."""
    return "add users (-u)" if step.verdict.kind == USERS else "add workers"


def _step_record(plan: CapacityPlan, step: Step) -> dict:
    f = step.figures
    return {
        "index": step.index, "phase": step.phase, "scale": round(step.scale, 6),
        "started_s": step.started_s, "judged_from_s": step.started_s and step.started_s + plan.warmup_s,
        "judged_to_s": step.started_s and step.started_s + plan.step_s,
        "planned_rps": {k: round(v, 3) for k, v in f["planned"].items()},
        "achieved_rps": {k: round(v, 3) for k, v in f["achieved"].items()},
        "offered_rps": round(f["offered_rps"], 3), "throughput_rps": round(f["throughput_rps"], 3),
        "concurrency": round(f["concurrency"], 3),
        "operations": [{"name": r["name"], "mode": r["mode"], "count": r["count"], "fail_ratio": r["fail_ratio"],
                        **{f"{p}_ms": r[f"{p}_ms"] for p in PERCENTILES},
                        **{f"corrected_{p}_ms": c[f"{p}_ms"] for p in PERCENTILES}}
                       for r, c in zip(f["rows"], f["corrected_rows"], strict=True)],
        "pacing": f["pacing"],
        "generator_health": f["health"],
        "verdict": step.verdict.kind,
        "reasons": step.verdict.reasons,
    }


def _fit(judged: list[Step]) -> dict:
    # Steps that the client limited measured the client: they stay out of the fit.
    points = [s for s in judged if s.verdict.kind in (PASS, SERVER)]
    result = usl.fit([s.figures["concurrency"] for s in points], [s.figures["throughput_rps"] for s in points])
    if result is None:
        return {"fitted": False, "points": len(points),
                "note": f"the Universal Scalability Law needs at least {usl.MIN_POINTS} steps judged on the server's "
                        f"side to fit; this sweep had {len(points)}"}
    out = {"fitted": True, "points": len(points), **result.as_dict()}
    if result.peak_concurrency is None:
        out["note"] = ("no peak in the fitted range (coherency kappa ~ 0): throughput levels off towards "
                       f"{rate(result.peak_throughput)}/s rather than falling")
    else:
        out["note"] = (f"predicted peak {rate(result.peak_throughput)}/s at {result.peak_concurrency:.3g} requests in "
                       f"flight (fit RMSE {rate(result.rmse)}/s, R² {result.r2:.3f})"
                       + ("; an EXTRAPOLATION beyond the concurrency the sweep measured "
                          f"({result.measured_max_concurrency:.3g})" if result.extrapolated else ""))
    return out


def check_outcomes(plan: CapacityPlan, result: dict) -> list[gates_mod.Outcome]:
    """--check-capacity: each operation's capacity (or the rate Milvus held at least) against its minimum."""
    held = result.get("rates") or result.get("at_least") or {}
    outcomes = []
    for name, minimum in plan.minimum.items():
        value = held.get(name)
        passed = value is not None and value >= minimum
        shown = f"{rate(value)}/s" if value is not None else "none"
        qualifier = "" if result["found"] else f" ({result['limited_by']})"
        line = (f"CHECK {'PASSED' if passed else 'FAILED'}: capacity of {name} {shown} "
                f"{'>=' if passed else '<'} {rate(minimum)}/s{qualifier}")
        outcomes.append(gates_mod.Outcome(passed, line, "capacity", name, None, value, minimum))
    return outcomes


# --- the summary's section -------------------------------------------------------------------------------------

def blocks(capacity: dict, image: str | None) -> list[tuple]:
    """Blocks (report/summary.py's format) of the capacity section."""
    out: list[tuple] = [
        ("h2", "Capacity (--find-capacity)"),
        ("p", capacity["line"]),
        ("p", f"Each step held the rates for {capacity['step_time_s']:g} s; the first {capacity['warmup_s']:g} s "
              f"were a warm-up and were not judged. The SLO ({capacity['slo']}) is judged per step on the latency "
              "from the planned start (coordinated-omission corrected) and on the fail ratio. A step fails on the "
              "server's side when the SLO fails on Milvus's service time too; on the client's side when the "
              "generator saturated or every user was busy while Milvus answered within the SLO, which is never "
              "reported as Milvus's limit."),
    ]
    headers = ["step", "phase", "offered/s", "achieved/s", "in flight", *(f"{p} ms" for p in PERCENTILES),
               "p99 service ms", "fail ratio", "client", "verdict"]
    body = []
    for s in capacity["steps"]:
        ops = s["operations"]

        def worst(key, ops=ops):
            values = [o[key] for o in ops if o[key] is not None]
            return f"{max(values):.3g}" if values else ""

        health = s["generator_health"]
        failed = sum(o["count"] * o["fail_ratio"] for o in ops)
        count = sum(o["count"] for o in ops)
        body.append([str(s["index"]), s["phase"], rate(s["offered_rps"]), rate(s["throughput_rps"]),
                     f"{s['concurrency']:.3g}", *(worst(f"corrected_{p}_ms") for p in PERCENTILES), worst("p99_ms"),
                     f"{failed / count:.3g}" if count else "", "SATURATED" if health["saturated"] else "ok",
                     "pass" if s["verdict"] == PASS else f"{s['verdict'].upper()}: " + "; ".join(s["reasons"])])
    out.append(("table", headers, body, 2))
    out.append(("p", "Latency columns are the worst operation's figure in the step, from the planned start; 'in "
                     "flight' is the mean number of requests in flight (Little's law: throughput x mean service time). "
                     "Per operation and mode in summary.json (capacity.steps)."))
    fit = capacity["usl"]
    out.append(("p", "Universal Scalability Law fit (throughput against requests in flight, scipy curve_fit): "
                + (fit["note"] + (f"; sigma {fit['sigma']:.3g} ± {fit['sigma_err']:.2g}, kappa "
                                  f"{fit['kappa']:.3g} ± {fit['kappa_err']:.2g}" if fit["fitted"] else "")
                   + ". A model, not a measurement: see docs/capacity.md for when not to trust it.")))
    if image:
        out.append(("img", image, "latency percentiles and achieved rate against offered rate, the knee marked"))
    return out


def chart(capacity: dict, path) -> str | None:
    """Latency percentiles (from the planned start, worst operation) and achieved rate against offered rate, one
    point per step, the capacity marked; None when no step was judged."""
    from locust_milvus.report.plots import capacity_chart

    steps_ = sorted(capacity["steps"], key=lambda s: s["offered_rps"])
    if not steps_:
        return None
    offered = [s["offered_rps"] for s in steps_]
    lat = {p: [max((o[f"corrected_{p}_ms"] or math.nan for o in s["operations"]), default=math.nan)
               for s in steps_] for p in PERCENTILES}
    achieved = [s["throughput_rps"] for s in steps_]
    knee = sum((capacity.get("rates") or {}).values()) or None
    failed = [s["verdict"] != PASS for s in steps_]
    capacity_chart(offered, lat, achieved, failed, knee, capacity["slo"], path,
                   [(f"{g['what']} {g['ms']:g} ms", g["ms"]) for g in capacity.get("latency_limits", ())])
    return path.name
