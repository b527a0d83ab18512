"""The ``locust-milvus`` console command.

``locust-milvus server [--port P] [--data DIR]`` runs the embedded Milvus in the foreground and prints its URI
once it is ready. Load tests themselves run through ``locust -f locustfiles/langchain_milvus.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="locust-milvus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="run the embedded Milvus standalone on loopback until Ctrl-C")
    server.add_argument("--port", type=int, default=None, help="proxy (gRPC) port; default: first free from 19530")
    server.add_argument("--data", default=None, help="data directory, kept; default: a temporary one, removed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.command == "server":
        from locust_milvus.server import serve

        if args.port is not None and not 0 < args.port < 65536:
            parser.error(f"--port must be between 1 and 65535, got {args.port}")
        return serve(args.port, args.data)
    return 2


if __name__ == "__main__":
    sys.exit(main())
