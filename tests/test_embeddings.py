"""Unit tests: the embedding time split (per greenlet and per asyncio task) and the on-disk pool cache."""

from __future__ import annotations

import asyncio

import gevent
import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from locust_milvus.workload.embeddings import (
    EMBED_DOCUMENTS,
    EMBED_QUERY,
    OfflineEmbedding,
    TimedEmbeddings,
    embed_pool,
    embedding_calls,
)

from .conftest import make_settings


class SlowEmbedding(Embeddings):
    """Sleeps ``delay`` per call (cooperatively), counts calls; fails on the text "boom"."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.calls = delay, 0
        self.inner = OfflineEmbedding(size=8)

    def embed_documents(self, texts):
        self.calls += 1
        gevent.sleep(self.delay)
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        self.calls += 1
        gevent.sleep(self.delay)
        if text == "boom":
            raise RuntimeError("provider said no")
        return self.inner.embed_query(text)

    async def aembed_query(self, text):
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.inner.embed_query(text)


def test_each_greenlet_collects_only_its_own_embedding_calls():
    timed = TimedEmbeddings(SlowEmbedding(0.02))

    def operation(n_queries):
        with embedding_calls() as calls:
            for _ in range(n_queries):
                timed.embed_query("q")
            timed.embed_documents(["a", "b"])
        return calls

    jobs = [gevent.spawn(operation, n) for n in (1, 2, 3)]
    gevent.joinall(jobs, raise_error=True)
    for n, job in zip((1, 2, 3), jobs, strict=True):
        names = [c.name for c in job.value]
        assert names == [EMBED_QUERY] * n + [EMBED_DOCUMENTS]
        assert all(c.elapsed_s >= 0.02 and c.exc is None for c in job.value)
    timed.embed_query("outside an operation")  # no collector: recorded nowhere, and no error


def test_a_failed_embedding_is_recorded_with_its_error():
    timed = TimedEmbeddings(SlowEmbedding())
    with embedding_calls() as calls, pytest.raises(RuntimeError):
        timed.embed_query("boom")
    assert len(calls) == 1 and isinstance(calls[0].exc, RuntimeError)


def test_concurrent_asyncio_tasks_collect_apart():
    timed = TimedEmbeddings(SlowEmbedding(0.01))

    async def operation(n):
        with embedding_calls() as calls:
            for _ in range(n):
                await timed.aembed_query("q")
        return [c.name for c in calls]

    async def main():
        return await asyncio.gather(*(operation(n) for n in (1, 2, 3)))

    assert asyncio.run(main()) == [[EMBED_QUERY] * n for n in (1, 2, 3)]


def test_pool_of_a_remote_provider_is_cached_by_provider_model_and_texts(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    provider = SlowEmbedding()
    settings = make_settings("http://127.0.0.1:19530", "c", embedding="openai", embedding_cache=str(tmp_path))
    texts = [f"t{i}" for i in range(300)]
    first = embed_pool(provider, settings, texts, "query")
    assert provider.calls == 2  # batches of 256
    again = embed_pool(provider, settings, texts, "query")
    assert provider.calls == 2 and np.allclose(first, again)
    embed_pool(provider, settings, texts[:-1], "query")  # other texts: another key (299 texts, 2 batches)
    assert provider.calls == 4
    other_model = make_settings("http://127.0.0.1:19530", "c", embedding="openai", embedding_cache=str(tmp_path),
                                openai_model="another-model")
    embed_pool(provider, other_model, texts, "query")
    assert provider.calls == 6
    assert len(list(tmp_path.glob("query-*.npy"))) == 3 and not list(tmp_path.glob("*.partial"))
    for f in tmp_path.glob("query-*.npy"):  # damaged files are re-made, not trusted
        f.write_bytes(b"not numpy")
    assert np.allclose(embed_pool(provider, settings, texts, "query"), first) and provider.calls == 8


def test_fake_embedding_pools_are_not_cached(tmp_path):
    settings = make_settings("http://127.0.0.1:19530", "c", embedding_cache=str(tmp_path))
    vectors = embed_pool(OfflineEmbedding(size=8), settings, ["a", "b"], "query")
    assert len(vectors) == 2 and not list(tmp_path.iterdir())
