"""--find-capacity: the schedule, the refinement, the verdicts and the USL fit on made-up figures; then real sweeps
against the embedded Milvus (local, starved, distributed) and the capacity they find checked by fixed-rate runs."""

from __future__ import annotations

import html
import json
import math
import re
import time
import uuid

import pytest

from locust_milvus.capacity import answer, steps, usl
from locust_milvus.capacity.plan import CLIENT, MAX_STEPS, PASS, SERVER, USERS, Sweep, Verdict, check, judge
from locust_milvus.config.settings import UsageError
from locust_milvus.report import gates

from .conftest import LOCUSTFILE, ROOT, run_locust
from .test_distributed import finish, start
from .test_web_ui import free_port

SLO = gates.parse("p99", "search=50ms")


def plan(**overrides):
    values = dict(enabled=True, rates={"search": 100.0, "add": 10.0}, gates=SLO, factor=1.5, step_s=30.0,
                  warmup_s=5.0, refinements=2, run_time_s=None, minimum={})
    values.update(overrides)
    return check(**values)


# --- the plan, without Locust ----------------------------------------------------------------------------------

def test_bad_plans_are_refused_with_one_line():
    assert check(enabled=False, rates={}, gates=[], factor=1.5, step_s=30, warmup_s=5, refinements=2, run_time_s=None,
                 minimum={}) is None
    for overrides, phrase in (
            ({"rates": {}}, "needs starting rates"),
            ({"gates": gates.parse("rps", "100")}, "needs an SLO"),  # a minimum RPS is no latency SLO
            ({"factor": 1.0}, "--step-factor must be a number > 1"),
            ({"step_s": 6.0, "warmup_s": 5.0}, "leaves less than 2 s"),
            ({"run_time_s": 59.0}, "give at least --run-time 60s"),
            ({"minimum": {"delete": 5.0}}, "--check-capacity names delete"),
            ({"enabled": False, "minimum": {"search": 5.0}}, "add --find-capacity")):
        with pytest.raises(UsageError, match=re.escape(phrase)) as caught:
            plan(**overrides)
        assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    assert plan(run_time_s=60.0).judged_s == 25.0
    assert plan().slo_text() == "search p99<=50ms"


def _run(sweep: Sweep, limit: float, client_at: float | None = None) -> list[float]:
    """Drive a sweep against a made-up server that breaks the SLO above ``limit`` times the starting rates."""
    scales = []
    while (step := sweep.next_step()) is not None:
        scales.append(step.scale)
        if client_at is not None and step.scale >= client_at:
            sweep.record(Verdict(CLIENT, ["client-bound: CPU"]))
        else:
            sweep.record(Verdict(PASS, []) if step.scale <= limit else Verdict(SERVER, ["search p99 80 ms"]))
    return scales


def test_the_steps_multiply_then_bisect_between_the_last_good_and_first_bad():
    sweep = Sweep(plan(factor=2.0, refinements=2))
    scales = _run(sweep, limit=5.0)
    # 1, 2, 4 pass, 8 fails; then (4+8)/2 = 6 fails and (4+6)/2 = 5 passes
    assert scales == [1.0, 2.0, 4.0, 8.0, 6.0, 5.0]
    assert sweep.ended == "found" and sweep.good == 5.0 and sweep.bad == 6.0
    assert [s.phase for s in sweep.steps] == ["ramp"] * 4 + ["refine"] * 2
    assert sweep.limiting_step.scale == 6.0  # the lowest failing rate says what broke


def test_a_sweep_ends_without_capacity_on_the_client_side_the_first_step_or_time():
    client = Sweep(plan(factor=2.0))
    assert _run(client, limit=100.0, client_at=4.0) == [1.0, 2.0, 4.0]
    assert client.ended == "client" and client.good == 2.0 and client.limiting_step.index == 3
    first = Sweep(plan())
    assert _run(first, limit=0.5) == [1.0]
    assert first.ended == "first" and first.good is None
    endless = Sweep(plan())
    assert len(_run(endless, limit=math.inf)) == MAX_STEPS and endless.ended == "time"
    timed = Sweep(plan())
    timed.next_step()
    timed.record(Verdict(PASS, []))
    timed.next_step()  # cut short by the end of the run: not judged, not kept
    timed.out_of_time()
    assert timed.ended == "time" and [s.index for s in timed.steps] == [1]


