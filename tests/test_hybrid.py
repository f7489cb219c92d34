"""The hybrid networks recipe: the valid / invalid split and what each branch's loader yields, the branches'
MMDetection configs, the size fusion with its cross-branch duplicate rule, the planned workflow, and one short
end-to-end run on demo data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pseudomask.export import export_coco
from pseudomask.masks import box_mask, ellipse_mask
from pseudomask.retrain.hybrid import (RetrainHybridSettings, fuse, fuse_arrays, fuse_results, invalid_instances,
                                       run_split, split_coco)
from pseudomask.store import ArtifactWriter
from pseudomask.validity import run_validity

H, W = 120, 160


# ------------------------------------------------------------------------------------------------- fusion

def test_fusion_routes_by_size():
    # large branch: a 100x100 box (kept) and a 20x20 one (not its size); small branch: the reverse
    large = np.array([[0, 0, 100, 100], [120, 0, 140, 20]], float)
    small = np.array([[0, 0, 100, 100], [120, 0, 140, 20]], float) + [200, 0, 200, 0]
    kl, ks, removed = fuse(large, [0, 0], small, [0, 0], size=64, iou=0.5)
    assert kl.tolist() == [0] and ks.tolist() == [1] and removed == 0
    # exactly 64x64 belongs to the large branch (masks.is_small: area < 64*64 is small)
    kl, ks, _ = fuse([[0, 0, 64, 64]], [1], [[0, 0, 64, 64]], [1], size=64)
    assert kl.tolist() == [0] and ks.tolist() == []
    # the size is configurable
    kl, ks, _ = fuse([[0, 0, 50, 50]], [1], [[100, 100, 150, 150]], [1], size=32)
    assert kl.tolist() == [0] and ks.tolist() == []
    kl, ks, _ = fuse(np.zeros((0, 4)), [], np.zeros((0, 4)), [], size=64)
    assert kl.size == 0 and ks.size == 0


def test_fusion_resolves_cross_branch_duplicates_by_the_pair_size():
    # one object seen by both branches: 70x70 from the large branch, 60x60 from the small one (IoU 0.73)
    large = [[0, 0, 70, 70]]
    small = [[0, 0, 60, 60]]
    # mean area (4900 + 3600) / 2 = 4250 >= 4096: the large branch owns it
    kl, ks, removed = fuse(large, [3], small, [3], size=64, iou=0.5)
    assert kl.tolist() == [0] and ks.tolist() == [] and removed == 1
    # 66x66 against 56x56 (IoU 0.72): mean area 3746 < 4096, the small branch keeps it
    kl, ks, removed = fuse([[0, 0, 66, 66]], [3], [[0, 0, 56, 56]], [3], size=64, iou=0.5)
    assert kl.tolist() == [] and ks.tolist() == [0] and removed == 1
    # another class, or an overlap below the IoU: two objects
    kl, ks, removed = fuse(large, [3], small, [4], size=64, iou=0.5)
    assert kl.tolist() == [0] and ks.tolist() == [0] and removed == 0
    kl, ks, removed = fuse(large, [3], small, [3], size=64, iou=0.8)
    assert kl.tolist() == [0] and ks.tolist() == [0] and removed == 0


def test_fusion_is_greedy_by_iou_and_deterministic():
    # one large result overlaps two small ones; the closer pair (higher IoU) is resolved first, and the large
    # result, once removed, removes nothing else
    large = [[0, 0, 66, 66]]
    small = [[0, 0, 56, 56], [0, 0, 60, 60]]  # IoU 0.72 and 0.83 with the large box; both pairs' mean < 4096
    kl, ks, removed = fuse(large, [1], small, [1, 1], size=64, iou=0.5)
    assert kl.tolist() == [] and ks.tolist() == [0, 1] and removed == 1
    assert [x.tolist() for x in fuse(large, [1], small, [1, 1])[:2]] == [kl.tolist(), ks.tolist()]


def test_fuse_arrays_carries_masks_and_branch():
    m = np.zeros((3, 8, 8), bool)
    m[0, :4] = m[1, 4:] = m[2, :, :2] = True
    large = {"boxes": np.array([[0, 0, 100, 100], [0, 0, 10, 10]], float), "scores": np.array([0.9, 0.8]),
             "labels": np.array([0, 0]), "masks": m[:2]}
    small = {"boxes": np.array([[200, 200, 210, 210]], float), "scores": np.array([0.7]), "labels": np.array([1]),
             "masks": m[2:]}
    out = fuse_arrays(large, small)
    assert out["branch"].tolist() == [0, 1] and out["scores"].tolist() == [0.9, 0.7]
    assert np.array_equal(out["masks"], m[[0, 2]]) and out["labels"].tolist() == [0, 1]


def test_fuse_results_per_image_with_coco_boxes():
    large = [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 100, 100], "score": 0.9, "segmentation": {}},
             {"image_id": 2, "category_id": 5, "bbox": [0, 0, 30, 30], "score": 0.8, "segmentation": {}}]
    small = [{"image_id": 2, "category_id": 5, "bbox": [0, 0, 30, 30], "score": 0.6},
             {"image_id": 1, "category_id": 5, "bbox": [0, 0, 70, 70], "score": 0.5}]
    out, counts = fuse_results(large, small, [1, 2])
    assert [(r["image_id"], r["hybrid_branch"], r["score"]) for r in out] == [(1, "large", 0.9), (2, "small", 0.6)]
    assert counts["from_large"] == 1 and counts["from_small"] == 1 and counts["duplicates_removed"] == 0


# -------------------------------------------------------------------------------------------------- split

def _grabcut_artifact(path):
    """A grabcut-like artifact: a fragment in a large box (invalid), an exact small mask (valid), a failed box,
    a small box whose GrabCut result was replaced by the ellipse (fallback: invalid) and a crowd region."""
    boxes = [[10, 10, 80, 80], [100, 10, 20, 20], [100, 60, 30, 30], [130, 90, 20, 20], [5, 95, 40, 20]]
    masks = np.stack([box_mask([10, 10, 20, 20], H, W), box_mask(boxes[1], H, W), np.zeros((H, W), np.uint8),
                      ellipse_mask(boxes[3], H, W), np.zeros((H, W), np.uint8)])
    status = ["kept", "kept", "failed", "kept", "ignored"]
    rows = [{"id": i + 1, "category_id": 1, "bbox": b, "status": s, "reason": "", "fallback": float(i == 3)}
            for i, (b, s) in enumerate(zip(boxes, status))]
    with ArtifactWriter(path, stage="grabcut", method="m", categories=[{"id": 1, "name": "a"}]) as w:
        w.add_image({"id": 1, "file_name": "x.png", "width": W, "height": H}, rows, masks)
    return path


def test_split_sends_invalid_masks_to_the_small_branch(tmp_path):
    g = _grabcut_artifact(tmp_path / "grabcut.h5")
    run_validity(g, tmp_path / "validity.h5", min_iou=0.5, ellipse=True)
    export_coco([tmp_path / "validity.h5"], tmp_path / "pseudo.json")
    assert invalid_instances([tmp_path / "validity.h5"]) == {1: "box agreement IoU 0.062 < 0.5 (validity)"}
    s = run_split(None, annotations=str(tmp_path / "pseudo.json"), validity=[str(tmp_path / "validity.h5")],
                  masks=[str(g)], large=str(tmp_path / "large.json"), small=str(tmp_path / "small.json"))
    large = json.loads((tmp_path / "large.json").read_text())
    small = json.loads((tmp_path / "small.json").read_text())
    by_id = {a["id"]: a for a in large["annotations"]}
    assert sorted(by_id) == [1, 2, 3, 4, 5]  # every instance stays in the large branch's set
    assert [by_id[i]["hybrid_branch"] for i in (1, 2, 3, 4, 5)] == ["small", "large", "large", "small", "large"]
    assert by_id[1]["mask_ignore"] and by_id[4]["mask_ignore"] and not by_id[2]["mask_ignore"]
    assert by_id[1]["segmentation"]["counts"]  # the (ellipse) mask stays, flagged: box and class still train
    assert "fallback" in by_id[4]["hybrid_reason"]
    assert [a["id"] for a in small["annotations"]] == [1, 4]
    assert all(a["segmentation"] == [] and a["bbox"] == by_id[a["id"]]["bbox"] for a in small["annotations"])
    assert small["images"] == large["images"] and small["categories"] == large["categories"]
    assert s["invalid"] == 2 and s["large_masks_trained"] == 1 and s["invalid_small64"] == 1
    # the threshold is validity's setting, read back from its artifact
    run_validity(g, tmp_path / "lenient.h5", min_iou=0.05, ellipse=True)
    assert invalid_instances([tmp_path / "lenient.h5"]) == {}
    assert set(invalid_instances([tmp_path / "lenient.h5"], [g])) == {4}


def test_split_never_marks_true_masks_or_crowds_invalid():
    data = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "source": "gt", "status": "kept", "mask_ignore": False},
                            {"id": 2, "image_id": 1, "source": "grabcut", "status": "kept", "mask_ignore": False},
                            {"id": 3, "image_id": 1, "status": "ignored", "iscrowd": 1, "mask_ignore": True}]}
    large, small = split_coco(data, {1: "x", 2: "y", 3: "z"})
    assert [a["hybrid_branch"] for a in large["annotations"]] == ["large", "small", "large"]
    assert large["annotations"][0]["mask_ignore"] is False
    assert [a["id"] for a in small["annotations"]] == [2]


def test_split_refuses_validity_of_another_dataset(tmp_path):
    from pseudomask.errors import PseudomaskError

    g = _grabcut_artifact(tmp_path / "grabcut.h5")
    run_validity(g, tmp_path / "validity.h5")
    (tmp_path / "other.json").write_text(json.dumps({"images": [], "categories": [], "annotations": []}))
    with pytest.raises(PseudomaskError, match=r"other.json: validity judged instance\(s\) \[1\]"):
        run_split(None, annotations=str(tmp_path / "other.json"), validity=[str(tmp_path / "validity.h5")],
                  masks=None, large=str(tmp_path / "l.json"), small=str(tmp_path / "s.json"))


# ------------------------------------------------------------------------------------------------ configs

def _split_demo(demo, tmp_path, every=3):
    """The demo's true masks as an export, every `every`-th instance invalid: (large, small, invalid ids)."""
    data = json.loads((demo / "annotations.json").read_text())
    data = {**data, "annotations": [{**a, "status": "kept", "mask_ignore": False, "source": "grabcut"}
                                    for a in data["annotations"]]}
    invalid = {a["id"]: "test" for k, a in enumerate(data["annotations"]) if k % every == 0}
    large, small = split_coco(data, invalid)
    (tmp_path / "large.json").write_text(json.dumps(large))
    (tmp_path / "small.json").write_text(json.dumps(small))
    return tmp_path / "large.json", tmp_path / "small.json", set(invalid)


