"""The table of operations: each one described once, serving both SyncMilvusUser and AsyncMilvusUser.

LangChain's sync and async methods are pairs with the same signature (``add_documents`` / ``aadd_documents``),
so an entry names the sync method, how to build its arguments from the run's state, and how to judge its
result. users.py calls ``method`` or ``"a" + method`` with those arguments and times the call alone; every
entry is a task with its own ``--<name>-weight`` option (options.py reads this table).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document
from langchain_milvus import Milvus

from locust_milvus.config.settings import Settings
from locust_milvus.runtime.shield import call_shielded
from locust_milvus.workload.data import DocSource, IdLedger, number_of
from locust_milvus.workload.embeddings import embed_pool
from locust_milvus.workload.recall import GroundTruth
from locust_milvus.workload.request_events import OperationFailed

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the operations of one process act on: the options, the shared stores, the ids this process owns.

    ``store`` serves sync calls; ``astore`` (None when no async user runs) serves async calls and was built on
    the bridge's loop, because pymilvus binds an async connection to the loop of the thread that made it.
    ``source`` gives documents and queries (synthetic, or --dataset); ``query_vectors`` are the --query-pool
    queries embedded once at start (or the dataset's own vectors), for the ``*_by_vector`` tasks; ``corpus`` and
    ``corpus_vectors`` are the --corpus-pool documents embedded once, for add_embeddings.
    """

    settings: Settings
    store: Milvus
    ledger: IdLedger
    astore: Milvus | None = None
    rng: random.Random = field(default_factory=random.Random)
    query_vectors: list[list[float]] = field(default_factory=list)
    source: DocSource = field(default_factory=DocSource)
    total_users: int = 1  # the run's user count over all workers (--target-rps gives each user rate / this)
    truth: GroundTruth | None = None  # --recall: the vectors of the documents this process wrote
    # --bm25: the hybrid and full-text stores (milvus/bm25.py), by (kind, sync); open_stores makes them
    stores: dict = field(default_factory=dict)
    _retrievers: dict = field(default_factory=dict, init=False, repr=False)  # sync (True/False) -> its retriever

    def __post_init__(self) -> None:
        s = self.settings
        chosen = {name: w for name, w in s.weights.items() if w > 0}
        self._ops = [TABLE[name] for name in chosen]
        self._cum_weights = list(itertools.accumulate(chosen.values()))
        pools = {TABLE[name].pool for name in chosen}
        self.queries = self.source.queries(s.query_pool)
        if not self.query_vectors and ("query" in pools or s.recall):
            self.query_vectors = (self.source.query_vectors(s.query_pool)
                                  or embed_pool(self.store.embeddings, s, self.queries, "query"))
        self._by_text = dict(zip(self.queries, self.query_vectors, strict=False))  # built once, read per search
        self.corpus: list[Document] = []
        self.corpus_vectors: list[list[float]] = []
        if s.corpus_pool and "corpus" in pools and not self.source.has_vectors:
            rng = random.Random(0)  # the same texts every run, so that the cached vectors are found again
            self.corpus = [self.source.document(i, rng) for i in range(s.corpus_pool)]
            self.corpus_vectors = embed_pool(self.store.embeddings, s, [d.page_content for d in self.corpus],
                                             "corpus")
        # The retriever task's retrievers, made once per mode at set-up, as a RAG chain holds its retriever.
        wanted = "retriever" in chosen or "retriever" in s.target_rps
        for sync, store in ((True, self.store), (False, self.astore)):
            if wanted and store is not None:
                self._retrievers[sync] = store.as_retriever(search_type=s.retriever_search_type,
                                                            search_kwargs=retriever_kwargs(s))

    def target(self, op: Operation, sync: bool):
        """What ``op.method`` (sync) or ``op.async_method`` is called on: the store, its retriever, or a BM25 store."""
        if op.via == "dense":
            return self.store if sync else self.astore
        if op.via == "retriever":
            return self._retrievers[sync]
        return self.stores[(op.via, sync)]

    def pick(self) -> Operation:
        """An operation chosen by its --<name>-weight."""
        return self.rng.choices(self._ops, cum_weights=self._cum_weights)[0]

    def query_vector(self) -> list[float]:
        return self.rng.choice(self.query_vectors)

    def query_text(self) -> str:
        return self.rng.choice(self.queries)

    def vector_of_query(self, text: str):
        """The pool's vector of a query text (for recall: the text searches embed the same texts)."""
        return self._by_text.get(text)

    def embed_for_truth(self, call: Call, docs_key: str = "documents"):
        """The vectors of what an acknowledged write stored (outside any timing), for --recall's ground truth."""
        if "embeddings" in call.kwargs:
            return call.kwargs["embeddings"]
        texts = call.kwargs["texts"] if "texts" in call.kwargs else [d.page_content for d in call.kwargs[docs_key]]
        return self.store.embeddings.embed_documents(texts)


