"""Test helper: the TCP relay loop shared by tests/tcp_capture.py and tests/netns_relay.py (run as scripts).

Plain threads, no gevent: a relay stands for the network between processes, not for anything under test.
"""

import socket
import threading
from collections.abc import Callable


def pump(src: socket.socket, dst: socket.socket, record: Callable[[bytes], None] | None = None) -> None:
    try:
        while data := src.recv(65536):
            if record is not None:
                record(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(server: socket.socket, target_port: int, record: Callable[[bytes], None] | None = None) -> None:
    """Connect each client of ``server`` to 127.0.0.1:``target_port`` and pump both ways, for ever."""
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:  # the target is not listening yet: drop this client; it connects again
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream, record), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, record), daemon=True).start()
