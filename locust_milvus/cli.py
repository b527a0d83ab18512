"""The ``locust-milvus`` console command.

``locust-milvus server [--port P] [--data DIR]`` runs the embedded Milvus in the foreground and prints its URI
once it is ready. ``locust-milvus tutorial [--host URI] [--counts 10,100,1000]`` reproduces the LangChain
tutorial's sync-versus-async table (see tutorial.py). ``locust-milvus compare DIR_A DIR_B [--out DIR]`` puts two
report folders side by side (report/compare.py). Load tests themselves run through
``locust -f locustfiles/locustfile.py``.
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
    tutorial = sub.add_parser("tutorial", help="reproduce the LangChain tutorial's sync-versus-async timing table")
    tutorial.add_argument("--host", default="", help="Milvus URI; default: start the embedded Milvus for the run")
    tutorial.add_argument("--counts", default="10,100,1000", help="operation counts (default: 10,100,1000)")
    tutorial.add_argument("--dim", type=int, default=128, help="embedding dimension (default: 128)")
    tutorial.add_argument("--out", default=None, help="output folder (default: reports/<timestamp>-tutorial)")
    compare = sub.add_parser("compare", help="compare two report folders side by side (tables and plots)")
    compare.add_argument("dir_a", help="a report folder (reports/<timestamp>-<name>/)")
    compare.add_argument("dir_b", help="the report folder to compare with it")
    compare.add_argument("--out", default=None, help="output folder (default: reports/<timestamp>-compare)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.command == "server":
        from locust_milvus.embedded.server import serve

        if args.port is not None and not 0 < args.port < 65536:
            parser.error(f"--port must be between 1 and 65535, got {args.port}")
        return serve(args.port, args.data)
    if args.command == "tutorial":
        return _tutorial(parser, args)
    if args.command == "compare":
        return _compare(args)
    return 2


def _tutorial(parser: argparse.ArgumentParser, args) -> int:
    import time
    from pathlib import Path

    from locust_milvus.config.secrets import redact_uri
    from locust_milvus.config.settings import ConfigError, check_uri
    from locust_milvus.embedded.server import EmbeddedMilvus, EmbeddedServerError
    from locust_milvus.tutorial import run, write_report

    try:
        counts = [int(c) for c in args.counts.split(",")]
        if not counts or min(counts) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--counts must be whole numbers >= 1 separated by commas, got {args.counts!r}")
    if args.dim < 1:
        parser.error(f"--dim must be >= 1, got {args.dim}")
    out = Path(args.out or f"reports/{time.strftime('%Y%m%d-%H%M%S')}-tutorial")
    server = None
    try:
        if args.host:
            uri = check_uri(args.host)  # pymilvus reads a user:password in it; tutorial.md must not show them
            target = redact_uri(uri)
        else:
            server = EmbeddedMilvus()
            uri = server.start()
            target = "the embedded Milvus 2.3.5 on this machine"
        rows = run(uri, counts, args.dim)
    except (ConfigError, EmbeddedServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    table, chart = write_report(rows, target, out)
    print(f"written: {table} and {chart}")
    return 0


def _compare(args) -> int:
    from locust_milvus.config.settings import ConfigError
    from locust_milvus.report.compare import compare_folders

    try:
        files = compare_folders(args.dir_a, args.dir_b, args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"written: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
