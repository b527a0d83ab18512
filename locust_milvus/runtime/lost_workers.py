"""On a master: the workers lost during a test (no heartbeat, or quit), when, and whether they came back."""

from __future__ import annotations

from locust.runners import STATE_MISSING

import logging
import time

import gevent

from locust_milvus.report.findings import HOW_SILENT, describe_lost

logger = logging.getLogger("locust_milvus")


class LostWorkers:
    """On a master: the workers lost during a test (no heartbeat, or quit), when, and the users that stopped with
    them. Locust marks a worker missing after its heartbeat timeout and, without --enable-rebalancing, does not
    give its users to the others, so the run goes on with fewer users than it says: the report must say so."""

    POLL_S = 1.0

    def __init__(self) -> None:
        self.lost: dict[str, dict] = {}
        self._users: dict[str, int] = {}  # users each worker ran, as last seen (Locust clears it when lost)
        self._greenlet: gevent.Greenlet | None = None
        self._started = 0.0

    def start(self, runner) -> None:
        self.stop()
        self.lost, self._users, self._started = {}, {}, time.time()
        self._greenlet = gevent.spawn(self._watch, runner)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _watch(self, runner) -> None:
        while True:
            self.check(runner)
            gevent.sleep(self.POLL_S)

    def check(self, runner) -> None:
        now = time.time()
        clients = dict(runner.clients.items())
        for client_id, node in clients.items():
            if node.state != STATE_MISSING:
                users = sum((node.user_classes_count or {}).values())
                if users:
                    self._users[client_id] = users
                lost = self.lost.get(client_id)
                if lost is not None and lost.get("rejoined_after_s") is None and lost["how"] == HOW_SILENT:
                    # Locust "self-heals" a worker whose heartbeats come back (its network returned): its users ran
                    # on meanwhile, and their statistics reach the master late.
                    lost["rejoined_after_s"] = round(now - lost["lost_at"], 1)
                    logger.warning("locust-milvus: %s is back %.0f s after it went silent", lost["worker"],
                                   now - lost["lost_at"])
            elif client_id not in self.lost:
                self._lose(runner, client_id, now, HOW_SILENT)
        for client_id in set(self._users) - set(clients) - set(self.lost):
            self._lose(runner, client_id, now, "left (quit)")

    def _lose(self, runner, client_id: str, now: float, how: str) -> None:
        users = self._users.get(client_id, 0)
        from locust_milvus.runtime.health import workers  # the workers' latest reports (names)

        report = workers.get(client_id) or {}
        index = getattr(runner, "worker_indexes", {}).get(client_id)
        who = (report.get("live") or {}).get("process") or (f"worker {index}" if index is not None
                                                              else f"worker {client_id}")
        self.lost[client_id] = {"worker": who, "client_id": client_id, "how": how, "lost_at": now,
                                "after_s": round(now - self._started, 1), "users": users, "rejoined_after_s": None}
        logger.warning("locust-milvus: %s", describe_lost(self.lost[client_id]))

    def report(self) -> list[dict]:
        return sorted(self.lost.values(), key=lambda w: w["lost_at"])

    def lines(self) -> list[str]:
        return [describe_lost(w) for w in self.report()]


lost_workers = LostWorkers()
