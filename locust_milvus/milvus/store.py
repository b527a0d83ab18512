"""Building the LangChain Milvus store of a run: connection, the collection's schema, checks, pre-population."""

from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from langchain_milvus import Milvus
from pymilvus import DataType, MilvusClient

from locust_milvus.config.secrets import redact_uri
from locust_milvus.config.settings import ConfigError, Settings, UsageError
from locust_milvus.milvus import bm25
from locust_milvus.runtime.progress import progress
from locust_milvus.workload.data import SAMPLE_METADATA, DocSource, IdLedger, number_of
from locust_milvus.workload.embeddings import embedding_for
from locust_milvus.workload.recall import GroundTruth
from locust_milvus.workload.request_events import one_line

logger = logging.getLogger(__name__)
PREPOPULATE_BATCH = 1000
# Creating, indexing, loading and pre-populating a collection are set-up, not measured load; they get at least
# this deadline even when --milvus-timeout is short (loading took over 2 s on a fresh embedded server).
SETUP_TIMEOUT_S = 60.0


def connection_args(settings: Settings) -> dict:
    """Arguments of pymilvus's MilvusClient / AsyncMilvusClient (LangChain's ``connection_args``).

    TLS: an https URI makes pymilvus open a secure channel verified against gRPC's bundled roots; ``server_pem_path``
    replaces those roots with the given PEM file (one-way TLS: the file is the CA, or the server's self-signed
    certificate), and ``server_name`` is the name the certificate must carry when the URI's host differs.
    """
    args = {"uri": settings.uri}
    if settings.token:
        args["token"] = settings.token
    if urlsplit(settings.uri).scheme == "https":
        args["secure"] = True
        if settings.ca_file:
            args["server_pem_path"] = settings.ca_file
        if settings.server_name:
            args["server_name"] = settings.server_name
    return args


def _tls_problem(settings: Settings) -> str | None:
    """Why a TLS handshake with the server fails, or None (it succeeds, or the server cannot be reached at all).

    Asked only after pymilvus failed to connect: gRPC reports a failed handshake as an unavailable server after its
    deadline, while Python's ssl module says exactly what is wrong with the certificate. For an http URI, a server
    that completes a handshake speaks TLS and wants https.
    """
    parts = urlsplit(settings.uri)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 19530)
    if secure:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
    else:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # gRPC servers may insist on HTTP/2 being negotiated
    try:
        with socket.create_connection((parts.hostname, port), timeout=min(settings.timeout, 5.0)) as raw, \
                context.wrap_socket(raw, server_hostname=settings.server_name or parts.hostname):
            return None if secure else "the server speaks TLS"
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}"
    except ssl.SSLError as exc:  # e.g. WRONG_VERSION_NUMBER: a plain server behind an https URI
        if not secure:
            return None
        return exc.reason or type(exc).__name__
    except OSError:
        return None


def _grpc_status(exc: BaseException) -> tuple[str, str]:
    """The gRPC status code name and details under a pymilvus exception (pymilvus keeps the RPC error as cause)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "code", None)
        if callable(code) and callable(getattr(exc, "details", None)):
            try:
                return code().name, str(exc.details() or "")
            except Exception:  # noqa: BLE001 - not a gRPC error after all
                pass
        exc = exc.__cause__ or exc.__context__
    return "", ""


def connect_error(settings: Settings, exc: BaseException) -> ConfigError:
    """One line naming what to fix when the first connection to Milvus fails (never the token)."""
    where = redact_uri(settings.uri)
    tls = _tls_problem(settings)
    if tls and urlsplit(settings.uri).scheme != "https":
        return ConfigError(f"cannot reach Milvus at {where}: {tls}: use https:// in --host")
    if tls:
        fix = (f"--milvus-ca-file {settings.ca_file} did not verify the server's certificate: give the CA that "
               "signed it" if settings.ca_file else "give the CA that signed the server's certificate with "
               "--milvus-ca-file")
        return ConfigError(f"TLS handshake with {where} failed ({tls}): {fix} (and --milvus-server-name if the "
                           "certificate names another host)")
    code, details = _grpc_status(exc)
    if code == "UNAUTHENTICATED":
        if settings.token:
            details = details.replace(settings.token, "***")
        return ConfigError(f"Milvus at {where} refused the credentials ({details or code}): check --milvus-token "
                           "(user:password or an API key) or the user:password in --host")
    return ConfigError(f"cannot reach Milvus at {where} within {settings.timeout:g} s ({type(exc).__name__}): "
                       "check --host (http:// or https://) and --milvus-token, or leave --host empty to use the "
                       "embedded Milvus")


def _milvus(settings: Settings, timeout: float, kind: str = "dense") -> Milvus:
    """A LangChain store on the run's collection; with --bm25, the store of ``kind`` (bm25.KINDS)."""
    kwargs = dict(
        embedding_function=embedding_for(settings),
        collection_name=settings.collection,
        connection_args=connection_args(settings),
        consistency_level=settings.consistency_level,
        auto_id=False,  # explicit string ids: upsert and delete by id work on Milvus 2.3 to 2.6
        timeout=timeout,  # LangChain prefers this to a per-call timeout
        **settings.store_kwargs,
    )
    if not settings.bm25:
        return Milvus(**kwargs)
    return bm25.mend(Milvus(**{**kwargs, **bm25.store_kwargs(settings, kind)}), settings)


