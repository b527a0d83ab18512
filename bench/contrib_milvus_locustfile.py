"""Locust's own locust.contrib.milvus.MilvusUser doing the same search by vector, for bench/search_throughput.py.

    LOCUST_BENCH_COLLECTION=bench locust -f bench/contrib_milvus_locustfile.py --host http://127.0.0.1:19530
"""

from locust import events, task
from locust.contrib.milvus import MilvusUser

import os
import random

from locust_milvus.runtime.monitor import monitor
from locust_milvus.workload.data import query_text
from locust_milvus.workload.embeddings import make_embedding

DIM = int(os.environ.get("LOCUST_BENCH_DIM", "128"))
_embedding = make_embedding(DIM)
# Pre-computed query vectors: the tutorial-shaped queries are "test document 0..49".
_vectors = [_embedding.embed_query(f"test document {i}") for i in range(50)]


class ContribSearchUser(MilvusUser):
    def __init__(self, environment):
        super().__init__(environment, uri=environment.host, token="",
                         collection_name=os.environ["LOCUST_BENCH_COLLECTION"], timeout=10)

    @task
    def search_by_vector(self):
        self.search(data=[random.choice(_vectors)], anns_field="vector", limit=3, output_fields=["text"])


@events.init.add_listener
def _init(environment, **_):
    environment.events.request.add_listener(monitor.count_request)  # as locust_milvus/plugin.py does


@events.test_start.add_listener
def _start(environment, **_):
    monitor.start(environment.runner)


@events.test_stop.add_listener
def _stop(environment, **_):
    monitor.stop()


assert query_text  # same query shape as the main locustfile
