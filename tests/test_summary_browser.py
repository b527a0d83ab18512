"""summary.html as a reader sees it: one self-contained file, opened from disk in a real headless Chromium (no
server, no network), its headline in the DOM, every plot decoded from its data URI, and a screenshot that is not
blank."""

from __future__ import annotations

import json
import uuid

import pytest

from .conftest import run_locust
from .test_web_ui_browser import chromium  # noqa: F401 - the fixture (skips, with its reason, without a browser)

pytestmark = pytest.mark.locust

READ = """
const h2 = [...document.querySelectorAll("h2")].map(h => h.textContent);
const answer = document.querySelector("h2 + p");
const imgs = [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, src: i.src.slice(0, 22)}));
return {h1: document.querySelector("h1").textContent, h2, answer: answer ? answer.textContent : "", imgs,
        height: document.body.scrollHeight};
"""


def test_summary_html_opens_from_disk_with_its_answer_and_plots(chromium, milvus, tmp_path):  # noqa: F811
    import numpy as np
    from matplotlib.image import imread

    reports = tmp_path / "reports"
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "6s", "--host", milvus.uri, "--collection",
                        f"b_{uuid.uuid4().hex[:10]}", "--prepopulate", "100", "--reports-dir", str(reports),
                        "--report-name", "browser", "--check-p99", "10s")
    assert result.returncode == 0, result.output[-3000:]
    [folder] = list(reports.iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    # Only the HTML file, alone in a folder of its own: nothing it shows may come from beside it.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "summary.html").write_bytes((folder / "summary.html").read_bytes())
    chromium.set_window_size(1400, 2000)
    chromium.get((alone / "summary.html").as_uri())
    page = chromium.execute_script(READ)
    assert page["h1"] == "Load test: browser"
    assert page["h2"][0] == "The answer" and "What was tested" in page["h2"], page["h2"]
    total = sum(r["count"] for r in summary["rows"])
    assert page["answer"].startswith(f"{total:,} requests in "), page["answer"]
    assert "Checks: all" in page["answer"] and "Load generator: ok" in page["answer"]
    assert page["imgs"] and all(i["ok"] and i["src"].startswith("data:image/png;base64") for i in page["imgs"]), page
    shot = tmp_path / "summary.png"
    assert chromium.save_screenshot(str(shot))
    pixels = imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    # Not blank: text and tables put dark pixels on a white page, and more than one shade of them.
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.005 and np.unique(pixels.reshape(-1, 3), axis=0).shape[0] > 50
