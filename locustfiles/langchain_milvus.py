"""Load-test Milvus through LangChain's sync and async vector-store API (the project's main locustfile).

    locust -f locustfiles/langchain_milvus.py --headless -u 20 -r 20 -t 30s            # embedded Milvus
    locust -f locustfiles/langchain_milvus.py --host http://HOST:19530 SyncMilvusUser  # your Milvus

Without a user class name both run, half the users each. Every option is listed in the README.
"""

import os
import sys

if __name__ == "langchain_milvus":
    # Locust imports this file as the module "langchain_milvus", with this folder first on sys.path: that would
    # shadow LangChain's langchain_milvus package. Import the real package first (folder off the path), then
    # put sys.path back exactly as Locust left it, since Locust later removes the entry it inserted.
    _here, _saved = os.path.dirname(os.path.abspath(__file__)), sys.path[:]
    sys.modules.pop(__name__, None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    try:
        import langchain_milvus as _langchain_milvus  # noqa: F401
    finally:
        sys.path[:] = _saved

from locust_milvus.report import listeners  # noqa: E402,F401,I001  (first: its init checks --check-* before set-up)
from locust_milvus import lifecycle, options  # noqa: E402,F401  (registers the options and event listeners)
from locust_milvus.users import AsyncMilvusUser, SyncMilvusUser  # noqa: E402,F401
from locust_milvus import health, webui  # noqa: E402,F401,I001  (after lifecycle: saturation signals, the run page)
