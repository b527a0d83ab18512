"""Embeddings for the load: the offline deterministic default, or OpenAI (and OpenAI-compatible servers).

The default is LangChain's own ``DeterministicFakeEmbedding`` (same text, same vector, seeded from a hash of the
text: no network, no cost) with native async methods. Its inherited ``aembed_*`` go through
``loop.run_in_executor``; computing a vector takes microseconds, so awaiting nothing is cheaper and keeps the
async path free of executor hops (bridge.py, trap 2).

A remote provider is wrapped in :class:`TimedEmbeddings`: the embedding calls an operation makes are collected
per greenlet or asyncio task, fired as their own requests (``embed_query``, ``embed_documents``) and taken out
of the operation's own time, so provider latency and Milvus latency are read apart. :func:`embed_pool` embeds
the query and corpus pools once per run (``--query-pool``, ``--corpus-pool``), cached on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from locust_milvus.config.settings import ConfigError
from locust_milvus.runtime.progress import progress

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _query_vector(size: int, text: str) -> tuple[float, ...]:
    return tuple(np.random.default_rng(DeterministicFakeEmbedding._get_seed(text)).normal(size=size).tolist())


class OfflineEmbedding(DeterministicFakeEmbedding):
    """Deterministic offline embedding of dimension ``size`` with native async methods.

    The vectors are LangChain's DeterministicFakeEmbedding's, computed at less cost: as Python floats (``tolist``;
    LangChain's ``list()`` keeps numpy scalars that pymilvus converts one by one again), and a query's vector once
    per text (the searches draw from a pool of --query-pool texts). It runs inside the timed call, so it should cost
    close to nothing: 40 to 160 µs of client CPU per text search before, a dict lookup now (bench/profile_breakdown.py).
    """

    def _get_embedding(self, seed: int) -> list[float]:
        return np.random.default_rng(seed).normal(size=self.size).tolist()

    def embed_query(self, text: str) -> list[float]:
        return list(_query_vector(self.size, text))

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

    # A remote provider: its time is reported apart from Milvus's (TimedEmbeddings, users.py).
    return TimedEmbeddings(OpenAIEmbeddings(
        model=settings.openai_model,
        dimensions=settings.openai_dimensions or None,
        # The openai client retries with back-off by default: hidden retries inside a latency figure. Off.
        max_retries=0,
        timeout=settings.timeout,
        # Checking context length tokenises with tiktoken, which downloads its encoding at run time (and an
        # OpenAI-compatible server may use another tokenizer). Send the raw text; too long a text then fails
        # visibly at the server.
        check_embedding_ctx_length=False,
    ))


def check_openai_key() -> None:
    """Raise ConfigError when OPENAI_API_KEY is missing (after .env was read)."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise ConfigError(
            "--embedding openai needs OPENAI_API_KEY: set it in the environment or in a .env file in the working "
            "directory (see .env.example); OPENAI_BASE_URL selects an OpenAI-compatible server"
        )


# --- the time split: embedding calls timed apart from the Milvus call that made them --------------------------

EMBED_QUERY = "embed_query"
EMBED_DOCUMENTS = "embed_documents"


@dataclass(slots=True)
class EmbedCall:
    """One embedding call made inside an operation: its request name, seconds, and error if it failed."""

    name: str
    elapsed_s: float
    exc: BaseException | None = None


# The embedding calls of the operation running in this context. A greenlet (greenlet >= 1.0) and an asyncio task
# each have their own context, so concurrent operations on the one shared store do not see each other's calls.
_collector: ContextVar[list[EmbedCall] | None] = ContextVar("locust_milvus_embed_calls", default=None)


@contextmanager
def embedding_calls():
    """Collect the embedding calls made inside the ``with`` block (in this greenlet or task)."""
    calls, token = collect_embedding_calls()
    try:
        yield calls
    finally:
        stop_collecting(token)


