"""--verify's one verdict for the run: a local runner's own, or on a master its workers' verdicts merged.

A local runner checks its ledger when the test stops (lifecycle.on_test_stop runs milvus/verify.py); that verdict
is the run's. In a distributed run each worker checks its own ledger the same way, logs the verdict as its own
(``locust-milvus verify (worker 0): ...``) and sends its summary (counts, a few example ids, any error;
milvus/verdict.py) to the master in a Locust message. The master expects one from every worker that took part in
the test (connected when it began to stop, or lost during it). Once all are in, or its wait is over, it merges them,
logs the run's one ``locust-milvus verify: ...`` line and sets exit code 4 when it FAILED; the report records it
(summary.json's ``verify``). A worker whose verdict did not arrive is named as not verified, which makes the run
FAILED: a check that did not happen is never reported as passed.

Timing. When a web UI test stops, each worker checks its ledger before it tells the master it has stopped, so the
verdicts are in when the master's test_stop fires. When a headless run ends (--run-time, Ctrl-C, SIGTERM), Locust's
master tells the workers to quit and stops listening to them half a second later, and the workers check their
ledgers only then. So at quitting, before the report is written and before the embedded Milvus (which the workers
query) stops, the master listens again and waits for the verdicts, and for the workers' final statistics that
follow them, until shortly before its shutdown deadline (--stop-timeout + 10 s from the stop, runtime/shutdown.py):
the run always ends, with the verdicts that arrived.
"""

from __future__ import annotations

from locust.runners import STATE_INIT, STATE_MISSING, STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

import logging
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from locust_milvus.config.load import run_options
from locust_milvus.milvus.verdict import VERIFY_EXIT_CODE, Verdict, line_of, merge
from locust_milvus.runtime import shutdown
from locust_milvus.runtime.health import lost_workers

logger = logging.getLogger("locust_milvus")

MESSAGE = "locust_milvus_verify"
MASTER = "master"  # the master's own part (its pre-populated documents), beside the workers' client ids
WAIT_S = 10.0  # no shutdown deadline set (a web UI test stopped): the master's longest wait beyond --stop-timeout
POLL_S = 0.1
LOCAL_WAIT_S = 300.0  # a web UI test's report waits this long for a local runner's check (its queries have deadlines)