def bm25_kinds(settings: Settings) -> set[str]:
    """The --bm25 stores (bm25.KINDS) the run's weighted or paced operations are called on: RunState.stores."""
    named = {name for name, w in settings.weights.items() if w} | set(settings.target_rps)
    return {TABLE[name].via for name in named if TABLE[name].needs_bm25}


@dataclass
class Call:
    """One prepared call: the LangChain keyword arguments, and what was known when it was prepared."""

    kwargs: dict
    mark: int = 0  # the ledger's added_total when prepared (the empty-search check)
    # --recall (sampled searches): the query vector and the documents certainly visible when it started, and the
    # recall@k measured when it ended (recall.py); it travels in the request event's context, not as a request
    query_vector: Any = None
    visible: Any = None
    recall: float | None = None
    mode: int = 0  # the client it goes through: 1 the sync store, 2 the async one (set by the user; recall.py)


def _nothing(state: RunState, call: Call) -> None:
    pass


@dataclass(frozen=True)
class Operation:
    name: str  # the Locust request name and the option's stem (--<name>-weight)
    method: str  # the LangChain sync method; the async one is "a" + method
    prepare: Callable[[RunState], Call | None]  # None: nothing to do (the task is skipped, not failed)
    settle: Callable[[RunState, Call, Any], int]  # judge the result; returns response_length or raises
    # After a failure, or when the call was cancelled at stop: undo prepare, and record writes whose outcome is
    # now unknown in the ledger.
    abandon: Callable[[RunState, Call], None] = _nothing
    default_weight: int = 0
    help: str = ""
    # Whether the method hands extra keywords to pymilvus, so takes --milvus-timeout and the retry policy as
    # call arguments. Those that do not still get the deadline through the store (LangChain's self.timeout).
    takes_call_kwargs: bool = True
    writes: bool = False  # changes the collection (refused with --existing-collection)
    pool: str = ""  # "query": needs the pre-embedded query pool; "corpus": uses the corpus pool when there is one
    # The one Milvus call it makes, as Milvus's proxy labels it (the report sets Milvus's own figures beside ours),
    # or None when it makes several (MMR: a search and a query) or writes elsewhere (from_texts' scratch collection).
    # LangChain's adds also ask has_collection before every insert: a second round trip that the proxy's insert
    # figures do not hold (report/findings.py says so beside them).
    milvus_call: str | None = None
    # What it is called on (RunState.target): "dense", the run's store (the dense field); "retriever", its
    # ``as_retriever(...)`` (a LangChain VectorStoreRetriever); "hybrid" or "full_text", a --bm25 store (bm25.py).
    via: str = "dense"

    @property
    def needs_bm25(self) -> bool:
        return self.via in ("hybrid", "full_text")

    @property
    def async_method(self) -> str:
        return "a" + self.method

    @property
    def option(self) -> str:
        return self.name.replace("_", "-")

    def complete(self, state: RunState, call: Call, result: Any, exc: BaseException | None):
        """(response_length, exception or None) for one finished call."""
        if exc is None:
            try:
                return self.settle(state, call, result), None
            except OperationFailed as failed:
                exc = failed
        self.abandon(state, call)
        return 0, exc


# --- adds: --batch-size tutorial-shaped documents with explicit string ids, owned by this process ----------

def _new_docs(state: RunState):
    return state.ledger.new_batch(state.settings.batch_size, state.rng, state.source)


def _add_documents(state: RunState) -> Call:
    ids, docs = _new_docs(state)
    return Call({"documents": docs, "ids": ids})


def _add_texts(state: RunState) -> Call:
    ids, docs = _new_docs(state)
    return Call({"texts": [d.page_content for d in docs], "metadatas": [d.metadata for d in docs], "ids": ids})


