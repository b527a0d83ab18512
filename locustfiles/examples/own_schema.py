"""Example: your own collection schema and index, set by your own ``Milvus(...)`` arguments, in both modes.

    locust -f locustfiles/examples/own_schema.py --headless -u 20 -r 20 -t 1m --drop-collection

``milvus_kwargs`` on a user class are keyword arguments of ``langchain_milvus.Milvus``, laid over the run's own
(--index-type, --metric, --search-params, --partition-key-field, ...) for every store the run makes: the
collection's set-up, once (on the master in a distributed run), and each process's stores. Here: an HNSW index
with COSINE, its search ``ef``, and ``category`` as partition key in 16 partitions, so a search filtered on one
category reads one partition. All user classes of a run must give the same (one collection, one schema); a
shared base class does that. The report's "What was tested" shows them (docs/extending.md).
"""

from locust import task

from locust_milvus import AsyncLangChainUser, LangChainUser

SCHEMA = {
    "index_params": {"index_type": "HNSW", "metric_type": "COSINE", "params": {"M": 16, "efConstruction": 64}},
    "search_params": {"metric_type": "COSINE", "params": {"ef": 32}},
    # LangChain honours a partition key only with dynamic fields: the other metadata become dynamic.
    "partition_key_field": "category",
    "enable_dynamic_field": True,
    "num_partitions": 16,
}
ONE_TENANT = "category == 'cat_1'"  # the tutorial-shaped documents have categories cat_0 .. cat_4


class TenantSearchUser(LangChainUser):
    milvus_kwargs = SCHEMA

    @task
    def tenant_search(self):
        with self.measure("tenant_search"):
            self.store.similarity_search(self.query_text(), k=3, expr=ONE_TENANT)


class AsyncTenantSearchUser(AsyncLangChainUser):
    milvus_kwargs = SCHEMA

    @task
    def atenant_search(self):
        async def search():
            async with self.measure_async("atenant_search"):
                await self.astore.asimilarity_search(self.query_text(), k=3, expr=ONE_TENANT)

        self.run(search())
