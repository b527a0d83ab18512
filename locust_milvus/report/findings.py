"""What the report says about its own figures: ``findings``, each ``{kind, severity, text, evidence}``.

A number that looks alarming and has a known cause gets its explanation beside it. Each rule reads the summary
(rows, failures, config, server-side figures, generator health) and nothing else, so ``locust-milvus compare``
and tests can run it on any summary.json. Severity: ``warning`` (the figures do not mean what they seem, or the
run was limited by something other than Milvus) or ``info``.
"""

from __future__ import annotations

import re

from locust_milvus.report.histograms import decode

# Operations whose requests search (read) and those that write, by name (the built-in table's; own tasks are
# neither unless named like them).
_SEARCH = re.compile(r"search|mmr|retriev")
_WRITES = {"add", "add_texts", "add_embeddings", "upsert", "delete", "delete_by_expr"}
# A "slow mode" of a search: at least this long and at least this many times its fast searches' figure.
SLOW_MS = 100.0
SLOW_TIMES_FAST = 4.0
# The fast searches' figure the slow mode is measured against: a low percentile, not the median. When most searches
# wait for a time tick (the default 8:1:1 mix at Session, 20 users sharing one client: 65 % of them at 190-600 ms,
# the p10 at 12 ms) the median is in the slow mode itself, and a threshold of 4x the median found nothing to explain.
FAST_PERCENTILE = 10.0
SLOW_SHARE = 0.02  # ... for at least this share of the searches
SEVERITY_ORDER = {"warning": 0, "info": 1}
# Round trips LangChain makes inside an operation beside the Milvus call the proxy's figures are matched to
# (workload/operations.py, milvus_call). langchain_milvus 0.4.0's add_embeddings and aadd_embeddings, which every
# add goes through, ask has_collection before each insert: measured in-process, that second RPC is most of what a
# sync add costs the client over raw pymilvus's insert (docs/benchmarks.md).
UNMATCHED_ROUND_TRIPS = {
    "insert": "each add also waits for a has_collection call that LangChain makes before every insert, a second "
              "round trip that Milvus's insert figures do not hold",
}


HOW_SILENT = "stopped sending heartbeats (killed, or its network lost)"


def describe_lost(w: dict) -> str:
    """One line on a lost worker, for the log, the report and the web UI. A silent worker may be dead (its users
    stopped) or cut off (its users ran on unseen): the master cannot tell until it comes back."""
    text = f"{w['worker']} {w['how']} {w['after_s']:.0f} s into the test"
    if w.get("rejoined_after_s") is not None:
        return (text + f"; it came back {w['rejoined_after_s']:.0f} s later (its network returned): its "
                f"{w['users']} users ran on meanwhile, their requests reached the master late, and calls that could "
                "not reach Milvus in the gap are failures")
    if w["how"] == HOW_SILENT:
        return (text + f"; its {w['users']} users stopped with it, or ran on out of the master's sight, and were not "
                "replaced (Locust moves users to the other workers only with --enable-rebalancing)")
    return (text + f"; its {w['users']} users stopped with it and were not replaced (Locust moves users to the "
            "other workers only with --enable-rebalancing)")


def find(summary: dict) -> list[dict]:
    """Every finding of a summary, most important first."""
    out: list[dict] = []
    for rule in (_lost_workers, _saturation, _consistency_waits, _known_failures, _client_server_gap,
                 _sync_async_asymmetry, _hybrid_cost):
        out += rule(summary)
    return sorted(out, key=lambda f: SEVERITY_ORDER.get(f["severity"], 2))


def _finding(kind: str, severity: str, text: str, **evidence) -> dict:
    return {"kind": kind, "severity": severity, "text": text, "evidence": evidence}


def _share_above(h, ms: float) -> float:
    """The share of a histogram's requests slower than ``ms``."""
    total = h.get_total_count()
    if not total:
        return 0.0
    # hdrh has no "count above"; walk its recorded values once (a few hundred buckets at most).
    slow = sum(item.count_at_value_iterated_to for item in h.get_recorded_iterator()
               if item.value_iterated_to > ms * 1000)
    return slow / total