def test_a_refinement_the_client_cannot_drive_keeps_the_bracket_the_ramp_found():
    sweep = Sweep(plan(factor=2.0, refinements=2))
    scales = []
    while (step := sweep.next_step()) is not None:  # 1, 2, 4 pass, 8 fails on the server; 6 is client-bound
        scales.append(step.scale)
        if step.phase == "refine":
            sweep.record(Verdict(CLIENT, ["client-bound: the generator started requests late"]))
        else:
            sweep.record(Verdict(PASS, []) if step.scale <= 4 else Verdict(SERVER, ["search (sync) p99 80 ms"]))
    assert scales == [1.0, 2.0, 4.0, 8.0, 6.0]
    assert sweep.ended == "found" and sweep.good == 4.0 and sweep.bad == 8.0 and sweep.cut_short.index == 5
    assert sweep.limiting_step.scale == 8.0  # Milvus's failure, not the client's
    ramp_client = Sweep(plan(factor=2.0))  # on the ramp there is no server-side bracket yet: no capacity
    assert _run(ramp_client, limit=100.0, client_at=2.0) == [1.0, 2.0] and ramp_client.ended == "client"


def _figures(p: object, step) -> dict:
    planned = {name: value * step.scale for name, value in p.rates.items()}
    rows = [{"name": name, "mode": "async", "count": int(v * 5), "fail_ratio": 0.0, "p50_ms": 5.0, "p95_ms": 9.0,
             "p99_ms": 12.0} for name, v in planned.items()]
    return {"planned": planned, "achieved": planned, "offered_rps": sum(planned.values()),
            "throughput_rps": sum(planned.values()), "concurrency": step.scale, "rows": rows, "corrected_rows": rows,
            "pacing": {}, "health": {}}


def test_the_answer_of_a_cut_short_refinement_gives_the_ramps_capacity_and_says_why_it_is_coarse():
    p = plan(factor=2.0, refinements=2, rates={"search": 100.0})
    sweep = Sweep(p)
    while (step := sweep.next_step()) is not None:
        step.figures = _figures(p, step)
        if step.phase == "refine":
            sweep.record(Verdict(CLIENT, ["client-bound: the generator started requests late"]))
        else:
            broke = Verdict(SERVER, ["search (async) p99 80 ms > 50 ms"])
            sweep.record(Verdict(PASS, []) if step.scale <= 4 else broke)
    result = answer.build(p, sweep)
    assert result["found"] and result["rates"] == {"search": 400.0}
    assert result["limited_by"] == "search (async) p99 80 ms > 50 ms"
    assert result["refinement_cut_short_at_step"] == 5
    assert result["line"] == ("capacity: search=400/s at search p99<=50ms (step 3 of 5; limited by: search (async) "
                              "p99 80 ms > 50 ms); refinement stopped at step 5, search=600/s: client-bound, add "
                              "workers to narrow it")


def _rows(p99_ms: float, fail_ratio: float = 0.0) -> list[dict]:
    return [{"name": "search", "mode": "sync", "count": 1000, "failures": int(1000 * fail_ratio),
             "fail_ratio": fail_ratio, "rps": 100.0, "p50_ms": 5.0, "p90_ms": 8.0, "p95_ms": 9.0, "p99_ms": p99_ms,
             "p999_ms": p99_ms}]


def test_each_verdict_names_who_limited_the_step():
    p = plan()
    ok = {"search": [1000, 0, 0]}

    def verdict(corrected, service, pacing=ok, saturation=None):
        return judge(p, corrected_rows=corrected, service_rows=service, pacing=pacing, saturation=saturation,
                     achieved={"search": 1480.0})

    assert verdict(_rows(20), _rows(18)).kind == PASS
    server = verdict(_rows(82), _rows(80))
    assert server.kind == SERVER and server.reasons == ["search (sync) p99 80 ms > 50 ms at 1,480/s"]
    # Slow only from the planned start, with late starts: the users were too few, not Milvus too slow.
    users = verdict(_rows(300), _rows(20), pacing={"search": [1000, 80, 0]})
    assert users.kind == USERS and "80 of 1000 starts late" in users.as_text()
    # Slow only from the planned start with every user free: the process woke its users late (hub or loop lag).
    woke_late = verdict(_rows(70), _rows(20))
    assert woke_late.kind == CLIENT and "started requests late" in woke_late.as_text()
    # A saturated generator wins over everything: its latencies include waiting on the client.
    client = verdict(_rows(300), _rows(200), saturation="pid 1: CPU over 90 % for 5 of 5 s")
    assert client.kind == CLIENT and client.as_text().startswith("client-bound: pid 1: CPU")
    failing = judge(plan(gates=gates.parse("fail_ratio", "0.01")), corrected_rows=_rows(5, 0.05),
                    service_rows=_rows(5, 0.05), pacing=ok, saturation=None, achieved={})
    assert failing.kind == SERVER and "fail ratio 0.05 > 0.01" in failing.reasons[0]