def test_branch_configs(demo, tmp_path):
    from pseudomask.retrain.mmdet_config import build_config, build_faster_rcnn_config, config_text

    large, small, _ = _split_demo(demo, tmp_path)
    s = RetrainHybridSettings(lr=0.004, lr_batch=None)
    lc = build_config(large, demo / "images", tmp_path / "wl", s.branch("large"))
    sc = build_faster_rcnn_config(small, demo / "images", tmp_path / "ws", s.branch("small"))
    assert lc["model"]["type"] == "MaskRCNN" and lc["model"]["neck"]["type"] == "PAFPN"
    assert lc["model"]["roi_head"]["mask_head"]["type"] == "IgnoreAwareFCNMaskHead"
    assert sc["model"]["type"] == "FasterRCNN" and sc["model"]["neck"]["type"] == "FPN"
    assert "mask_head" not in sc["model"]["roi_head"] and "mask_roi_extractor" not in sc["model"]["roi_head"]
    assert not any(t.get("with_mask") for t in sc["train_pipeline"])
    assert sc["model"]["backbone"] == lc["model"]["backbone"]  # same ResNet
    assert lc["optim_wrapper"]["optimizer"]["lr"] == 0.004
    assert sc["optim_wrapper"]["optimizer"]["lr"] == pytest.approx(0.006)  # the paper's 1.5x
    assert RetrainHybridSettings(small_lr=0.02).branch("small").lr == 0.02
    assert config_text(sc).startswith("# MMDetection Faster R-CNN r50-FPN config")
    assert config_text(lc).startswith("# MMDetection Mask R-CNN r50-PAFPN config")
    # the plain recipe keeps its FPN unless asked
    from pseudomask.retrain.mmdet_config import RetrainSettings

    assert build_config(large, demo / "images", tmp_path / "wp", RetrainSettings())["model"]["neck"]["type"] == "FPN"