def _add_embeddings(state: RunState) -> Call:
    # The vectors come from outside the timed call: add_embeddings is for callers that embed apart. They are
    # the dataset's own, or the --corpus-pool's (embedded once), or else embedded here for each batch.
    ids, docs = _new_docs(state)
    if state.source.has_vectors:
        vectors = [state.source.vector(number_of(i)) for i in ids]
    elif state.corpus:
        picks = [number_of(i) % len(state.corpus) for i in ids]
        docs = [state.corpus[p] for p in picks]
        vectors = [state.corpus_vectors[p] for p in picks]
    else:
        vectors = state.store.embeddings.embed_documents([d.page_content for d in docs])
    texts = [d.page_content for d in docs]
    return Call({"texts": texts, "embeddings": vectors, "metadatas": [d.metadata for d in docs], "ids": ids})


def _add_failed(state: RunState, call: Call) -> None:
    state.ledger.uncertain(call.kwargs["ids"])  # a timeout or a lost connection may still have written them


def _added(state: RunState, call: Call, result: list[str]) -> int:
    ids = call.kwargs["ids"]
    if len(result) != len(ids):
        raise OperationFailed(f"{len(result)} ids returned for {len(ids)} documents")
    state.ledger.added(ids)
    if state.truth is not None:
        state.truth.put(ids, state.embed_for_truth(call), call.mode)
    return len(result)


# --- searches ------------------------------------------------------------------------------------------------

def _search(by_vector: bool, mmr: bool = False) -> Callable[[RunState], Call]:
    def prepare(state: RunState) -> Call:
        s = state.settings
        kwargs: dict = {"embedding": state.query_vector()} if by_vector else {"query": state.query_text()}
        kwargs["k"] = s.top_k
        if mmr:
            kwargs["fetch_k"] = max(s.fetch_k, s.top_k)
        if s.filter:
            kwargs["expr"] = s.filter
        call = Call(kwargs, mark=state.ledger.added_total)
        if state.truth is not None and not mmr and not s.filter and state.rng.random() < s.recall:
            # MMR re-ranks for diversity and a filter narrows the candidates: neither is a plain top k
            call.query_vector = kwargs["embedding"] if by_vector else state.vector_of_query(kwargs["query"])
            if call.query_vector is not None:
                call.visible = state.truth.visible()
        return call

    return prepare


def _found(state: RunState, call: Call, result: list) -> int:
    return _judge_found(state, call, result, call.kwargs["k"], filtered=bool(call.kwargs.get("expr")))


def _judge_found(state: RunState, call: Call, result: list, k: int, filtered: bool, may_be_empty: bool = False):
    # At Session (or Strong) consistency a search sees every write this process finished before it started.
    # If one of those documents was still not taken for deletion when the search ended, the collection was
    # not empty for it, so an empty result is wrong. (Checking the ledger only at the end is racy: an add
    # that finishes while the search is in flight is not covered by the search's guarantee.) A filter or a
    # score threshold may rightly match nothing, so those searches are not judged.
    s = state.settings
    guaranteed = s.consistency_level in ("Strong", "Session") and not filtered and not may_be_empty
    if not result and guaranteed and state.ledger.holds_any_added_before(call.mark):
        raise OperationFailed("no documents returned from a collection known to be non-empty")
    if call.visible is not None:
        pk = s.primary_field
        docs = [d[0] if isinstance(d, tuple) else d for d in result]
        call.recall = state.truth.recall(call.query_vector, [str(d.metadata.get(pk)) for d in docs],
                                         k, call.visible, call.mode, strong=s.consistency_level == "Strong")
    return len(result)


# --- the retriever: what a LangChain RAG chain calls (as_retriever(...).invoke(query)) ----------------------

RETRIEVER_SEARCH_TYPES = ("similarity", "mmr", "similarity_score_threshold")


def retriever_kwargs(s: Settings) -> dict:
    """The retriever's search_kwargs, fixed when it is made (as in a chain): k, and per search type its own."""
    kwargs: dict = {"k": s.top_k}
    if s.retriever_search_type == "mmr":
        kwargs["fetch_k"] = max(s.fetch_k, s.top_k)
    elif s.retriever_search_type == "similarity_score_threshold":
        kwargs["score_threshold"] = s.retriever_score_threshold
    if s.filter:
        kwargs["expr"] = s.filter
    return kwargs


def _retrieve(state: RunState) -> Call:
    s = state.settings
    call = Call({"input": state.query_text()}, mark=state.ledger.added_total)
    # Recall only where the retriever is a plain top k (no MMR re-ranking, no threshold, no filter).
    if (state.truth is not None and s.retriever_search_type == "similarity" and not s.filter
            and state.rng.random() < s.recall):
        call.query_vector = state.vector_of_query(call.kwargs["input"])
        if call.query_vector is not None:
            call.visible = state.truth.visible()
    return call