def open_store(settings: Settings, kind: str = "dense") -> Milvus:
    """A store the users of this process share (one per process, mode and kind, as an application has one).

    ``store.col`` is read here once so that LangChain caches it: uncached, every search would first make a
    sync ``has_collection`` call (in the async path, a blocking call on the loop thread).
    """
    store = _milvus(settings, settings.timeout, kind)
    if store.col is None:
        raise ConfigError(f"collection {settings.collection!r} does not exist on {redact_uri(settings.uri)}")
    return store


def open_async_store(settings: Settings, run_on_loop: Callable[[Coroutine], Any], kind: str = "dense") -> Milvus:
    """The store for async calls: built on the hub thread, its async client made on the bridge's loop.

    ``run_on_loop``: the bridge's ``run`` (runtime/bridge.py). Two constraints meet here:

    - pymilvus binds an AsyncMilvusClient's connection to the loop of the thread that made it; one made in the hub
      thread fails on the loop with "attached to a different loop" (bridge.py, trap 3). So the async client is
      made on the loop.
    - LangChain's ``Milvus(...)`` also makes a sync MilvusClient and calls it (connect, has_collection). On the
      loop thread those sync gRPC calls go through grpc's gevent poller from a thread that is not the hub's, on a
      channel pymilvus shares with the sync store of the same process: with sync users beside async ones a worker
      stalled its loop for 4 to 8 s per test, and hung for good at the next test's start (the web UI's restart).
      So the store itself, with its sync calls, is built on the hub thread.

    Both use LangChain's private ``_async_milvus_client`` and ``_connection_args`` (langchain-milvus 0.4.0).
    """
    from pymilvus import AsyncMilvusClient

    store = open_store(settings, kind)
    store._async_milvus_client = None  # made in the hub thread by LangChain: bound to no loop we run

    async def make_async_client() -> AsyncMilvusClient:
        return AsyncMilvusClient(**store._connection_args)

    store._async_milvus_client = run_on_loop(make_async_client())
    return store


def open_stores(settings: Settings, kinds: set[str], run_on_loop: Callable[[Coroutine], Any] | None) -> dict:
    """--bm25's other stores (RunState.stores): each of ``kinds`` for sync calls, and for async ones when there is a
    bridge (``run_on_loop``)."""
    stores = {(kind, True): open_store(settings, kind) for kind in kinds}
    if run_on_loop is not None:
        stores.update({(kind, False): open_async_store(settings, run_on_loop, kind) for kind in kinds})
    return stores


def create_schema(store: Milvus, timeout: float | None = None, metadata: dict | None = None,
                  vector: list[float] | None = None) -> None:
    """Create the store's collection (schema, index, load) without writing a row.

    LangChain derives the schema from the first insert; ``_init`` (private API) is the one place that creates it
    from one sample embedding and the tutorials' metadata, so --prepopulate 0 works and no timed add pays for
    creating the collection. Its embeddings are field-wise: one list of vectors per vector field. ``vector``: a
    sample embedding already made (saves a call to a paid provider).
    """
    vector = vector or store.embedding_func.embed_query("schema")
    # A dataset without metadata columns gives {}: no metadata fields (the tutorials' would make every insert fail
    # with "Insert missed an field `id`").
    store._init(embeddings=[[vector]], metadatas=[SAMPLE_METADATA if metadata is None else metadata],
                timeout=timeout)


def _check_expressions(client: MilvusClient, settings: Settings) -> None:
    """Refuse a malformed --filter / --metadata-filter before load (else every search would fail the same way)."""
    used = {"--filter": settings.filter}
    if settings.weights.get("search_by_metadata") or settings.weights.get("get_pks"):
        used["--metadata-filter"] = settings.metadata_filter
    # pymilvus logs a failed call with its traceback (from child loggers, which inherit this level); the error is
    # reported once, in one line, by the ConfigError below.
    pymilvus_log = logging.getLogger("pymilvus")
    level = pymilvus_log.level
    pymilvus_log.setLevel(logging.CRITICAL)
    try:
        for flag, expr in used.items():
            if not expr:
                continue
            try:
                client.query(settings.collection, filter=expr, limit=1, output_fields=[settings.primary_field],
                             timeout=settings.timeout)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"{flag} {expr!r} is not a valid expression on collection "
                                  f"{settings.collection!r}: {one_line(exc)}") from None
    finally:
        pymilvus_log.setLevel(level)


