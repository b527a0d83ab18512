"""The embedded real Milvus: a Milvus 2.3 standalone from the ``milvus`` PyPI wheel, on loopback.

We use the wheel's config template and binary but start and watch the process ourselves, because the
wheel's ``MilvusServer`` cannot tell a dead child from a slow one (it waits out its 180 s timeout), leaves
its child running if the parent is killed, and chdirs the whole process while starting.

The wheel's template pins the embedded etcd's peer port to 2380, so a second server on the host dies at start
(seen when this project began: the second server's wrapper stayed alive with a defunct child). We give each
server's etcd its own free peer port through etcd.config.path, so several run side by side; a failed start (the
child exits before it is healthy) is still detected and reported.

Milvus 2.3.5 binds every interface and cannot be told otherwise, so it runs in a private network namespace and
clients reach it through a relay on 127.0.0.1 (loopback.py); where Linux namespaces are not available it runs in the
host's network, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
# Graceful stop after load took more than 10 s here. A temporary server's data is discarded, so it gets a short
# grace; a kept data directory gets time to flush.
STOP_TIMEOUT_S = {"temporary": 3.0, "kept": 30.0}


class EmbeddedServerError(RuntimeError):
    """The embedded Milvus could not be started (the message says why and where its logs are)."""


class _ExitedAtStart(EmbeddedServerError):
    """The server process died before it was healthy (e.g. a port it was given was taken meanwhile)."""


_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)

# Free ports are probed, then handed to the server, which binds them a moment later: another server starting on
# the same host in that window can take one, and ours then exits at start. Fresh ports on a second try fix it.
START_ATTEMPTS = 3


# Started with os.posix_spawn, never fork: our process has gRPC threads running, and gRPC's fork handlers abort a
# forked child before it can exec (seen here as SIGABRT with "epoll_wait error: Bad file descriptor"; the same
# family as trap 4 in runtime/bridge.py). glibc's posix_spawn runs no fork handlers. What it starts is loopback.py, a
# standard-library script that gives Milvus a private network namespace reached through a relay on 127.0.0.1 (see
# there: Milvus 2.3.5 itself binds every interface), asks Linux to SIGKILL it (and so Milvus) when our process dies,
# so even a SIGKILLed locust leaves no orphan, and starts Milvus in the data directory.
_LOOPBACK_SCRIPT = str(Path(__file__).with_name("loopback.py"))
_STATUS_FD = 3  # where loopback.py writes "isolated PID" or "direct"
_STATUS_TIMEOUT_S = 30.0


class _Child:
    """The bits of Popen we need, for a pid from posix_spawn (poll, terminate, kill, wait)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return self.returncode


