"""Secrets stay secret (token, API key, credentials in a URI), TLS works, and where the embedded Milvus listens.

The canary run puts three unique secrets into one real web-UI locust process, drives a test through the UI against
the Milvus with TLS and authentication, and then searches every output for them: its log, every page and JSON
document of the UI, every file it wrote (report folder, --csv, --html) and its process title.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from locust_milvus.config.load import settings_from
from locust_milvus.config.secrets import hidden_argv, hide_host_credentials, redact_uri, split_credentials
from locust_milvus.embedded.server import EmbeddedMilvus, server_environment
from locust_milvus.milvus.store import connection_args

from .conftest import LOCUSTFILE, ROOT, child_env, make_settings, read_stats_csv
from .test_unit import fake_environment
from .test_web_ui import free_port, get, post

TOKEN = "tok-c4n4ry-9f3e"  # given as --milvus-token on the command line
PASSWORD = "pw-c4n4ry-71ad"  # the password in the --host URI (a real Milvus user's)
API_KEY = "sk-c4n4ry-5be0"  # OPENAI_API_KEY
CANARIES = (TOKEN, PASSWORD, API_KEY)


# --- redaction rules (no server) ---------------------------------------------------------------------------------

def test_credentials_are_split_from_the_uri_and_redacted():
    assert split_credentials("https://us%40er:p%3Ass@h.example:443/db") == ("https://h.example:443/db",
                                                                             "us@er:p:ss")
    assert split_credentials("http://h:19530") == ("http://h:19530", "")
    assert redact_uri("https://user:pw@h:443") == "https://***@h:443"
    assert redact_uri("http://user:pw@h:99999") == "http://***@h:99999"  # a malformed port does not raise


def test_settings_take_credentials_out_of_the_host():
    settings = settings_from(fake_environment(host=f"https://root:{PASSWORD}@h:443", milvus_token=TOKEN))
    assert settings.uri == "https://h:443" and settings.token == f"root:{PASSWORD}"  # the host's win


def test_host_credentials_move_into_the_token_where_locust_cannot_show_them():
    env = fake_environment(host=f"https://root:{PASSWORD}@h:443")
    env.host = env.parsed_options.host
    hide_host_credentials(env)
    assert env.host == env.parsed_options.host == "https://h:443"
    assert env.parsed_options.milvus_token == f"root:{PASSWORD}"


def test_process_title_hides_the_token_and_uri_credentials():
    argv = ["python", "-m", "locust", "--milvus-token", TOKEN, "--milvus-tok=" + TOKEN, "-H",
            f"https://root:{PASSWORD}@h:443", "--milvus-timeout", "3"]
    assert hidden_argv(argv) == ["python", "-m", "locust", "--milvus-token", "***", "--milvus-tok=***", "-H",
                                 "https://***@h:443", "--milvus-timeout", "3"]
    assert hidden_argv(["locust", "--milvus-timeout", "3"]) is None  # nothing to hide: the title is left alone


def test_tls_arguments_reach_pymilvus():
    settings = make_settings("https://h:443", "c", token=TOKEN, ca_file="/ca.pem", server_name="milvus.internal")
    assert connection_args(settings) == {"uri": "https://h:443", "token": TOKEN, "secure": True,
                                         "server_pem_path": "/ca.pem", "server_name": "milvus.internal"}
    assert connection_args(make_settings("http://h:19530", "c")) == {"uri": "http://h:19530"}


def test_the_embedded_server_gets_no_secrets_and_refuses_unknown_config():
    env = server_environment({"PATH": "/bin", "LOCUST_MILVUS_TOKEN": TOKEN, "OPENAI_API_KEY": API_KEY,
                              "AWS_SECRET_ACCESS_KEY": "x", "HOME": "/root"})
    assert env == {"PATH": "/bin", "HOME": "/root"}
    with pytest.raises(ValueError, match="common.security.nope"):
        EmbeddedMilvus(config={"common.security.nope": 1}).start()


# --- the canary run ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openai_endpoint_with_canary_key():
    """The OpenAI-compatible test endpoint, accepting the canary key only."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), str(port), API_KEY],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def _canary_user(secure) -> None:
    """A Milvus user whose password is the canary, with the built-in admin role."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=secure.uri, token=secure.token, server_pem_path=str(secure.ca_file))
    if "canary" not in client.list_users():
        client.create_user("canary", PASSWORD)
        client.grant_role("canary", "admin")
    client.close()


def _leaks(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


def test_secrets_never_leave_the_process(secure_milvus, collection, tmp_path, openai_endpoint_with_canary_key):
    _canary_user(secure_milvus)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    host = secure_milvus.uri.replace("https://", f"https://canary:{PASSWORD}@")
    log = open(tmp_path / "locust.log", "w+")
    (tmp_path / "csv").mkdir()
    env = child_env({"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": openai_endpoint_with_canary_key + "/v1",
                     "HOME": str(tmp_path)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port),
         "--host", host, "--milvus-ca-file", str(secure_milvus.ca_file), "--milvus-token", TOKEN,
         "--embedding", "openai", "--collection", collection, "--prepopulate", "20", "--reports-dir",
         str(tmp_path / "reports"), "--csv", str(tmp_path / "csv" / "run"), "--html", str(tmp_path / "report.html")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    pages = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                pages["/ before start"] = get(base + "/")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "locust.log").read_text()
                time.sleep(0.5)
        # Every user of the host can read a process's command line (ps): ours no longer shows the secrets.
        title = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "--milvus-token ***" in title.replace("\0", " ") and not _leaks(title), title

        assert post(f"{base}/swarm", {"user_count": 2, "spawn_rate": 2})["success"]  # one user of each class
        deadline = time.monotonic() + 120  # a busy 2-core machine
        while True:  # set-up (pre-population through the embedding endpoint), then load over TLS
            stats = {(s["method"], s["name"]): (s["num_requests"], s["num_failures"])
                     for s in json.loads(get(base + "/stats/requests"))["stats"] if s["name"] != "Aggregated"}
            # both pymilvus clients (sync and async) went through TLS with the URI's user
            if all(stats.get((mode, "search"), (0, 0))[0] >= 3 for mode in ("langchain-sync", "langchain-async")):
                break
            assert proc.poll() is None and time.monotonic() < deadline, (stats, (tmp_path / "locust.log").read_text())
            time.sleep(0.5)
        for path in ("/", "/stats/requests", "/stats/requests/csv", "/stats/failures/csv", "/stats/report",
                     "/exceptions", "/exceptions/csv", "/tasks", "/logs", "/worker-count"):
            pages[path] = get(base + path)
        assert all(failures == 0 for _, failures in stats.values()), stats
        post(f"{base}/stop", {})
        deadline = time.monotonic() + 60
        while "report written to" not in (tmp_path / "locust.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "locust.log").read_text()[-3000:]
            time.sleep(0.5)
        pages["/stats/report after stop"] = get(base + "/stats/report")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    output = (tmp_path / "locust.log").read_text()
    assert "Traceback" not in output
    assert not _leaks(output), output[-3000:]
    assert output.count("--host holds credentials; they replace --milvus-token") == 1
    # Locust shows the host in its UI and its HTML report: there, without credentials.
    bare_host = secure_milvus.uri
    assert bare_host in pages["/ before start"] and bare_host in pages["/stats/report after stop"]
    assert {path: _leaks(page) for path, page in pages.items() if _leaks(page)} == {}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "locust.log"]
    names = {p.name for p in written}
    assert {"report.html", "run_stats.csv", "summary.json", "summary.html", "locust_stats.csv"} <= names, names
    assert {str(p.relative_to(tmp_path)): _leaks(p.read_bytes().decode(errors="replace"))
            for p in written if _leaks(p.read_bytes().decode(errors="replace"))} == {}


def test_token_from_dotenv_over_tls(secure_milvus, collection, tmp_path):
    # The safe ways to give the token are the environment and ./.env (never on a command line). .env is read before
    # Locust parses its options, so LOCUST_MILVUS_TOKEN works from there too; without it this server refuses the
    # run ("no token" in test_bad_input.py).
    (tmp_path / ".env").write_text(f"LOCUST_MILVUS_TOKEN={secure_milvus.token}\n")
    env = {k: v for k, v in child_env({"HOME": str(tmp_path)}).items() if k != "LOCUST_MILVUS_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2", "-t", "2s",
         "--host", secure_milvus.uri, "--milvus-ca-file", str(secure_milvus.ca_file), "--collection", collection,
         "--prepopulate", "10", "--csv", str(tmp_path / "run"), "--reports-dir", str(tmp_path / "reports")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    total = read_stats_csv(tmp_path / "run")[("", "Aggregated")]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, total
    assert secure_milvus.token not in output


# --- where the embedded Milvus listens ---------------------------------------------------------------------------

# Milvus 2.3.5 binds each component's gRPC server and its metrics/health server to all interfaces: it has no
# setting for a listen address (proxy.ip and friends only choose the address it advertises). So server.py runs it
# in a private network namespace, reached through loopback.py's relay on 127.0.0.1.
ALL_INTERFACES_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def _listening(pids: set[int], net: str = "/proc/net") -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in these processes, as the network namespace whose /proc/net
    is ``net`` sees it (what ss -ltnp shows there)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, loopback, wildcard in (("tcp", "0100007F", "00000000"),
                                      ("tcp6", "0000000000000000FFFF00000100007F", "0" * 32)):
        for line in Path(f"{net}/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                shown = {loopback: "127.0.0.1", wildcard: "*", "00000000000000000000000001000000": "::1"}
                found.add((shown.get(address, address), int(port, 16)))
    return found


def _tree(pid: int) -> set[int]:
    pids, parents = {pid}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    grew = True
    while grew:
        children = {child for child, parent in parents.items() if parent in pids} - pids
        pids |= children
        grew = bool(children)
    return pids


def test_embedded_milvus_is_reachable_on_loopback_only(milvus):
    assert milvus.isolated, "the embedded Milvus runs in the host's network (no network namespace here?)"
    config = yaml.safe_load((milvus.data_dir / "configs" / "milvus.yaml").read_text())
    component_ports = {int(config[c]["port"]) for c in ALL_INTERFACES_COMPONENTS}
    component_ports.add(int(config["proxy"]["internalPort"]))
    relay = milvus.relay_pid
    milvus_tree = _tree(milvus.pid)
    assert relay not in milvus_tree and milvus.pid in _tree(relay)

    # In the host's network: the relay's two sockets, on 127.0.0.1, and not one socket of Milvus.
    assert _listening({relay}) == {("127.0.0.1", milvus.port), ("127.0.0.1", milvus.health_port)}
    assert _listening(milvus_tree) == set()
    # Milvus has a network of its own, whose only interface is its own loopback ...
    assert os.readlink(f"/proc/{milvus.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    interfaces = {line.split(":")[0].strip() for line in
                  Path(f"/proc/{milvus.pid}/net/dev").read_text().splitlines()[2:] if ":" in line}
    assert interfaces == {"lo"}, interfaces
    # ... where it binds every interface, as 2.3.5 does: the namespace, not Milvus, keeps it on loopback.
    inside = _listening(milvus_tree, net=f"/proc/{milvus.pid}/net")
    assert ("*", milvus.port) in inside and {port for _, port in inside} >= component_ports, inside


def test_embedded_milvus_in_the_hosts_network_listens_everywhere_and_says_so(caplog):
    """Where no namespace can be made (macOS, a locked-down container) Milvus runs as 2.3.5 does; network="host"
    takes that path on purpose."""
    with caplog.at_level(logging.WARNING), EmbeddedMilvus(network="host") as server:
        assert server.isolated is False and server.pid == server._proc.pid  # Milvus itself, no relay
        assert ("*", server.port) in _listening(_tree(server.pid))
    assert not [r for r in caplog.records if "every interface" in r.getMessage()]  # asked for: no warning
    with pytest.raises(ValueError, match="network must be 'private' or 'host'"):
        EmbeddedMilvus(network="public")
