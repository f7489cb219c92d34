import json

import numpy as np
import pytest

from pseudomask.errors import PseudomaskError
from pseudomask.masks import box_mask, ellipse_mask, rle_encode
from pseudomask.mask_metrics import evaluate_pseudo, is_detection_results
from pseudomask.store import ArtifactWriter


def _gt(tmp_path):
    """Two instances with known masks: a 40x40 square (large64) and a 10x10 square inside a 20x20 box (small64)."""
    h, w = 100, 120
    big = box_mask([10, 10, 40, 40], h, w)
    small = np.zeros((h, w), np.uint8)
    small[70:80, 70:80] = 1
    gt = {"images": [{"id": 1, "file_name": "x.png", "width": w, "height": h}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                           "segmentation": rle_encode(big), "iscrowd": 0},
                          {"id": 6, "image_id": 1, "category_id": 1, "bbox": [65, 65, 20, 20], "area": 100,
                           "segmentation": rle_encode(small), "iscrowd": 0}]}
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(gt))
    return p, gt


def _pseudo(gt, masks):
    return {**gt, "annotations": [{**a, "segmentation": rle_encode(m)} for a, m in zip(gt["annotations"], masks)]}


def test_identity_is_one_and_box_fill_is_known(tmp_path):
    p, gt = _gt(tmp_path)
    assert evaluate_pseudo(p, p)["miou"] == 1.0
    fill = _pseudo(gt, [box_mask(a["bbox"], 100, 120) for a in gt["annotations"]])
    r = evaluate_pseudo(fill, p)
    # big: box fill equals the square (1.0); small: 100 / 400 = 0.25
    assert r["miou"] == pytest.approx((1.0 + 0.25) / 2)
    assert r["miou_small"] == pytest.approx(0.25) and r["miou_medium"] == pytest.approx(1.0)
    # the small box fill's own box is the 20x20 box: agreement 1.0 with the GT box, so valid
    assert r["invalid_rate"] == 0.0


def test_invalid_rate_split_at_64(tmp_path):
    p, gt = _gt(tmp_path)
    big_bad = box_mask([10, 10, 10, 10], 100, 120)  # box IoU 100/1600 < 0.5
    small_ok = box_mask([65, 65, 20, 20], 100, 120)
    r = evaluate_pseudo(_pseudo(gt, [big_bad, small_ok]), p)
    assert r["invalid_rate"] == 0.5
    # both boxes are under 64x64 px (40x40 and 20x20): no large64 instances to rate
    assert r["invalid_rate_small64"] == 0.5 and r["invalid_rate_large64"] is None
    assert r["instances_small64"] == 2 and r["instances_large64"] == 0


def test_missing_and_empty_masks_count_as_zero(tmp_path):
    p, gt = _gt(tmp_path)
    pseudo = _pseudo(gt, [ellipse_mask([10, 10, 40, 40], 100, 120), np.zeros((100, 120), np.uint8)])
    pseudo["annotations"] = pseudo["annotations"][:1] + [{**pseudo["annotations"][1], "segmentation": []}]
    r = evaluate_pseudo(pseudo, p)
    assert r["with_mask"] == 1 and r["instances"] == 2
    assert 0.7 < r["miou"] * 2 < 0.8  # ellipse in a square: pi/4


def test_artifact_prediction_and_unrelated_ids(tmp_path):
    p, gt = _gt(tmp_path)
    with ArtifactWriter(tmp_path / "a.h5", stage="grabcut", method="m", categories=gt["categories"]) as w:
        masks = np.stack([box_mask(a["bbox"], 100, 120) for a in gt["annotations"]])
        rows = [{k: a[k] for k in ("id", "category_id", "bbox")} | {"status": "kept", "reason": ""}
                for a in gt["annotations"]]
        w.add_image(gt["images"][0], rows, masks)
    assert evaluate_pseudo(tmp_path / "a.h5", p)["miou"] == pytest.approx(0.625)
    # no id is an annotation id: the masks are unmatched predictions (tag-only), score 1 without a cam_score;
    # the one mask is the big square exactly: 1 of 2 instances found first -> AP^r 0.5
    unmatched = {**gt, "annotations": [{**gt["annotations"][0], "id": 99}]}
    r = evaluate_pseudo(unmatched, p)
    assert r["mode"] == "tag_only" and r["apr_50"] == pytest.approx(0.5) and r["predictions"] == 1
    elsewhere = {**unmatched, "images": [{**gt["images"][0], "id": 2}],
                 "annotations": [{**unmatched["annotations"][0], "image_id": 2}]}
    with pytest.raises(PseudomaskError, match="image 2, not in the ground truth"):
        evaluate_pseudo(elsewhere, p)


def test_panoptic_quality_of_id_matched_masks(tmp_path):
    p, gt = _gt(tmp_path)
    gt["categories"] = gt["categories"] + [{"id": 2, "name": "sky", "isthing": 0}]
    p.write_text(json.dumps(gt))
    h, w = 100, 120
    # big: the box fill (IoU 1); small: its 20x20 box fill (IoU 100 / 400 = 0.25: no match, a FP and a FN);
    # an extra mask on the background (an id the GT lacks): a FP, the background is not VOID
    extra = box_mask([90, 10, 20, 20], h, w)
    sky = np.zeros((h, w), np.uint8)
    sky[:5] = 1  # a stuff class the GT has no masks of: left unscored
    pseudo = _pseudo(gt, [box_mask(a["bbox"], h, w) for a in gt["annotations"]])
    pseudo["annotations"] += [{**pseudo["annotations"][0], "id": 50, "bbox": [90, 10, 20, 20],
                               "segmentation": rle_encode(extra)},
                              {**pseudo["annotations"][0], "id": 51, "category_id": 2, "bbox": [0, 0, 120, 5],
                               "segmentation": rle_encode(sky)}]
    r = evaluate_pseudo(pseudo, p)
    assert r["mode"] == "id_matched" and r["miou"] == pytest.approx((1.0 + 0.25) / 2)
    # class 1: TP 1 (IoU 1), FP 2, FN 1 -> PQ = SQ x RQ = 1 x 1 / (1 + 1 + 0.5)
    assert (r["pq_tp"], r["pq_fp"], r["pq_fn"]) == (1, 2, 1)
    assert r["pq"] == pytest.approx(1 / 2.5) and r["sq"] == 1.0 and r["rq"] == pytest.approx(1 / 2.5)
    assert r["pq_stuff"] is None and r["pq_unscored_categories"] == 1
    assert evaluate_pseudo(p, p)["pq"] == 1.0


def test_results_list_is_recognised(tmp_path):
    (tmp_path / "r.json").write_text('[{"image_id": 1, "score": 0.5}]')
    (tmp_path / "d.json").write_text('{"images": []}')
    assert is_detection_results(tmp_path / "r.json") and not is_detection_results(tmp_path / "d.json")
