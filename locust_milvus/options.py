"""Every custom command-line option of locust-milvus, in one ``init_command_line_parser`` listener.

Locust turns each option into a ``LOCUST_*`` environment variable, a ``locust.conf`` / ``[tool.locust]`` key
and a field of the web UI's start form. Options reach workers only when a test starts, so code reads them
through :func:`settings_from` in ``test_start`` / ``on_start``, never at import or ``init``.
"""

from __future__ import annotations

from locust import events

import argparse
import logging
import os
import re
import sys

from dotenv import find_dotenv, load_dotenv

from locust_milvus.operations import TABLE
from locust_milvus.pacing import parse_target_rps
from locust_milvus.report.gates import GATE_EXIT_CODE, LATENCY_METRICS
from locust_milvus.settings import (
    MAX_NAME_LENGTH,
    ConfigError,
    Settings,
    check_uri,
    is_identifier,
    redact_uri,
    split_credentials,
)

logger = logging.getLogger("locust_milvus")

# Why the default weights (in operations.py): a RAG service mostly reads. 8 searches to 1 add and 1 delete
# (both of --batch-size documents) keeps the collection about the size --prepopulate made it, so a long run
# measures a steady state instead of a growing collection. Every other operation starts at 0.
DEFAULT_WEIGHTS = {name: op.default_weight for name, op in TABLE.items()}
# Whole-number workload options: name -> (minimum, default, help). Registered and checked from this one table.
WHOLE_NUMBERS = {
    "batch_size": (1, 10, "Documents per add and ids per delete (default: 10)."),
    "top_k": (1, 3, "k of each similarity search (default: 3, as in the tutorials)."),
    "fetch_k": (1, 20, "Candidates fetched by the MMR searches before re-ranking to --top-k (default: 20, "
                       "LangChain's)."),
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


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value}")
    return value


def _option(group, *args, in_web_ui: bool = True, **kwargs):
    # LocustArgumentParser.add_argument marks options for the web UI (include_in_web_ui); an argument group's
    # add_argument is plain argparse, so we mark its actions the same way here.
    action = group.add_argument(*args, **kwargs)
    action.include_in_web_ui = in_web_ui
    action.is_secret = False
    return action


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
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
    for name, default, what in (("text", "text", "document text"), ("vector", "vector", "vector"),
                                ("primary", "pk", "primary key")):
        _option(
            schema,
            f"--{name}-field", env_var=f"LOCUST_{name.upper()}_FIELD", default=default,
            help=f"Name of the {what} field (default: {default}, LangChain's); for collections made by other tools.",
        )

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
        "documents this run wrote, computed with numpy (default: 0, off; local runs only).",
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


def _as_int(o, name: str) -> int:
    # Values typed into the web UI's form may arrive as strings.
    value = getattr(o, name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}") from None


def settings_from(environment, host: str | None = None) -> Settings:
    """Read and check the options (``host`` overrides the environment's); raises ConfigError with one line."""
    o = environment.parsed_options
    host = host or environment.host or getattr(o, "host", None) or ""
    if not host:
        raise ConfigError("no Milvus to target: give --host http://HOST:19530, or run without it on the master")
    weights = {name: _as_int(o, f"{name}_weight") for name in TABLE}
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        shown = ", ".join(f"--{TABLE[n].option}-weight {w}" for n, w in weights.items() if w)
        raise ConfigError(f"task weights must be >= 0 with at least one > 0, got {shown or 'all zero'}")
    counts = {name: _as_int(o, name) for name in WHOLE_NUMBERS}
    for name, value in counts.items():
        minimum = WHOLE_NUMBERS[name][0]
        if value < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    existing = bool(o.existing_collection)
    if existing:
        writes = [f"--{TABLE[n].option}-weight" for n, w in weights.items() if w and TABLE[n].writes]
        if writes:
            raise ConfigError(f"--existing-collection is read-only, but {' '.join(writes)} > 0: set them to 0")
    try:
        timeout = float(o.milvus_timeout)
    except (TypeError, ValueError):
        timeout = 0.0
    if not timeout > 0:
        raise ConfigError(f"--milvus-timeout must be a number of seconds > 0, got {o.milvus_timeout!r}")
    name = str(o.collection or "")
    if not is_identifier(name):
        shown = name if len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"
        raise ConfigError(
            f"--collection {shown!r} is not a valid Milvus collection name: use letters, digits and underscores, "
            f"starting with a letter or underscore, at most {MAX_NAME_LENGTH} characters"
        )
    uri, uri_token = split_credentials(check_uri(host))
    ca_file, server_name = _tls_options(o, uri)
    return Settings(
        uri=uri,
        token=uri_token or o.milvus_token or "",  # the host's own credentials win, as in hide_host_credentials
        ca_file=ca_file,
        server_name=server_name,
        collection=o.collection,
        drop_collection=bool(o.drop_collection),
        consistency_level=o.consistency_level,
        timeout=timeout,
        retry_rate_limit=bool(o.milvus_retry_rate_limit),
        weights=weights,
        filter=str(o.filter or "").strip(),
        metadata_filter=str(o.metadata_filter or "").strip() or "category == 'cat_1'",
        **counts,
        embedding=_embedding_choice(o),
        index_type=str(o.index_type or "AUTOINDEX").strip().upper(),
        metric=str(o.metric or "L2").upper(),
        index_params=_json_object(o, "index_params") or {},
        search_params=_json_object(o, "search_params"),
        partition_key_field=str(o.partition_key_field or "").strip(),
        existing_collection=existing,
        text_field=_field_name(o, "text_field"),
        vector_field=_field_name(o, "vector_field"),
        primary_field=_field_name(o, "primary_field"),
        dataset=str(o.dataset or "").strip(),
        dataset_text_column=str(o.dataset_text_column or "text"),
        dataset_vector_column=str(o.dataset_vector_column or "vector"),
        openai_model=str(o.openai_model or "text-embedding-3-small"),
        openai_dimensions=_as_int(o, "openai_dimensions"),
        embedding_cache=str(o.embedding_cache or "").strip(),
        verify=bool(o.verify),
        recall=_share(o, "recall"),
        seal=bool(getattr(o, "seal", False)),
        target_rps=parse_target_rps(str(getattr(o, "target_rps", "") or ""), set(TABLE)),
    )