def _retrieved(state: RunState, call: Call, result: list) -> int:
    s = state.settings
    return _judge_found(state, call, result, s.top_k, filtered=bool(s.filter),
                        may_be_empty=s.retriever_search_type == "similarity_score_threshold")


# --- --bm25: hybrid (dense + BM25, fused by --ranker) and full-text (BM25 alone) searches ----------------------

def _hybrid(state: RunState) -> Call:
    # Each route fetches --fetch-k candidates (LangChain's default is 4, fewer than a --top-k above 4 needs).
    s = state.settings
    kwargs = {"query": state.query_text(), "k": s.top_k, "fetch_k": max(s.fetch_k, s.top_k),
              "ranker_type": s.ranker, "ranker_params": s.ranker_params}
    if s.filter:
        kwargs["expr"] = s.filter
    return Call(kwargs, mark=state.ledger.added_total)  # no recall: bm25.NO_RECALL says why


def _full_text(state: RunState) -> Call:
    s = state.settings
    kwargs = {"query": state.query_text(), "k": s.top_k}
    if s.filter:
        kwargs["expr"] = s.filter
    return Call(kwargs, mark=state.ledger.added_total)


def _full_text_found(state: RunState, call: Call, result: list) -> int:
    # A query none of whose terms is in any document rightly finds nothing: an empty result is not judged.
    return _judge_found(state, call, result, call.kwargs["k"], filtered=bool(call.kwargs.get("expr")),
                        may_be_empty=True)


def _by_metadata(state: RunState) -> Call:
    return Call({"expr": state.settings.metadata_filter, "limit": state.settings.top_k})


def _get_pks(state: RunState) -> Call:
    return Call({"expr": state.settings.metadata_filter})


def _pks_found(state: RunState, call: Call, result: list | None) -> int:
    if result is None:
        raise OperationFailed("get_pks returned None (the collection does not exist)")
    return len(result)


def _counted(state: RunState, call: Call, result: list) -> int:
    return len(result)


# --- delete and upsert: only ids this process owns -----------------------------------------------------------

def _take(state: RunState) -> list[str]:
    ids = state.ledger.take(state.settings.batch_size)
    if state.truth is not None:
        state.truth.begin(ids)
    return ids


def _settled(state: RunState, call: Call) -> None:
    if state.truth is not None:
        state.truth.settle(call.kwargs["ids"])


def _delete(state: RunState) -> Call | None:
    ids = _take(state)
    return Call({"ids": ids}) if ids else None


def _deleted(state: RunState, call: Call, result: bool | None) -> int:
    if result is False:
        raise OperationFailed("delete returned False (LangChain logged the MilvusException it caught)")
    state.ledger.deleted(call.kwargs["ids"])
    if state.truth is not None:
        state.truth.remove(call.kwargs["ids"])
    _settled(state, call)
    return len(call.kwargs["ids"])


def _give_back(state: RunState, call: Call) -> None:
    state.ledger.give_back(call.kwargs["ids"])
    _settled(state, call)  # (still in the truth: maybe there, maybe not; the next write of them decides)


def _upsert(state: RunState) -> Call | None:
    # The oldest owned ids get new content. They are taken out of the ledger while the upsert runs (so no
    # delete races it) and come back as the newest when it has succeeded.
    ids = _take(state)
    if not ids:
        return None
    return Call({"ids": ids, "documents": [state.source.document(number_of(i), state.rng) for i in ids]})


def _upserted(state: RunState, call: Call, result: None) -> int:
    state.ledger.added(call.kwargs["ids"])
    if state.truth is not None:
        state.truth.put(call.kwargs["ids"], state.embed_for_truth(call), call.mode)
    _settled(state, call)
    return len(call.kwargs["ids"])


# --- from_texts: a timed bootstrap of a scratch collection ---------------------------------------------------

def _from_texts(state: RunState) -> Call:
    # No --milvus-timeout here: LangChain hands from_texts' extra keywords both to the constructor and to
    # add_texts, and a timeout then reaches pymilvus's insert twice (TypeError). Its calls have no deadline.
    s = state.settings
    ids, docs = _new_docs(state)
    scratch = f"{s.collection}_bootstrap_{ids[0].replace('-', '_')}"
    return Call({"texts": [d.page_content for d in docs], "metadatas": [d.metadata for d in docs], "ids": ids,
                 "embedding": state.store.embeddings, "collection_name": scratch,
                 "connection_args": dict(state.store._connection_args), "consistency_level": s.consistency_level,
                 "drop_old": True, **s.store_kwargs})