class EmbeddedMilvus:
    """Start, health-check and stop one Milvus standalone on loopback.

    ``data_dir=None`` uses a temporary directory that :meth:`stop` removes; a given directory is kept.
    ``port=None`` picks a free proxy port starting at 19530. ``config``: extra ``milvus.yaml`` settings by dotted
    key, for keys the wheel's template has, e.g. ``{"common.security.tlsMode": 1, "tls.serverPemPath": PATH}``
    (TLS) or ``{"common.security.authorizationEnabled": True}`` (user root, password Milvus); :meth:`start`
    raises ValueError for a key the template lacks (the wheel would ignore it silently). ``network="host"`` skips
    the private network namespace (Milvus then listens on every interface; for the relay benchmark).
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, port: int | None = None,
                 config: dict[str, object] | None = None, network: str = "private") -> None:
        if network not in ("private", "host"):
            raise ValueError(f"network must be 'private' or 'host', not {network!r}")
        self._network = network
        self._keep = data_dir is not None
        self._data_dir = Path(data_dir) if data_dir else None
        self._port = port
        self._config = dict(config or {})
        self._proc: _Child | None = None  # loopback.py (Milvus itself where it could not isolate it)
        self._milvus_pid: int | None = None
        self._logs: list = []
        self.health_port: int | None = None
        # Whether Milvus runs in a private network namespace, reachable only through 127.0.0.1 (loopback.py).
        self.isolated: bool | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def pid(self) -> int | None:
        """Milvus's own process (to pause or kill it in a test), not the relay's."""
        return self._milvus_pid if self._proc else None

    @property
    def relay_pid(self) -> int | None:
        """The loopback relay's process (loopback.py), when Milvus runs in its private network."""
        return self._proc.pid if self._proc and self.isolated else None

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Start the server and wait until it is healthy; return its URI. On any failure, stop and raise."""
        try:
            import milvus
        except ImportError:
            raise EmbeddedServerError(
                "the embedded Milvus needs the 'milvus' wheel (x86_64 Linux/macOS): pip install milvus, "
                "or give --host http://HOST:19530"
            ) from None
        fixed_port = self._port is not None
        for attempt in range(1, START_ATTEMPTS + 1):
            if self._data_dir is None:
                self._data_dir = Path(tempfile.mkdtemp(prefix="locust-milvus-"))
            try:
                self._launch(milvus)
                self._wait_healthy(timeout)
                break
            except _ExitedAtStart as e:
                self.stop()
                if fixed_port or attempt == START_ATTEMPTS:
                    raise
                logger.warning("embedded Milvus exited at start (%s); trying again on other ports", e)
                self._port = None
            except BaseException:
                self.stop()
                raise
        logger.info("embedded Milvus %s ready at %s (pid %s, data %s)", milvus.__version__, self.uri, self.pid,
                    self._data_dir)
        return self.uri

    def _launch(self, milvus) -> None:
        config = milvus.MilvusServerConfig(data_dir=str(self._data_dir))
        if self._port is not None:
            config.update(proxy_port=self._port)
        # Advertise loopback to the server's own components instead of the first non-loopback address.
        for component in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode",
                          "dataCoord", "dataNode"):
            config.set(f"{component}.ip", "127.0.0.1")
        unknown = set(self._config) - _template_keys(config.template_text)
        if unknown:
            raise ValueError(f"not keys of the Milvus {milvus.__version__} config template: {sorted(unknown)}")
        for key, value in self._config.items():
            config.set(key, config.get_value_text(value))  # True -> "true", as YAML wants
        try:
            config.resolve()  # picks free ports, writes configs/milvus.yaml under data_dir
        except RuntimeError as e:  # the wheel's "set proxy_port=P, but bind failed"
            raise EmbeddedServerError(
                f"port {self._port} is not free on 127.0.0.1 ({e}): choose another port"
            ) from None
        self._port = int(config.get("proxy_port"))
        taken = {int(config.get(k)) for k in config.configurable_items if k.endswith("_port")}
        self._configure_etcd_peer(int(config.get("etcd_port")), self._free_port(2380, taken))
        milvus._initialize_data_files(str(self._data_dir))  # unpacks the binary into data_dir/bin
        self.health_port = self._free_port(9091, taken | {self._etcd_peer_port})
        exe = self._data_dir / "bin" / "milvus"
        env = server_environment(os.environ)
        env.update(DEPLOY_MODE="STANDALONE", METRICS_PORT=str(self.health_port),
                   MILVUS_RUN_DIR=str(self._data_dir / "run"))
        libpath = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
        env[libpath] = os.pathsep.join(filter(None, [str(exe.parent), env.get(libpath, "")]))
        logs = self._data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._logs = [open(logs / "milvus-stdout.log", "wb"), open(logs / "milvus-stderr.log", "wb")]
        status_read, status_write = os.pipe()
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", _LOOPBACK_SCRIPT, str(_STATUS_FD), str(self._data_dir),
                 f"{self._port},{self.health_port}", self._network, str(exe), "run", "standalone"],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, self._logs[0].fileno(), 1),
                    (os.POSIX_SPAWN_DUP2, self._logs[1].fileno(), 2),
                    (os.POSIX_SPAWN_DUP2, status_write, _STATUS_FD),
                ],
                setsid=True,  # Ctrl-C in the terminal reaches locust, which stops the server in order
            )
        finally:
            os.close(status_write)
        self._proc = _Child(pid)
        with os.fdopen(status_read) as status:
            ready, _, _ = select.select([status], [], [], _STATUS_TIMEOUT_S)
            line = status.readline().split() if ready else []
        if line[:1] == ["isolated"]:
            self.isolated, self._milvus_pid = True, int(line[1])
        elif line == ["direct"]:
            self.isolated, self._milvus_pid = False, pid
            if self._network == "private":
                logger.warning("embedded Milvus runs in the host's network and listens on every interface, not only on "
                               "loopback: %s", self._last_output() or "no private network namespace here")
        else:
            self._proc.poll()
            raise _ExitedAtStart(f"the loopback relay did not start Milvus; last output: {self._last_output()!r}")

    def _configure_etcd_peer(self, client_port: int, peer_port: int) -> None:
        # The wheel's template leaves the embedded etcd's peer port at its default 2380, so a second server on
        # the host dies at start. Milvus reads an embedded-etcd config file from etcd.config.path; the
        # template has no such key, so we add it to the written milvus.yaml with a free peer port.
        self._etcd_peer_port = peer_port
        peer = f"http://127.0.0.1:{peer_port}"
        client = f"http://127.0.0.1:{client_port}"
        etcd_yaml = self._data_dir / "configs" / "embedEtcd.yaml"
        etcd_yaml.write_text(
            f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n"
        )
        milvus_yaml = self._data_dir / "configs" / "milvus.yaml"
        text = milvus_yaml.read_text()
        milvus_yaml.write_text(text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_yaml}\n", 1))

    @staticmethod
    def _free_port(start: int, taken: set[int]) -> int:
        import socket

        for port in range(start, start + 1000):
            if port in taken:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise EmbeddedServerError(f"no free port in {start}..{start + 999} for the Milvus health endpoint")

    def _wait_healthy(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise _ExitedAtStart(
                    f"embedded Milvus exited with code {code} before it was ready; last output: "
                    f"{self._last_output()!r} (pass --embedded-data DIR to keep its logs)"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200 and b"OK" in resp.read():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise EmbeddedServerError(
            f"embedded Milvus not healthy after {timeout:.0f} s; last output: {self._last_output()!r} "
            "(pass --embedded-data DIR to keep its logs)"
        )

    def _last_output(self) -> str:
        for f in reversed(self._logs):
            f.flush()
            lines = [ln for ln in Path(f.name).read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return lines[-1][-300:]
        return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and remove temporary data."""
        proc, self._proc = self._proc, None
        grace = STOP_TIMEOUT_S["kept" if self._keep else "temporary"]
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                if self._keep:
                    logger.warning("embedded Milvus did not stop in %.0f s; killing it", grace)
                proc.kill()
                proc.wait(timeout=30)
        for f in self._logs:
            f.close()
        self._logs = []
        if not self._keep and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> EmbeddedMilvus:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def server_environment(environ) -> dict[str, str]:
    """The server's environment: ours without secrets.

    The server needs none of them (LOCUST_MILVUS_TOKEN, OPENAI_API_KEY, ...), and a long-lived process holding them
    in /proc/PID/environ (and in its crash reports) is one more place they could be read from.
    """
    return {k: v for k, v in environ.items() if not _SECRET_ENV.search(k)}