def _consistency_waits(summary: dict) -> list[dict]:
    config = summary.get("config", {})
    level = str(config.get("consistency_level") or "")
    rows = summary["rows"]
    writes = sorted({r["name"] for r in rows if r["name"] in _WRITES and r["count"]})
    if level not in ("Session", "Strong") or not writes:
        return []
    slow: dict[str, list[dict]] = {}  # operation -> its modes' figures, one finding per operation
    for r in rows:
        if not _SEARCH.search(r["name"]) or not r["count"] or r.get("p50_ms") is None or not r.get("histogram"):
            continue
        h = decode(r["histogram"])
        fast_ms = h.get_value_at_percentile(FAST_PERCENTILE) / 1000
        threshold = max(SLOW_MS, SLOW_TIMES_FAST * fast_ms)
        share = _share_above(h, threshold)
        if share >= SLOW_SHARE:
            slow.setdefault(r["name"], []).append({"mode": r["mode"], "slow_share": round(share, 4),
                                                   "slow_above_ms": round(threshold, 3),
                                                   "p10_ms": round(fast_ms, 3), "p50_ms": r["p50_ms"],
                                                   "p90_ms": r.get("p90_ms"), "p99_ms": r.get("p99_ms")})
    wait = ("the server's time tick after this client's last write" if level == "Session"
            else "every write acknowledged anywhere before the search started")
    out = []
    for name, modes in slow.items():
        figures = "; ".join(f"{m['mode']}: {m['slow_share']:.0%} over {m['slow_above_ms']:.3g} ms, p10 "
                            f"{m['p10_ms']:.3g} ms, median "
                            f"{m['p50_ms']:.3g} ms" for m in modes)
        out.append(_finding(
            "consistency_wait", "warning",
            f"{name}: a slow mode ({figures}). At {level} consistency a search waits for {wait} "
            f"({', '.join(writes)} ran in this test): that slow mode is a consistency wait, not search work. To "
            "measure search alone use --consistency-level Bounded; if your service reads its own writes at "
            f"{level}, the wait is real for it; reads from a process that does not write do not wait (pymilvus "
            "keeps the last write's timestamp per process, for every client there of that server and collection, "
            "so a second client in the writing process waits too).",
            operation=name, consistency_level=level, writes=writes, modes=modes,
            slow_share=max(m["slow_share"] for m in modes)))
    return out


# Failures whose cause is known and is not the server's load: (pattern, kind, severity, explanation).
_KNOWN = (
    (re.compile(r"KeyError", re.I), "upstream_mmr_race", "warning",
     "langchain-milvus's max_marginal_relevance_search looks up the vectors of its hits in a second query; a hit "
     "deleted between the search and that query raises KeyError. An upstream race between MMR and concurrent "
     "deletes in the client library (langchain-milvus {langchain_milvus}), not a Milvus failure."),
    (re.compile(r"collection not loaded|code=101", re.I), "collection_not_loaded", "info",
     "Milvus refused requests while the collection was not loaded (code 101): after a restart Milvus reloads it, "
     "and until then searches fail. The server's doing, not the load's."),
    (re.compile(r"rate limit|code=8\b", re.I), "rate_limited", "info",
     "Milvus's rate limiter refused these requests (code 8): the server's quotas, not its capacity "
     "(--milvus-retry-rate-limit lets pymilvus retry them inside the deadline)."),
    (re.compile(r"too[ _]many[ _]pings", re.I), "keepalive_refused", "info",
     "The server closed the connection (GOAWAY too_many_pings) because pymilvus's keepalive pings, one per 10 s "
     "on an idle channel, came more often than the server's gRPC policy allows. Milvus itself permits one per "
     "5 s; a Milvus Lite server keeps gRPC's default of one per 5 minutes. A transport policy mismatch, not the "
     "server's load."),
    (re.compile(r"known to be non-empty", re.I), "missed_documents", "warning",
     "Milvus answered a search with no documents although documents that this process had added, and Milvus had "
     "acknowledged, before the search began were not yet deleted; at Session or Strong consistency the search "
     "must see them. A read anomaly of the server, not a client failure: a search that coincides with a "
     "compaction or a segment handoff may miss a segment (https://github.com/milvus-io/milvus/issues/15524), and "
     "deletes make compactions frequent. Only an empty answer is caught this way; a search that misses part of "
     "its hits shows in recall (--recall)."),
    (re.compile(r"deadline|timed? ?out", re.I), "deadline", "info",
     "These calls did not finish within --milvus-timeout: each waited that long before failing, so they also "
     "weigh on the latency percentiles."),
)


def _known_failures(summary: dict) -> list[dict]:
    versions = summary.get("versions") or {}
    grouped: dict[str, dict] = {}
    for failure in summary.get("failures", ()):
        for pattern, kind, severity, text in _KNOWN:
            if pattern.search(failure["error"]):
                g = grouped.setdefault(kind, {"count": 0, "errors": [], "text": text, "severity": severity})
                g["count"] += failure["count"]
                g["errors"].append(failure["error"])
                break
    out = []
    for kind, g in grouped.items():
        text = g["text"].format(langchain_milvus=versions.get("langchain_milvus") or "?")
        out.append(_finding(kind, g["severity"],
                            f"{g['count']} failed requests: {text}", count=g["count"], errors=g["errors"][:5]))
    return out


def _client_server_gap(summary: dict) -> list[dict]:
    section = summary.get("server_side") or {}
    out = []
    for op in section.get("operations", ()):
        client, server, gap = op.get("client"), op.get("server"), op.get("gap")
        if not (client and server and gap) or not client.get("mean_ms") or gap.get("mean_ms") is None:
            continue
        share = gap["mean_ms"] / client["mean_ms"]
        if share >= 0.5 and client["count"] >= 20:
            known = UNMATCHED_ROUND_TRIPS.get(op["name"])
            out.append(_finding(
                "client_server_gap", "info",
                f"{op['name']}: of the client's mean {client['mean_ms']:.3g} ms, Milvus's proxy accounts for "
                f"{server['mean_ms']:.3g} ms; {share:.0%} is spent outside Milvus (network, gRPC, pymilvus, "
                "LangChain and the load generator's own waits). A faster Milvus would not shorten that part"
                + (f", except that {known}." if known else "."),
                operation=op["name"], client_mean_ms=client["mean_ms"], server_mean_ms=server["mean_ms"],
                gap_mean_ms=gap["mean_ms"], gap_share=round(share, 3)))
    return out