def collect_embedding_calls() -> tuple[list[EmbedCall], Token]:
    """:func:`embedding_calls` without the context manager, for the users' hot path (a generator-based ``with``
    costs more than the two context-variable calls it wraps): ``calls, token = collect_embedding_calls()``, then
    ``stop_collecting(token)`` in a ``finally``."""
    calls: list[EmbedCall] = []
    return calls, _collector.set(calls)


stop_collecting = _collector.reset


def _record(name: str, start: float, exc: BaseException | None = None) -> None:
    calls = _collector.get()
    if calls is not None:  # outside an operation (set-up, pools): nothing to report
        calls.append(EmbedCall(name, time.perf_counter() - start, exc))


class TimedEmbeddings(Embeddings):
    """A remote provider, with the time of each call recorded for the operation that made it (users.py fires
    them as their own requests and takes them out of the operation's Milvus time)."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._call(EMBED_DOCUMENTS, self.inner.embed_documents, texts)

    def embed_query(self, text: str) -> list[float]:
        return self._call(EMBED_QUERY, self.inner.embed_query, text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self._acall(EMBED_DOCUMENTS, self.inner.aembed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await self._acall(EMBED_QUERY, self.inner.aembed_query, text)

    @staticmethod
    def _call(name, method, arg):
        start = time.perf_counter()
        try:
            result = method(arg)
        except Exception as exc:
            _record(name, start, exc)
            raise
        _record(name, start)
        return result

    @staticmethod
    async def _acall(name, method, arg):
        start = time.perf_counter()
        try:
            result = await method(arg)
        except Exception as exc:
            _record(name, start, exc)
            raise
        _record(name, start)
        return result


# --- pre-embedded pools, cached on disk -------------------------------------------------------------------------

POOL_BATCH = 256  # texts per provider call while filling a pool


def provider_identity(settings) -> dict:
    """What decides the vectors a text gets (the cache key), without secrets: never the API key."""
    if settings.embedding == "fake":
        return {"provider": "fake", "dim": settings.dim}
    return {"provider": "openai", "base_url": os.environ.get("OPENAI_BASE_URL", ""),
            "model": settings.openai_model, "dim": settings.openai_dimensions}


def embed_pool(embedding: Embeddings, settings, texts: list[str], what: str) -> list[list[float]]:
    """``texts`` embedded once, in batches; for a remote provider, cached on disk under --embedding-cache.

    The key is a hash of the provider, model, dimension and the texts themselves, so a changed model or corpus
    never reuses stale vectors. The fake embedding is computed in microseconds and is not cached.
    """
    path = None
    if settings.embedding != "fake" and settings.embedding_cache:
        key = json.dumps({**provider_identity(settings), "texts": texts}, sort_keys=True).encode()
        path = Path(settings.embedding_cache).expanduser() / f"{what}-{hashlib.sha256(key).hexdigest()[:32]}.npy"
        if path.exists():
            try:
                vectors = np.load(path, allow_pickle=False)
                if len(vectors) == len(texts):
                    logger.info("locust-milvus: %s pool of %d vectors read from the cache %s", what, len(texts), path)
                    return vectors.tolist()
            except (OSError, ValueError) as exc:  # a damaged cache file is re-made, not trusted
                logger.warning("locust-milvus: ignoring unreadable cache file %s: %s", path, exc)
    vectors: list[list[float]] = []
    with progress.step(f"{what} pool embedding", len(texts), "texts") as step:  # the web UI's run page
        for start in range(0, len(texts), POOL_BATCH):
            vectors.extend(embedding.embed_documents(texts[start:start + POOL_BATCH]))
            step.advance(len(vectors))
            if len(texts) > POOL_BATCH:
                logger.info("locust-milvus: %s", step.line())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as f:  # written whole, then renamed: a reader never sees half a file
            np.save(f, np.asarray(vectors, dtype=np.float32), allow_pickle=False)
        os.replace(partial, path)
        logger.info("locust-milvus: %s pool of %d vectors cached in %s", what, len(texts), path)
    return vectors
