"""The table of operations: each one described once, serving both SyncMilvusUser and AsyncMilvusUser.

LangChain's sync and async methods are pairs with the same signature (``add_documents`` / ``aadd_documents``),
so an entry names the sync method, how to build its arguments from the run's state, and how to judge its
result. users.py calls ``method`` or ``"a" + method`` with those arguments and times the call alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_milvus import Milvus

from locust_milvus.data import IdLedger, query_text
from locust_milvus.events import OperationFailed
from locust_milvus.options import Settings


@dataclass
class RunState:
    """What the operations of one process act on: the options, the shared stores, the ids this process owns.

    ``store`` serves sync calls; ``astore`` (None when no async user runs) serves async calls and was built on
    the bridge's loop, because pymilvus binds an async connection to the loop of the thread that made it.
    """

    settings: Settings
    store: Milvus
    ledger: IdLedger
    astore: Milvus | None = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        chosen = [(TABLE[name], w) for name, w in self.settings.weights.items() if w > 0]
        self._ops = [op for op, _ in chosen]
        self._cum_weights = [sum(w for _, w in chosen[: i + 1]) for i in range(len(chosen))]

    def pick(self) -> Operation:
        """An operation chosen by its --<op>-weight."""
        return self.rng.choices(self._ops, cum_weights=self._cum_weights)[0]


def _nothing(state: RunState, kwargs: dict) -> None:
    pass


@dataclass(frozen=True)
class Operation:
    name: str  # the Locust request name
    method: str  # the LangChain sync method; the async one is "a" + method
    prepare: Callable[[RunState], dict | None]  # keyword arguments, or None: nothing to do (task skipped)
    settle: Callable[[RunState, dict, Any], int]  # judge the result; returns response_length or raises
    abandon: Callable[[RunState, dict], None] = _nothing  # undo prepare after a failure

    @property
    def async_method(self) -> str:
        return "a" + self.method

    def complete(self, state: RunState, kwargs: dict, result: Any, exc: BaseException | None):
        """(response_length, exception or None) for one finished call."""
        if exc is None:
            try:
                return self.settle(state, kwargs, result), None
            except OperationFailed as failed:
                exc = failed
        self.abandon(state, kwargs)
        return 0, exc


# add: add_documents(documents, ids=...) with --batch-size documents shaped like the tutorials'.
def _add_prepare(state: RunState) -> dict:
    ids, docs = state.ledger.new_batch(state.settings.batch_size, state.rng)
    return {"documents": docs, "ids": ids}


def _add_settle(state: RunState, kwargs: dict, result: list[str]) -> int:
    if len(result) != len(kwargs["ids"]):
        raise OperationFailed(f"add_documents returned {len(result)} ids for {len(kwargs['ids'])} documents")
    state.ledger.added(kwargs["ids"])
    return len(result)


# search: similarity_search(query, k=--top-k).
def _search_prepare(state: RunState) -> dict:
    return {"query": query_text(state.rng), "k": state.settings.top_k}


def _search_settle(state: RunState, kwargs: dict, result: list) -> int:
    # The ledger holds only ids whose add completed and whose delete has not started, so while it is not
    # empty the collection holds at least those documents (read-your-writes at Session consistency or stronger).
    if not result and len(state.ledger) > 0:
        raise OperationFailed("similarity_search returned no documents from a collection known to be non-empty")
    return len(result)


# delete: delete(ids=...) of up to --batch-size ids this process owns; skipped when it owns none.
def _delete_prepare(state: RunState) -> dict | None:
    ids = state.ledger.take(state.settings.batch_size)
    return {"ids": ids} if ids else None


def _delete_settle(state: RunState, kwargs: dict, result: bool | None) -> int:
    if result is False:
        raise OperationFailed("delete returned False (LangChain logged the MilvusException it caught)")
    return len(kwargs["ids"])


def _delete_abandon(state: RunState, kwargs: dict) -> None:
    state.ledger.give_back(kwargs["ids"])


TABLE: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("add", "add_documents", _add_prepare, _add_settle),
        Operation("search", "similarity_search", _search_prepare, _search_settle),
        Operation("delete", "delete", _delete_prepare, _delete_settle, _delete_abandon),
    )
}
