"""Test helper: a TCP relay from inside a network namespace to the host's loopback (tests/test_network_split.py).

    python tests/netns_relay.py NETNS_PATH LISTEN_HOST LISTEN_PORT TARGET_PORT

Binds LISTEN_HOST:LISTEN_PORT inside the namespace at NETNS_PATH (e.g. /var/run/netns/NAME), then returns to the
host's namespace and connects each client to 127.0.0.1:TARGET_PORT there: it lets processes in the test's private
namespaces reach the embedded Milvus, which listens on the host's loopback only. A socket keeps the namespace it was
made in, and setns(2) moves only the calling thread, so the listening socket is made first and everything after
runs in the host's namespace.
"""

import ctypes
import os
import socket
import sys
import threading

from relay import serve

CLONE_NEWNET = 0x40000000
ns_path, listen_host, listen_port, target_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)


def setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


host_ns = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
host_fd = os.open(host_ns, os.O_RDONLY)  # held open: the way back
setns(ns_path)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((listen_host, listen_port))
server.listen()
if libc.setns(host_fd, CLONE_NEWNET) != 0:
    raise OSError(ctypes.get_errno(), "setns back to the host's namespace")
print("ready", flush=True)
serve(server, target_port)
