"""Documents shaped like the tutorials' (text plus metadata id, score, category) and the ids a process owns.

Every id this process wrote (added or pre-populated for itself) goes into its :class:`IdLedger`; deletes take
ids only from there, so a delete never touches another worker's documents or a random id.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import deque

from langchain_core.documents import Document

# The tutorial's search queries: ``f"test document {i % 50}"``.
TUTORIAL_QUERIES = tuple(f"test document {i}" for i in range(50))

# The metadata of one document; the collection's schema is made from it (see store.py).
SAMPLE_METADATA = {"id": "doc_0", "score": 0.0, "category": "cat_0"}


def make_document(n: int, rng: random.Random) -> Document:
    """Document number ``n``, as the LangChain tutorial's ``generate_test_documents`` makes them."""
    return Document(
        page_content=f"This is test document {n} with some random content: {rng.random()}",
        metadata={"id": f"doc_{n}", "score": rng.random(), "category": f"cat_{n % 5}"},
    )


def query_text(rng: random.Random) -> str:
    """A search query shaped like the tutorial's."""
    return rng.choice(TUTORIAL_QUERIES)


def number_of(doc_id: str) -> int:
    """The document number inside an id made by IdLedger ("<prefix>-<number>")."""
    return int(doc_id.rsplit("-", 1)[1])


class DocSource:
    """Where documents, queries and vectors come from: the tutorials' synthetic shape, or a --dataset."""

    def __init__(self, dataset=None) -> None:
        self.dataset = dataset

    @property
    def sample_metadata(self) -> dict:
        return dict(self.dataset.metadatas[0]) if self.dataset else dict(SAMPLE_METADATA)

    @property
    def has_vectors(self) -> bool:
        return bool(self.dataset and self.dataset.vectors)

    def document(self, n: int, rng: random.Random) -> Document:
        if self.dataset is None:
            return make_document(n, rng)
        i = n % len(self.dataset)
        return Document(page_content=self.dataset.texts[i], metadata=dict(self.dataset.metadatas[i]))

    def vector(self, n: int) -> list[float] | None:
        return self.dataset.vectors[n % len(self.dataset)] if self.has_vectors else None

    def _spread(self, items: list, n: int) -> list:
        """Up to ``n`` items taken evenly across the dataset."""
        return items[:: max(1, len(items) // n)][:n]

    def queries(self, n: int = len(TUTORIAL_QUERIES)) -> list[str]:
        """``n`` search queries: the tutorial's ("test document i", the first 50 exactly its own), or up to ``n``
        texts of the dataset (their first 200 characters)."""
        if self.dataset is None:
            return [f"test document {i}" for i in range(n)]
        return [t[:200] for t in self._spread(self.dataset.texts, n)]

    def query_vectors(self, n: int = len(TUTORIAL_QUERIES)) -> list[list[float]] | None:
        """The dataset's own vectors of the same rows as :meth:`queries`, or None: embed the queries instead."""
        return self._spread(self.dataset.vectors, n) if self.has_vectors else None


PRESENT, DELETED, UNKNOWN = "present", "deleted", "unknown"


class IdLedger:
    """Primary keys this process wrote and has not deleted, oldest first; used from the hub thread only.

    ``added_total`` and ``taken_total`` count ids in and out; since deletes take the oldest ids first, a search
    that started when ``added_total`` was ``mark`` is sure to find a document of ours exactly while
    ``mark > taken_total`` (see :meth:`holds_any_added_before`).
    """

    def __init__(self, prefix: str | None = None, track: bool = False) -> None:
        self.prefix = prefix or f"p{os.getpid()}-{random.getrandbits(32):08x}"
        self._counter = itertools.count()
        self._live: deque[str] = deque()
        self.added_total = 0
        self.taken_total = 0
        # With --verify: what Milvus acknowledged for each id this process ever wrote (PRESENT after an
        # acknowledged add or upsert, DELETED after an acknowledged delete) or UNKNOWN (the write failed, timed
        # out or was cancelled at stop: it may or may not have happened). verify.py compares it with the
        # collection at the end of the run.
        self.track = track
        self.states: dict[str, str] = {}

    def _mark(self, ids: list[str], state: str) -> None:
        if self.track:
            for i in ids:
                self.states[i] = state

    def deleted(self, ids: list[str]) -> None:
        """Milvus acknowledged the delete of ``ids`` (already taken)."""
        self._mark(ids, DELETED)

    def uncertain(self, ids: list[str]) -> None:
        """A write of ``ids`` failed or was cancelled: its outcome is unknown."""
        self._mark(ids, UNKNOWN)

    def new_batch(self, n: int, rng: random.Random,
                  source: DocSource | None = None) -> tuple[list[str], list[Document]]:
        """``n`` fresh documents with ids unique to this process (not owned until :meth:`added`)."""
        numbers = [next(self._counter) for _ in range(n)]
        make = source.document if source is not None else make_document
        return [f"{self.prefix}-{i}" for i in numbers], [make(i, rng) for i in numbers]

    def added(self, ids: list[str]) -> None:
        """Milvus acknowledged the add (or upsert) of ``ids``: this process owns them."""
        self._live.extend(ids)
        self.added_total += len(ids)
        self._mark(ids, PRESENT)

    def take(self, n: int) -> list[str]:
        """Remove up to ``n`` of the oldest ids, for a delete; ``[]`` when nothing is owned."""
        ids = [self._live.popleft() for _ in range(min(n, len(self._live)))]
        self.taken_total += len(ids)
        return ids

    def give_back(self, ids: list[str]) -> None:
        """A delete or upsert failed: its ids may still exist, so they stay owned (and deletable), with an
        unknown outcome until a later write of them is acknowledged."""
        self._live.extendleft(reversed(ids))
        self.taken_total -= len(ids)
        self._mark(ids, UNKNOWN)

    def holds_any_added_before(self, mark: int) -> bool:
        """Whether an id added before ``added_total`` was ``mark`` has still not been taken for deletion."""
        return mark > self.taken_total

    def __len__(self) -> int:
        return len(self._live)
