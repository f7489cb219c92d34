"""Detector metrics: COCO AP via pycocotools, VOC-style AP^r and ABO on hand-built cases and demo data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudomask.detection_metrics import MetricsError, evaluate_detections, voc_ap
from pseudomask.masks import box_mask, mask_box, mask_iou, rle_encode, segmentation_mask


def _gt(masks, cats, size=(60, 80), crowd=()):
    h, w = size
    anns = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": mask_box(m), "area": int(m.sum()),
             "iscrowd": int(i in crowd), "segmentation": rle_encode(m)} for i, (m, c) in enumerate(zip(masks, cats))]
    return {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": anns}


def _det(m, cat, score):
    return {"image_id": 1, "category_id": cat, "score": score, "bbox": mask_box(m), "segmentation": rle_encode(m)}


def _rect(y0, y1, x0, x1, size=(60, 80)):
    m = np.zeros(size, np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_voc_ap_envelope():
    # ranks: TP, FP, TP with 2 GT -> precision 1, .5, .667 at recall .5, .5, 1
    assert voc_ap(np.array([1.0, 0.0, 1.0]), 2) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert voc_ap(np.array([0.0, 0.0]), 3) == 0.0
    assert voc_ap(np.array([1.0, 1.0, 1.0]), 3) == pytest.approx(1.0)
    assert voc_ap(np.array([]), 2) == 0.0


def test_apr_and_abo_by_hand():
    g1, g2 = _rect(5, 25, 5, 25), _rect(30, 50, 40, 70)
    part = _rect(30, 50, 40, 58)  # covers 18 of 30 columns of g2
    far = _rect(0, 4, 70, 80)
    iou_part = mask_iou(part, g2)
    assert 0.5 < iou_part < 0.7
    dets = [_det(far, 1, 0.95), _det(g1, 1, 0.9), _det(part, 1, 0.8)]
    m = evaluate_detections(_gt([g1, g2], [1, 1]), dets)
    # t=0.5 and 0.25: FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1
    assert m["apr_50"] == pytest.approx(2 / 3)
    assert m["apr_25"] == pytest.approx(2 / 3)
    # t=0.7: FP, TP, FP -> only recall 1/2 at precision 1/2
    assert m["apr_70"] == pytest.approx(0.25)
    assert m["apr_75"] == pytest.approx(0.25)
    assert m["abo"] == pytest.approx((1.0 + iou_part) / 2)
    assert m["images"] == 1 and m["gt_instances"] == 2 and m["detections"] == 3


def test_duplicates_are_false_positives_and_classes_are_separate():
    g1, g2 = _rect(5, 25, 5, 25), _rect(30, 50, 40, 70)
    # the same mask twice for class 1, and a perfect detection of g2 but labelled class 1 (g2 is class 2)
    dets = [_det(g1, 1, 0.9), _det(g1, 1, 0.8), _det(g2, 1, 0.7)]
    m = evaluate_detections(_gt([g1, g2], [1, 2]), dets)
    # class 1: TP, FP, FP -> AP 1; class 2: no detection -> AP 0; mean 0.5
    assert m["apr_50"] == pytest.approx(0.5)
    # ABO is per class: g2 has no class-2 prediction
    assert m["abo"] == pytest.approx(0.5)


def test_crowd_regions_count_neither_way():
    g1, crowd = _rect(5, 25, 5, 25), _rect(30, 55, 30, 75)
    inside = _rect(32, 50, 35, 70)
    dets = [_det(inside, 1, 0.95), _det(g1, 1, 0.9)]
    m = evaluate_detections(_gt([g1, crowd], [1, 1], crowd=(1,)), dets)
    assert m["apr_50"] == pytest.approx(1.0)
    assert m["gt_instances"] == 1 and m["abo"] == pytest.approx(1.0)


def test_true_masks_score_one_and_box_masks_only_hurt_segm(demo, tmp_path):
    gt_path = demo / "annotations.json"
    gt = json.loads(gt_path.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    perfect, boxes = [], []
    for a in gt["annotations"]:
        h, w = sizes[a["image_id"]]
        m = segmentation_mask(a["segmentation"], h, w)
        base = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "bbox": a["bbox"]}
        perfect.append({**base, "segmentation": rle_encode(m)})
        boxes.append({**base, "segmentation": rle_encode(box_mask(a["bbox"], h, w))})
    res_path = tmp_path / "perfect.json"
    res_path.write_text(json.dumps(perfect))
    m = evaluate_detections(gt_path, res_path)
    for k in ("segm_AP", "segm_AP50", "segm_AP75", "bbox_AP", "bbox_AP50", "apr_25", "apr_50", "apr_70", "apr_75",
              "abo"):
        assert m[k] == pytest.approx(1.0), k
    assert m["gt_instances"] == len(gt["annotations"])
    b = evaluate_detections(gt, boxes)
    assert b["bbox_AP"] == pytest.approx(1.0)
    assert b["segm_AP"] < 0.9 and b["apr_75"] < 1.0 and b["abo"] < 1.0
    assert json.dumps(m) and json.dumps(b)  # JSON-serialisable


def test_no_detections_and_undefined_sizes():
    g1 = _rect(5, 25, 5, 25)  # 400 px: a "small" COCO object only
    m = evaluate_detections(_gt([g1], [1]), [])
    assert m["segm_AP"] == 0.0 and m["bbox_AP"] == 0.0 and m["apr_50"] == 0.0 and m["abo"] == 0.0
    assert m["segm_APl"] is None  # no large ground truth: undefined, not -1


def test_bad_results_name_file_and_record(tmp_path):
    gt = _gt([_rect(5, 25, 5, 25)], [1])
    bad = tmp_path / "pred.json"
    bad.write_text(json.dumps([_det(_rect(5, 25, 5, 25), 1, 0.5), {**_det(_rect(5, 25, 5, 25), 1, 0.5),
                                                                     "image_id": 99}]))
    with pytest.raises(MetricsError, match=r"pred\.json: result 1 refers to image 99"):
        evaluate_detections(gt, bad)
    bad.write_text("[{")
    with pytest.raises(MetricsError, match="pred.json: malformed JSON"):
        evaluate_detections(gt, bad)
    with pytest.raises(MetricsError, match="category 7"):
        evaluate_detections(gt, [{**_det(_rect(5, 25, 5, 25), 1, 0.5), "category_id": 7}])