def _template_keys(template: str) -> set[str]:
    """The dotted keys of the wheel's milvus.yaml template, walked as the wheel's MilvusServerConfig walks them."""
    keys, path = set(), []
    for line in template.splitlines():
        match = re.match(r"^( *)([a-zA-Z0-9_]+):", line)
        if match is None or line.lstrip().startswith("#"):
            continue
        path = path[: len(match[1]) // 2] + [match[2]]
        keys.add(".".join(path))
    return keys


def serve(port: int | None, data_dir: str | None) -> int:
    """``locust-milvus server``: run the embedded Milvus in the foreground until Ctrl-C or SIGTERM."""
    server = EmbeddedMilvus(data_dir=data_dir, port=port)
    stopping = []

    def _on_signal(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    # Ctrl-C too, explicitly: a process started in the background by a non-interactive shell (or by a parent that
    # ignores SIGINT) inherits SIGINT ignored, and would then not stop on the signal this command promises to obey.
    signal.signal(signal.SIGINT, _on_signal)
    try:
        uri = server.start()
        print(uri, flush=True)
        while server.running():
            time.sleep(0.5)
        if not stopping:
            print(f"error: embedded Milvus exited unexpectedly (logs: {server.data_dir / 'logs'})", file=sys.stderr)
            return 1
    except EmbeddedServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
