"""The checked options of one run (built by options.settings_from) and the error a bad option raises.

Nothing here imports Locust (which monkey-patches the standard library with gevent on import), so the plain
commands (``locust-milvus server``, ``locust-milvus tutorial``) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

from locust_milvus.config.secrets import redact_uri


class ConfigError(ValueError):
    """A bad option value; its message is one line saying what is wrong and how to fix it. Refused at start with
    exit code 1 (a set-up error)."""

    exit_code = 1


class UsageError(ConfigError):
    """Options that contradict each other, or that the target cannot serve (``--find-capacity`` without rates,
    ``--bm25`` on a server too old for it): refused before any load with exit code 2, as Locust's parser refuses
    what it cannot read."""

    exit_code = 2


@dataclass(frozen=True)
class Settings:
    """The options of one run, checked; built from ``environment`` when a test starts."""

    uri: str
    token: str
    collection: str
    drop_collection: bool
    consistency_level: str
    timeout: float
    retry_rate_limit: bool
    weights: dict[str, int]
    batch_size: int
    top_k: int
    prepopulate: int
    dim: int
    async_concurrency: int
    filter: str = ""
    metadata_filter: str = "category == 'cat_1'"
    fetch_k: int = 20
    retriever_search_type: str = "similarity"  # the retriever task's as_retriever(search_type=...)
    retriever_score_threshold: float = 0.0  # its score_threshold, with search_type similarity_score_threshold
    embedding: str = "fake"
    openai_model: str = "text-embedding-3-small"
    openai_dimensions: int = 0
    index_type: str = "AUTOINDEX"
    metric: str = "L2"
    index_params: dict = field(default_factory=dict)
    search_params: dict | None = None
    partition_key_field: str = ""
    existing_collection: bool = False
    text_field: str = "text"
    vector_field: str = "vector"
    primary_field: str = "pk"
    dataset: str = ""
    dataset_text_column: str = "text"
    dataset_vector_column: str = "vector"
    query_pool: int = 50
    corpus_pool: int = 0
    embedding_cache: str = ""
    ca_file: str = ""  # PEM file of the CA that signed the server's certificate (https URIs)
    server_name: str = ""  # name to verify the server's certificate against, when it differs from the URI's
    verify: bool = False
    seal: bool = False  # --seal: flush the pre-populated documents and wait until they are served indexed
    recall: float = 0.0  # --recall: share of searches whose recall@k is measured (0: off)
    target_rps: dict = field(default_factory=dict)  # --target-rps: operation -> operations/s over the whole run
    own_store_kwargs: dict = field(default_factory=dict)  # the user classes' milvus_kwargs (workload/base.py)
    bm25: bool = False  # --bm25: a BM25 full-text field beside the dense one (milvus/bm25.py)
    bm25_analyzer: dict = field(default_factory=lambda: {"type": "standard"})  # its analyzer_params
    sparse_field: str = "sparse"  # the BM25 function's output field
    ranker: str = "rrf"  # hybrid_search's ranker: rrf or weighted
    ranker_params: dict = field(default_factory=dict)  # its parameters (weighted: {"weights": [dense, bm25]})

    @property
    def store_kwargs(self) -> dict:
        """Schema, index and field-name arguments of ``langchain_milvus.Milvus`` for this run."""
        kwargs = {
            "index_params": {"index_type": self.index_type, "metric_type": self.metric, "params": self.index_params},
            "text_field": self.text_field,
            "vector_field": self.vector_field,
            "primary_field": self.primary_field,
        }
        if self.search_params is not None:
            kwargs["search_params"] = {"metric_type": self.metric, "params": self.search_params}
        if self.partition_key_field:
            # LangChain honours a partition key only with dynamic fields: the other metadata becomes dynamic.
            kwargs["partition_key_field"] = self.partition_key_field
            kwargs["enable_dynamic_field"] = True
        return {**kwargs, **self.own_store_kwargs}

    @property
    def index_metric(self) -> str:
        """The metric the collection is indexed with: --metric, or the user classes' own index_params' (recall)."""
        own = self.own_store_kwargs.get("index_params")
        return str(own.get("metric_type") or self.metric).upper() if isinstance(own, dict) else self.metric

    @cached_property  # read on every request: built once per run
    def call_kwargs(self) -> dict:
        """Keyword arguments for LangChain calls that pass them to pymilvus: the deadline and the retry policy.

        pymilvus retries failed RPCs (and, unless told not to, rate limits) with back-off inside the call;
        given ``timeout`` it stops retrying when the deadline is spent, so a dead server becomes a failure
        after at most about --milvus-timeout instead of minutes of hidden latency.
        """
        return {"timeout": self.timeout, "retry_on_rate_limit": self.retry_rate_limit}


def check_uri(uri: str) -> str:
    """Return the URI normalised, or raise ConfigError naming the fix (the message shows no credentials)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "tcp", "grpc") or not parts.hostname:
        raise ConfigError(
            f"--host {redact_uri(uri)!r} is not a Milvus URI: use http://HOST:19530 or https://HOST:443, "
            "or leave --host empty to start the embedded Milvus"
        )
    try:
        _ = parts.port  # urlsplit parses the port lazily; a bad one raises here
    except ValueError:
        raise ConfigError(f"--host {redact_uri(uri)!r} has an invalid port: use a number between 1 and 65535") \
            from None
    return uri.rstrip("/")


# Milvus's default proxy.maxNameLength: a longer collection or field name is refused by the server.
MAX_NAME_LENGTH = 255


def is_identifier(name: str) -> bool:
    """Whether Milvus accepts ``name`` for a collection or field: ASCII letters, digits and underscores, no leading
    digit, at most MAX_NAME_LENGTH characters."""
    return (0 < len(name) <= MAX_NAME_LENGTH and name.isascii() and name.replace("_", "a").isalnum()
            and not name[0].isdigit())