@pytest.mark.mmdet
def test_each_branch_loader_yields_its_instances(demo, tmp_path):
    """What MMDetection's loaders of the two generated configs yield: the large branch every instance, the
    invalid ones mask-ignored; the small branch the invalid boxes only."""
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS

    from pseudomask.retrain import modules  # noqa: F401
    from pseudomask.retrain.mmdet_config import build_config, build_faster_rcnn_config

    large, small, invalid = _split_demo(demo, tmp_path)
    truth = json.loads((demo / "annotations.json").read_text())
    boxes_of = {}
    for a in truth["annotations"]:
        boxes_of.setdefault(a["image_id"], []).append((a["id"], a["bbox"]))
    s = RetrainHybridSettings(flip=0.0, scale=[W * 4, H * 4])  # no flip, no downscale: boxes comparable
    init_default_scope("mmdet")
    for which, path, builder in (("large", large, build_config), ("small", small, build_faster_rcnn_config)):
        cfg = builder(path, demo / "images", tmp_path / which, s.branch(which))
        ds = DATASETS.build(cfg["train_dataloader"]["dataset"])
        seen_ignored, seen = 0, 0
        for i in range(len(ds)):
            item = ds[i]
            gt = item["data_samples"].gt_instances
            image_id = item["data_samples"].img_id
            scale = item["data_samples"].scale_factor
            want = [(k, b) for k, b in boxes_of[image_id] if which == "large" or k in invalid]
            assert len(gt) == len(want), (which, image_id)
            got = gt.bboxes.numpy() / np.array(scale * 2)
            exp = np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for _, b in want])
            assert np.allclose(got, exp, atol=1.0), (which, image_id)
            if which == "large":
                assert gt.mask_ignore.tolist() == [k in invalid for k, _ in want]
                assert len(gt.masks) == len(want)
                seen_ignored += int(gt.mask_ignore.sum())
            else:
                assert "masks" not in gt
            seen += len(gt)
        if which == "large":
            assert seen == len(truth["annotations"]) and seen_ignored == len(invalid)
        else:
            assert seen == len(invalid)


