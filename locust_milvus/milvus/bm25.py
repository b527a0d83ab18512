"""--bm25: Milvus's built-in BM25 full-text function on the test's collection, and the stores that search it.

A BM25 collection has the dense vector field and a sparse field that Milvus fills from the text field
(langchain-milvus's ``BM25BuiltInFunction``; https://milvus.io/docs/full-text-search.md). One collection is seen
through three LangChain stores, so that each operation means what its name says:

- ``dense``: the dense field alone. Every operation that exists without --bm25 (adds, searches, MMR, deletes, the
  retriever) goes through it, so a run's figures for them mean the same with and without --bm25. Milvus computes
  the sparse field of what it writes.
- ``hybrid``: both fields (``vector_field=[dense, sparse]``); ``similarity_search`` is then a hybrid search fused
  by --ranker. It also creates the collection (the schema with the function, both indexes).
- ``full_text``: the sparse field alone (no embedding): ``similarity_search`` is a BM25 full-text search.

Which servers have it: Milvus 2.5 and later, and Milvus Lite 3.x (``milvus-lite server``), which has fewer
analyzers (``LITE_ANALYZERS``) and only the exact sparse search (no ``drop_ratio_*`` other than 0).
"""

from __future__ import annotations

import json
import re

from langchain_milvus import BM25BuiltInFunction, Milvus

from locust_milvus.config.settings import ConfigError, Settings, UsageError

KINDS = ("dense", "hybrid", "full_text")
# Milvus's built-in analyzers by name (https://milvus.io/docs/analyzer-overview.md); a JSON object is passed as it is.
ANALYZERS = ("standard", "english", "chinese")
# What milvus-lite 3.x's analyzer factory builds (milvus_lite/analyzer/factory.py): the standard tokenizer and jieba.
LITE_ANALYZERS = ("standard", "jieba")
RANKERS = ("rrf", "weighted")
# The sparse index and search parameters given explicitly: LangChain's default sparse search parameters
# (drop_ratio_build 0.2) are refused by Milvus Lite ("only drop_ratio_build=0 is supported"), and an empty params
# leaves Milvus 2.5+ its own defaults.
SPARSE_INDEX = {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25", "params": {}}
SPARSE_SEARCH = {"metric_type": "BM25", "params": {}}
NO_RECALL = ("not judged by --recall: BM25 scores come from the server's analyzer and its corpus statistics at "
             "the time of the search, which no client can recompute exactly")


def analyzer_params(text: str) -> dict:
    """--bm25-analyzer: a built-in analyzer's name, or a JSON object of Milvus analyzer parameters."""
    text = (text or "standard").strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--bm25-analyzer is not valid JSON ({e.msg} at column {e.colno}): use a name "
                              f"({', '.join(ANALYZERS)}) or an object such as '{{\"tokenizer\": \"standard\"}}'") \
                from None
        if not isinstance(value, dict):
            raise ConfigError("--bm25-analyzer must be a name or a JSON object")
        return value
    if not re.fullmatch(r"[A-Za-z_]+", text):
        raise ConfigError(f"--bm25-analyzer {text!r} is neither an analyzer name ({', '.join(ANALYZERS)}) nor a "
                          "JSON object")
    return {"type": text}


def ranker_options(ranker: str, params_text: str, bm25: bool) -> tuple[str, dict]:
    """--ranker and --ranker-params, checked: (ranker, params). Weighted needs one weight per route (dense, BM25)."""
    ranker = (ranker or "rrf").strip().lower()
    if ranker not in RANKERS:
        raise ConfigError(f"--ranker must be rrf or weighted, got {ranker!r}")
    params: dict = {}
    text = (params_text or "").strip()
    if text:
        try:
            params = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--ranker-params is not valid JSON ({e.msg} at column {e.colno}): use e.g. "
                              "'{\"weights\": [0.7, 0.3]}' or '{\"k\": 60}'") from None
        if not isinstance(params, dict):
            raise ConfigError("--ranker-params must be a JSON object such as '{\"weights\": [0.7, 0.3]}'")
    if ranker == "weighted" and bm25:
        weights = params.get("weights")
        if weights is None:
            raise UsageError("--ranker weighted needs its weights: --ranker-params '{\"weights\": [0.7, 0.3]}' "
                             "(the dense route's, then BM25's, each from 0 to 1)")
        if (not isinstance(weights, list) or len(weights) != 2
                or not all(isinstance(w, int | float) and not isinstance(w, bool) and 0 <= w <= 1 for w in weights)):
            raise UsageError(f"--ranker-params weights {weights!r}: give two numbers from 0 to 1, the dense route's "
                             "then BM25's, e.g. [0.7, 0.3]")
    if ranker == "rrf" and "k" in params and not (isinstance(params["k"], int) and 0 < params["k"] < 16384):
        raise UsageError(f"--ranker-params k {params['k']!r}: RRF's k is a whole number from 1 to 16383 (default 60)")
    return ranker, params


