"""locust-milvus: Locust users that load-test Milvus through LangChain's sync and async vector-store API.

Import the users from ``locust_milvus.users`` (that import pulls in Locust, which monkey-patches the standard
library with gevent); this package root imports nothing heavy so that ``locust-milvus server`` stays plain.
"""

__version__ = "0.1.0"
