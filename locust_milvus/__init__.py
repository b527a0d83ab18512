"""locust-milvus: Locust users that load-test Milvus through LangChain's sync and async vector-store API.

    from locust_milvus import AsyncMilvusUser, SyncMilvusUser   # in a locustfile: all it needs
    from locust_milvus import AsyncLangChainUser, LangChainUser  # bases for your own tasks (docs/extending.md)
    from locust_milvus import register  # Locust as a library: wire an Environment you made (docs/extending.md)

Importing the users pulls in Locust (which monkey-patches the standard library with gevent) and registers the
plugin (plugin.py). This package root itself imports nothing, so that the plain commands (``locust-milvus server``,
``tutorial``, ``compare``) never meet gevent.

The rooms:

- ``plugin.py``       the one place that registers Locust listeners, in the order they run; ``register`` for
                      an Environment made in Python
- ``lifecycle.py``    what happens at init, test start and stop, and quitting (set-up, embedded Milvus, teardown)
- ``run_verdict.py``  --verify's one verdict per run (a master merges its workers' verdicts)
- ``config/``         options.py (declared by group), load.py (Settings built once from them, every value
                      checked), settings.py (the Settings), secrets.py (token, URI credentials, the one scrubber)
- ``workload/``       base.py (LangChainUser, AsyncLangChainUser: measure your own tasks), users.py (the
                      built-in users: pick an operation, time it, fire one event), operations.py (the table: each
                      operation once, for both modes), request_events.py, data.py (documents, the id ledger),
                      dataset.py, embeddings.py, pacing.py (--target-rps), recall.py
- ``milvus/``         store.py (connecting, the collection, pre-population), verify.py (--verify), verdict.py (its
                      verdict, and the merge of a distributed run's)
- ``runtime/``        grpc_gevent.py and shield.py (the sync path), bridge.py (the async path), shutdown.py
                      (Ctrl-C, the exit deadline), monitor.py, health.py, memory.py, lost_workers.py, progress.py
- ``embedded/``       server.py (Milvus from the ``milvus`` wheel), loopback.py (its private network)
- ``web/``            page.py (the /milvus run page and Locust's extra tabs)
- ``report/``         histograms.py (the recorder), summary.py, plots.py, gates.py, compare.py, folder.py,
                      server_metrics.py; listeners.py is its only Locust part
- ``cli.py``, ``tutorial.py``   the plain commands

The path of one request: option -> ``RunState.pick`` by weight (workload/operations.py) -> the operation's
``prepare`` builds the arguments -> sync call in its own greenlet (runtime/shield.py) or coroutine on the bridge
(runtime/bridge.py) -> ``perf_counter`` around the call -> one request event (workload/request_events.py) ->
Locust's statistics and the report's recorder.
"""

__version__ = "0.1.0"
__all__ = ["AsyncLangChainUser", "AsyncMilvusUser", "LangChainUser", "SyncMilvusUser", "register"]


def __getattr__(name: str):
    # Lazy (PEP 562): ``import locust_milvus`` stays plain; asking for a user installs the plugin with it.
    if name == "register":
        from locust_milvus import plugin

        return plugin.register
    if name in __all__:
        from locust_milvus import plugin
        from locust_milvus.workload import base, users

        plugin.install()
        return getattr(users, name, None) or getattr(base, name)
    raise AttributeError(f"module 'locust_milvus' has no attribute {name!r}")