def _vector_dim(client: MilvusClient, collection: str, vector_field: str) -> int | None:
    for field in client.describe_collection(collection)["fields"]:
        if field["name"] == vector_field:
            if field["type"] not in (DataType.FLOAT_VECTOR, DataType.FLOAT16_VECTOR, DataType.BFLOAT16_VECTOR):
                raise ConfigError(f"field {vector_field!r} of collection {collection!r} is not a float vector")
            return int(field["params"]["dim"])
    raise ConfigError(f"collection {collection!r} has no field {vector_field!r}: name its vector field with "
                      "--vector-field (and --text-field, --primary-field if they differ from LangChain's)")


# The target's version as the server reports it (``get_server_version``: "v2.3.5", "milvus_lite-3.2.2", ...), read
# once at set-up on the master or local runner, logged, and kept for the report (None until read, or if refused).
server_version: str | None = None


def read_server_version(client: MilvusClient, timeout: float) -> str | None:
    """The server's version string, or None when it will not say (an old or proxied server): never fatal."""
    try:
        return str(client.get_server_version(timeout=timeout)).strip() or None
    except Exception:  # noqa: BLE001 - the version is for the record; set-up goes on without it
        return None


def prepare_collection(settings: Settings, ledger: IdLedger, owned_here: bool = False,
                       source: DocSource | None = None) -> list[str]:
    """Check the target and (re)create the collection, then pre-populate it; run once per test.

    ``owned_here``: this process created the collection in an earlier test (a restart from the web UI), so
    replacing it needs no --drop-collection. Returns the pre-populated ids (also recorded in ``ledger``).
    Raises ConfigError, with one line naming the fix, before anything is written.
    """
    where = redact_uri(settings.uri)
    progress.reset()
    try:
        # The collection's dimension is the embedding's: --dim for the fake one, the model's for OpenAI.
        probe = embedding_for(settings).embed_query("schema")
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"the {settings.embedding} embedding failed: {one_line(exc)}") from None
    dim = len(probe)
    source = source or DocSource()
    if source.has_vectors and len(source.dataset.vectors[0]) != dim:
        raise ConfigError(f"--dataset {source.dataset.path}: its vectors have dim {len(source.dataset.vectors[0])} "
                          f"but the {settings.embedding} embedding gives {dim}: they must match (--dim)")
    try:
        client = MilvusClient(**connection_args(settings), timeout=settings.timeout)
        exists = client.has_collection(settings.collection, timeout=settings.timeout)
    except Exception as exc:  # noqa: BLE001 - any failure here means the target is unusable
        raise connect_error(settings, exc) from None
    global server_version
    server_version = read_server_version(client, settings.timeout)
    logger.info("locust-milvus: Milvus at %s reports version %s", where, server_version or "(not given)")
    try:
        if settings.bm25 and (problem := bm25.server_problem(settings, server_version)):
            raise UsageError(problem)
        existing = _vector_dim(client, settings.collection, settings.vector_field) if exists else None
        replace = exists and not settings.existing_collection and (settings.drop_collection or owned_here)
        if (settings.bm25 and exists and not replace
                and not bm25.has_bm25_field(client.describe_collection(settings.collection), settings)):
            fix = ("name it with --sparse-field, or leave --bm25 out" if settings.existing_collection else
                   "pass --drop-collection to recreate it with one, or use another --collection")
            raise UsageError(f"--bm25: collection {settings.collection!r} has no BM25 field "
                             f"{settings.sparse_field!r}: {fix}")
        if exists and existing != dim and not replace:
            what = (f"--dim is {dim}" if settings.embedding == "fake"
                    else f"the {settings.openai_model} vectors have {dim}")
            raise ConfigError(
                f"collection {settings.collection!r} has dim {existing} but {what}: use vectors of dim {existing}"
                + ("" if settings.existing_collection else ", another --collection, or --drop-collection")
            )
        if settings.existing_collection:
            if not exists:
                raise ConfigError(f"--existing-collection: collection {settings.collection!r} does not exist on "
                                  f"{where}: check --collection")
            _check_expressions(client, settings)
            logger.info("locust-milvus: reading existing collection %r on %s as it is (dim %d, %s embedding)",
                        settings.collection, where, dim, settings.embedding)
            return []
        if exists:
            if replace:
                client.drop_collection(settings.collection, timeout=settings.timeout)
            else:
                raise ConfigError(
                    f"collection {settings.collection!r} already exists on {where}: pass --drop-collection to "
                    "replace it, or another --collection (nothing is written to data that is not the test's)"
                )
    finally:
        client.close()

    setup_timeout = max(settings.timeout, SETUP_TIMEOUT_S)
    store = _milvus(settings, setup_timeout, "hybrid")  # with --bm25 it creates both fields; else the dense store
    create_schema(store, setup_timeout, source.sample_metadata, probe)
    _check_expressions(store.client, settings)
    rng = random.Random(0)
    written: list[str] = []
    with progress.step("pre-population", settings.prepopulate, "documents") as step:  # the web UI's run page
        for start in range(0, settings.prepopulate, PREPOPULATE_BATCH):
            ids, docs = ledger.new_batch(min(PREPOPULATE_BATCH, settings.prepopulate - start), rng, source)
            if source.has_vectors:  # the dataset's own vectors: nothing to embed
                store.add_embeddings([d.page_content for d in docs], [source.vector(number_of(i)) for i in ids],
                                     [d.metadata for d in docs], ids=ids, timeout=setup_timeout)
            else:
                store.add_documents(docs, ids=ids, timeout=setup_timeout)
            written.extend(ids)
            step.advance(len(written))
            logger.info("locust-milvus: %s", step.line())
    ledger.added(written)
    if written and (settings.seal or settings.recall):
        _seal_and_index(store.client, settings, setup_timeout, len(written))
    logger.info("locust-milvus: collection %r ready on %s (dim %d, %s embedding, %d documents pre-populated)",
                settings.collection, where, dim, settings.embedding, len(written))
    store.client.close()
    return written


