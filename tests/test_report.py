"""The HTML report: self-contained, built from the data, and rendered by a real headless Chromium."""

import base64
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pseudomask.errors import PseudomaskError
from pseudomask.merge_drop import THRESHOLDS, MergeDropSettings, drop_curve, judged, merge_drop
from pseudomask.report import build_report
from pseudomask.store import Artifact
from test_merge_drop import BOXCASEG, perturbed_gt_source


@pytest.fixture(scope="module")
def results(demo, demo_shard, tmp_path_factory):
    """A results folder as the workflow lays it out: ingest shard, a mask source, merge_drop."""
    r = tmp_path_factory.mktemp("results")
    (r / "ingest" / "shards").mkdir(parents=True)
    shutil.copy(demo_shard, r / "ingest" / "shards" / "s00000.h5")
    src = perturbed_gt_source(demo, demo_shard, r / "agree" / "s00000.h5", stage="agree", ignore_ring=True)
    merge_drop(src, r / "merge_drop" / "s00000.h5", MergeDropSettings(**BOXCASEG))
    return r


def _images(html):
    return re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)


def _gallery(html):
    return [int(i) for i in re.findall(r"<figure class='lowq' data-id='(\d+)'>", html)]


def _without_quality(src, dst, how):
    """A copy of an artifact with its quality column removed ("drop") or all NaN ("nan")."""
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        q = f["instances/quality"]
        if how == "drop":
            del f["instances/quality"]
        else:
            q[...] = np.nan
    return dst


def test_report_is_self_contained_and_from_the_data(results, demo, tmp_path):
    out = build_report(results, tmp_path / "report.html", ground_truth=demo / "annotations.json", samples=3)
    html = out.read_text()
    # nothing outside the file: no external src/href, every picture embedded and a valid PNG
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)
    pngs = _images(html)
    gallery = len(_gallery(html))
    assert gallery == 8
    # curve, histogram, quality (histogram, calibration, keep-rate curves, gallery), 3 samples x 3 stages
    assert len(pngs) == 2 + 3 + gallery + 3 * 3
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for title in ("Instances by status and stage", "threshold curve", "Mask quality against ground truth",
                  "Instances by category", "Sample images, stage by stage", "Provenance"):
        assert title in html
    assert "merge rule smaller_box (the smaller box wins); drop criterion proxy_box_iou (dropped: proxy box IoU " \
           "below 0.95); set in the config of this run" in html
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
    assert "no ground truth configured" in html
    # predicted quality without ground truth: histogram and gallery only, no calibration or keep-rate curves
    assert "Predicted mask quality" in html and "Calibration against ground truth" not in html
    assert "at equal keep rates" not in html
    assert len(_images(html)) == 2 + 1 + len(_gallery(html)) + 2
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


def test_predicted_quality_section(results, demo, tmp_path):
    from scipy.stats import spearmanr

    from pseudomask.mask_metrics import GroundTruth, instance_scores

    html = build_report(results, tmp_path / "q.html", ground_truth=demo / "annotations.json", samples=0).read_text()
    assert "Predicted mask quality" in html
    for alt in ("predicted quality histogram", "calibration", "keep-rate curves"):
        assert f"alt='{alt}' src='data:image/png;base64," in html
    gt = GroundTruth(demo / "annotations.json")
    text = re.sub(r"<td[^>]*>", "<td>", html)
    for stage in ("agree", "merge_drop"):
        with Artifact(results / stage / "s00000.h5") as a:
            ids, q = a.instances["id"], a.instances["quality"]
        true = {r["id"]: r["iou"] for r in instance_scores(results / stage / "s00000.h5", gt)}
        ok = np.isfinite(q)
        rho = spearmanr(q[ok], [true[int(i)] for i in ids[ok]]).statistic
        assert f"<td>{stage}</td><td>{int(ok.sum())}</td><td>{rho:.3f}</td>" in text
    # the gallery: the 8 kept merge_drop masks of lowest predicted quality, ascending
    with Artifact(results / "merge_drop" / "s00000.h5") as md:
        inst = md.instances
        kept = (inst["status"] == "kept") & np.isfinite(inst["quality"])
        ids, q = inst["id"][kept], inst["quality"][kept]
    expect = [int(i) for i in ids[np.lexsort((ids, q))][:8]]
    shown = _gallery(html)
    assert shown == expect and len(shown) == 8
    qs = [float(v) for v in re.findall(r"id \d+ · q ([0-9.]+)", html)]
    assert qs == sorted(qs)
    # keep-rate table: at keep fraction 1.0 both rankings keep everything, so the mIoUs agree
    last = re.search(r"<td>1\.0</td><td>(\d+)</td><td>([0-9.]+)</td><td>([0-9.]+)</td>", text)
    assert last and last.group(2) == last.group(3)


