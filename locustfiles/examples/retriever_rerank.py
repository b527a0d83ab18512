"""Example: time your own retrieval chain, a LangChain retriever plus a re-ranking step, in both modes.

    locust -f locustfiles/examples/retriever_rerank.py --headless -u 20 -r 20 -t 1m --check-p99 retrieve=200ms

Only the users defined here run (LangChainUser and AsyncLangChainUser have no tasks of their own). The run's
set-up is the built-in users' (the collection, pre-population, the embedding), and every option applies:
--host, --consistency-level, --top-k, --check-*, distributed runs. Each ``measure`` block is one request, named
as you name it, timed around the block alone; an exception inside it is a failure (docs/extending.md).
"""

from locust import task

from locust_milvus import AsyncLangChainUser, LangChainUser


def rerank(query: str, docs: list) -> list:
    """A cheap offline re-ranker (stands in for a cross-encoder): documents sharing most words with the query
    first. It runs inside the measured block, as it would in your service."""
    words = set(query.lower().split())
    return sorted(docs, key=lambda d: -len(words & set(d.page_content.lower().split())))


class RetrieverUser(LangChainUser):
    @task
    def retrieve(self):
        query = self.query_text()
        retriever = self.store.as_retriever(search_type="similarity", search_kwargs={"k": 10})
        with self.measure("retrieve"):
            top = rerank(query, retriever.invoke(query))[:3]
        assert len(top) <= 3


class AsyncRetrieverUser(AsyncLangChainUser):
    @task
    def aretrieve(self):
        async def chain():
            query = self.query_text()
            retriever = self.astore.as_retriever(search_type="mmr", search_kwargs={"k": 3, "fetch_k": 10})
            async with self.measure_async("aretrieve"):  # named like its task, so --check-* knows it
                return rerank(query, await retriever.ainvoke(query))

        self.run(chain())
