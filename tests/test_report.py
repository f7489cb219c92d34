"""The HTML report: self-contained, built from the data, and rendered by a real headless Chromium."""

import base64
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pseudomask.errors import PseudomaskError
from pseudomask.merge_drop import THRESHOLDS, drop_curve, judged, merge_drop
from pseudomask.report import build_report
from pseudomask.store import Artifact
from test_merge_drop import perturbed_gt_source


@pytest.fixture(scope="module")
def results(demo, demo_shard, tmp_path_factory):
    """A results folder as the workflow lays it out: ingest shard, a mask source, merge_drop."""
    r = tmp_path_factory.mktemp("results")
    (r / "ingest" / "shards").mkdir(parents=True)
    shutil.copy(demo_shard, r / "ingest" / "shards" / "s00000.h5")
    src = perturbed_gt_source(demo, demo_shard, r / "agree" / "s00000.h5", stage="agree", ignore_ring=True)
    merge_drop(src, r / "merge_drop" / "s00000.h5", threshold=0.95)
    return r


def _images(html):
    return re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)


def test_report_is_self_contained_and_from_the_data(results, demo, tmp_path):
    out = build_report(results, tmp_path / "report.html", ground_truth=demo / "annotations.json", samples=3)
    html = out.read_text()
    # nothing outside the file: no external src/href, every picture embedded and a valid PNG
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)
    pngs = _images(html)
    assert len(pngs) == 2 + 3 * 3  # curve, histogram, 3 samples x (ingest, agree, merge_drop)
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for title in ("Instances by status and stage", "threshold curve", "Mask quality against ground truth",
                  "Instances by category", "Sample images, stage by stage", "Provenance"):
        assert title in html
    # the drop-rate row shows the numbers computed from the merge_drop data
    with Artifact(results / "merge_drop" / "s00000.h5") as md:
        _, proxy = judged(md)
        counts = md.status_counts()
    curve = drop_curve(proxy, THRESHOLDS)
    text = re.sub(r"<td[^>]*>", "<td>", html)
    for row in curve:
        assert f"<td>{row['threshold']:.2f}</td><td>{row['drop_rate']:.3f}</td><td>{row['kept']}</td>" in text
    assert curve[-1]["dropped"] == counts["dropped"] > 0
    assert "mIoU kept" in html
    # why: the dropped instances' reason, numbers folded, counted like the status table
    assert "Why: the most frequent reasons per stage" in html
    why = re.search(r"<td>merge_drop</td><td>dropped</td><td>(\d+)</td><td>[^<]*</td><td>proxy box IoU # &lt; #",
                    text)
    assert why and int(why.group(1)) == counts["dropped"], why


def test_without_ground_truth_only_drop_rates(results, tmp_path):
    html = build_report(results, tmp_path / "r.html", samples=1, stages=["agree", "merge_drop"]).read_text()
    assert "mIoU kept" not in html and "Mask quality against ground truth" not in html
    assert "no ground truth configured" in html and len(_images(html)) == 2 + 2
    with pytest.raises(PseudomaskError, match="no stage artifacts found"):
        build_report(tmp_path / "nothing", tmp_path / "x.html")


def test_cli_report_renders_in_headless_chromium(results, demo, tmp_path):
    out = tmp_path / "report.html"
    p = subprocess.run([sys.executable, "-m", "pseudomask", "report", "--artifacts", str(results), "--out", str(out),
                        "--ground-truth", str(demo / "annotations.json"), "--samples", "2"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium not installed (.ci/system-packages.sh installs it)")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1800",
                    out.as_uri()], capture_output=True, timeout=60)
    assert shot.exists(), "chromium wrote no screenshot"
    import cv2

    img = cv2.imread(str(shot))
    assert img.shape[:2] == (1800, 1200)
    # a rendered page, not a blank one: text and plots in the top, sample overlays (colourful) further down
    rows_with_ink = np.mean((img < 200).any(axis=2).any(axis=1))
    assert rows_with_ink > 0.3
    sat = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 1]
    assert (sat > 80).mean() > 0.02
