"""Merge (by rule) and drop (proxy box agreement or predicted quality): hand-made masks and real demo artifacts."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pseudomask.dataset import read_shard
from pseudomask.masks import box_agreement, box_mask, mask_box, segmentation_mask
from pseudomask.merge import merge_masks
from pseudomask.merge_drop import THRESHOLDS, MergeDropSettings, drop_curve, judged, merge_drop, merge_drop_image
from pseudomask.loops import ImageResult, Provenance, run_mask_stage
from pseudomask.errors import PseudomaskError
from pseudomask.settings import SettingsError
from pseudomask.store import Artifact, ArtifactError, ArtifactWriter

H, W = 60, 80
BOXCASEG = {"criterion": "proxy_box_iou", "rule": "smaller_box"}  # BoxCaseg's merge and drop


def perturbed_gt_source(demo, shard, out, stage="grabcut", ignore_ring=False):
    """A mask-source artifact whose masks are the demo's true masks, spoiled by instance id: exact, dilated,
    the filled box, or shifted by half the box width (a bad mask); optionally a 255 ring (agreement-style)."""
    import cv2

    gt = json.loads((demo / "annotations.json").read_text())
    segs = {a["id"]: a["segmentation"] for a in gt["annotations"]}

    def predict(rgb, recs):
        h, w = rgb.shape[:2]
        out_ = []
        for r in recs:
            m = segmentation_mask(segs[r["id"]], h, w)
            kind = r["id"] % 4
            if kind == 1:
                m = cv2.dilate(m, np.ones((5, 5), np.uint8))
            elif kind == 2:
                m = box_mask(r["bbox"], h, w)
            elif kind == 3:
                m = np.roll(m, max(2, int(r["bbox"][2] / 2)), axis=1)
            if ignore_ring:
                ring = (cv2.dilate(m, np.ones((5, 5), np.uint8)) == 1) & (m == 0)
                m = m.copy()
                m[ring] = 255
            out_.append({"mask": m, "status": "kept", "reason": ""})
        return ImageResult(out_)

    return run_mask_stage(read_shard(shard), out, Provenance(stage, "perturbed-gt", {"kind": "test"}), predict)


def _write(path, stage, images, schema_version=None):
    """Artifact of hand-made images: list of (image dict, rows, masks)."""
    with ArtifactWriter(path, stage=stage, method="hand", categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]) as w:
        for im, rows, masks in images:
            w.add_image(im, rows, masks)
    if schema_version is not None:
        with h5py.File(path, "r+") as f:
            f.attrs["schema_version"] = schema_version
    return path


def _row(i, bbox, status="kept", cat=1, reason=""):
    return {"id": i, "category_id": cat, "bbox": [float(v) for v in bbox], "status": status, "reason": reason}


def test_contested_pixels_go_to_the_smallest_box():
    big = box_mask([0, 0, 40, 40], H, W)
    small = box_mask([10, 10, 10, 10], H, W)
    other = box_mask([30, 30, 20, 20], H, W)  # overlaps big in [30,40)x[30,40), smaller box than big
    masks = np.stack([big, small, other])
    boxes = np.array([[0, 0, 40, 40], [10, 10, 10, 10], [30, 30, 20, 20]], float)
    merged, lost = merge_masks(masks, boxes)
    assert np.all(merged[1] == small)  # the smallest loses nothing
    assert np.all(merged[2] == other)
    assert merged[0][15, 15] == 0 and merged[0][35, 35] == 0 and merged[0][5, 5] == 1
    assert lost.tolist() == [100 + 100, 0, 0]
    # no pixel is foreground of two merged masks
    assert (np.sum(merged == 1, axis=0) <= 1).all()
    # an inactive mask neither claims nor loses pixels
    merged2, lost2 = merge_masks(masks, boxes, active=np.array([True, False, True]))
    assert np.all(merged2[1] == small) and merged2[0][15, 15] == 1 and lost2[1] == 0


def test_ignore_pixels_are_no_claim_and_stay_255():
    a = box_mask([0, 0, 30, 30], H, W)
    a[0:30, 20:30] = 255  # right third of a is ignore
    b = box_mask([20, 0, 20, 10], H, W)  # smaller box, overlaps a's ignore part and beyond
    rows = [_row(1, [0, 0, 30, 30]), _row(2, [20, 0, 20, 10], cat=2)]
    merged, out = merge_drop_image(np.stack([a, b]), rows, MergeDropSettings(threshold=0.5, **BOXCASEG))
    assert merged[0][5, 25] == 255 and merged[1][5, 25] == 1  # both kept their value
    assert out[0]["merge_lost_px"] == 0
    # proxy box of a is its foreground only: 20 wide box vs 30 wide GT box
    assert mask_box(merged[0]) == [0.0, 0.0, 20.0, 30.0]
    assert out[0]["proxy_box_iou"] == pytest.approx(600 / 900)


def test_drop_flags_but_keeps_everything():
    good = box_mask([10, 10, 20, 20], H, W)
    half = box_mask([40, 10, 10, 20], H, W)  # half of its 20x20 box: proxy IoU 0.5
    rows = [_row(1, [10, 10, 20, 20]), _row(2, [40, 10, 20, 20], cat=2, reason="note"),
            _row(3, [5, 40, 10, 10]), _row(4, [0, 0, 0, 0], status="failed", reason="bbox outside"),
            _row(5, [60, 40, 10, 10], status="invalid", reason="box IoU 0.1")]
    empty = np.zeros((H, W), np.uint8)
    ell = box_mask([60, 40, 10, 10], H, W)
    masks = np.stack([good, half, empty, empty, ell])
    merged, out = merge_drop_image(masks, rows, MergeDropSettings(threshold=0.95, **BOXCASEG), source="grabcut")
    st = [r["status"] for r in out]
    assert st == ["kept", "dropped", "dropped", "failed", "kept"]
    assert [r["mask_ignore"] for r in out] == [0, 1, 1, 1, 0]
    assert out[1]["proxy_box_iou"] == pytest.approx(0.5) and "0.500 < 0.95" in out[1]["reason"]
    assert "note" in out[1]["reason"]
    assert out[2]["reason"] == "empty mask" and out[2]["proxy_box_iou"] == 0.0
    assert out[3]["proxy_box_iou"] is None and out[3]["reason"] == "bbox outside"
    assert "was invalid" in out[4]["reason"]
    # box, class and mask of the dropped instance are untouched
    assert out[1]["bbox"] == rows[1]["bbox"] and out[1]["category_id"] == 2 and np.all(merged[1] == half)
    assert all(r["source"] == "grabcut" for r in out)
    # a lower threshold keeps the half mask; an empty one is dropped at any threshold
    _, low = merge_drop_image(masks, rows, MergeDropSettings(threshold=0.4, **BOXCASEG))
    assert low[1]["status"] == "kept" and low[2]["status"] == "dropped"
    _, zero = merge_drop_image(masks, rows, MergeDropSettings(threshold=0.0, **BOXCASEG))
    assert zero[2]["status"] == "dropped"


def test_artifact_round_trip_with_ignore_empty_image_and_failed(tmp_path):
    a = box_mask([0, 0, 30, 30], H, W)
    a[25:30, :] = 255
    b = box_mask([20, 20, 20, 20], H, W)
    im1 = {"id": 7, "file_name": "x.png", "width": W, "height": H}
    im2 = {"id": 8, "file_name": "y.png", "width": W, "height": H}
    rows = [_row(1, [0, 0, 30, 25]), _row(2, [20, 20, 20, 20], cat=2), _row(3, [0, 0, 5, 5], status="failed")]
    src = _write(tmp_path / "agree.h5", "agree",
                 [(im1, rows, np.stack([a, b, np.zeros((H, W), np.uint8)])), (im2, [], np.zeros((0, H, W), np.uint8))])
    s = merge_drop(src, tmp_path / "md.h5", MergeDropSettings(threshold=0.9, **BOXCASEG))
    assert s["images"] == 2 and s["instances"] == 3 and s["judged"] == 2
    with Artifact(tmp_path / "md.h5", stage="merge_drop") as md:
        assert md.params["source_stage"] == "agree" and md.params["threshold"] == 0.9
        recs = {r["id"]: r for r in md.records(7)}
        m = md.masks(7)
        assert set(recs) == {1, 2, 3} and md.records(8) == [] and md.masks(8).shape == (0, H, W)
        assert np.all(m[0][25:30, :30] == 255)  # ignore stays, also where b claims the pixel
        assert m[0][22, 22] == 0 and m[1][22, 22] == 1  # smaller box took the overlap
        assert recs[1]["merge_lost_px"] == 5 * 10  # rows 20-24, columns 20-29
        assert recs[3]["status"] == "failed" and np.isnan(recs[3]["proxy_box_iou"]) and recs[3]["mask_ignore"] == 1
        for r in (recs[1], recs[2]):
            assert r["proxy_box_iou"] == pytest.approx(box_agreement(m[r["id"] - 1], r["bbox"]))
        ids, proxy = judged(md)
        assert sorted(ids.tolist()) == [1, 2]


def test_bad_inputs_give_clear_errors(tmp_path, demo_shard):
    with pytest.raises(ArtifactError, match="'ingest' artifact, expected one of"):
        merge_drop(demo_shard, tmp_path / "x.h5")
    im = {"id": 1, "file_name": "x.png", "width": W, "height": H}
    old = _write(tmp_path / "old.h5", "grabcut", [(im, [], np.zeros((0, H, W), np.uint8))], schema_version=99)
    with pytest.raises(ArtifactError, match="schema version 99"):
        merge_drop(old, tmp_path / "x.h5")
    with pytest.raises(ArtifactError, match="no such artifact"):
        merge_drop(tmp_path / "missing.h5", tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    good = _write(tmp_path / "g.h5", "grabcut", [(im, [], np.zeros((0, H, W), np.uint8))])
    with pytest.raises(SettingsError, match="threshold"):
        merge_drop(good, tmp_path / "x.h5", MergeDropSettings(threshold=1.5))
    with pytest.raises(PseudomaskError, match="needs a quality model"):
        merge_drop(good, tmp_path / "x.h5", MergeDropSettings(model="none", criterion="quality"))
    # the CLI prints the error without a traceback and exits 2
    p = subprocess.run([sys.executable, "-m", "pseudomask", "merge-drop", "--masks", str(demo_shard), "--out",
                        str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert p.returncode == 2 and "expected one of" in p.stderr and "Traceback" not in p.stderr


def test_empty_shard_gives_an_empty_valid_output(tmp_path):
    src = _write(tmp_path / "cam.h5", "cam", [])
    s = merge_drop(src, tmp_path / "md.h5")
    assert s["images"] == 0 and s["instances"] == 0 and s["drop_rate"] is None
    with Artifact(tmp_path / "md.h5", stage="merge_drop") as md:
        assert md.image_ids == [] and md.categories[1]["name"] == "b"


def test_on_demo_images_curve_matches_separate_runs(tmp_path, demo, demo_shard):
    src = perturbed_gt_source(demo, demo_shard, tmp_path / "grabcut.h5")
    merge_drop(src, tmp_path / "md.h5", MergeDropSettings(threshold=0.95, **BOXCASEG))
    with Artifact(tmp_path / "md.h5") as md:
        _, proxy = judged(md)
        n = len(md.instances["id"])
        assert md.status_counts().get("dropped", 0) > 0 and md.status_counts().get("kept", 0) > 0
        # shifted masks (id % 4 == 3) fall well below the box agreement of exact ones (id % 4 == 0)
        inst = md.instances
        assert inst["proxy_box_iou"][inst["id"] % 4 == 3].mean() < inst["proxy_box_iou"][inst["id"] % 4 == 0].mean() - 0.2
    curve = drop_curve(proxy, THRESHOLDS)
    assert curve[0]["threshold"] == 0.0 and [r["drop_rate"] for r in curve] == sorted(r["drop_rate"] for r in curve)
    # one merge answers every threshold: same counts as running merge-drop at that threshold
    for row in curve[1:4]:
        s = merge_drop(src, tmp_path / f"md{row['threshold']}.h5",
                       MergeDropSettings(threshold=row["threshold"], **BOXCASEG))
        assert s["status"].get("dropped", 0) == row["dropped"] and s["judged"] == row["instances"] == n
    # with mask IoUs the kept mIoU is the mean over the kept ones
    g = np.linspace(0, 1, len(proxy))
    c = drop_curve(proxy, (0.9,), g)[0]
    keep = (proxy >= 0.9) & (proxy > 0)
    assert c["miou_kept"] == pytest.approx(g[keep].mean()) and c["miou_all"] == pytest.approx(g.mean())


def test_cli_merge_drop(tmp_path, demo, demo_shard):
    src = perturbed_gt_source(demo, demo_shard, tmp_path / "mcg.h5", stage="mcg")
    p = subprocess.run([sys.executable, "-m", "pseudomask", "merge-drop", "--masks", str(src), "--out",
                        str(tmp_path / "o.h5"), "--threshold", "0.9"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    printed = json.loads(p.stdout)
    assert printed["threshold"] == 0.9 and "drop_rate" in printed and printed["source_stage"] == "mcg"
    with Artifact(tmp_path / "o.h5", stage="merge_drop") as md:
        assert md.params["threshold"] == 0.9 and md.params["source_stage"] == "mcg"


def test_the_defaults_keep_overlaps_and_quality_drops_what_the_proxy_keeps(tmp_path, demo, demo_shard):
    """Through the stage's door: the defaults do not merge (overlapping masks keep their pixels) and drop by
    proxy box IoU, keeping filled boxes (proxy IoU 1); the quality criterion, with the shipped scorer, drops
    those boxes far more often than the true masks beside them."""
    from pseudomask.registry import STAGES

    src = tmp_path / "src.h5"
    perturbed_gt_source(demo, demo_shard, src)
    st = STAGES["merge_drop"]
    runs = {"default": {}, "quality": {"criterion": "quality"}, "boxcaseg": BOXCASEG}
    for name, given in runs.items():
        st(st.resolve(given=given, device="cpu"), masks=str(src), out=str(tmp_path / f"{name}.h5"))
    with Artifact(src) as a, Artifact(tmp_path / "default.h5") as d, Artifact(tmp_path / "quality.h5") as q, \
            Artifact(tmp_path / "boxcaseg.h5") as b:
        kind = d.instances["id"] % 4  # 0 exact, 1 dilated, 2 filled box, 3 shifted (perturbed_gt_source)
        assert (d.params["rule"], d.params["criterion"]) == ("none", "proxy_box_iou")
        assert not d.instances["merge_lost_px"].any() and b.instances["merge_lost_px"].any()
        for i in a.image_ids:  # every mask as given
            assert all(np.array_equal(x, y) for x, y in zip(a.masks(i), d.masks(i)))
        assert not np.any(d.instances["status"][kind == 2] == "dropped")
        dropped = q.instances["status"] == "dropped"
        assert all("predicted quality" in str(r) for r in q.instances["reason"][dropped])
        assert dropped[kind == 2].mean() > dropped[kind == 0].mean() + 0.3
        assert dropped[kind == 3].mean() > dropped[kind == 0].mean()
