"""Third-party logs that repeat a failure: langchain-milvus's "Failed to insert batch ... First entity data" (with
the whole document) is throttled to one line per distinct message per interval, cut short, without traceback."""

from __future__ import annotations

import io
import json
import logging

import pytest

from locust_milvus.embedded.server import EmbeddedMilvus
from locust_milvus.runtime.quiet_logs import MAX_CHARS, Throttle

from .conftest import run_locust


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_keeps_one_short_line_per_message_per_interval():
    clock = Clock()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(Throttle(interval_s=10.0, clock=clock))
    log = logging.getLogger("langchain_milvus.vectorstores.milvus.test")
    log.addHandler(handler)
    log.propagate = False
    private = "secret patient record " * 3000  # 66,000 characters of document text
    try:
        for second in range(60):  # a minute of failing inserts, 20 a second
            clock.now = float(second)
            for n in range(20):
                log.error("Failed to insert batch starting at entity: %s/%s. First entity data: %s", n + 1, 20,
                          {"text": private})
        logging.getLogger("other").addHandler(handler)
        logging.getLogger("other").error("x" * 1000)  # other loggers pass untouched
    finally:
        log.removeHandler(handler)
        logging.getLogger("other").removeHandler(handler)
    lines = out.getvalue().splitlines()
    throttled = [line for line in lines if line.startswith("Failed to insert")]
    assert len(throttled) == 6  # 1,200 records: one line per 10 s
    assert all(len(line) < MAX_CHARS + 250 for line in throttled)
    assert "more characters not logged: they may hold document text" in throttled[0]
    assert "[199 more like this in the last 10 s not logged]" in throttled[1]
    assert private not in out.getvalue() and lines[-1] == "x" * 1000


@pytest.mark.locust
def test_a_failing_run_logs_a_bounded_amount_without_document_text(tmp_path):
    # Long documents (20,000 characters each, within Milvus's 65,535), added to a Milvus whose insert quota is
    # about 1 KB/s: the proxy refuses the adds at once (code 8), and langchain-milvus logs each failure at ERROR
    # with the batch's first document, whole.
    secret = "private-text-canary "
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": f"{i} " + secret * 1000}) + "\n")
    config = {"quotaAndLimits.dml.enabled": True, "quotaAndLimits.dml.insertRate.max": 0.001}
    with EmbeddedMilvus(config=config) as limited:
        result = run_locust("--headless", "-u", "10", "-r", "10", "-t", "20s", "--host", limited.uri, "--collection",
                            "quiet", "--prepopulate", "0", "--dataset", str(tmp_path / "docs.jsonl"), "--add-weight",
                            "1", "--search-weight", "0", "--delete-weight", "0", "--reports-dir",
                            str(tmp_path / "reports"), "--exit-code-on-error", "0", "SyncMilvusUser", timeout=150)
    text = result.output
    assert result.returncode == 0, text[-3000:]
    failed = json.loads(next((tmp_path / "reports").glob("*/summary.json")).read_text())["rows"][0]["failures"]
    inserts = [line for line in text.splitlines() if "Failed to insert batch" in line]
    assert failed > 100 and 1 <= len(inserts) <= 3, (failed, text[-3000:])  # one line per 10 s
    assert "more like this in the last 10 s not logged" in text
    assert text.count(secret) <= 3 * (MAX_CHARS // len(secret) + 1)  # a short prefix per logged line at most
    assert len(text) < 100_000, len(text)  # it was 18 MB in 10 s with one 70 KB document
    assert "Traceback" not in text
