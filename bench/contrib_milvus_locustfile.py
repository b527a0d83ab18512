"""Locust's own locust.contrib.milvus.MilvusUser doing what our users do, for bench/search_throughput.py.

    LOCUST_BENCH_COLLECTION=bench [LOCUST_BENCH_MIX=search|add|delete] [LOCUST_BENCH_BATCH=10] \
        locust -f bench/contrib_milvus_locustfile.py --host http://127.0.0.1:19530

- search: a search by a pre-computed query vector (k=3, the text field), as ours searches by a text whose vector
  the offline embedding keeps once per query text;
- add: an insert of a batch of tutorial-shaped documents, embedded in the task with the same offline embedding
  as ours (LangChain's add_documents embeds them inside the call);
- delete: inserts and deletes 1:1, each delete of the oldest batch this process inserted (``pk in [...]``, the kind of
  expression LangChain's ``delete(ids)`` sends); with nothing to delete the task pauses 5 ms, as ours does.
"""

from locust import events, task
from locust.contrib.milvus import MilvusUser

import collections
import itertools
import json
import os
import random

import gevent

from locust_milvus.runtime.monitor import monitor
from locust_milvus.workload.data import make_document, query_text
from locust_milvus.workload.embeddings import make_embedding

DIM = int(os.environ.get("LOCUST_BENCH_DIM", "128"))
MIX = os.environ.get("LOCUST_BENCH_MIX", "search")
BATCH = int(os.environ.get("LOCUST_BENCH_BATCH", "10"))
_embedding = make_embedding(DIM)
# Pre-computed query vectors: the tutorial-shaped queries are "test document 0..49".
_vectors = [_embedding.embed_query(f"test document {i}") for i in range(50)]
_numbers = itertools.count()
_owned: collections.deque = collections.deque()  # batches of ids this process inserted, oldest first
_rng = random.Random()


class ContribUser(MilvusUser):
    abstract = True

    def __init__(self, environment):
        super().__init__(environment, uri=environment.host, token="",
                         collection_name=os.environ["LOCUST_BENCH_COLLECTION"], timeout=10)

    def add(self) -> None:
        docs = [make_document(next(_numbers), _rng) for _ in range(BATCH)]
        ids = [f"contrib-{os.getpid()}-{d.metadata['id']}" for d in docs]
        vectors = _embedding.embed_documents([d.page_content for d in docs])
        rows = [{"pk": i, "text": d.page_content, "vector": v, **d.metadata}
                for i, d, v in zip(ids, docs, vectors, strict=True)]
        result = self.insert(rows)
        if result.get("success"):
            _owned.append(ids)


class SearchUser(ContribUser):
    @task
    def search_by_vector(self):
        self.search(data=[random.choice(_vectors)], anns_field="vector", limit=3, output_fields=["text"])


class AddUser(ContribUser):
    @task
    def add_batch(self):
        self.add()


class DeleteUser(ContribUser):
    @task
    def add_batch(self):
        self.add()

    @task
    def delete_batch(self):
        if not _owned:
            gevent.sleep(0.005)
            return
        self.delete(filter=f"pk in {json.dumps(_owned.popleft())}")


# Only the mix's class runs (Locust runs every non-abstract class of the file).
for _cls in (SearchUser, AddUser, DeleteUser):
    _cls.abstract = _cls is not {"search": SearchUser, "add": AddUser, "delete": DeleteUser}[MIX]
del _cls


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