def _lost_workers(summary: dict) -> list[dict]:
    lost = (summary.get("generator_health") or {}).get("lost_workers") or []
    if not lost:
        return []
    users = sum(w["users"] for w in lost if w.get("rejoined_after_s") is None)
    first = min(w["after_s"] for w in lost)
    text = f"{len(lost)} worker(s) lost during the test, the first {first:.0f} s in: " + "; ".join(
        describe_lost(w) for w in lost) + "."
    if users:
        text += (f" The load after that was up to {users} users lower than the run's user count says; run with "
                 "--enable-rebalancing to have Locust give lost workers' users to the remaining ones.")
    return [_finding("lost_worker", "warning", text, workers=lost, users_lost=users)]


def _saturation(summary: dict) -> list[dict]:
    health = summary.get("generator_health") or {}
    if not health.get("saturated"):
        return []
    worst = max(health["processes"], key=lambda p: max(p.get("hub_lag_ms_max") or 0, p.get("loop_lag_ms_max") or 0))
    return [_finding(
        "generator_saturated", "warning",
        "The load generator saturated: the client, not Milvus, limited part of this test, and the latencies then "
        f"include time spent waiting on the client ({health['warnings'][0] if health['warnings'] else ''}). Run "
        "more Locust processes (--processes N or more workers) with fewer users each.",
        processes=len(health["processes"]), hub_lag_ms_max=worst.get("hub_lag_ms_max"),
        loop_lag_ms_max=worst.get("loop_lag_ms_max"), cpu_pct_max=worst.get("cpu_pct_max"))]


def _sync_async_asymmetry(summary: dict) -> list[dict]:
    by_name: dict[str, dict[str, dict]] = {}
    for r in summary["rows"]:
        if r["mode"] in ("sync", "async") and r["count"] >= 100 and r.get("p99_ms"):
            by_name.setdefault(r["name"], {})[r["mode"]] = r
    health = summary.get("generator_health") or {}
    hub = max((p.get("hub_lag_ms_max") or 0 for p in health.get("processes", ())), default=0)
    loop = max((p.get("loop_lag_ms_max") or 0 for p in health.get("processes", ())), default=0)
    out = []
    for name, modes in sorted(by_name.items()):
        if len(modes) < 2:
            continue
        s, a = modes["sync"]["p99_ms"], modes["async"]["p99_ms"]
        slow, fast, ratio = ("sync", "async", s / a) if s >= a else ("async", "sync", a / s)
        if ratio < 3.0:
            continue
        if slow == "sync":
            cause = (f"the gevent hub, which runs every sync user, was up to {hub:.0f} ms late" if hub >= 20 else
                     "sync calls share one gRPC channel and wait for a thread of gevent's pool to read its replies")
        else:
            cause = (f"the asyncio loop, which runs every async call, was up to {loop:.0f} ms late" if loop >= 20
                     else "every async call of the process shares one asyncio loop and one client")
        out.append(_finding(
            "sync_async_asymmetry", "info",
            f"{name}: the {slow} p99 ({modes[slow]['p99_ms']:.3g} ms) is {ratio:.1f}x the {fast} one "
            f"({modes[fast]['p99_ms']:.3g} ms) against the same Milvus, so the difference is on the client: likely "
            f"{cause}.", operation=name, sync_p99_ms=s, async_p99_ms=a, ratio=round(ratio, 2),
            hub_lag_ms_max=hub, loop_lag_ms_max=loop))
    return out


def _hybrid_cost(summary: dict) -> list[dict]:
    """--bm25: why hybrid_search is slower than search (by the same mode's medians, when both ran enough)."""
    rows = {(r["name"], r["mode"]): r for r in summary["rows"] if r["count"] >= 100 and r.get("p50_ms")}
    out = []
    for mode in ("sync", "async"):
        hybrid, dense = rows.get(("hybrid_search", mode)), rows.get(("search", mode))
        if hybrid is None or dense is None or hybrid["p50_ms"] < 1.3 * dense["p50_ms"]:
            continue
        text = rows.get(("full_text_search", mode))
        alone = f", full_text_search's {text['p50_ms']:.3g} ms" if text else ""
        out.append(_finding(
            "hybrid_cost", "info",
            f"hybrid_search ({mode}): its median ({hybrid['p50_ms']:.3g} ms) is "
            f"{hybrid['p50_ms'] / dense['p50_ms']:.1f}x search's ({dense['p50_ms']:.3g} ms{alone}): one hybrid search "
            "runs a dense and a BM25 search of --fetch-k candidates each, fuses them by the ranker and fetches the "
            "winners' fields, all on the server.", operation="hybrid_search", mode=mode,
            hybrid_p50_ms=hybrid["p50_ms"], search_p50_ms=dense["p50_ms"]))
    return out