def _tls_options(o, uri: str) -> tuple[str, str]:
    """--milvus-ca-file (checked: readable, PEM) and --milvus-server-name, which only an https URI uses."""
    ca_file = str(getattr(o, "milvus_ca_file", "") or "").strip()
    server_name = str(getattr(o, "milvus_server_name", "") or "").strip()
    if (ca_file or server_name) and not uri.startswith("https://"):
        flag = "--milvus-ca-file" if ca_file else "--milvus-server-name"
        raise ConfigError(f"{flag} is for TLS, but --host {redact_uri(uri)!r} is not https://: use an https:// "
                          "--host (the embedded Milvus has no TLS)")
    if ca_file:
        try:
            with open(os.path.expanduser(ca_file), "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ConfigError(f"--milvus-ca-file {ca_file!r} cannot be read ({e.strerror}): give the path of the "
                              "CA's PEM file") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigError(f"--milvus-ca-file {ca_file!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                              ": give the CA's certificate in PEM form")
        # Resolved here, on the master: workers (other processes, maybe other directories) read the same path.
        ca_file = os.path.abspath(os.path.expanduser(ca_file))
    return ca_file, server_name


def _share(o, name: str) -> float:
    try:
        value = float(getattr(o, name) or 0.0)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--{name} must be a share between 0 and 1 (e.g. 0.1 for one search in ten), "
                          f"got {getattr(o, name)!r}")
    return value


def _json_object(o, name: str) -> dict | None:
    import json

    text = str(getattr(o, name) or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--{name.replace('_', '-')} is not valid JSON ({e.msg} at column {e.colno}): "
                          f"use an object such as '{{\"ef\": 64}}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--{name.replace('_', '-')} must be a JSON object such as '{{\"ef\": 64}}'")
    return value


def _field_name(o, name: str) -> str:
    value = str(getattr(o, name) or "").strip()
    if not is_identifier(value):
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not a valid field name")
    return value


def _embedding_choice(o) -> str:
    choice = str(o.embedding or "fake")
    if choice not in ("fake", "openai"):
        raise ConfigError(f"--embedding must be fake or openai, got {choice!r}")
    if choice == "openai":
        from locust_milvus.embeddings import check_openai_key

        check_openai_key()
    return choice


def hide_host_credentials(environment) -> None:
    """Take a user:password out of the host URI and make it the token.

    Locust shows ``environment.host`` in its web UI and its HTML report, and sends it to workers; a password in it
    would be shown there. pymilvus takes the same credentials as a ``user:password`` token, which is never shown.
    The host's credentials win over --milvus-token (as in settings_from), with a warning when they differ.
    """
    o = environment.parsed_options
    host = environment.host or (getattr(o, "host", None) if o is not None else None) or ""
    bare, token = split_credentials(host)
    if not token:
        return
    environment.host = bare
    if o is not None:
        o.host = bare
        if o.milvus_token and o.milvus_token != token:
            logger.warning("locust-milvus: --host holds credentials; they replace --milvus-token")
        o.milvus_token = token


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    hide_host_credentials(environment)


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs) -> None:
    hide_host_credentials(environment)  # a host typed into the web UI's form


_SECRET_FLAG = "--milvus-token"
_URI_CREDENTIALS = re.compile(r"(://)[^/@\s]*@")


def hidden_argv(argv: list[str]) -> list[str] | None:
    """``argv`` with the --milvus-token value and URI credentials masked, or None when there is nothing to hide."""
    shown, hide_next = [], False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        if hide_next:
            shown.append("***")
        # argparse accepts an unambiguous prefix of an option (--milvus-tok); --milvus-t could be --milvus-timeout
        elif name.startswith("--milvus-tok") and _SECRET_FLAG.startswith(name):
            shown.append(f"{name}=***" if eq else arg)
        else:
            shown.append(_URI_CREDENTIALS.sub(r"\1***@", arg))
        hide_next = arg.startswith("--milvus-tok") and _SECRET_FLAG.startswith(arg)
    return shown if shown != argv else None


def _hide_secrets_from_process_title() -> None:
    # Every user of the host sees a process's command line (ps, /proc/PID/cmdline). Overwrite ours as soon as our
    # code runs: Locust imports the locustfile before it parses the command line and before --processes forks, so
    # the workers inherit the masked title. Locust parses sys.argv, which setproctitle does not change.
    shown = hidden_argv(sys.orig_argv)  # the interpreter's own arguments too (python -m locust ...)
    if shown is None:
        return
    try:
        from setproctitle import setproctitle
    except ImportError:  # a dependency; without it, say so rather than fail
        logger.warning("locust-milvus: setproctitle is missing: the command line (with its secret) stays visible")
        return
    setproctitle(" ".join(shown))


# LOCUST_MILVUS_TOKEN (any LOCUST_* option) and OPENAI_API_KEY may live in ./.env. Locust parses options from the
# environment right after importing the locustfile, before any init listener, so the file is read here; variables
# already set in the environment win.
load_dotenv(find_dotenv(usecwd=True), override=False)
_hide_secrets_from_process_title()
