"""Every custom command-line option of locust-milvus, in one ``init_command_line_parser`` listener.

Locust turns each option into a ``LOCUST_*`` environment variable, a ``locust.conf`` / ``[tool.locust]`` key
and a field of the web UI's start form. Options reach workers only when a test starts, so code reads them
through :func:`locust_milvus.config.load.settings_from` in ``test_start`` / ``on_start``, never at import or ``init``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from locust_milvus.milvus.bm25 import RANKERS
from locust_milvus.report.gates import GATE_EXIT_CODE, LATENCY_METRICS
from locust_milvus.workload.operations import RETRIEVER_SEARCH_TYPES, TABLE

logger = logging.getLogger("locust_milvus")

# Why the default weights (in operations.py): a RAG service mostly reads. 8 searches to 1 add and 1 delete
# (both of --batch-size documents) keeps the collection about the size --prepopulate made it, so a long run
# measures a steady state instead of a growing collection. Every other operation starts at 0.
DEFAULT_WEIGHTS = {name: op.default_weight for name, op in TABLE.items()}
# Whole-number workload options: name -> (minimum, default, help). Registered and checked from this one table.
WHOLE_NUMBERS = {
    "batch_size": (1, 10, "Documents per add and ids per delete (default: 10)."),
    "top_k": (1, 3, "k of each similarity search (default: 3, as in the tutorials)."),
    "fetch_k": (1, 20, "Candidates fetched by the MMR searches, and by each route of hybrid_search, before "
                       "re-ranking to --top-k (default: 20, LangChain's for MMR)."),
    "prepopulate": (0, 1000, "Documents inserted before the users start (default: 1000, as in the tutorials)."),
    "dim": (1, 128, "Embedding dimension of the offline deterministic embedding (default: 128)."),
    "async_concurrency": (1, 1, "Operations each AsyncMilvusUser task keeps in flight with asyncio.gather "
                                "(default: 1)."),
    "query_pool": (1, 50, "Queries embedded once at start (cached on disk for a remote provider) for the "
                          "*_by_vector searches; the text searches pick from the same texts (default: 50, the "
                          "tutorial's)."),
    "corpus_pool": (0, 0, "Documents embedded once at start (cached on disk for a remote provider) that "
                          "add_embeddings then inserts without embedding per request (default: 0, off)."),
}
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
DEFAULT_EMBEDDING_CACHE = "~/.cache/locust-milvus"


def _number(kind: type, what: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse ``type``: ``kind(text)`` when ``ok`` accepts it, else argparse's one-line error naming ``what``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_non_negative_int = _number(int, "a whole number >= 0", lambda v: v >= 0)
_positive_int = _number(int, "a whole number >= 1", lambda v: v >= 1)
_positive_float = _number(float, "a number of seconds > 0", lambda v: v > 0)
_relevance = _number(float, "a relevance score from 0 to 1", lambda v: 0.0 <= v <= 1.0)
_factor = _number(float, "a factor > 1", lambda v: v > 1.0)


def _seconds(text: str) -> float:
    """An argparse ``type``: seconds as ``30``, ``30s``, ``1.5m`` (as --run-time's values read)."""
    text = str(text).strip().lower()
    scale = 60.0 if text.endswith("m") else 1.0
    try:
        value = float(text.rstrip("sm")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s or 1m, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a duration >= 0, got {text!r}")
    return value


def _option(group, *args, in_web_ui: bool = True, **kwargs):
    # LocustArgumentParser.add_argument marks options for the web UI (include_in_web_ui); an argument group's
    # add_argument is plain argparse, so we mark its actions the same way here.
    action = group.add_argument(*args, **kwargs)
    action.include_in_web_ui = in_web_ui
    action.is_secret = False
    return action


def add_arguments(parser) -> None:
    """Locust's ``init_command_line_parser`` listener: every option, by group (plugin.py registers it)."""
    for declare in (_target_options, _collection_options, _embedding_options, _data_options, _workload_options,
                    _report_options, _capacity_options):
        declare(parser)


def _target_options(parser) -> None:
    target = parser.add_argument_group(
        "locust-milvus: target",
        "Without --host, a real Milvus standalone is started on loopback for the run and stopped at exit.",
    )
    _option(
        target,
        # Not in the web UI: Locust's is_secret masks the field but still sends its value to the browser.
        "--milvus-token", env_var="LOCUST_MILVUS_TOKEN", default="", in_web_ui=False,
        help="Milvus token ('user:password' or an API key) for --host. Never logged or shown, not in the web UI. "
        "Prefer LOCUST_MILVUS_TOKEN (or .env): a command line is visible to every user of the host until the "
        "process hides it.",
    )
    _option(
        target,
        "--milvus-ca-file", env_var="LOCUST_MILVUS_CA_FILE", default="",
        help="PEM file of the CA that signed the server's TLS certificate (or the self-signed certificate), for "
        "an https:// --host (default: gRPC's bundled public roots).",
    )
    _option(
        target,
        "--milvus-server-name", env_var="LOCUST_MILVUS_SERVER_NAME", default="",
        help="Name the server's TLS certificate must carry, when it differs from the --host's host (an IP "
        "address, a tunnel; default: the --host's host).",
    )
    _option(
        target,
        "--collection", env_var="LOCUST_COLLECTION", default="locust_milvus",
        help="Collection the users read and write (default: locust_milvus).",
    )
    _option(
        target,
        "--drop-collection", env_var="LOCUST_DROP_COLLECTION", action="store_true", default=False,
        help="Drop and recreate --collection before the run. Without it an existing collection is refused, "
        "so that nothing is written into data that is not the test's.",
    )
    _option(
        target,
        "--consistency-level", env_var="LOCUST_CONSISTENCY_LEVEL", default="Session", choices=CONSISTENCY_LEVELS,
        help="Milvus consistency level of the collection (default: Session, LangChain's default).",
    )
    _option(
        target,
        "--milvus-timeout", env_var="LOCUST_MILVUS_TIMEOUT", type=_positive_float, default=10.0,
        help="Deadline in seconds for every Milvus call, pymilvus's retries included (default: 10).",
    )
    _option(
        target,
        "--milvus-retry-rate-limit", env_var="LOCUST_MILVUS_RETRY_RATE_LIMIT", action="store_true", default=False,
        help="Let pymilvus retry rate-limited calls within --milvus-timeout. Off by default: a rate limit is a "
        "failure, not hidden latency.",
    )
    _option(
        target,
        "--embedded-data", env_var="LOCUST_EMBEDDED_DATA", default="",
        help="Data directory of the embedded Milvus, kept after the run. Default: a temporary one, removed.",
    )


def _collection_options(parser) -> None:
    schema = parser.add_argument_group(
        "locust-milvus: collection",
        "How the test's collection is built, or which existing collection is read.",
    )
    _option(
        schema,
        "--index-type", env_var="LOCUST_INDEX_TYPE", default="AUTOINDEX",
        help="Vector index type: AUTOINDEX (LangChain's default), HNSW, IVF_FLAT, FLAT, ... (default: AUTOINDEX).",
    )
    _option(
        schema,
        "--metric", env_var="LOCUST_METRIC", default="L2", choices=("L2", "IP", "COSINE"),
        help="Distance metric of the index and searches (default: L2, LangChain's).",
    )
    _option(
        schema,
        "--index-params", env_var="LOCUST_INDEX_PARAMS", default="",
        help='Index build parameters as JSON, e.g. \'{"M": 16, "efConstruction": 200}\' for HNSW (default: none).',
    )
    _option(
        schema,
        "--search-params", env_var="LOCUST_SEARCH_PARAMS", default="",
        help='Search parameters as JSON, e.g. \'{"ef": 64}\' (default: LangChain\'s for the index type).',
    )
    _option(
        schema,
        "--partition-key-field", env_var="LOCUST_PARTITION_KEY_FIELD", default="",
        help="Metadata field to use as Milvus partition key, e.g. category (default: none).",
    )
    _option(
        schema,
        "--existing-collection", env_var="LOCUST_EXISTING_COLLECTION", action="store_true", default=False,
        help="Read an existing collection as it is: no drop, no schema, no pre-population; write weights must be 0.",
    )
    _option(
        schema,
        "--bm25", env_var="LOCUST_BM25", action="store_true", default=False,
        help="Give the collection a BM25 full-text field that Milvus computes from the text field (Milvus >= 2.5 or "
        "Milvus Lite 3.x), for the hybrid_search and full_text_search tasks; the other tasks stay on the dense field.",
    )
    _option(
        schema,
        "--bm25-analyzer", env_var="LOCUST_BM25_ANALYZER", default="standard",
        help="Analyzer of the BM25 field: standard, english, chinese, or a JSON object of Milvus analyzer parameters "
        "(default: standard).",
    )
    for name, default, what in (("text", "text", "document text"), ("vector", "vector", "vector"),
                                ("primary", "pk", "primary key"), ("sparse", "sparse", "BM25 sparse vector")):
        _option(
            schema,
            f"--{name}-field", env_var=f"LOCUST_{name.upper()}_FIELD", default=default,
            help=f"Name of the {what} field (default: {default}, LangChain's); for collections made by other tools.",
        )


def _embedding_options(parser) -> None:
    embedding = parser.add_argument_group(
        "locust-milvus: embeddings",
        "OPENAI_API_KEY and OPENAI_BASE_URL come from the environment or a .env file (never from the command line).",
    )
    _option(
        embedding,
        "--embedding", env_var="LOCUST_EMBEDDING", default="fake", choices=("fake", "openai"),
        help="fake: offline deterministic vectors of --dim (default); openai: langchain-openai's OpenAIEmbeddings.",
    )
    _option(
        embedding,
        "--openai-model", env_var="LOCUST_OPENAI_MODEL", default="text-embedding-3-small",
        help="Embedding model for --embedding openai (default: text-embedding-3-small).",
    )
    _option(
        embedding,
        "--openai-dimensions", env_var="LOCUST_OPENAI_DIMENSIONS", type=_non_negative_int, default=0,
        help="Output dimensions asked of the model (0: the model's own; default 0).",
    )
    _option(
        embedding,
        "--embedding-cache", env_var="LOCUST_EMBEDDING_CACHE", default=DEFAULT_EMBEDDING_CACHE,
        help="Folder where --query-pool and --corpus-pool vectors of a remote provider are cached, keyed by "
        f"provider, model, dimension and texts (default: {DEFAULT_EMBEDDING_CACHE}; empty: no cache).",
    )


def _data_options(parser) -> None:
    data = parser.add_argument_group(
        "locust-milvus: data",
        "Synthetic documents shaped like the tutorials' by default. The file must exist on every worker.",
    )
    _option(
        data,
        "--dataset", env_var="LOCUST_DATASET", default="",
        help="JSONL, CSV or Parquet file of documents for adds, pre-population and queries (default: synthetic).",
    )
    _option(
        data,
        "--dataset-text-column", env_var="LOCUST_DATASET_TEXT_COLUMN", default="text",
        help="Column holding each document's text (default: text); every other scalar column is metadata.",
    )
    _option(
        data,
        "--dataset-vector-column", env_var="LOCUST_DATASET_VECTOR_COLUMN", default="vector",
        help="Optional column of precomputed vectors (default: vector), used instead of embedding where possible.",
    )


def _workload_options(parser) -> None:
    workload = parser.add_argument_group("locust-milvus: workload")
    for name, op in TABLE.items():
        _option(
            workload,
            f"--{op.option}-weight", env_var=f"LOCUST_{name.upper()}_WEIGHT", type=_non_negative_int,
            default=op.default_weight, help=f"Weight of {op.help} (>= 0; default {op.default_weight}).",
        )
    _option(
        workload,
        "--filter", env_var="LOCUST_FILTER", default="",
        help="Milvus boolean expression applied to every search that accepts one, e.g. \"category == 'cat_1'\" "
        "(default: none).",
    )
    _option(
        workload,
        "--metadata-filter", env_var="LOCUST_METADATA_FILTER", default="category == 'cat_1'",
        help="Expression of the search_by_metadata and get_pks tasks (default: \"category == 'cat_1'\").",
    )
    _option(
        workload,
        "--retriever-search-type", env_var="LOCUST_RETRIEVER_SEARCH_TYPE", default="similarity",
        choices=RETRIEVER_SEARCH_TYPES,
        help="search_type of the retriever task's as_retriever(): similarity, mmr (with --fetch-k) or "
        "similarity_score_threshold (with --retriever-score-threshold) (default: similarity).",
    )
    _option(
        workload,
        "--retriever-score-threshold", env_var="LOCUST_RETRIEVER_SCORE_THRESHOLD", type=_relevance, default=0.0,
        help="The retriever's score_threshold with --retriever-search-type similarity_score_threshold: LangChain's "
        "relevance score, 0 to 1 (default: 0.0).",
    )
    _option(
        workload,
        "--ranker", env_var="LOCUST_RANKER", default="rrf", choices=RANKERS,
        help="How hybrid_search fuses its dense and BM25 results: rrf or weighted (default: rrf).",
    )
    _option(
        workload,
        "--ranker-params", env_var="LOCUST_RANKER_PARAMS", default="",
        help='The ranker\'s parameters as JSON: \'{"k": 60}\' for rrf (its default), \'{"weights": [0.7, 0.3]}\' for '
        "weighted (required: the dense route's weight, then BM25's, each 0 to 1).",
    )
    _option(
        workload,
        "--target-rps", env_var="LOCUST_TARGET_RPS", default="",
        help="Open model: start operations at planned times at these total rates, e.g. 'search=200,add=20', "
        "shared by all users and workers, whatever the responses (weights are then unused). Reports both the "
        "service time and the latency from the planned start (default: off, closed loop).",
    )
    _option(
        workload,
        "--seal", env_var="LOCUST_SEAL", action="store_true", default=False,
        help="Flush the pre-populated documents and wait until Milvus serves them from the index before load "
        "starts (15 to 20 s). Without it they stay in growing segments, searched exactly. On with --recall.",
    )
    _option(
        workload,
        "--recall", env_var="LOCUST_RECALL", type=float, default=0.0,
        help="Share of the searches (0 to 1) whose recall@k is measured against exact nearest neighbours of the "
        "documents this run wrote, computed with numpy (default: 0, off).",
    )
    _option(
        workload,
        "--verify", env_var="LOCUST_VERIFY", action="store_true", default=False,
        help="At the end, check the collection against every write Milvus acknowledged (nothing lost, no deleted "
        "document back, no duplicates); exit code 4 if not.",
    )
    for name, (minimum, default, help_text) in WHOLE_NUMBERS.items():
        _option(
            workload,
            f"--{name.replace('_', '-')}", env_var=f"LOCUST_{name.upper()}",
            type=_positive_int if minimum else _non_negative_int, default=default, help=help_text,
        )


def _report_options(parser) -> None:
    report = parser.add_argument_group(
        "locust-milvus: reports and checks",
        "Every test writes REPORTS_DIR/<timestamp>-<name>/. A --check-* gate that fails makes the exit code "
        f"{GATE_EXIT_CODE}. Values: [OPERATION[@sync|@async]=]VALUE items separated by commas; no operation means "
        "every operation.",
    )
    _option(
        report,
        "--reports-dir", env_var="LOCUST_REPORTS_DIR", default="reports",
        help="Folder under which each test's report folder is written (default: reports).",
    )
    _option(
        report,
        "--report-name", env_var="LOCUST_REPORT_NAME", default="",
        help="Name part of the report folder (default: the --config file's name without .conf, else 'run').",
    )
    _option(
        report,
        "--milvus-metrics-url", env_var="LOCUST_MILVUS_METRICS_URL", default="",
        help="Milvus's Prometheus endpoint, e.g. http://HOST:9091/metrics, scraped by the master during the test for "
        "the report's server-side latencies (default: the embedded Milvus's own when there is no --host, else off).",
    )
    for metric, percentile in LATENCY_METRICS.items():
        _option(
            report,
            f"--check-{metric}", env_var=f"LOCUST_CHECK_{metric.upper()}", default="",
            help=f"Maximum p{percentile:g} latency, e.g. '50ms', 'search=5ms,add=200ms' or 'search@async=5ms' "
            "(us, ms or s; a bare number is ms).",
        )
    _option(
        report,
        "--check-fail-ratio", env_var="LOCUST_CHECK_FAIL_RATIO", default="",
        help="Maximum share of failed requests, e.g. '0.01', '1%%' or 'add=0.05'.",
    )
    _option(
        report,
        "--check-rps", env_var="LOCUST_CHECK_RPS", default="",
        help="Minimum requests per second, e.g. 'add=100' or '50' (every operation).",
    )
    _option(
        report,
        "--check-recall", env_var="LOCUST_CHECK_RECALL", default="",
        help="Minimum mean recall@k of the searches --recall judged, e.g. '0.95' or 'search_by_vector=0.9'.",
    )


def _capacity_options(parser) -> None:
    capacity = parser.add_argument_group(
        "locust-milvus: capacity",
        "--find-capacity raises the --target-rps rates step by step until the --check-* SLO breaks, then says how "
        "much Milvus held (docs/capacity.md).",
    )
    _option(
        capacity,
        "--find-capacity", env_var="LOCUST_FIND_CAPACITY", action="store_true", default=False,
        help="Sweep: start at the --target-rps rates, multiply them by --step-factor each step, judge each step by "
        "the --check-* latency and fail-ratio options, refine, then stop and report the capacity (default: off).",
    )
    _option(
        capacity,
        "--step-factor", env_var="LOCUST_STEP_FACTOR", type=_factor, default=1.5,
        help="Each step's rates are the previous step's times this (> 1; default: 1.5).",
    )
    _option(
        capacity,
        "--step-time", env_var="LOCUST_STEP_TIME", type=_seconds, default=30.0,
        help="How long each step holds its rates, e.g. 30s or 1m (default: 30s).",
    )
    _option(
        capacity,
        "--step-warmup", env_var="LOCUST_STEP_WARMUP", type=_seconds, default=5.0,
        help="The first seconds of each step, not judged (default: 5s).",
    )
    _option(
        capacity,
        "--refine-steps", env_var="LOCUST_REFINE_STEPS", type=_non_negative_int, default=2,
        help="Bisection steps between the last good and the first failing rates (default: 2).",
    )
    _option(
        capacity,
        "--check-capacity", env_var="LOCUST_CHECK_CAPACITY", default="",
        help=f"Minimum capacity per operation, e.g. 'search=1000': exit code {GATE_EXIT_CODE} when the sweep finds "
        "less (default: none).",
    )