def _seal_and_index(client: MilvusClient, settings: Settings, timeout: float, rows: int) -> None:
    """Flush the pre-populated documents and wait until the index covers them, as in a collection that was filled
    long before the test. Unflushed, they stay in growing segments, which Milvus searches by brute force or with a
    temporary index: --index-type and --search-params would then not shape the results (nor recall) at all.
    Milvus leaves segments below about 1,024 rows unindexed whatever we wait for, so the wait ends there too.
    It takes 15 to 20 s here (the query node's hand-off), so it is asked for: --seal, or --recall."""
    began = time.perf_counter()
    client.flush(settings.collection, timeout=timeout)
    info: dict = {}
    while time.perf_counter() - began < timeout:
        info = client.describe_index(settings.collection, settings.vector_field, timeout=timeout) or {}
        if not info.get("pending_index_rows"):
            break
        time.sleep(0.5)
    # An index built is not an index served: the query node keeps answering from the growing segment (exactly)
    # until it has loaded the sealed, indexed one. Wait for that hand-off too.
    while time.perf_counter() - began < timeout:
        segments = client.list_loaded_segments(settings.collection, timeout=timeout)
        if sum(seg.num_rows for seg in segments if getattr(seg.state, "name", seg.state) == "Sealed") >= rows:
            break
        time.sleep(0.5)
    logger.info("locust-milvus: pre-populated documents flushed; index %s covers %s of %s rows (%.1f s)",
                info.get("index_type", "?"), info.get("indexed_rows", "?"), info.get("total_rows", "?"),
                time.perf_counter() - began)


def load_truth(settings: Settings, prefix: str) -> GroundTruth:
    """--recall's ground truth, starting from the vectors Milvus stored for the pre-populated documents (their ids
    start with set-up's ``prefix``), read back once at test start (untimed). The users have written nothing yet in
    a local run; in a distributed run other workers may have, and their ids have prefixes of their own."""
    truth = None
    client = MilvusClient(**connection_args(settings), timeout=settings.timeout)
    try:
        rows_of = client.query_iterator(settings.collection, batch_size=1000,
                                        filter=f"{settings.primary_field} like {json.dumps(prefix + '-%')}",
                                        output_fields=[settings.primary_field, settings.vector_field],
                                        consistency_level="Strong", timeout=max(settings.timeout, SETUP_TIMEOUT_S))
        try:
            while rows := rows_of.next():
                if truth is None:
                    truth = GroundTruth(len(rows[0][settings.vector_field]), settings.index_metric)
                truth.put([str(r[settings.primary_field]) for r in rows], [r[settings.vector_field] for r in rows])
        finally:
            rows_of.close()
    finally:
        client.close()
    if truth is None:
        truth = GroundTruth(len(embedding_for(settings).embed_query("dimension")), settings.index_metric)
    logger.info("locust-milvus: --recall: ground truth of %d documents (%s), %g of the searches judged",
                truth.n, settings.index_metric, settings.recall)
    if settings.bm25:
        logger.info("locust-milvus: --recall: hybrid_search and full_text_search are %s", bm25.NO_RECALL)
    return truth
