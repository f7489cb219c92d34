"""Fast GrabCut stage: recovery of a clear object, determinism, fallback, bad input, artifact and CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pseudomask.dataset import load_dataset
from pseudomask.settings import SettingsError
from pseudomask.grabcut import (GrabCutError, GrabCutSettings, clean_mask, grabcut_image, grabcut_instance,
                                run_grabcut)
from pseudomask.images import write_image
from pseudomask.masks import ellipse_mask, mask_box, mask_iou, segmentation_mask
from pseudomask.store import Artifact


def _scene(h=120, w=160, seed=0):
    """Noisy grey-green background with a saturated red disc: (RGB, true mask, xywh box)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal((90, 120, 90), 12, (h, w, 3)), 0, 255).astype(np.uint8)
    gt = np.zeros((h, w), np.uint8)
    cv2.ellipse(gt, (80, 60), (35, 25), 20, 0, 360, 1, -1)
    img[gt == 1] = np.clip(rng.normal((220, 30, 40), 10, (int(gt.sum()), 3)), 0, 255).astype(np.uint8)
    return img, gt, mask_box(gt)


@pytest.mark.parametrize("core", [0.0, 0.2])
def test_recovers_high_contrast_object(core):
    rgb, gt, box = _scene()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    res = grabcut_instance(bgr, box, GrabCutSettings(core=core))
    assert res["status"] == "kept" and res["fallback"] == 0.0, res["reason"]
    assert mask_iou(res["mask"], gt) > 0.9
    assert res["grabcut_box_iou"] > 0.9
    # the mask never leaves its box
    x, y, w, h = box
    outside = res["mask"].copy()
    outside[int(y):int(y + h), int(x):int(x + w)] = 0
    assert not outside.any()


def test_downscaled_large_crop_still_recovers():
    rgb, gt, box = _scene(h=240, w=320)
    big = cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_NEAREST)
    gt_big = cv2.resize(gt, (640, 480), interpolation=cv2.INTER_NEAREST)
    res = grabcut_instance(cv2.cvtColor(big, cv2.COLOR_RGB2BGR), mask_box(gt_big), GrabCutSettings(max_side=64, min_side=32))
    assert mask_iou(res["mask"], gt_big) > 0.85


def test_deterministic_and_independent_of_workers():
    rgb, _, box = _scene(seed=3)
    boxes = [box, [10, 10, 40, 30], [100, 70, 50, 45], box]
    one = grabcut_image(rgb, boxes, workers=1)
    two = grabcut_image(rgb, boxes, workers=3)
    again = grabcut_image(rgb, boxes, workers=3)
    for a, b, c in zip(one, two, again):
        assert np.array_equal(a["mask"], b["mask"]) and np.array_equal(b["mask"], c["mask"])
        assert a["reason"] == b["reason"]
    assert np.array_equal(one[0]["mask"], one[3]["mask"])  # same box, same result: seeded per instance


def test_degenerate_result_gets_the_ellipse_and_says_why():
    rgb, gt, box = _scene()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    res = grabcut_instance(bgr, box, GrabCutSettings(min_fill=1.0))  # nothing fills its whole box
    assert res["status"] == "kept" and res["fallback"] == 1.0
    assert np.array_equal(res["mask"], ellipse_mask(box, *gt.shape))
    assert "covers" in res["reason"] and "ellipse" in res["reason"]
    assert res["grabcut_fill"] > 0.5  # what GrabCut did is still reported
    boxed = grabcut_instance(bgr, box, GrabCutSettings(min_fill=1.0, fallback="box"))
    assert boxed["mask"].sum() == int(box[2]) * int(box[3])
    raw = grabcut_instance(bgr, box, GrabCutSettings(min_fill=1.0, fallback="none"))
    assert raw["fallback"] == 0.0 and mask_iou(raw["mask"], gt) > 0.9


def test_degenerate_result_is_retried_with_a_large_core_before_the_fallback():
    rgb, gt, box = _scene()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    x, y, w, h = box
    wide = [x, y, w * 1.6, h]  # the disc fills the left part: GrabCut's mask has box IoU ~0.6 with it
    first = grabcut_instance(bgr, wide, GrabCutSettings(retry_core=0))
    assert first["fallback"] == 1.0 and first["retried"] == 0.0 and 0.5 < first["grabcut_box_iou"] < 0.7
    res = grabcut_instance(bgr, wide, GrabCutSettings())
    assert res["status"] == "kept" and res["retried"] == 1.0 and res["fallback"] == 0.0
    assert "retried with a 0.75 sure-foreground core" in res["reason"]
    assert res["grabcut_box_iou"] == first["grabcut_box_iou"]  # the row keeps what the first attempt did
    core = ellipse_mask([x + w * 0.8 - w * 0.6, y + h * 0.125, w * 1.2, h * 0.75], *gt.shape)
    core = cv2.erode(core, np.ones((3, 3), np.uint8))  # resizing the crop may move the rim by a pixel
    assert not (core & (1 - res["mask"])).any()  # the sure-foreground core is foreground
    assert gt[res["mask"] == 0].sum() < 0.05 * gt.sum()  # and GrabCut still decides the rest of the box
    strict = grabcut_instance(bgr, wide, GrabCutSettings(retry_min_box_iou=1.0))
    assert strict["fallback"] == 1.0 and "retry with a 0.75 core" in strict["reason"]
    assert np.array_equal(strict["mask"], ellipse_mask(wide, *gt.shape))


