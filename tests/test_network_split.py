"""A master and two workers as separate hosts: each in a network namespace of its own, joined by veth pairs to a
bridge in the master's, with addresses that exist only inside those namespaces. One worker's link is cut mid-run and
restored; the master must notice, carry on, report the loss, take the worker back, and end on time.

Milvus (the session's embedded server, on the host's loopback) is reached from the master's namespace through a
relay (tests/netns_relay.py) on the bridge's address, so a worker's Milvus traffic crosses its link too: cutting the
link cuts the worker off from everything, as a lost network does. Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import LOCUSTFILE, ROOT, child_env

pytestmark = pytest.mark.locust
SUBNET = "10.213.77"  # inside the test's namespaces only
MASTER_IP = f"{SUBNET}.1"
MASTER_PORT = 5557
RELAY_PORT = 19530


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def hosts():
    """Three namespaces, master and workers 0 and 1, on a bridge in the master's; removed after the test."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (ip netns) to make network namespaces")
    tag = f"lm{os.getpid() % 100000}"
    names = {"master": f"{tag}m", "w0": f"{tag}w0", "w1": f"{tag}w1"}
    made = []
    try:
        for ns in names.values():
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        m = names["master"]
        ip("-n", m, "link", "add", "br0", "type", "bridge")
        ip("-n", m, "addr", "add", f"{MASTER_IP}/24", "dev", "br0")
        ip("-n", m, "link", "set", "br0", "up")
        for i, worker in enumerate(("w0", "w1")):
            # veth ends are made in the master's namespace, then one end is moved: no interface ever exists in
            # the host's namespace.
            ip("-n", m, "link", "add", f"v{worker}", "type", "veth", "peer", "name", "eth0", "netns", names[worker])
            ip("-n", m, "link", "set", f"v{worker}", "master", "br0")
            ip("-n", m, "link", "set", f"v{worker}", "up")
            ip("-n", names[worker], "addr", "add", f"{SUBNET}.{10 + i}/24", "dev", "eth0")
            ip("-n", names[worker], "link", "set", "eth0", "up")
    except subprocess.CalledProcessError as exc:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot make network namespaces here: {exc.stderr.strip()}")
    yield names
    for ns in made:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Proc:
    """A process whose output goes to a file, read while it runs."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT, text=True,
                                     env=child_env())

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Seconds until ``pattern`` appears in the output (fails the test after ``timeout``)."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if re.search(pattern, self.text()):
                return time.monotonic() - began
            if self.proc.poll() is not None and not re.search(pattern, self.text()):
                pytest.fail(f"exited ({self.proc.returncode}) before printing {pattern!r}:\n{self.text()[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"{pattern!r} not printed in {timeout} s:\n{self.text()[-4000:]}")

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"did not exit within {timeout} s (a hang):\n{self.text()[-4000:]}")
        finally:
            self.handle.close()


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


def test_a_worker_whose_network_is_cut_is_reported_taken_back_and_the_run_ends(milvus, collection, hosts, tmp_path):
    milvus_port = urlsplit(milvus.uri).port
    relay = subprocess.Popen([sys.executable, str(Path(__file__).parent / "netns_relay.py"),
                              f"/var/run/netns/{hosts['master']}", MASTER_IP, str(RELAY_PORT), str(milvus_port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout.readline().strip() == "ready"
        run_s = 30
        master = Proc(in_ns(hosts["master"], "--master", "--master-bind-host", MASTER_IP, "--master-bind-port",
                            str(MASTER_PORT), "--headless", "--expect-workers", "2", "-u", "4", "-r", "4",
                            "-t", f"{run_s}s", "--host", f"http://{MASTER_IP}:{RELAY_PORT}", "--collection",
                            collection, "--prepopulate", "100", "--milvus-timeout", "3", "--exit-code-on-error", "0",
                            "--reports-dir", str(tmp_path / "reports")), tmp_path / "master.log")
        workers = [Proc(in_ns(hosts[w], "--worker", "--master-host", MASTER_IP, "--master-port", str(MASTER_PORT)),
                        tmp_path / f"{w}.log") for w in ("w0", "w1")]
        began = time.monotonic()
        master.wait_for(r"All users spawned", timeout=120)
        time.sleep(3)
        # Worker 0's index is the order it connected in: cut the link of whichever is worker 0 to the master,
        # so the log line names it; both links are alike.
        ip("-n", hosts["master"], "link", "set", "vw0", "down")
        cut = time.monotonic()
        noticed = master.wait_for(r"locust-milvus: worker \d \(pid \d+\) stopped sending heartbeats", timeout=20)
        # Locust marks a worker missing after 3 heartbeats (1 s apart); our watch polls each second.
        assert noticed < 10, noticed
        time.sleep(3)
        ip("-n", hosts["master"], "link", "set", "vw0", "up")
        master.wait_for(r"self-healed with heartbeat", timeout=30)
        master.wait_for(r"locust-milvus: worker \d \(pid \d+\) is back \d+ s after it went silent", timeout=10)
        assert time.monotonic() - cut < run_s, "the link came back after the run's end: nothing left to check"
        code = master.finish(timeout=run_s + 90)
        elapsed = time.monotonic() - began
        worker_codes = [w.finish(timeout=30) for w in workers]
    finally:
        relay.kill()
        relay.wait()
    out = master.text()
    assert code == 0, out[-4000:]
    assert elapsed < run_s + 120, elapsed  # set-up, the run, the report: no hang
    assert worker_codes == [0, 0], [w.text()[-3000:] for w in workers]
    for text in (out, *(w.text() for w in workers)):
        assert "Traceback" not in text, text[-4000:]
    [folder] = list((tmp_path / "reports").iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    [lost] = summary["generator_health"]["lost_workers"]
    assert lost["how"].startswith("stopped sending heartbeats") and lost["rejoined_after_s"] is not None, lost
    assert 2 <= lost["rejoined_after_s"] <= 30 and lost["users"] == 2, lost
    finding = next(f for f in summary["findings"] if f["kind"] == "lost_worker")
    assert "came back" in finding["text"] and finding["evidence"]["users_lost"] == 0, finding
    assert "came back" in (folder / "summary.md").read_text()
    # Both workers' requests reached the master, the cut one's included (late, after its link returned).
    totals = [re.search(r"locust-milvus monitor: .* requests=(\d+)", w.text()) for w in workers]
    assert all(totals) and all(int(m.group(1)) > 0 for m in totals), [w.text()[-2000:] for w in workers]
