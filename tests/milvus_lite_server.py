"""Run ``milvus-lite server`` with Milvus's own gRPC keepalive policy, for the tests' second real server.

pymilvus pings every channel every 10 s, calls or not (``grpc.keepalive_time_ms`` 10000 with
``keepalive_permit_without_calls``). Milvus's proxy allows that: its enforcement policy is ``MinTime`` 5 s with
``PermitWithoutStream`` (internal/distributed/proxy/service.go in milvus-io/milvus). ``milvus-lite server`` builds
a plain ``grpc.server`` that keeps gRPC core's defaults (pings without data at most every 5 minutes, two strikes),
so a pymilvus channel left idle between two tests was closed with GOAWAY ``too_many_pings`` and the next call on
it failed with ``UNAVAILABLE: Too many pings`` (one CI run failed so). The tests keep module-scoped stores and
pymilvus's shared connections open for minutes, which no Locust run does, so the server gets Milvus's policy here;
everything else is the unchanged Milvus Lite engine and its gRPC servicer.

Usage: ``python -m tests.milvus_lite_server --data-dir D --host 127.0.0.1 --port P`` (milvus-lite's own options).
"""
from __future__ import annotations

import sys

import grpc

# gRPC core's server-side names for Go's EnforcementPolicy{MinTime: 5s, PermitWithoutStream: true}.
MILVUS_KEEPALIVE_POLICY = (
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
)


def main() -> int:
    build = grpc.server

    def server(*args, options=(), **kwargs):
        return build(*args, options=[*options, *MILVUS_KEEPALIVE_POLICY], **kwargs)

    grpc.server = server  # milvus_lite.adapter.grpc.server calls grpc.server(...) at start-up, after this
    from milvus_lite.cmdline import main as milvus_lite_main

    return milvus_lite_main(["server", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