# ----------------------------------------------------------------------------------------------- workflow

def test_workflow_plans_the_hybrid_jobs(tmp_path):
    from workflow_run import job_stats, snakemake, write_config

    write_config(tmp_path, {"workflow": {"retrain": True}, "retrain": {"recipe": "hybrid"}})
    snakemake(tmp_path, "--cores", "2", "results/ingest/manifest.json")
    jobs = job_stats(snakemake(tmp_path, "-n", "--cores", "2").stdout)
    assert {k: jobs.get(k) for k in ("hybrid_split", "retrain_hybrid", "predict_hybrid", "evaluate_hybrid")} == \
        {"hybrid_split": 1, "retrain_hybrid": 1, "predict_hybrid": 1, "evaluate_hybrid": 1}, jobs
    assert jobs["validity"] == 2 and jobs["export"] == 1  # 4 images in 2 shards
    assert not {"retrain", "predict", "evaluate_model"} & set(jobs), jobs  # the one-model recipe is not asked
    write_config(tmp_path, {"workflow": {"retrain": True}})
    jobs = job_stats(snakemake(tmp_path, "-n", "--cores", "2").stdout)
    assert "retrain" in jobs and not {"hybrid_split", "retrain_hybrid"} & set(jobs), jobs


# --------------------------------------------------------------------------------------------- end to end

