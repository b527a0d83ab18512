"""Embeddings for the load: the offline deterministic default.

The default is LangChain's own ``DeterministicFakeEmbedding`` (same text, same vector, seeded from a hash of the
text: no network, no cost) with native async methods. Its inherited ``aembed_*`` go through
``loop.run_in_executor``; computing a vector takes microseconds, so awaiting nothing is cheaper and keeps the
async path free of executor hops (bridge.py, trap 2).
"""

from __future__ import annotations

from langchain_core.embeddings import DeterministicFakeEmbedding


class OfflineEmbedding(DeterministicFakeEmbedding):
    """Deterministic offline embedding of dimension ``size`` with native async methods."""

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


def make_embedding(dim: int) -> OfflineEmbedding:
    return OfflineEmbedding(size=dim)
