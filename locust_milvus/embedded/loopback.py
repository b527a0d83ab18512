"""Keep the embedded Milvus on loopback: a private network namespace, and a relay from the host's loopback into it.

Milvus 2.3.5 binds its proxy, its internal gRPC servers and its metrics port to every interface, has no setting for a
listen address (``proxy.ip`` and friends only choose the address it advertises), and binds with Go's own system
calls, so no ``LD_PRELOAD`` shim can redirect it. So it gets a network of its own: this script, started by server.py
with the standard library only (``python -I``), binds the ports clients use on the host's 127.0.0.1, moves itself
into a new network namespace (Linux ``unshare``; as an unprivileged user inside a new user namespace too) whose only
interface is its own loopback, starts Milvus there, and relays each connection from the host side to the same port
inside. Every socket Milvus opens, whatever address it asks for, lives in a namespace no other machine can reach.

The relay costs one extra local hop per call; bench/loopback_relay.py measures it. Where namespaces are not
available (macOS, a kernel or container that forbids them), the script reports ``direct`` and execs Milvus in the
host's network as before; server.py then logs a warning that it listens on every interface.

Usage (server.py builds it): ``loopback.py STATUS_FD DATA_DIR PORT[,PORT...] private|host EXE ARG...`` (``host``:
no namespace, as where none is available; the benchmark compares the two). It writes one line to
STATUS_FD: ``isolated MILVUS_PID`` or ``direct``, then closes it. It exits with Milvus's exit status, forwards
SIGTERM and SIGINT to it, and dies (taking Milvus with it) if its own parent dies.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import struct
import sys
import threading
import time

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SIOCSIFFLAGS = 0x8914
SIOCOUTQ = 0x5411  # bytes in a TCP socket's send queue
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
CHUNK = 64 * 1024
OPEN: set[socket.socket] = set()  # the host-side connections, reset when Milvus is gone


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """Linux kills us when the process that started us dies, so a SIGKILLed locust leaves no orphan."""
    if sys.platform.startswith("linux"):
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def isolate() -> str | None:
    """Enter a new network namespace with its loopback up; None if it worked, else why not."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (this is {sys.platform})"
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNET) != 0:
        first = os.strerror(ctypes.get_errno())
        # Without CAP_SYS_ADMIN: a user namespace of our own gives it, where the kernel allows unprivileged ones.
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return f"unshare(CLONE_NEWNET): {first}; with a user namespace: {os.strerror(ctypes.get_errno())}"
        for name, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    # A new namespace's loopback is down: bring it up (what `ip link set lo up` does).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
    return None


def _pump(src: socket.socket, dst: socket.socket, ended: threading.Event) -> None:
    """One direction of one connection. Blocking threads, not a selector loop: the relay holds a handful of
    long-lived gRPC connections, and a thread blocked in recv wakes with no dispatch in between."""
    buffer = bytearray(CHUNK)  # reused: recv(CHUNK) would allocate (and mmap) a fresh buffer per message
    view = memoryview(buffer)
    try:
        while n := src.recv_into(buffer):
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        ended.set()


def _drain(sock: socket.socket, timeout: float) -> None:
    """Wait (a little) until what was relayed to the client has left, before the reset would discard it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            (queued,) = struct.unpack("i", fcntl.ioctl(sock, SIOCOUTQ, b"\0" * 4))
        except OSError:
            return
        if queued == 0:
            return
        time.sleep(0.01)


def _relay(client: socket.socket, server: socket.socket) -> None:
    ended = threading.Event()
    pumps = [threading.Thread(target=_pump, args=pair + (ended,), daemon=True)
             for pair in ((client, server), (server, client))]
    for pump in pumps:
        pump.start()
    ended.wait()
    # One direction ended, so the connection is over (gRPC never half-closes TCP). It is torn down with a reset
    # to the client, not a FIN: a FIN sent first would leave this end in TIME_WAIT on the client port, and Milvus's
    # wheel probes that port without SO_REUSEADDR when a server is restarted on it (the fault tests); a reset is
    # also what a client of a killed Milvus sees. shutdown(SHUT_RD) wakes the other pump without sending anything.
    _drain(client, 1.0)
    for sock in (client, server):
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
    for pump in pumps:
        pump.join()
    OPEN.discard(client)
    client.close()  # SO_LINGER 0: a reset
    server.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))  # created after isolate(): inside the namespace
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _serve(listener: socket.socket, port: int) -> None:
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # gRPC sets it on its side; so must we
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() resets
        OPEN.add(client)
        try:
            server = _connect(port)
        except OSError:  # Milvus is not listening yet, or is gone: the client sees a reset connection
            OPEN.discard(client)
            client.close()
            continue
        threading.Thread(target=_relay, args=(client, server), daemon=True).start()


def main(argv: list[str]) -> int:
    status_fd, data_dir, ports, network, exe, args = int(argv[1]), argv[2], argv[3], argv[4], argv[5], argv[5:]
    die_with_parent()
    os.set_inheritable(status_fd, False)
    status = os.fdopen(status_fd, "w")
    listeners = []
    for port in map(int, ports.split(",") if network == "private" else []):
        try:
            listeners.append(socket.create_server(("127.0.0.1", port), backlog=128))
        except OSError as e:
            print(f"loopback relay: cannot listen on 127.0.0.1:{port}: {e}", file=sys.stderr, flush=True)
            return 98
    why_not = isolate() if network == "private" else "the host's network was asked for"
    if why_not is not None:
        for listener in listeners:
            listener.close()
        print(f"loopback relay: no private network ({why_not}); Milvus runs in the host's network",
              file=sys.stderr, flush=True)
        status.write("direct\n")
        status.close()
        os.chdir(data_dir)
        os.execv(exe, args)
    pid = os.fork()  # no thread exists yet in this process, so fork is safe
    if pid == 0:
        try:
            die_with_parent()
            os.chdir(data_dir)
            os.execv(exe, args)
        finally:
            os._exit(127)
    status.write(f"isolated {pid}\n")
    status.close()

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # already gone
            pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    for listener, port in zip(listeners, ports.split(","), strict=True):
        threading.Thread(target=_serve, args=(listener, int(port)), daemon=True).start()
    _, status_code = os.waitpid(pid, 0)  # (retried after our signal handlers, PEP 475)
    code = os.waitstatus_to_exitcode(status_code)
    for client in list(OPEN):
        client.close()  # a reset (SO_LINGER 0), as Milvus's own sockets got
    if code < 0:  # Milvus died of a signal: so do we, so that our parent sees what Milvus's would have seen
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)  # daemon threads may be blocked in recv: no joins


if __name__ == "__main__":
    sys.exit(main(sys.argv))