def _cli(*args):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PSEUDOMASK_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "pseudomask", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.mmdet
def test_hybrid_recipe_end_to_end_on_demo_data(demo, tmp_path):
    """GrabCut, validity and export of the demo, the split, both branches briefly trained, fused predictions
    and their metrics, all through the CLI."""
    images = demo / "images"
    r = tmp_path
    _cli("ingest", "--annotations", demo / "annotations.json", "--images", images, "--manifest", r / "manifest.json",
         "--shards", r / "shards")
    shard = r / "shards" / "s00000.h5"
    _cli("grabcut", "--shard", shard, "--out", r / "grabcut.h5", "--threads", 2)
    # the demo's GrabCut masks all agree with their boxes at 0.5: a stricter validity makes some invalid
    _cli("validity", "--masks", r / "grabcut.h5", "--out", r / "validity.h5", "--min-iou", 0.95)
    _cli("merge-drop", "--masks", r / "validity.h5", "--out", r / "merge_drop.h5")
    _cli("export", "--artifacts", r / "merge_drop.h5", "--out", r / "pseudo.json")
    s = _cli("hybrid-split", "--annotations", r / "pseudo.json", "--validity", r / "validity.h5", "--masks",
             r / "grabcut.h5", "--large", r / "large.json", "--small", r / "small.json")
    assert s["invalid"] > 0 and s["instances"] == len(json.loads((demo / "annotations.json").read_text())["annotations"])
    t = _cli("retrain-hybrid", "--large", r / "large.json", "--small", r / "small.json", "--images", images,
             "--large-checkpoint", r / "large/latest.pth", "--large-config", r / "large/mask_rcnn.py",
             "--small-checkpoint", r / "small/latest.pth", "--small-config", r / "small/faster_rcnn.py",
             "--max-iters", 2, "--scale", 192, "--threads", 2)
    assert t["large"]["iters"] == 2 and t["small"]["iters"] == 2
    assert t["large"]["last_loss_mask"] >= 0 and "last_loss_mask" not in t["small"]
    import torch

    small_sd = torch.load(r / "small/latest.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("roi_head.mask_head.") for k in small_sd)
    large_sd = torch.load(r / "large/latest.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("neck.downsample_convs.") for k in large_sd)  # PAFPN's bottom-up path

    # predict three images at score threshold 0 (a 2-iteration model scores low)
    gt = json.loads((demo / "annotations.json").read_text())
    keep = {im["id"] for im in gt["images"][:3]}
    gt3 = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    (r / "gt3.json").write_text(json.dumps(gt3))
    p = _cli("predict-hybrid", "--large-checkpoint", r / "large/latest.pth", "--large-config", r / "large/mask_rcnn.py",
             "--small-checkpoint", r / "small/latest.pth", "--small-config", r / "small/faster_rcnn.py",
             "--images", images, "--coco", r / "gt3.json", "--out", r / "predictions.json", "--score-thr", 0.0,
             "--grabcut", json.dumps({"iterations": 1}))
    results = json.loads((r / "predictions.json").read_text())
    assert len(results) == p["detections"] == p["from_large"] + p["from_small"] > 0
    assert p["small_grabcut"] == p["from_small"]
    for res in results:
        x, y, w, h = res["bbox"]
        assert (w * h < 64 * 64) == (res["hybrid_branch"] == "small")
        assert res["segmentation"]["size"] == [gt["images"][0]["height"], gt["images"][0]["width"]]
    m = _cli("evaluate-hybrid", "--predictions", r / "predictions.json", "--ground-truth", r / "gt3.json",
             "--out", r / "hybrid.json")
    for k in ("segm_AP", "segm_APs", "apr_50", "apr_75", "abo"):
        assert m[k] is None or 0.0 <= m[k] <= 1.0, k
    assert m["detections"] == len(results)
