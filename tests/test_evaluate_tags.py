"""Tag-only pseudo masks (the CAM branch) are scored as unmatched predictions ranked by `cam_score`: AP^r, ABO,
COCO AP and PQ, from the artifact, its COCO export, the CLI and the evaluate_masks stage alike."""

import json

import numpy as np
import pytest

from pseudomask.cli import main
from pseudomask.detection_metrics import evaluate_detections
from pseudomask.export import export_coco
from pseudomask.masks import box_mask, rle_encode
from pseudomask.mask_metrics import EvaluateSettings, evaluate_pseudo, evaluate_tag_only, run_stage
from pseudomask.store import ArtifactWriter

H, W = 40, 60
A, B = [0, 0, 10, 10], [20, 0, 10, 10]      # the two true instances of class 1
WRONG = [40, 20, 10, 10]                    # a CAM mask on the background
CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "sky"}]


def _gt(tmp_path):
    gt = {"images": [{"id": 7, "file_name": "7.png", "width": W, "height": H}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "sky", "isthing": 0}],
          "annotations": [{"id": i, "image_id": 7, "category_id": 1, "bbox": b, "area": 100, "iscrowd": 0,
                           "segmentation": rle_encode(box_mask(b, H, W))} for i, b in ((1, A), (2, B))]}
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(gt))
    return p


def _cam(path, score_a=0.9, score_wrong=0.8, given_b=False):
    """A cam-stage artifact: A found (score_a), a wrong mask (score_wrong), a failed tag, a duplicate (ignored),
    a Grad-CAM stuff region; optionally B's true mask given (source gt, B's annotation id)."""
    def row(i, box, status="kept", cam=None, **kw):
        return {"id": i, "category_id": 1, "bbox": [float(v) for v in box], "status": status, "reason": "",
                "cam_score": cam, "stuff": 0.0, **kw}
    sky = np.zeros((H, W), np.uint8)
    sky[30:, :] = 1
    rows = [row(7000, A, cam=score_a), row(7001, WRONG, cam=score_wrong),
            row(7002, [0, 0, 0, 0], "failed", reason="no proposal contains the peak"),
            row(7003, A, "ignored", cam=0.7, reason="duplicate"),
            {**row(7004, [0, 30, 60, 10], cam=5.0), "category_id": 2, "stuff": 1.0}]
    masks = [box_mask(A, H, W), box_mask(WRONG, H, W), np.zeros((H, W), np.uint8), box_mask(A, H, W), sky]
    if given_b:
        rows.append({**row(2, B), "source": "gt"})
        masks.append(box_mask(B, H, W))
    with ArtifactWriter(path, stage="cam", method="hand", categories=CATS) as w:
        w.add_image({"id": 7, "file_name": "7.png", "width": W, "height": H}, rows, np.stack(masks))
    return path


def test_cam_masks_are_scored_as_ranked_predictions(tmp_path):
    gt = _gt(tmp_path)
    r = evaluate_pseudo(_cam(tmp_path / "cam.h5"), gt)
    assert r["mode"] == "tag_only"
    # ranked by cam_score: A (0.9) a TP, the wrong mask (0.8) a FP; 2 true instances. Precision 1 up to
    # recall 0.5, then nothing: AP^r = 0.5 at every threshold (A is exact).
    for k in ("apr_25", "apr_50", "apr_70", "apr_75"):
        assert r[k] == pytest.approx(0.5), k
    assert r["abo"] == pytest.approx((1.0 + 0.0) / 2)  # A found exactly, B by nothing
    # COCO: 101 recall points, precision 1 at the 51 up to recall 0.5, 0 after; the same at every IoU
    assert r["segm_AP"] == pytest.approx(51 / 101) and r["segm_AP50"] == pytest.approx(51 / 101)
    assert r["bbox_AP"] == pytest.approx(51 / 101)
    # the failed and the duplicate are no predictions; the stuff region is not an instance
    assert (r["predictions"], r["not_kept"], r["stuff_regions"], r["true_masks"], r["gt_instances"]) == (2, 2, 1, 0, 2)
    # PQ: A matches (IoU 1), the wrong mask on the background is a FP, B a FN: 1 / (1 + 0.5 + 0.5); sky has
    # no true mask here, so its region is left unscored rather than called wrong
    assert r["pq"] == pytest.approx(0.5) and r["pq_things"] == pytest.approx(0.5) and r["pq_stuff"] is None
    assert (r["pq_tp"], r["pq_fp"], r["pq_fn"], r["pq_unscored_categories"]) == (1, 1, 1, 1)


def test_the_score_is_cam_score(tmp_path):
    gt = _gt(tmp_path)
    r = evaluate_pseudo(_cam(tmp_path / "cam.h5", score_a=0.5, score_wrong=0.95), gt)
    # ranked FP then TP: precision 0.5 at recall 0.5 -> AP^r = 0.25; ABO and PQ do not use scores
    assert r["apr_50"] == pytest.approx(0.25) and r["abo"] == pytest.approx(0.5) and r["pq"] == pytest.approx(0.5)


def test_one_implementation_with_detection_metrics(tmp_path):
    """The library's tag-only path equals detection_metrics on the results list built by hand."""
    gt = _gt(tmp_path)
    res = [{"image_id": 7, "category_id": 1, "segmentation": rle_encode(box_mask(b, H, W)), "bbox": b, "score": s}
           for b, s in ((A, 0.9), (WRONG, 0.8))]
    truth = json.loads(gt.read_text())
    ev = evaluate_detections(truth, res)
    mine = evaluate_tag_only(_cam(tmp_path / "cam.h5"), gt)
    for k in ("apr_25", "apr_50", "apr_70", "apr_75", "abo", "segm_AP", "segm_AP50", "bbox_AP"):
        assert mine[k] == pytest.approx(ev[k]), k


def test_the_export_json_and_the_cli_give_the_same(tmp_path, capsys):
    gt = _gt(tmp_path)
    cam = _cam(tmp_path / "cam.h5")
    data = export_coco([cam], tmp_path / "pseudo.json")
    assert [a["cam_score"] for a in data["annotations"][:2]] == [0.9, 0.8] and data["annotations"][4]["stuff"] is True
    h5 = evaluate_pseudo(cam, gt)
    js = evaluate_pseudo(tmp_path / "pseudo.json", gt)
    assert js == h5
    assert main(["evaluate", "--gt", str(gt), str(cam), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "pseudo_masks" and out["mode"] == "tag_only" and out["apr_50"] == pytest.approx(0.5)
    summary = run_stage(EvaluateSettings(), pseudo=str(tmp_path / "pseudo.json"), ground_truth=str(gt),
                        out=str(tmp_path / "ev.json"))
    assert json.loads((tmp_path / "ev.json").read_text()) == summary and summary["mode"] == "tag_only"


def test_a_given_true_mask_is_neither_prediction_nor_ground_truth(tmp_path):
    gt = _gt(tmp_path)
    r = evaluate_pseudo(_cam(tmp_path / "cam.h5", given_b=True), gt)
    # B's true mask was given: B leaves the ground truth, its row the predictions. Left: A (TP, 0.9) then the
    # wrong mask (FP, 0.8) against A alone: AP^r = 1, ABO = 1; PQ: TP A, FP wrong, B VOID -> 1 / 1.5
    assert r["mode"] == "tag_only" and r["true_masks"] == 1 and r["gt_instances"] == 1
    assert r["apr_50"] == pytest.approx(1.0) and r["abo"] == pytest.approx(1.0)
    assert r["pq"] == pytest.approx(1 / 1.5)
