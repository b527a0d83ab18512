"""Building the LangChain Milvus store of a run: connection, the collection's schema, checks, pre-population."""

from __future__ import annotations

import logging
import random
import time
from urllib.parse import urlsplit, urlunsplit

from langchain_milvus import Milvus
from pymilvus import DataType, MilvusClient

from locust_milvus.data import SAMPLE_METADATA, DocSource, IdLedger, number_of
from locust_milvus.embeddings import embedding_for
from locust_milvus.events import one_line
from locust_milvus.settings import ConfigError, Settings

logger = logging.getLogger(__name__)
PREPOPULATE_BATCH = 1000
# Creating, indexing, loading and pre-populating a collection are set-up, not measured load; they get at least
# this deadline even when --milvus-timeout is short (loading took over 2 s on a fresh embedded server).
SETUP_TIMEOUT_S = 60.0


def redact_uri(uri: str) -> str:
    """The URI without any user:password part, for logs."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return uri


def connection_args(settings: Settings) -> dict:
    args = {"uri": settings.uri}
    if settings.token:
        args["token"] = settings.token
    return args


def _milvus(settings: Settings, timeout: float) -> Milvus:
    return Milvus(
        embedding_function=embedding_for(settings),
        collection_name=settings.collection,
        connection_args=connection_args(settings),
        consistency_level=settings.consistency_level,
        auto_id=False,  # explicit string ids: upsert and delete by id work on Milvus 2.3 to 2.6
        timeout=timeout,  # LangChain prefers this to a per-call timeout
        **settings.store_kwargs,
    )


def open_store(settings: Settings) -> Milvus:
    """A store the users of this process share (one per process and mode, as an application has one).

    ``store.col`` is read here once so that LangChain caches it: uncached, every search would first make a
    sync ``has_collection`` call (in the async path, a blocking call on the loop thread).
    """
    store = _milvus(settings, settings.timeout)
    if store.col is None:
        raise ConfigError(f"collection {settings.collection!r} does not exist on {redact_uri(settings.uri)}")
    return store


async def open_async_store(settings: Settings) -> Milvus:
    """The store for async calls, built on the bridge's loop (run it with ``get_bridge().run``).

    pymilvus binds an AsyncMilvusClient's connection to the loop of the thread that built the store; one built
    in the hub thread fails on the loop with "attached to a different loop" (bridge.py, trap 3). The build
    makes two quick sync calls on the loop thread, once per test, before any load.
    """
    return open_store(settings)


def create_schema(store: Milvus, timeout: float | None = None, metadata: dict | None = None,
                  vector: list[float] | None = None) -> None:
    """Create the store's collection (schema, index, load) without writing a row.

    LangChain derives the schema from the first insert; ``_init`` (private API) is the one place that creates it
    from one sample embedding and the tutorials' metadata, so --prepopulate 0 works and no timed add pays for
    creating the collection. Its embeddings are field-wise: one list of vectors per vector field. ``vector``: a
    sample embedding already made (saves a call to a paid provider).
    """
    vector = vector or store.embedding_func.embed_query("schema")
    store._init(embeddings=[[vector]], metadatas=[metadata or SAMPLE_METADATA], timeout=timeout)


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


def prepare_collection(settings: Settings, ledger: IdLedger, owned_here: bool = False,
                       source: DocSource | None = None) -> list[str]:
    """Check the target and (re)create the collection, then pre-populate it; run once per test.

    ``owned_here``: this process created the collection in an earlier test (a restart from the web UI), so
    replacing it needs no --drop-collection. Returns the pre-populated ids (also recorded in ``ledger``).
    Raises ConfigError, with one line naming the fix, before anything is written.
    """
    where = redact_uri(settings.uri)
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
        raise ConfigError(
            f"cannot reach Milvus at {where} within {settings.timeout:g} s ({type(exc).__name__}): "
            "check --host and --milvus-token, or leave --host empty to use the embedded Milvus"
        ) from None
    try:
        existing = _vector_dim(client, settings.collection, settings.vector_field) if exists else None
        replace = exists and not settings.existing_collection and (settings.drop_collection or owned_here)
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
    store = _milvus(settings, setup_timeout)
    create_schema(store, setup_timeout, source.sample_metadata, probe)
    _check_expressions(store.client, settings)
    rng = random.Random(0)
    written: list[str] = []
    began = time.perf_counter()
    for start in range(0, settings.prepopulate, PREPOPULATE_BATCH):
        ids, docs = ledger.new_batch(min(PREPOPULATE_BATCH, settings.prepopulate - start), rng, source)
        if source.has_vectors:  # the dataset's own vectors: nothing to embed
            store.add_embeddings([d.page_content for d in docs], [source.vector(number_of(i)) for i in ids],
                                 [d.metadata for d in docs], ids=ids, timeout=setup_timeout)
        else:
            store.add_documents(docs, ids=ids, timeout=setup_timeout)
        written.extend(ids)
        elapsed = time.perf_counter() - began
        logger.info("locust-milvus: pre-populated %d/%d documents (%.0f documents/s)", len(written),
                    settings.prepopulate, len(written) / elapsed if elapsed else 0.0)
    ledger.added(written)
    logger.info("locust-milvus: collection %r ready on %s (dim %d, %s embedding, %d documents pre-populated)",
                settings.collection, where, dim, settings.embedding, len(written))
    store.client.close()
    return written