def test_saturation_needs_a_streak_over_a_limit():
    calm = [{"cpu_pct": 40.0, "hub_lag_ms": 3.0, "loop_lag_ms": None}] * 6
    assert steps.saturation({"pid 1": calm}) is None
    blips = [{"cpu_pct": 95.0 if i % 2 else 40.0, "hub_lag_ms": 3.0, "loop_lag_ms": None} for i in range(10)]
    assert steps.saturation({"pid 1": blips}) is None  # never two windows in a row
    lagging = calm[:2] + [{"cpu_pct": 40.0, "hub_lag_ms": 80.0, "loop_lag_ms": None}] * 5
    text = steps.saturation({"pid 1": calm, "pid 2": lagging})
    assert text == "pid 2: gevent hub lag over 50 ms for 5 of 7 s (up to 80 ms)"


@pytest.mark.parametrize("lam, sigma, kappa", [(100.0, 0.05, 0.002), (250.0, 0.2, 0.01), (40.0, 0.0, 0.0005)])
def test_the_usl_fit_recovers_known_curves(lam, sigma, kappa):
    n = [1, 2, 4, 8, 12, 16, 24, 32]
    x = [usl.throughput(v, lam, sigma, kappa) for v in n]
    fit = usl.fit(n, x)
    assert fit is not None and fit.r2 > 0.9999
    assert fit.lam == pytest.approx(lam, rel=1e-3) and fit.sigma == pytest.approx(sigma, abs=1e-3)
    assert fit.kappa == pytest.approx(kappa, rel=1e-2)
    peak_n = math.sqrt((1 - sigma) / kappa)
    assert fit.peak_concurrency == pytest.approx(peak_n, rel=1e-2)
    assert fit.peak_throughput == pytest.approx(usl.throughput(peak_n, lam, sigma, kappa), rel=1e-3)
    assert fit.extrapolated == (peak_n > 32)


def test_the_usl_fit_with_noise_too_few_points_and_no_peak():
    noisy = [usl.throughput(v, 100, 0.05, 0.002) * (1 + 0.03 * (-1) ** v) for v in (1, 2, 4, 8, 16, 32)]
    fit = usl.fit([1, 2, 4, 8, 16, 32], noisy)
    assert fit is not None and 0.9 < fit.r2 < 1.0 and fit.rmse > 0 and fit.kappa_err > 0
    assert usl.fit([1, 2, 4], [100, 190, 350]) is None  # three parameters need four points
    linear = usl.fit([1, 2, 4, 8], [100, 200, 400, 800])  # no contention, no coherency: no peak
    assert linear is not None and linear.peak_concurrency is None and linear.extrapolated


# --- real sweeps against the embedded Milvus -------------------------------------------------------------------
# A search-only mix at Bounded consistency (no wait for the client's own writes), so the knee is the server's
# throughput. The users are many enough that a user is rarely still busy at its next planned start before the SLO
# breaks (users / rate seconds between a user's starts, more than the 100 ms SLO up to 1,500/s). The local sweep
# runs AsyncMilvusUser: on this 2-core machine the sync path's client CPU (about 0.9 ms a search) reaches 90 % of a
# core near 800/s, the same rate at which Milvus, on the other core, breaks the SLO, and the sweep then rightly
# says "client-bound" (docs/benchmarks.md has the figures).
SWEEP = ["--target-rps", "search=100", "--check-p99", "search=100ms", "--consistency-level", "Bounded",
         "--prepopulate", "2000", "--dim", "256", "-u", "150", "-r", "150"]
LINE = re.compile(r"capacity: search=([\d,.]+)/s at search p99<=100ms \(step (\d+) of (\d+); limited by: (.+)\)")


def _summary(reports) -> tuple[dict, object]:
    [folder] = list(reports.iterdir())
    return json.loads((folder / "summary.json").read_text()), folder


