"""What was tested: the software's versions and the workload, for summary.json's ``versions`` and ``workload``.

Both are read from what the run already holds (the options as the test read them, the server's version read at
set-up, installed packages' metadata), so describing a test costs no request to Milvus beyond the row counts.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata

PACKAGES = {"pymilvus": "pymilvus", "langchain_milvus": "langchain-milvus", "langchain_core": "langchain-core",
            "locust": "locust"}


def versions(milvus_server: str | None) -> dict:
    """``milvus_server`` as the server reported it (None when it would not say), then the client's packages."""
    out: dict = {"milvus_server": milvus_server}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = platform.python_version()
    return out


def own_store(user_classes) -> dict | None:
    """The user classes' own ``Milvus(...)`` arguments (their ``milvus_kwargs``), as the report can show them: they
    may replace the index, metric and search parameters the options name."""
    from locust_milvus.config.load import own_store_kwargs
    from locust_milvus.config.settings import ConfigError

    try:
        kwargs = own_store_kwargs(user_classes)
    except ConfigError:  # refused before load; nothing ran with them
        return None
    # objects (a BM25 function, a DataType in a metadata_schema) are shown by their repr
    return json.loads(json.dumps(kwargs, default=repr)) if kwargs else None


def _retriever(get) -> str:
    search_type = str(get("retriever_search_type", "similarity") or "similarity")
    if search_type == "similarity_score_threshold":
        return f"{search_type} >= {get('retriever_score_threshold', 0.0)}"
    return search_type


def _bm25(get) -> str:
    ranker = str(get("ranker", "rrf") or "rrf")
    params = str(get("ranker_params", "") or "").strip()
    return (f"field {get('sparse_field', 'sparse')}, analyzer {get('bm25_analyzer', 'standard')}; hybrid_search "
            f"ranker {ranker}{' ' + params if params else ''}, {get('fetch_k')} candidates per route")


def workload(options, rows_at_start: int | None, rows_at_end: int | None) -> dict:
    """The test's workload as its options set it. ``options``: a RunOptions (config/load.py)."""
    from locust_milvus.workload.operations import TABLE
    from locust_milvus.workload.pacing import parse_target_rps

    get = options.get
    try:
        rates = parse_target_rps(str(get("target_rps", "") or ""), set(TABLE))
    except ValueError:
        rates = {}
    weights = {name: int(get(f"{name}_weight", 0) or 0) for name in TABLE}
    embedding = str(get("embedding", "fake") or "fake")
    return {
        "mix": ({name: f"{rate:g}/s" for name, rate in rates.items()} if rates
                else {name: w for name, w in weights.items() if w}),
        "paced": bool(rates),  # --target-rps: an open model; the weights are then unused
        "users": get("num_users"),
        "user_classes": None,  # filled by the caller, which knows the environment
        "async_concurrency": get("async_concurrency"),
        "consistency_level": get("consistency_level"),
        "index_type": get("index_type"),
        "index_params": get("index_params") or None,
        "search_params": get("search_params") or None,
        "metric": get("metric"),
        "dim": get("dim") if embedding == "fake" else (get("openai_dimensions") or None),
        "top_k": get("top_k"),
        "batch_size": get("batch_size"),
        "filter": get("filter") or None,
        "retriever": (_retriever(get) if weights.get("retriever") or "retriever" in rates else None),
        "bm25": _bm25(get) if get("bm25", False) else None,
        "embedding": embedding if embedding == "fake" else f"openai ({get('openai_model')})",
        "dataset": get("dataset") or None,
        "collection": get("collection"),
        "existing_collection": bool(get("existing_collection", False)),
        "rows_at_start": rows_at_start,
        "rows_at_end": rows_at_end,
    }