class RunVerdict:
    """The current test's verdict on a master or a local runner (a worker only sends its own)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.active = False  # --verify is on for this test
        self.result: dict | None = None  # the run's verdict (verdict.merge's, or a local Verdict's summary)
        self.decided = Event()
        self.expected: dict[str, str] = {}  # on a master, once the test stops: client id -> "worker N"
        self.received: dict[str, dict] = {}  # client id -> the summary that worker sent
        self.stopped_at: float | None = None
        self.master_part = False  # on a master, its own pre-populated documents are checked too
        self._quitting = False

    # --- listeners (plugin.py registers them) -------------------------------------------------------------------

    def on_init(self, environment, runner=None) -> None:
        if isinstance(runner, MasterRunner):
            runner.register_message(MESSAGE, self._on_message)

    def on_test_start(self, environment, **_kwargs) -> None:
        if isinstance(environment.runner, WorkerRunner):
            return
        self._reset()
        self.active = bool(run_options(environment).get("verify"))

    def on_test_stopping(self, environment, **_kwargs) -> None:
        runner = environment.runner
        if not isinstance(runner, MasterRunner) or not self.active or self.stopped_at is not None:
            return
        self.stopped_at = time.monotonic()
        # Workers still "ready" joined after the test started and ran nothing; lost ones ran users and cannot check.
        took_part = [node.id for node in runner.clients.all if node.state != STATE_INIT] + list(lost_workers.lost)
        self.expected = {client_id: _worker_name(runner, client_id) for client_id in took_part}
        if self.master_part:
            self.expected[MASTER] = MASTER
        self._decide_if_complete(environment)

    def on_quitting(self, environment, **_kwargs) -> None:
        runner = environment.runner
        if not isinstance(runner, MasterRunner) or not self.active or self._quitting:
            return
        self._quitting = True
        shutdown.arm(environment.stop_timeout, "quitting")
        mid_test = runner.state in (STATE_SPAWNING, STATE_RUNNING)
        if not mid_test and len(runner.greenlet):
            return  # a web UI test stopped earlier: its verdict is given, or its report waits for it (settle)
        if mid_test:
            # Ctrl-C or SIGTERM mid-test: Locust's shutdown quits the workers only after the quitting listeners,
            # the report's among them. Stop the test and quit them now, so that they check their ledgers first.
            runner.stop(send_stop_to_client=False)
            for greenlet in list(runner.greenlet):
                if getattr(greenlet, "_run", None) == runner.client_listener:
                    greenlet.kill(block=True)  # _listen takes over (it says why)
            runner.send_message("quit")
        # Otherwise Locust's quit (a headless run's end) stopped listening: the verdicts wait in the master's socket.
        listener = gevent.spawn(_listen, runner)
        try:
            until = time.monotonic() + self.budget(environment)
            self.settle(environment, timeout=until - time.monotonic())
            # Each worker sends its final statistics after its verdict, then quits: wait for that too, so that the
            # report counts the requests of the workers' last seconds.
            while any(_connected(runner, client_id) for client_id in self.expected) and time.monotonic() < until:
                gevent.sleep(POLL_S)
        finally:
            listener.kill(block=False)

    # --- this process's own verdict (lifecycle.on_test_stop) ------------------------------------------------------

    def own(self, environment, verdict: Verdict | None) -> None:
        """This process's verdict, once its users have stopped; None: --verify is on but this process's set-up
        failed, so it kept no ledger."""
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            name = f"worker {runner.worker_index}"
            if verdict is None:
                verdict = Verdict(error="its set-up failed, so nothing it wrote was tracked")
            (logger.info if verdict.ok else logger.error)(verdict.line(name))
            if not verdict.ok:
                environment.process_exit_code = VERIFY_EXIT_CODE  # the worker's own exit code, as before
            try:
                runner.send_message(MESSAGE, {"worker": name, **verdict.summary()})
            except Exception as e:  # noqa: BLE001 - the master then says it got no verdict from this worker
                logger.error("locust-milvus: %s could not send its --verify verdict to the master: %s", name, e)
            return
        if verdict is None:
            self.active = False  # set-up failed: the run has no verdict, and its exit code says why
            self.decided.set()
            return
        self._give(environment, verdict.summary())

    def expect_master_check(self) -> None:
        """On a master, at test start: it will check the documents it pre-populated (check_master)."""
        self.master_part = self.active

    def check_master(self, environment, check: Callable[[], Verdict]) -> None:
        """On a master, at test stop: check the documents it pre-populated, which no worker writes or deletes, in a
        greenlet of its own, so that Locust tells the workers to stop without waiting for it."""
        def run() -> None:
            try:
                verdict = check()
            except Exception as e:  # noqa: BLE001 - said as this part's error: the run is then not verified
                verdict = Verdict(error=f"{type(e).__name__}: {e}")
            (logger.info if verdict.ok else logger.error)(verdict.line(MASTER))
            self._receive(environment, MASTER, {"worker": MASTER, **verdict.summary()})

        if self.master_part:
            gevent.spawn(run)

    # --- the run's verdict ----------------------------------------------------------------------------------------

    def pending(self) -> bool:
        return self.active and not self.decided.is_set()

    def settle(self, environment, timeout: float | None = None) -> dict | None:
        """The run's verdict, waiting up to ``timeout`` s (by default, the budget) for it; None without --verify.
        When the wait is over, the workers whose verdicts are missing are named as not verified."""
        if not self.active:
            return None
        if not self.decided.is_set():
            if timeout is None:  # a local runner's check runs in this process, right after the report's test_stop
                local = not isinstance(environment.runner, MasterRunner)
                timeout = LOCAL_WAIT_S if local else self.budget(environment)
            self.decided.wait(max(0.0, timeout))
        if not self.decided.is_set():
            if isinstance(environment.runner, MasterRunner):
                waited = time.monotonic() - (self.stopped_at or time.monotonic())
                self._decide(environment, f"its verdict had not arrived {waited:.0f} s after the test began to stop "
                                          "(the worker was lost, or its check had not finished)")
            else:
                self._give(environment, Verdict(error="the check had not finished in time").summary())
        return self.result

    @staticmethod
    def budget(environment) -> float:
        """How long the master may still wait: until shutdown.WRITE_MARGIN_S before the deadline, if one is set."""
        left = shutdown.seconds_left_before_writing()
        if left is None:
            return float(environment.stop_timeout or 0) + WAIT_S
        return max(0.0, left)

    def _on_message(self, environment, msg, **_kwargs) -> None:
        self._receive(environment, msg.node_id, dict(msg.data or {}))

    def _receive(self, environment, client_id: str, data: dict) -> None:
        if not self.active:
            return
        if self.decided.is_set():
            logger.warning("locust-milvus: the --verify verdict of %s arrived after the run's verdict was given, "
                           "and is not in it: %s", data.get("worker", client_id), line_of(data))
            return
        self.received[client_id] = data
        self._decide_if_complete(environment)

    def _decide_if_complete(self, environment) -> None:
        if self.stopped_at is not None and not self.decided.is_set() and set(self.expected) <= set(self.received):
            self._decide(environment, "")

    def _decide(self, environment, no_verdict: str) -> None:
        reports: dict[str, dict | None] = {name: self.received.get(cid) for cid, name in self.expected.items()}
        for cid, data in self.received.items():  # a worker that joined as the test stopped, say
            if cid not in self.expected:
                reports[data.get("worker") or f"worker {cid}"] = data
        self._give(environment, merge(reports, no_verdict))

    def _give(self, environment, summary: dict) -> None:
        summary["line"] = line = line_of(summary)
        self.result = summary
        (logger.info if summary["ok"] else logger.error)(line)
        if not summary["ok"] and not environment.process_exit_code:  # a set-up failure (1) keeps its own code
            environment.process_exit_code = VERIFY_EXIT_CODE
        self.decided.set()


def _listen(runner) -> None:
    """Locust's listener's work while the master waits at quitting (the verdicts, the final statistics,
    heartbeats), except a worker's quit: Locust's listener then quits the master once more when no worker is left,
    which ends Locust's wait in its main greenlet, and a SIGTERM handler's shutdown would then run twice at once."""
    while True:
        try:
            client_id, msg = runner.server.recv_from_client()
        except Exception:  # noqa: BLE001 - a message that cannot be read: Locust's listener skips it too
            gevent.sleep(POLL_S)
            continue
        if msg.type == "quit":
            if msg.node_id in runner.clients:
                del runner.clients[msg.node_id]
            continue
        runner.handle_message(client_id, msg)


def _connected(runner, client_id: str) -> bool:
    node = runner.clients.get(client_id)
    return node is not None and node.state != STATE_MISSING


def _worker_name(runner, client_id: str) -> str:
    index = getattr(runner, "worker_indexes", {}).get(client_id)
    return f"worker {index}" if index is not None else f"worker {client_id}"


verdicts = RunVerdict()