def server_problem(settings: Settings, version: str | None) -> str | None:
    """Why the server cannot serve --bm25 as asked (one line), or None. An unknown version is given the benefit of
    the doubt: the collection's creation then says what the server lacks."""
    if not version:
        return None
    lite = re.match(r"milvus_lite-(\d+)", version)
    if lite:
        if int(lite.group(1)) < 3:
            return f"--bm25 needs Milvus >= 2.5 or Milvus Lite >= 3.0, but the server reports {version}"
        name = settings.bm25_analyzer.get("tokenizer") or settings.bm25_analyzer.get("type") or "standard"
        if isinstance(name, dict):
            name = name.get("type", "standard")
        if name not in LITE_ANALYZERS:
            return (f"--bm25-analyzer {name!r}: the server reports {version}, whose analyzers are "
                    f"{' and '.join(LITE_ANALYZERS)}: use one of them, or a Milvus >= 2.5 server")
        return None
    numbers = re.match(r"v?(\d+)\.(\d+)", version)
    if numbers and (int(numbers.group(1)), int(numbers.group(2))) < (2, 5):
        return (f"--bm25 needs Milvus >= 2.5 (full-text search), but the server reports {version}: use a 2.5+ "
                "server (docker-compose.yml runs 2.6) or leave --bm25 out")
    return None


def store_kwargs(settings: Settings, kind: str) -> dict:
    """What ``langchain_milvus.Milvus(...)`` is given for a store of ``kind`` on a BM25 collection, over the run's
    usual arguments (Settings.store_kwargs, which describe the dense field)."""
    if kind == "dense":
        return {}
    function = BM25BuiltInFunction(input_field_names=settings.text_field, output_field_names=settings.sparse_field,
                                   analyzer_params=settings.bm25_analyzer)
    if kind == "full_text":
        return {"embedding_function": None, "builtin_function": function, "vector_field": settings.sparse_field,
                "index_params": SPARSE_INDEX, "search_params": SPARSE_SEARCH}
    dense = settings.store_kwargs
    # The dense route's search parameters: --search-params, else Milvus's own defaults for the index (LangChain's
    # per-index defaults would also bring the sparse ones Milvus Lite refuses).
    dense_search = dense.get("search_params") or {"metric_type": settings.index_metric, "params": {}}
    return {"builtin_function": function, "vector_field": [settings.vector_field, settings.sparse_field],
            "index_params": [dense["index_params"], SPARSE_INDEX], "search_params": [dense_search, SPARSE_SEARCH]}


def mend(store: Milvus, settings: Settings) -> Milvus:
    """Two corrections to a langchain-milvus 0.4.0 store on a BM25 collection, before any request.

    - Its ``_remove_forbidden_fields`` (called by every search to pick the output fields) extends the store's own
      ``_vector_field`` list in place when it is a list, as the hybrid store's is: each search appends the sparse
      field once more. Over a load test the list grows by one per search (memory, and CPU in every later search
      that scans it), and the weighted ranker's default weights, one per entry, stop matching the two routes
      ("weighted merge requires 2 weights, got 4"). This store gets a version that reads without writing.
    - No store returns a vector field as metadata: the dense and full-text stores read the collection's fields
      from the server and would otherwise ask for the other store's vectors on every search.
    """
    forbidden = frozenset((settings.vector_field, settings.sparse_field))
    store._remove_forbidden_fields = lambda fields: [f for f in fields if f not in forbidden]
    return store


def has_bm25_field(description: dict, settings: Settings) -> bool:
    """Whether a collection (``MilvusClient.describe_collection``) has --sparse-field as a BM25 function's output."""
    for function in description.get("functions") or ():
        outputs = function.get("output_field_names") or ()
        kind = function.get("type")
        if settings.sparse_field in outputs and getattr(kind, "name", str(kind)).upper().endswith("BM25"):
            return True
    return False
