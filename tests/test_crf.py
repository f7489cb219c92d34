"""The crf stage: DenseCRF on real demo images pulls degraded masks towards the objects' true boundaries, keeps
every instance with its status, stays inside the boxes, honours ignore pixels and passes true masks through."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from pseudomask.config import complete_config
from pseudomask.crf import CrfError, CrfSettings, foreground_probability, refine_mask, run_crf
from pseudomask.images import read_image
from pseudomask.masks import box_pixels, mask_iou, segmentation_mask
from pseudomask.settings import SettingsError
from pseudomask.registry import STAGES
from pseudomask.store import IGNORE, Artifact, ArtifactError, ArtifactWriter


def _dilated(mask: np.ndarray, px: int = 6) -> np.ndarray:
    return cv2.dilate(mask, np.ones((2 * px + 1, 2 * px + 1), np.uint8))


def _degraded_artifact(demo, path, n_images: int = 3, stage: str = "grabcut") -> tuple[dict, dict]:
    """A mask artifact of demo images whose masks are the true masks dilated by 6 px (clipped to the box),
    with one failed and one true-mask (source gt) instance; returns (true masks, images) by instance id."""
    import json

    coco = json.loads((demo / "annotations.json").read_text())
    images = {im["id"]: im for im in coco["images"][:n_images]}
    true, rows_by_image = {}, {}
    for a in coco["annotations"]:
        if a["image_id"] in images:
            im = images[a["image_id"]]
            true[a["id"]] = segmentation_mask(a["segmentation"], im["height"], im["width"])
            rows_by_image.setdefault(a["image_id"], []).append(a)
    first = True
    with ArtifactWriter(path, stage=stage, method="test", categories=coco["categories"],
                        attrs={"image_root": str(demo / "images"), "quality_source": stage}) as w:
        for image_id, im in images.items():
            rows, masks = [], []
            for k, a in enumerate(rows_by_image.get(image_id, [])):
                x0, y0, x1, y1 = box_pixels(a["bbox"], im["height"], im["width"])
                m = np.zeros((im["height"], im["width"]), np.uint8)
                m[y0:y1, x0:x1] = _dilated(true[a["id"]])[y0:y1, x0:x1]
                status, source = "kept", "grabcut"
                if first and k == 0:
                    status = "failed"
                elif first and k == 1:
                    m, source = true[a["id"]].copy(), "gt"
                rows.append({"id": a["id"], "category_id": a["category_id"], "bbox": a["bbox"], "status": status,
                             "reason": "upstream failure" if status == "failed" else "", "source": source})
                masks.append(m)
            first = False
            w.add_image(im, rows, np.array(masks, np.uint8).reshape(-1, im["height"], im["width"]))
    return true, images


def test_foreground_probability_follows_the_source_mask():
    m = np.array([[0, 1, IGNORE]], np.uint8)
    assert foreground_probability(m, 0.9, 0.7).tolist() == [[pytest.approx(0.3), pytest.approx(0.9), 0.5]]


def test_crf_pulls_dilated_masks_to_the_true_boundaries_and_keeps_every_instance(demo, tmp_path):
    true, _ = _degraded_artifact(demo, tmp_path / "src.h5")
    summary = STAGES["crf"](STAGES["crf"].resolve({}), masks=str(tmp_path / "src.h5"), out=str(tmp_path / "crf.h5"))
    assert summary["source_stage"] == "grabcut" and summary["refined"] > 0
    with Artifact(tmp_path / "src.h5") as src, Artifact(tmp_path / "crf.h5", stage="crf") as out:
        assert out.params["input_stage"] == "grabcut" and out.params["bilateral_xy"] == 121.0
        assert list(out.instances["id"]) == list(src.instances["id"])
        before, after = [], []
        for image_id in out.image_ids:
            im = out.image(image_id)
            for r, m, s in zip(out.records(image_id), out.masks(image_id), src.masks(image_id)):
                x0, y0, x1, y1 = box_pixels(r["bbox"], im["height"], im["width"])
                outside = np.ones(m.shape, bool)
                outside[y0:y1, x0:x1] = False
                assert not np.any(m[outside] == 1), r["id"]  # clipped to its box
                if r["status"] == "failed":
                    assert r["reason"] == "upstream failure" and np.array_equal(m, s) and r["crf_applied"] == 0
                elif r["source"] == "gt":  # a true mask passes through unchanged, quality 1
                    assert np.array_equal(m, true[r["id"]]) and r["quality"] == 1.0 and r["crf_applied"] == 0
                else:
                    assert r["status"] == "kept" and r["crf_applied"] == 1.0 and 0 < r["crf_changed"] < 1
                    assert np.isfinite(r["quality"])
                    before.append(mask_iou(s, true[r["id"]]))
                    after.append(mask_iou(m, true[r["id"]]))
        assert len(after) >= 8
        assert np.mean(after) > np.mean(before) + 0.05, (np.mean(before), np.mean(after))


def test_ignore_pixels_are_resolved_or_kept(demo):
    import json

    coco = json.loads((demo / "annotations.json").read_text())
    a = max(coco["annotations"][:10], key=lambda x: x["area"])
    im = next(i for i in coco["images"] if i["id"] == a["image_id"])
    rgb = read_image(demo / "images" / im["file_name"])
    gt = segmentation_mask(a["segmentation"], im["height"], im["width"])
    src = gt.copy()
    ring = (_dilated(gt, 3) == 1) & (cv2.erode(gt, np.ones((7, 7), np.uint8)) == 0)
    src[ring] = IGNORE  # the object's boundary band undecided, as agree leaves it
    resolved = refine_mask(rgb, src, a["bbox"])
    assert not np.any(resolved == IGNORE) and mask_iou(resolved, gt) > mask_iou(src, gt)
    kept = refine_mask(rgb, src, a["bbox"], CrfSettings(ignore="keep"))
    assert np.array_equal(kept == IGNORE, ring) and np.array_equal(kept[~ring], resolved[~ring])


def test_crf_refuses_its_own_output_and_names_a_missing_package(demo, tmp_path, monkeypatch):
    _degraded_artifact(demo, tmp_path / "src.h5", n_images=1)
    run_crf(tmp_path / "src.h5", tmp_path / "crf.h5")
    with pytest.raises(ArtifactError, match="a 'crf' artifact"):
        run_crf(tmp_path / "crf.h5", tmp_path / "again.h5")
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # as if pydensecrf2 were not installed
    with pytest.raises(CrfError, match="pip install pydensecrf2"):
        run_crf(tmp_path / "src.h5", tmp_path / "none.h5")
    assert not (tmp_path / "none.h5").exists()


def test_the_workflow_wires_crf_only_when_a_source_is_set():
    cfg = complete_config({"workflow": {"crf_source": "grabcut", "merge_drop_source": "crf"}})
    assert cfg["workflow"]["crf_source"] == "grabcut" and cfg["crf"]["iterations"] == 10
    with pytest.raises(SettingsError, match="merge_drop_source takes crf's masks: set crf_source"):
        complete_config({"workflow": {"merge_drop_source": "crf"}})
    with pytest.raises(SettingsError, match="a cycle"):
        complete_config({"workflow": {"crf_source": "validity", "validity_input": "crf"}})
    with pytest.raises(SettingsError, match="crf.fg_confidence: must be < 1"):
        complete_config({"crf": {"fg_confidence": 1.0}})