@pytest.mark.parametrize("how", ["drop", "nan"])
def test_quality_section_noted_without_quality(results, demo, tmp_path, how):
    d = tmp_path / "arts"
    d.mkdir()
    arts = [_without_quality(results / s / "s00000.h5", d / f"{s}.h5", how) for s in ("agree", "merge_drop")]
    html = build_report(arts, tmp_path / "r.html", ground_truth=demo / "annotations.json", samples=0).read_text()
    assert "Predicted mask quality" in html and "no predicted quality" in html
    assert "Calibration against ground truth" not in html and not _gallery(html)
    assert "threshold curve" in html and "Mask quality against ground truth" in html


def test_keep_rate_curves_and_lowest_quality():
    from pseudomask.report import keep_rate_curves, lowest_quality

    true = np.array([0.9, 0.1, 0.5, 0.7])
    rows = keep_rate_curves({"a": np.array([4, 1, 2, 3.0]), "b": np.array([1, 4, 3, 2.0])}, true, [0.5, 1.0])
    assert rows[0]["kept"] == 2 and rows[0]["a"] == pytest.approx(0.8) and rows[0]["b"] == pytest.approx(0.3)
    assert rows[1]["a"] == pytest.approx(true.mean()) and rows[1]["b"] == pytest.approx(true.mean())
    qual = {"id": np.array([5, 6, 7, 8]), "quality": np.array([0.3, 0.1, 0.3, 0.2]),
            "status": np.array(["kept", "kept", "kept", "dropped"]), "shard": np.array(["s"] * 4, object)}
    assert [i for _, i, _ in lowest_quality(qual, 3)] == [6, 5, 7]
    assert lowest_quality({}, 3) == []


