"""Retraining end to end on CPU: `pseudomask retrain` a few iterations on demo pseudo masks, a weights-only
checkpoint and a readable config, resume, `pseudomask predict` to COCO results, and a metrics JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pseudomask.masks import ellipse_mask, rle_encode

pytestmark = [pytest.mark.slow, pytest.mark.mmdet]


def pseudo_json(gt: dict, every: int = 3) -> dict:
    """Pseudo labels from GT boxes: inscribed ellipses, every `every`-th one dropped (mask_ignore)."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    anns = []
    for k, a in enumerate(gt["annotations"]):
        m = ellipse_mask(a["bbox"], *sizes[a["image_id"]])
        dropped = k % every == 0
        anns.append({**a, "segmentation": rle_encode(m), "area": int(m.sum()) or a["area"],
                     "status": "dropped" if dropped else "kept", "mask_ignore": dropped, "source": "ellipse"})
    return {**gt, "annotations": anns}


def _cli(*args, env=None):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PSEUDOMASK_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pseudomask", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _summary(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith('{"checkpoint"')))


def test_train_resume_predict_evaluate(demo, tmp_path):
    import torch
    from mmengine.config import Config
    from pycocotools.coco import COCO

    from pseudomask.detection_metrics import evaluate_to_file

    gt_path = demo / "annotations.json"
    gt = json.loads(gt_path.read_text())
    train_json = tmp_path / "pseudo.json"
    train_json.write_text(json.dumps(pseudo_json(gt)))
    run = tmp_path / "run"
    args = ("retrain", "--annotations", train_json, "--images", demo / "images", "--checkpoint", run / "latest.pth",
            "--mmdet-config", run / "mask_rcnn.py", "--max-iters", 2, "--scale", 192, "--threads", 2)
    r = _cli(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = _summary(r.stdout)
    assert s["iters"] == 2 and not s["resumed"] and s["device"] == "cpu"
    assert np.isfinite(s["last_loss"]) and s["last_loss_mask"] > 0

    ckpt = torch.load(run / "latest.pth", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"meta", "state_dict"} and ckpt["meta"]["iter"] == 2
    assert any(k.startswith("roi_head.mask_head.") for k in ckpt["state_dict"])
    assert (run / "work" / "mask_rcnn.py").is_file()  # MMEngine's run folder
    cfg = Config.fromfile(str(run / "mask_rcnn.py"))
    assert cfg.model.roi_head.mask_head.type == "IgnoreAwareFCNMaskHead"
    assert cfg.model.backbone.init_cfg is None and cfg.load_from is None  # nothing to fetch
    assert cfg.custom_imports.imports == ["pseudomask.retrain.modules"]
    assert cfg.model.roi_head.bbox_head.num_classes == len(gt["categories"])
    assert cfg.train_cfg.max_iters == 2 and tuple(cfg.train_pipeline[2].scale) == (192, 192)

    # same config again: resumes from the finished run instead of retraining
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _summary(r.stdout)["resumed"] and _summary(r.stdout)["iters"] == 2

    # predict and evaluate on three of the images (CPU inference of 100 detections per image takes seconds)
    keep = {im["id"] for im in gt["images"][:3]}
    gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    gt_path = tmp_path / "gt3.json"
    gt_path.write_text(json.dumps(gt))
    pred = tmp_path / "pred.json"
    r = _cli("predict", "--checkpoint", run / "latest.pth", "--images", demo / "images", "--coco", gt_path,
             "--out", pred, "--score-thr", 0.0)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(pred.read_text())
    assert results, "a model after 2 iterations still proposes boxes at score threshold 0"
    sizes = {im["id"]: [im["height"], im["width"]] for im in gt["images"]}
    cats = {c["id"] for c in gt["categories"]}
    for res in results:
        assert res["category_id"] in cats and res["segmentation"]["size"] == sizes[res["image_id"]]
        assert 0.0 <= res["score"] <= 1.0 and len(res["bbox"]) == 4
    coco = COCO(str(gt_path))
    assert len(coco.loadRes(str(pred)).getAnnIds()) == len(results)

    out = tmp_path / "evaluate" / "model.json"
    m = evaluate_to_file(gt_path, pred, out)
    assert json.loads(out.read_text()) == m
    for k in ("segm_AP", "segm_AP50", "bbox_AP", "apr_25", "apr_50", "apr_70", "apr_75", "abo"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["detections"] == len(results) and m["gt_instances"] == len(gt["annotations"])


def test_retrain_reports_bad_input(tmp_path, demo):
    outs = ("--checkpoint", tmp_path / "w" / "latest.pth", "--mmdet-config", tmp_path / "w" / "mask_rcnn.py")
    r = _cli("retrain", "--annotations", tmp_path / "missing.json", "--images", demo / "images", *outs)
    assert r.returncode == 2 and "missing.json: training annotations not found" in r.stderr
    r = _cli("retrain", "--annotations", demo / "annotations.json", "--images", demo / "images", *outs,
             "--init-checkpoint", tmp_path / "none.pth")
    assert r.returncode == 2 and "none.pth: init checkpoint not found" in r.stderr
    r = _cli("predict", "--checkpoint", tmp_path / "none.pth", "--images", demo / "images", "--out", tmp_path / "p.json")
    assert r.returncode == 2 and "none.pth: checkpoint not found" in r.stderr