def _bootstrapped(state: RunState, call: Call, result: Milvus) -> int:
    _drop_scratch(state, call)
    return len(call.kwargs["ids"])


def _drop_scratch(state: RunState, call: Call) -> None:
    # Untimed, best-effort clean-up: each bootstrap makes its own collection (concurrent users must not share
    # one). A failed drop is logged, not counted: the bootstrap itself was measured already.
    try:  # shielded: this also runs when the user is stopped mid-bootstrap (shield.py)
        call_shielded(state.store.client.drop_collection, call.kwargs["collection_name"],
                      timeout=state.settings.timeout)
    except Exception as exc:  # noqa: BLE001
        logger.warning("locust-milvus: could not drop scratch collection %s: %s", call.kwargs["collection_name"], exc)


TABLE: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("add", "add_documents", _add_documents, _added, _add_failed, default_weight=1, writes=True,
                  milvus_call="insert", help="add: add_documents of --batch-size documents"),
        Operation("add_texts", "add_texts", _add_texts, _added, _add_failed, writes=True,
                  milvus_call="insert", help="add_texts: texts, metadatas and ids"),
        Operation("add_embeddings", "add_embeddings", _add_embeddings, _added, _add_failed, writes=True, pool="corpus",
                  milvus_call="insert", help="add_embeddings: texts with vectors computed before the timed call"),
        Operation("search", "similarity_search", _search(by_vector=False), _found, default_weight=8,
                  milvus_call="search", help="search: similarity_search(query, k=--top-k)"),
        Operation("search_by_vector", "similarity_search_by_vector", _search(by_vector=True), _found, pool="query",
                  milvus_call="search", help="search_by_vector: similarity_search_by_vector with a pre-embedded query"),
        Operation("search_with_score", "similarity_search_with_score", _search(by_vector=False), _found,
                  milvus_call="search", help="search_with_score: similarity_search_with_score(query)"),
        Operation("search_with_score_by_vector", "similarity_search_with_score_by_vector", _search(by_vector=True),
                  _found, pool="query", milvus_call="search",
                  help="search_with_score_by_vector: with a pre-embedded query"),
        Operation("mmr", "max_marginal_relevance_search", _search(by_vector=False, mmr=True), _found,
                  help="mmr: max_marginal_relevance_search(query, k=--top-k, fetch_k=--fetch-k)"),
        Operation("mmr_by_vector", "max_marginal_relevance_search_by_vector", _search(by_vector=True, mmr=True),
                  _found, pool="query", help="mmr_by_vector: MMR search with a pre-embedded query"),
        Operation("retriever", "invoke", _retrieve, _retrieved, via="retriever",
                  help="retriever: as_retriever(search_type=--retriever-search-type).invoke(query)"),
        Operation("hybrid_search", "similarity_search", _hybrid, _found, via="hybrid",
                  help="hybrid_search: dense and BM25 searches fused by --ranker (with --bm25)"),
        Operation("full_text_search", "similarity_search", _full_text, _full_text_found, via="full_text",
                  milvus_call="search", help="full_text_search: a BM25 search of the query's text (with --bm25)"),
        Operation("delete", "delete", _delete, _deleted, _give_back, default_weight=1, writes=True,
                  milvus_call="delete",
                  help="delete: delete(ids) of up to --batch-size of this process's oldest documents"),
        Operation("upsert", "upsert", _upsert, _upserted, _give_back, writes=True,
                  milvus_call="upsert",
                  help="upsert: new content for up to --batch-size of this process's oldest documents"),
        Operation("search_by_metadata", "search_by_metadata", _by_metadata, _counted, takes_call_kwargs=False,
                  milvus_call="query", help="search_by_metadata: a scalar query with --metadata-filter, limit --top-k"),
        Operation("get_pks", "get_pks", _get_pks, _pks_found, takes_call_kwargs=False,
                  milvus_call="query", help="get_pks: primary keys matching --metadata-filter"),
        Operation("from_texts", "from_texts", _from_texts, _bootstrapped, _drop_scratch, takes_call_kwargs=False,
                  writes=True,
                  help="from_texts: a timed bootstrap of a new collection of --batch-size texts"),
    )
}
