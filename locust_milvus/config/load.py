"""Building the run's Settings from Locust's parsed options, once, checking every value.

Options reach workers only when a test starts, so this is called in ``test_start`` (and at ``init`` on the master
or a local runner, to refuse bad input before any server starts or load begins). A bad value is one
:class:`ConfigError` line saying what is wrong and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from locust_milvus.config.options import WHOLE_NUMBERS
from locust_milvus.config.secrets import redact_uri, redacted_options, scrubber_of, split_credentials
from locust_milvus.config.settings import (
    MAX_NAME_LENGTH,
    ConfigError,
    Settings,
    UsageError,
    check_uri,
    is_identifier,
)
from locust_milvus.milvus.bm25 import analyzer_params, ranker_options
from locust_milvus.workload.operations import RETRIEVER_SEARCH_TYPES, TABLE
from locust_milvus.workload.pacing import parse_target_rps


def _as_int(o, name: str) -> int:
    # Values typed into the web UI's form may arrive as strings.
    value = getattr(o, name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}") from None


def _retriever_options(o) -> dict:
    # The web UI's form hands strings through unchecked by argparse: check them here too.
    search_type = str(getattr(o, "retriever_search_type", None) or "similarity").strip()
    if search_type not in RETRIEVER_SEARCH_TYPES:
        raise ConfigError(f"--retriever-search-type must be one of {', '.join(RETRIEVER_SEARCH_TYPES)}, "
                          f"got {search_type!r}")
    return {"retriever_search_type": search_type,
            "retriever_score_threshold": _share(o, "retriever_score_threshold", "a relevance score from 0 to 1")}


def _bm25_options(o, weights: dict[str, int], target_rps: dict, own_kwargs: dict) -> dict:
    """--bm25 and what goes with it, checked: the BM25 tasks need it, and a weighted ranker needs its weights."""
    bm25 = bool(getattr(o, "bm25", False))
    if not bm25:
        asked = [f"--{TABLE[n].option}-weight" for n, w in weights.items() if w and TABLE[n].needs_bm25]
        asked += [f"--target-rps {n}=..." for n in target_rps if TABLE[n].needs_bm25]
        if asked:
            raise UsageError(f"{', '.join(asked)} without --bm25: hybrid_search and full_text_search search the "
                             "collection's BM25 field; add --bm25 (Milvus >= 2.5 or Milvus Lite 3.x)")
    elif own_kwargs:
        raise UsageError("--bm25 with a user class's milvus_kwargs: the run would have two schemas; give the BM25 "
                         "function in milvus_kwargs yourself (builtin_function=...), or leave --bm25 out")
    ranker, params = ranker_options(str(getattr(o, "ranker", "") or "rrf"), str(getattr(o, "ranker_params", "") or ""),
                                    bm25)
    return {"bm25": bm25, "bm25_analyzer": analyzer_params(str(getattr(o, "bm25_analyzer", "") or "standard")),
            "sparse_field": _field_name(o, "sparse_field", "sparse"), "ranker": ranker, "ranker_params": params}


def own_store_kwargs(user_classes) -> dict:
    """The run's user classes' ``milvus_kwargs`` (workload/base.py): one dict, or ConfigError when they differ."""
    given = {cls.__name__: getattr(cls, "milvus_kwargs", None) or {} for cls in user_classes}
    if len({repr(sorted(kw.items(), key=str)) for kw in given.values()}) > 1:  # none given counts as {} too
        raise ConfigError(f"user classes {', '.join(sorted(given))} give different milvus_kwargs: the run has one "
                          "collection with one schema, so give them the same (e.g. a shared base class)")
    return dict(next(iter(given.values()), {}))


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
    target_rps = parse_target_rps(str(getattr(o, "target_rps", "") or ""), set(TABLE))
    own_kwargs = own_store_kwargs(getattr(environment, "user_classes", None) or ())
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
        **_retriever_options(o),
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
        target_rps=target_rps,
        own_store_kwargs=own_kwargs,
        **_bm25_options(o, weights, target_rps, own_kwargs),
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


def _share(o, name: str, what: str = "a share between 0 and 1 (e.g. 0.1 for one search in ten)") -> float:
    """A number from 0 to 1 (the web UI's form may hand it as text), or ConfigError saying it must be ``what``."""
    raw = getattr(o, name, None)
    try:
        value = float(raw or 0.0)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--{name.replace('_', '-')} must be {what}, got {raw!r}")
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


def _field_name(o, name: str, default: str = "") -> str:
    value = str(getattr(o, name, default) or "").strip()
    if not is_identifier(value):
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not a valid field name")
    return value


def _embedding_choice(o) -> str:
    choice = str(o.embedding or "fake")
    if choice not in ("fake", "openai"):
        raise ConfigError(f"--embedding must be fake or openai, got {choice!r}")
    if choice == "openai":
        from locust_milvus.workload.embeddings import check_openai_key

        check_openai_key()
    return choice


@dataclass(frozen=True)
class RunOptions:
    """Locust's options and ours that the plugin's parts need besides :class:`Settings` (the report, the web UI,
    lifecycle), read from Locust's parsed options here, in one place, when asked: at init, and again at each
    test start (the web UI's form may change them between tests). Only config/ reads ``parsed_options``."""

    values: Mapping[str, Any]  # every option by its attribute name (read-only), for what is only shown

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name, default)
        return default if value is None else value

    @property
    def headless(self) -> bool:
        return bool(self.get("headless", False))

    @property
    def loglevel(self) -> str:
        return str(self.get("loglevel", "")).upper()

    @property
    def checks(self) -> dict[str, str]:
        """--check-METRIC values by metric name, as typed."""
        return {key.removeprefix("check_"): str(value or "") for key, value in self.values.items()
                if key.startswith("check_")}

    @property
    def total_users(self) -> int:
        """The run's user count over all workers, which the master sends with the options (share_with_workers)."""
        return int(self.get(_TOTAL_USERS, 0) or 0)

    @property
    def set_up_prefix(self) -> str:
        """The id prefix of the documents the master's set-up wrote (share_with_workers): --recall's ground truth."""
        return str(self.get(_SET_UP_PREFIX, "") or "")

    def scrubber(self) -> Callable[[str], str]:
        return scrubber_of(self.values.get("milvus_token", ""))

    def redacted(self, host: str | None = None) -> dict:
        """Every option, for the record: secrets removed, URIs without credentials; ``host`` is the URI in use (the
        embedded Milvus's is set at init, after parsing)."""
        return redacted_options({**self.values, **({"host": host} if host else {})})


_TOTAL_USERS = "locust_milvus_total_users"
_SET_UP_PREFIX = "locust_milvus_set_up_prefix"


def run_options(environment) -> RunOptions:
    """The run's options as :class:`RunOptions` (empty when Locust parsed none, as in a library run)."""
    o = environment.parsed_options
    return RunOptions(MappingProxyType(dict(vars(o)) if o is not None else {}))


def share_with_workers(environment, total_users: int, set_up_prefix: str) -> None:
    """On the master: send what workers cannot know with the options (Locust forwards every attribute of the
    parsed options when a test starts): the run's total user count (--target-rps gives each user rate / total),
    and the id prefix of the pre-populated documents (--recall: each worker reads their vectors back)."""
    setattr(environment.parsed_options, _TOTAL_USERS, total_users)
    setattr(environment.parsed_options, _SET_UP_PREFIX, set_up_prefix)
