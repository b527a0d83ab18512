"""Load-test Milvus through LangChain's sync and async vector-store API (the project's main locustfile).

    locust -f locustfiles/locustfile.py --headless -u 20 -r 20 -t 30s            # embedded Milvus
    locust -f locustfiles/locustfile.py --host http://HOST:19530 SyncMilvusUser  # your Milvus

Without a user class name both run, half the users each. Every option is listed in docs/options.md.
"""

from locust_milvus import AsyncMilvusUser, SyncMilvusUser  # noqa: F401
