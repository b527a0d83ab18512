"""Test-only add-on locustfile that loses one acknowledged write behind --verify's back (tests/test_verify_run.py).

    locust -f locustfiles/locustfile.py,tests/lose_a_write.py --worker ...

When the test stops on worker 0 (or a local runner), after its users have stopped and before locust-milvus checks
its ledger, it deletes one document whose add Milvus acknowledged, with a pymilvus client of its own: the ledger
still says the document is there, so --verify must find it missing.
"""

from locust import events
from locust.runners import MasterRunner, WorkerRunner

import logging

from pymilvus import MilvusClient

from locust_milvus import lifecycle
from locust_milvus.milvus.store import connection_args
from locust_milvus.workload.data import PRESENT

logger = logging.getLogger("locust_milvus")


# Added at import: locust-milvus adds its own test_stop listeners at init, later, so this one runs before --verify.
@events.test_stop.add_listener
def _lose_a_write(environment, **_kwargs) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner) or (isinstance(runner, WorkerRunner) and runner.worker_index != 0):
        return
    state = lifecycle.current_state()
    if state is None:
        return
    present = [doc_id for doc_id, s in state.ledger.states.items() if s == PRESENT]
    if not present:
        logger.error("lose_a_write: no acknowledged write to lose")
        return
    client = MilvusClient(**connection_args(state.settings))
    try:
        client.delete(state.settings.collection, ids=[present[-1]])
    finally:
        client.close()
    logger.info("lose_a_write: deleted %s behind the ledger's back", present[-1])
