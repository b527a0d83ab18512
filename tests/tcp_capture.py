"""Test helper: a TCP relay that records every byte it forwards, both ways (tests/test_secrets_home.py).

    python tests/tcp_capture.py LISTEN_PORT TARGET_PORT OUT_FILE

Listens on 127.0.0.1:LISTEN_PORT, connects each client to 127.0.0.1:TARGET_PORT, and appends what passes to
OUT_FILE. It stands for the network between a Locust worker and its master.
"""

import socket
import sys
import threading

from relay import serve

listen_port, target_port, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
out = open(out_path, "ab", buffering=0)  # noqa: SIM115 - for the life of the process


def record(data: bytes) -> None:
    with lock:
        out.write(data)


server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", listen_port))
server.listen()
print("ready", flush=True)
serve(server, target_port, record)
