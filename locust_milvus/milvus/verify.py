"""--verify: after the load, compare what Milvus acknowledged (the write ledger, data.IdLedger) with the collection.

Milvus's own chaos tests count entities after killing and pausing nodes to prove that nothing acknowledged was
lost. We do the same for the documents this process wrote: every id whose add or upsert was acknowledged must
be there, every id whose delete was acknowledged must not, and no id may be there twice. Writes whose outcome is
unknown (they failed, timed out or were cancelled at stop) may rightly be either, so they are counted apart and
never called lost.
"""

from __future__ import annotations

import json
from collections import Counter

from pymilvus import MilvusClient

from locust_milvus.config.settings import Settings
from locust_milvus.milvus.store import connection_args
from locust_milvus.milvus.verdict import SHOWN, VERIFY_EXIT_CODE, Verdict  # noqa: F401 - this module's API too
from locust_milvus.runtime import shutdown
from locust_milvus.workload.data import DELETED, PRESENT, UNKNOWN, IdLedger

QUERY_BATCH = 1000  # ids per `pk in [...]` query
LOAD_TIMEOUT_S = 60.0


class _OutOfTime(Exception):
    pass


def _time_left() -> float | None:
    """Seconds the check may still take: until the report's margin before the exit deadline; None: no deadline."""
    return shutdown.seconds_left_before_writing()


def _timeout(wanted: float) -> float:
    left = _time_left()
    if left is None:
        return wanted
    if left <= 0.1:
        raise _OutOfTime()
    return min(wanted, left)


def verify(settings: Settings, ledger: IdLedger) -> Verdict:
    """Query the collection for every id in the ledger (Strong consistency: every acknowledged write is visible)."""
    from locust_milvus.workload.request_events import one_line

    states = ledger.states
    verdict = Verdict(unknown=sum(1 for s in states.values() if s == UNKNOWN))
    ids = [i for i, s in states.items() if s != UNKNOWN]
    verdict.checked = len(ids)
    pk = settings.primary_field
    found: Counter[str] = Counter()
    try:
        client = MilvusClient(**connection_args(settings), timeout=settings.timeout)
    except Exception as exc:  # noqa: BLE001 - unreachable at the end: the check could not be done
        verdict.error = one_line(exc)
        return verdict
    try:
        # After a server restart the collection may not be loaded yet (queries fail with code 101); loading an
        # already loaded collection returns at once.
        # Every wait is also bounded by the time left before the process's exit deadline (--stop-timeout + 10 s
        # after a headless run's end): a Milvus slow to answer after an outage took the whole of it, and the
        # process was ended before its report was written. Now the check gives up first, and says so.
        client.load_collection(settings.collection, timeout=_timeout(LOAD_TIMEOUT_S))
        for start in range(0, len(ids), QUERY_BATCH):
            expr = f"{pk} in {json.dumps(ids[start:start + QUERY_BATCH])}"
            rows = client.query(settings.collection, filter=expr, output_fields=[pk], consistency_level="Strong",
                                timeout=_timeout(settings.timeout))
            found.update(row[pk] for row in rows)
            # A query returns each primary key once even when it was inserted twice; count(*) counts rows.
            [counted] = client.query(settings.collection, filter=expr, output_fields=["count(*)"],
                                     consistency_level="Strong", timeout=_timeout(settings.timeout))
            verdict.duplicate_rows += max(0, int(counted["count(*)"]) - sum(
                1 for i in ids[start:start + QUERY_BATCH] if found[i]))
    except Exception as exc:  # noqa: BLE001
        verdict.error = one_line(exc)
        left = _time_left()
        if isinstance(exc, _OutOfTime) or (left is not None and left <= 0.1):
            verdict.error = (f"Milvus did not answer before the run's exit deadline (--stop-timeout + 10 s, less "
                             f"{shutdown.WRITE_MARGIN_S:g} s kept for the report): give the check more time with a "
                             f"larger --stop-timeout")
            if not isinstance(exc, _OutOfTime):
                verdict.error += f" (last error: {one_line(exc)})"
        return verdict
    finally:
        client.close()
    verdict.missing = [i for i in ids if states[i] == PRESENT and not found[i]]
    verdict.resurrected = [i for i in ids if states[i] == DELETED and found[i]]
    return verdict


def count_rows(settings: Settings, timeout: float = 5.0) -> int | None:
    """The collection's row count (count(*) at Strong consistency), for the report's workload; None when Milvus
    does not answer within ``timeout`` (after an outage, say): the report goes on without it. At a stop it waits
    no longer than the time left before the margin kept for the report."""
    try:
        timeout = _timeout(timeout)
    except _OutOfTime:
        return None
    try:
        client = MilvusClient(**connection_args(settings), timeout=timeout)
    except Exception:  # noqa: BLE001
        return None
    try:
        timeout = _timeout(timeout)  # the query's wait: what the connect left (_OutOfTime: no count)
        [counted] = client.query(settings.collection, filter="", output_fields=["count(*)"],
                                 consistency_level="Strong", timeout=timeout)
        return int(counted["count(*)"])
    except Exception:  # noqa: BLE001 - for the record only
        return None
    finally:
        client.close()
