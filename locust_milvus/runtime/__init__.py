"""The process's machinery: gRPC under gevent, the asyncio bridge, shielded sync calls, shutdown, monitoring."""
