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


@dataclass
class Call:
    """One prepared call: the LangChain keyword arguments, and what was known when it was prepared."""

    kwargs: dict
    mark: int = 0  # the ledger's added_total when prepared


def _nothing(state: RunState, call: Call) -> None:
    pass


@dataclass(frozen=True)
class Operation:
    name: str  # the Locust request name
    method: str  # the LangChain sync method; the async one is "a" + method
    prepare: Callable[[RunState], Call | None]  # None: nothing to do (the task is skipped, not failed)
    settle: Callable[[RunState, Call, Any], int]  # judge the result; returns response_length or raises
    abandon: Callable[[RunState, Call], None] = _nothing  # undo prepare after a failure

    @property
    def async_method(self) -> str:
        return "a" + self.method

    def complete(self, state: RunState, call: Call, result: Any, exc: BaseException | None):
        """(response_length, exception or None) for one finished call."""
        if exc is None:
            try:
                return self.settle(state, call, result), None
            except OperationFailed as failed:
                exc = failed
        self.abandon(state, call)
        return 0, exc


# add: add_documents(documents, ids=...) with --batch-size documents shaped like the tutorials'.
def _add_prepare(state: RunState) -> Call:
    ids, docs = state.ledger.new_batch(state.settings.batch_size, state.rng)
    return Call({"documents": docs, "ids": ids})


def _add_settle(state: RunState, call: Call, result: list[str]) -> int:
    ids = call.kwargs["ids"]
    if len(result) != len(ids):
        raise OperationFailed(f"add_documents returned {len(result)} ids for {len(ids)} documents")
    state.ledger.added(ids)
    return len(result)


# search: similarity_search(query, k=--top-k).
def _search_prepare(state: RunState) -> Call:
    return Call({"query": query_text(state.rng), "k": state.settings.top_k}, mark=state.ledger.added_total)


def _search_settle(state: RunState, call: Call, result: list) -> int:
    # At Session (or Strong) consistency a search sees every write this process finished before it started.
    # If one of those documents was still not taken for deletion when the search ended, the collection was
    # not empty for it, so an empty result is wrong. (Checking the ledger only at the end is racy: an add
    # that finishes while the search is in flight is not covered by the search's guarantee.)
    guaranteed = state.settings.consistency_level in ("Strong", "Session")
    if not result and guaranteed and state.ledger.holds_any_added_before(call.mark):
        raise OperationFailed("similarity_search returned no documents from a collection known to be non-empty")
    return len(result)


# delete: delete(ids=...) of up to --batch-size ids this process owns; skipped when it owns none.
def _delete_prepare(state: RunState) -> Call | None:
    ids = state.ledger.take(state.settings.batch_size)
    return Call({"ids": ids}) if ids else None


def _delete_settle(state: RunState, call: Call, result: bool | None) -> int:
    if result is False:
        raise OperationFailed("delete returned False (LangChain logged the MilvusException it caught)")
    return len(call.kwargs["ids"])


def _delete_abandon(state: RunState, call: Call) -> None:
    state.ledger.give_back(call.kwargs["ids"])


TABLE: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("add", "add_documents", _add_prepare, _add_settle),
        Operation("search", "similarity_search", _search_prepare, _search_settle),
        Operation("delete", "delete", _delete_prepare, _delete_settle, _delete_abandon),
    )
}