@pytest.mark.locust
def test_a_sweep_finds_a_capacity_that_holds_at_0_6x_and_breaks_at_2_5x(milvus, tmp_path):
    reports = tmp_path / "sweep"
    began = time.monotonic()
    result = run_locust("--headless", "-t", "150s", "--host", milvus.uri, "--collection", f"cap_{uuid.uuid4().hex[:8]}",
                        *SWEEP, "--find-capacity", "--step-factor", "2", "--step-time", "5s", "--step-warmup",
                        "1.5s", "--refine-steps", "1", "--check-capacity", "search=50", "--reports-dir", str(reports),
                        "AsyncMilvusUser", timeout=240)
    out = result.output
    assert result.returncode == 0, out[-3000:]
    found = LINE.findall(out)
    assert len(found) == 1, out[-4000:]
    rate, step, of, limit = found[0]
    capacity = float(rate.replace(",", ""))
    assert capacity >= 100 and int(step) <= int(of) and "p99" in limit and "> 100 ms" in limit
    assert time.monotonic() - began < 140  # the sweep ended the run, well before its --run-time
    assert "CHECK PASSED: capacity of search" in out  # --check-capacity search=50
    data, folder = _summary(reports)
    c = data["capacity"]
    assert c["found"] and c["rates"]["search"] == pytest.approx(capacity, rel=0.01) and c["limited_by"] == limit
    verdicts = [s["verdict"] for s in c["steps"]]
    assert verdicts[0] == "pass" and "server" in verdicts and len(verdicts) == int(of)
    for s in c["steps"]:  # each step: planned and achieved rates, both latencies, fail ratio, generator health
        if s["verdict"] == "pass":
            assert s["achieved_rps"]["search"] == pytest.approx(s["planned_rps"]["search"], rel=0.25)
        [op] = s["operations"]
        assert op["corrected_p99_ms"] >= op["p99_ms"] > 0 and op["fail_ratio"] == 0.0
        assert s["generator_health"]["processes"] == 1 and s["generator_health"]["cpu_pct_max"] is not None
    assert data["checks"] == [dict(data["checks"][0], passed=True, metric="capacity", name="search")]
    page = (folder / "summary.html").read_text()
    assert "Capacity (--find-capacity)" in page and "data:image/png;base64," in page and html.escape(c["line"]) in page
    assert (folder / "capacity.png").stat().st_size > 10_000
    assert c["usl"]["fitted"] in (True, False) and c["usl"]["note"]

    # The same SLO as whole-run gates: met at 0.6x the capacity, broken at 2.5x.
    for factor, code in ((0.6, 0), (2.5, 3)):
        fixed = run_locust("--headless", "-t", "12s", "--host", milvus.uri, "--collection",
                           f"cap_{uuid.uuid4().hex[:8]}", *SWEEP[2:], "--target-rps", f"search={capacity * factor:g}",
                           "--reports-dir", str(tmp_path / f"fixed{factor}"), "AsyncMilvusUser", timeout=120)
        assert fixed.returncode == code, fixed.output[-3000:]
        verdict = "CHECK PASSED" if code == 0 else "CHECK FAILED"
        assert re.search(rf"{verdict}: p99 of search \(async\)", fixed.output), fixed.output[-3000:]


STARVE = ROOT / "tests" / "starve_generator.py"


@pytest.mark.locust
def test_a_starved_generator_is_client_bound_not_a_capacity(milvus, tmp_path):
    reports = tmp_path / "reports"
    result = run_locust("-f", f"{LOCUSTFILE},{STARVE}", "--headless", "-t", "60s", "--host", milvus.uri,
                        "--collection", f"cap_{uuid.uuid4().hex[:8]}", *SWEEP, "--find-capacity", "--step-time", "5s",
                        "--step-warmup", "1s", "--check-capacity", "search=10", "--reports-dir", str(reports),
                        "SyncMilvusUser", timeout=150)
    out = result.output
    assert result.returncode == 3, out[-3000:]  # --check-capacity: no capacity was found
    [line] = re.findall(r"capacity: not found: client-bound; add workers .*", out)
    assert "gevent hub lag over 50 ms" in line and not LINE.search(out)
    assert "CHECK FAILED: capacity of search none < 10/s (client-bound; add workers)" in out
    data, _ = _summary(reports)
    c = data["capacity"]
    assert not c["found"] and c["rates"] is None and c["ended"] == "client"
    assert c["steps"][-1]["verdict"] == "client" and c["steps"][-1]["generator_health"]["saturated"]


@pytest.mark.locust
def test_a_distributed_sweep_gives_one_answer(milvus, tmp_path):
    port = free_port()
    reports = tmp_path / "reports"
    master = start("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--headless",
                   "--expect-workers", "2", "-t", "45s", "--host", milvus.uri, "--collection",
                   f"cap_{uuid.uuid4().hex[:8]}", *SWEEP[:-4], "-u", "40", "-r", "40", "--find-capacity",
                   "--step-factor", "2", "--step-time", "4s", "--step-warmup", "1s", "--refine-steps", "0",
                   "--reports-dir", str(reports), "SyncMilvusUser")
    workers = [start("--worker", "--master-host", "127.0.0.1", "--master-port", str(port)) for _ in range(2)]
    out = finish(master, timeout=150)
    worker_outs = [finish(w, timeout=30) for w in workers]
    assert master.returncode == 0, out[-3000:]
    answers = re.findall(r"locust_milvus: (capacity: .*)", out)
    assert len(answers) == 1 and answers[0].startswith(("capacity: search=", "capacity: not")), out[-3000:]
    assert not any("capacity: " in w for w in worker_outs)
    data, _ = _summary(reports)
    c = data["capacity"]
    assert c["line"] == answers[0] and len(c["steps"]) >= 2
    first = c["steps"][0]
    # Both workers' figures, added: the step's rate was shared between them and met.
    assert first["generator_health"]["processes"] == 2
    assert first["achieved_rps"]["search"] == pytest.approx(100.0, rel=0.2)
    assert first["planned_rps"]["search"] == 100.0 and c["steps"][1]["planned_rps"]["search"] == 200.0