def test_tiny_and_full_image_boxes_do_not_stop_the_stage():
    rgb, _, _ = _scene()
    h, w = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    tiny = grabcut_instance(bgr, [5, 5, 0.8, 4], GrabCutSettings())
    assert tiny["status"] == "kept" and tiny["fallback"] == 1.0 and "smaller than 2 px" in tiny["reason"]
    none = grabcut_instance(bgr, [5, 5, 0.8, 4], GrabCutSettings(fallback="none"))
    assert none["status"] == "failed" and "smaller than 2 px" in none["reason"]
    whole = grabcut_instance(bgr, [0, 0, w, h], GrabCutSettings())  # touches every border: no background left
    assert whole["status"] == "kept" and whole["mask"].shape == (h, w)
    edge = grabcut_instance(bgr, [0, 30, 60, 60], GrabCutSettings())  # touches one border
    assert edge["status"] == "kept"


def test_clean_mask_keeps_largest_component_and_fills_holes():
    m = np.zeros((20, 20), np.uint8)
    m[2:12, 2:12] = 1
    m[5, 5] = 0
    m[15:17, 15:17] = 1
    c = clean_mask(m)
    assert c[5, 5] == 1 and c[15:17, 15:17].sum() == 0 and c.sum() == 100


def test_bad_parameters_are_named():
    with pytest.raises(SettingsError, match=r"grabcut: unknown key 'iterationz' \(did you mean 'iterations'\?\)"):
        GrabCutSettings.from_mapping({"iterationz": 3})
    with pytest.raises(SettingsError, match=r"grabcut.fallback: must be one of \['ellipse', 'box', 'none'\]"):
        GrabCutSettings(fallback="circle")
    with pytest.raises(SettingsError, match=r"grabcut.retry_core: must be < 1"):
        GrabCutSettings(retry_core=1.0)
    with pytest.raises(GrabCutError, match="min_side <= max_side"):
        GrabCutSettings(min_side=200)


def _gray_rgba_dataset(tmp_path):
    """Three images: grayscale, RGBA and RGB, one clear object each (plus a 1-px box)."""
    rgb, gt, box = _scene()
    write_image(tmp_path / "images/gray.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(tmp_path / "images/rgba.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    write_image(tmp_path / "images/rgb.png", rgb)
    from pseudomask.masks import rle_encode
    h, w = gt.shape
    images = [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, f in enumerate(
        ["gray.png", "rgba.png", "rgb.png"])]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": box, "area": int(gt.sum()), "iscrowd": 0,
             "segmentation": rle_encode(gt)} for i in range(3)]
    anns.append({"id": 4, "image_id": 3, "category_id": 1, "bbox": [2, 2, 1, 1], "area": 1, "iscrowd": 0,
                 "segmentation": rle_encode(np.zeros_like(gt))})
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 1, "name": "disc"}]}))
    return tmp_path / "ann.json", gt


def test_run_grabcut_on_gray_rgba_and_tiny_boxes(tmp_path):
    ann, gt = _gray_rgba_dataset(tmp_path)
    out = run_grabcut(load_dataset(ann, tmp_path / "images"), tmp_path / "gc.h5", {"iterations": 3}, workers=2)
    with Artifact(out, stage="grabcut") as a:
        assert a.params["iterations"] == 3 and a.params["core"] == 0.2
        recs = a.records()
        assert [r["id"] for r in recs] == [1, 2, 3, 4]
        for image_id in (1, 2, 3):
            assert mask_iou(a.masks(image_id)[0], gt) > 0.9
        tiny = next(r for r in recs if r["id"] == 4)
        assert "smaller than 2 px" in tiny["reason"] and tiny["fallback"] == 1.0


def test_stage_on_demo_beats_the_ellipse_and_keeps_every_instance(demo, demo_shard, tmp_path):
    from pseudomask.cli import main

    out = tmp_path / "gc.h5"
    assert main(["grabcut", "--shard", str(demo_shard), "--out", str(out), "--threads", "2"]) == 0
    coco = json.loads((demo / "annotations.json").read_text())
    ims = {im["id"]: im for im in coco["images"]}
    gts = {a["id"]: a for a in coco["annotations"]}
    with Artifact(out, stage="grabcut") as a:
        assert len(a.instances["id"]) == len(gts)
        ours, ell = [], []
        for image_id in a.image_ids:
            masks = a.masks(image_id)
            for k, r in enumerate(a.records(image_id)):
                g = gts[r["id"]]
                h, w = ims[g["image_id"]]["height"], ims[g["image_id"]]["width"]
                gt = segmentation_mask(g["segmentation"], h, w)
                ours.append(mask_iou(masks[k], gt))
                ell.append(mask_iou(ellipse_mask(g["bbox"], h, w), gt))
    assert np.mean(ours) > np.mean(ell) + 0.05, (np.mean(ours), np.mean(ell))