def test_tag_only_masks_are_scored_as_unmatched_predictions(demo, tmp_path):
    """A cam-stage artifact (instances without ground-truth ids) gets AP^r rather than id-matched mIoU:
    the true masks themselves under new ids score AP^r 1, the same masks shifted off their objects 0."""
    import json

    from pseudomask.masks import segmentation_mask
    from pseudomask.store import ArtifactWriter

    data = json.loads((demo / "annotations.json").read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    figures = {}
    for name, shift in (("exact", 0), ("shifted", 200)):
        path = tmp_path / name / "cam" / "s00000.h5"
        path.parent.mkdir(parents=True)
        with ArtifactWriter(path, stage="cam", method="peak-proposals", params={}, categories=data["categories"],
                            attrs={"image_root": str(demo / "images")}) as w:
            for im in data["images"]:
                anns = by_image.get(im["id"], [])
                masks = np.stack([np.roll(segmentation_mask(a["segmentation"], im["height"], im["width"]), shift, 1)
                                  for a in anns]) if anns else np.zeros((0, im["height"], im["width"]), np.uint8)
                rows = [{"id": 10 ** 6 + a["id"], "category_id": a["category_id"], "bbox": a["bbox"],
                         "status": "kept", "reason": "", "cam_score": 1.0} for a in anns]
                w.add_image(im, rows, masks, tags=sorted({a["category_id"] for a in anns}))
        out = build_report(tmp_path / name, tmp_path / f"{name}.html", ground_truth=demo / "annotations.json")
        html = out.read_text()
        assert "Tag-only pseudo masks against ground truth" in html
        row = re.search(r"<tr><td>cam</td>(.*?)</tr>", html.split("Tag-only pseudo masks")[1]).group(1)
        figures[name] = [c for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
    n = str(len(data["annotations"]))
    assert figures["exact"][:2] == [n, n]
    assert float(figures["exact"][3]) == pytest.approx(1.0)   # AP^r at .5
    assert float(figures["shifted"][3]) < 0.2


def test_annotation_section_shows_cost_budget_and_the_chosen_images(results, tmp_path):
    import json

    from pseudomask.registry import STAGES

    cost, choice = tmp_path / "cost.json", tmp_path / "choice.json"
    st = STAGES["annotation_cost"]
    st(st.resolve(), shards=[str(results / "ingest" / "shards" / "s00000.h5")], out=str(cost))
    st = STAGES["choose_images"]
    st(st.resolve({"count": 3}), masks=[str(results / "merge_drop" / "s00000.h5")], cost=str(cost),
       out=str(choice))
    chosen = json.loads(choice.read_text())["chosen"]
    assert len(chosen) == 3
    page = build_report(results, tmp_path / "r.html", cost=cost, choice=choice).read_text()
    section = page.split("Annotation: cost and the images to annotate next")[1].split("<h2>")[0]
    full = json.loads(cost.read_text())["seconds"]["full_masks"]
    assert "masks for the whole dataset" in section and f"{full:.4g}" in section.replace(",", "")
    assert "3 of " in section
    for r in chosen:
        assert f"alt='image {r['image_id']}'" in section
    assert len(_images(section)) == 3
    assert "Annotation: cost" not in build_report(results, tmp_path / "r2.html").read_text()


def test_evaluation_section_lists_every_round(results, demo, tmp_path):
    """The evaluate stages' JSON files, by round: pseudo-mask mIoU and a model's AP (here: the true masks
    given as detections, AP 1)."""
    import json
    import shutil

    from pseudomask.masks import rle_encode, segmentation_mask
    from pseudomask.registry import STAGES

    gt = demo / "annotations.json"
    r1 = tmp_path / "results" / "evaluate"
    st = STAGES["evaluate_masks"]
    st(st.resolve(), pseudo=str(results / "merge_drop" / "s00000.h5"), ground_truth=str(gt),
       out=str(r1 / "pseudo_masks.json"))
    data = json.loads(gt.read_text())
    ims = {im["id"]: im for im in data["images"]}
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
              "segmentation": rle_encode(segmentation_mask(a["segmentation"], ims[a["image_id"]]["height"],
                                                           ims[a["image_id"]]["width"]))}
             for a in data["annotations"]]
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    st = STAGES["evaluate_model"]
    st(st.resolve(), predictions=str(tmp_path / "pred.json"), ground_truth=str(gt), out=str(r1 / "model.json"))
    r2 = tmp_path / "results" / "round2" / "evaluate"
    r2.mkdir(parents=True)
    shutil.copy(r1 / "pseudo_masks.json", r2 / "pseudo_masks.json")
    files = [r1 / "pseudo_masks.json", r1 / "model.json", r2 / "pseudo_masks.json"]
    page = build_report(results, tmp_path / "r.html", evaluations=files).read_text()
    section = page.split("Evaluation by round")[1].split("<h2>")[0]
    miou = json.loads((r1 / "pseudo_masks.json").read_text())["miou"]
    rows = re.findall(r"<tr><td class='n'>(\d)</td><td>([^<]+)</td>(.*?)</tr>", section)
    assert [(r, f) for r, f, _ in rows] == [("1", "evaluate/pseudo_masks.json"), ("2", "round2/evaluate/pseudo_masks.json"),
                                            ("1", "evaluate/model.json")]
    assert f"{miou:.3f}" in rows[0][2] and f"{miou:.3f}" in rows[1][2]
    assert re.findall(r"<td[^>]*>([^<]*)</td>", rows[2][2])[:2] == [str(gt), "1.000"]  # on; segm AP of true masks
