"""Embeddings for the load: the offline deterministic default, or OpenAI (and OpenAI-compatible servers).

The default is LangChain's own ``DeterministicFakeEmbedding`` (same text, same vector, seeded from a hash of the
text: no network, no cost) with native async methods. Its inherited ``aembed_*`` go through
``loop.run_in_executor``; computing a vector takes microseconds, so awaiting nothing is cheaper and keeps the
async path free of executor hops (bridge.py, trap 2).
"""

from __future__ import annotations

import os

from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from locust_milvus.settings import ConfigError


class OfflineEmbedding(DeterministicFakeEmbedding):
    """Deterministic offline embedding of dimension ``size`` with native async methods."""

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


def make_embedding(dim: int) -> OfflineEmbedding:
    return OfflineEmbedding(size=dim)


def embedding_for(settings) -> Embeddings:
    """The embedding a run's options ask for (``--embedding``)."""
    if settings.embedding == "fake":
        return make_embedding(settings.dim)
    from langchain_openai import OpenAIEmbeddings

    return OpenAIEmbeddings(
        model=settings.openai_model,
        dimensions=settings.openai_dimensions or None,
        # The openai client retries with back-off by default: hidden retries inside a latency figure. Off.
        max_retries=0,
        timeout=settings.timeout,
        # Checking context length tokenises with tiktoken, which downloads its encoding at run time (and an
        # OpenAI-compatible server may use another tokenizer). Send the raw text; too long a text then fails
        # visibly at the server.
        check_embedding_ctx_length=False,
    )


def check_openai_key() -> None:
    """Raise ConfigError when OPENAI_API_KEY is missing (after .env was read)."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise ConfigError(
            "--embedding openai needs OPENAI_API_KEY: set it in the environment or in a .env file in the working "
            "directory (see .env.example); OPENAI_BASE_URL selects an OpenAI-compatible server"
        )
