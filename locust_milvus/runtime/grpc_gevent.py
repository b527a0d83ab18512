"""Make sync gRPC (pymilvus's ``MilvusClient``) cooperate with gevent, once per process, before any channel.

Locust monkey-patches the standard library with gevent, but gRPC's C core does its own blocking I/O. Without
``grpc.experimental.gevent.init_gevent()`` every sync Milvus call blocks the whole worker process: 20 users then
run one call at a time and Locust reports a 2 ms latency that is false (measured here: 489 req/s
serialised against about 1,080 req/s cooperative). Locust's own contrib/milvus.py does the same at import; we do
it at ``init`` so that nothing gRPC-shaped exists before ``locust --processes`` forks.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# For the test that proves the concurrency check can fail: with this set, sync gRPC is left blocking.
UNSAFE_DISABLE_ENV = "LOCUST_MILVUS_UNSAFE_BLOCKING_GRPC"

_done_in_pid: int | None = None


def make_grpc_cooperative() -> bool:
    """Call ``init_gevent`` once in this process; return whether gRPC is now cooperative."""
    global _done_in_pid
    if _done_in_pid == os.getpid():
        return True
    if os.environ.get(UNSAFE_DISABLE_ENV) == "1":
        logger.warning("%s=1: sync gRPC calls block the gevent hub; latencies will be false", UNSAFE_DISABLE_ENV)
        return False
    from grpc.experimental import gevent as grpc_gevent

    grpc_gevent.init_gevent()
    _done_in_pid = os.getpid()
    return True
