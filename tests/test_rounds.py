"""Iterative rounds: matching detections to boxes (class, IoU, score, ties, one per box), nothing outside a box,
unmatched boxes keeping the previous mask, true masks passing through, the workflow's round jobs and folders,
and one real 2-round run on demo data with MMDetection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pseudomask.config import deep_update
from pseudomask.masks import box_mask, box_pixels, rle_encode
from pseudomask.retrain.mmdet_config import CPU_PROFILE
from pseudomask.rounds import (RefineRoundSettings, RoundsError, match_detections, outside_box, round_dir,
                               round_figures, run_refine_round)
from pseudomask.settings import SettingsError
from pseudomask.store import IGNORE, Artifact, ArtifactWriter
from workflow_run import job_stats, snakemake, write_config

H, W = 100, 120


def _det(box, cat=1, score=0.9, mask=None):
    return {"image_id": 1, "category_id": cat, "bbox": box, "score": score,
            "segmentation": rle_encode(box_mask(box, H, W) if mask is None else mask)}


def test_a_detection_matches_the_box_of_its_class_with_the_best_iou():
    boxes = [[10, 10, 40, 40], [60, 10, 40, 40]]
    dets = [_det([10, 10, 40, 40], cat=2),        # exact box, other class
            _det([12, 12, 40, 40], score=0.5),    # same class, IoU 0.82
            _det([11, 11, 40, 40], score=0.4)]    # same class, IoU 0.91: the best
    (j0, iou0), (j1, iou1) = match_detections(boxes, [1, 1], dets, 0.5)
    assert j0 == 2 and iou0 == pytest.approx(39 * 39 / (2 * 1600 - 39 * 39))
    assert j1 is None and iou1 == 0.0  # no detection near it: unmatched, best IoU 0
    # class mismatch alone: unmatched even with a perfect box
    assert match_detections([[10, 10, 40, 40]], [3], dets, 0.5) == [(None, 0.0)]
    # below the IoU threshold or the score threshold: unmatched, the best IoU still reported
    j, iou = match_detections([[10, 10, 40, 40]], [1], [_det([30, 10, 40, 40])], 0.5)[0]
    assert j is None and 0 < iou < 0.5
    assert match_detections([[10, 10, 40, 40]], [1], [_det([10, 10, 40, 40], score=0.2)], 0.5, 0.3)[0][0] is None


def test_ties_and_one_detection_per_box():
    box = [[10, 10, 40, 40]]
    same = [_det([12, 10, 40, 40], score=0.5), _det([8, 10, 40, 40], score=0.7)]  # equal IoU
    assert match_detections(box, [1], same, 0.5)[0][0] == 1  # the higher score wins the tie
    equal = [_det([12, 10, 40, 40], score=0.5), _det([8, 10, 40, 40], score=0.5)]
    assert match_detections(box, [1], equal, 0.5)[0][0] == 0  # then the earlier detection
    # two boxes, one detection: the box it fits best takes it, the other stays unmatched
    boxes = [[10, 10, 40, 40], [14, 10, 40, 40]]
    got = match_detections(boxes, [1, 1], [_det([13, 10, 40, 40])], 0.5)
    assert got[1][0] == 0 and got[0][0] is None
    # two boxes with equal IoU to one detection: the earlier box takes it
    got = match_detections([[8, 10, 40, 40], [12, 10, 40, 40]], [1, 1], [_det([10, 10, 40, 40])], 0.5)
    assert [j for j, _ in got] == [0, None]


def test_outside_its_box_a_label_is_ignore_or_background():
    m = np.zeros((H, W), np.uint8)
    m[5:60, 5:60] = 1
    m[30, 30] = IGNORE
    box = [10, 10, 30, 30]
    x0, y0, x1, y1 = box_pixels(box, H, W)
    inside = np.zeros((H, W), bool)
    inside[y0:y1, x0:x1] = True
    ign = outside_box(m, box)
    assert np.array_equal(ign[inside], m[inside])
    assert set(np.unique(ign[~inside])) == {0, IGNORE} and np.all(ign[~inside & (m != 0)] == IGNORE)
    bg = outside_box(m, box, background=True)
    assert np.array_equal(bg[inside], m[inside]) and not bg[~inside].any()


def _previous(demo, path) -> tuple[dict, list[dict], np.ndarray]:
    """A merge_drop-like artifact of the first demo image: every instance's mask is its box, one instance
    dropped, one failed, one a true mask (source gt)."""
    coco = json.loads((demo / "annotations.json").read_text())
    im = coco["images"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    assert len(anns) >= 4
    h, w = im["height"], im["width"]
    rows, masks = [], []
    for k, a in enumerate(anns):
        status = {1: "dropped", 2: "failed"}.get(k, "kept")
        rows.append({"id": a["id"], "category_id": a["category_id"], "bbox": a["bbox"], "status": status,
                     "reason": "proxy box IoU 0.5 < 0.95" if status == "dropped" else "",
                     "source": "gt" if k == 3 else "validity"})
        masks.append(box_mask(a["bbox"], h, w))
    with ArtifactWriter(path, stage="merge_drop", method="test", categories=coco["categories"],
                        attrs={"image_root": str(demo / "images"), "quality_source": "grabcut"}) as wr:
        wr.add_image(im, rows, np.array(masks))
    return im, rows, np.array(masks)


def test_refine_round_uses_matched_detections_inside_their_boxes_and_keeps_the_rest(demo, tmp_path):
    from pseudomask.masks import segmentation_mask

    im, rows, prev = _previous(demo, tmp_path / "prev.h5")
    h, w = im["height"], im["width"]
    coco = json.loads((demo / "annotations.json").read_text())
    true = {a["id"]: segmentation_mask(a["segmentation"], h, w) for a in coco["annotations"]}
    dets = []
    for r in rows[:4]:  # a detection for the first four boxes: its true mask grown past the box
        grown = np.zeros((h, w), np.uint8)
        x0, y0, x1, y1 = box_pixels(r["bbox"], h, w)
        grown[max(y0 - 5, 0):y1 + 5, max(x0 - 5, 0):x1 + 5] = 1
        mask = true[r["id"]] | grown * (np.arange(w)[None, :] < x0)  # spills left of the box
        dets.append({"image_id": im["id"], "category_id": r["category_id"], "bbox": r["bbox"], "score": 0.8,
                     "segmentation": rle_encode(mask)})
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    for crf in (False, True):
        out = tmp_path / f"round2-{crf}.h5"
        run_refine_round(tmp_path / "dets.json", tmp_path / "prev.h5", out, RefineRoundSettings(crf=crf))
        with Artifact(out, stage="refine_round") as a:
            got, masks = a.records(im["id"]), a.masks(im["id"])
            assert [r["id"] for r in got] == [r["id"] for r in rows]
            for k, (r, m) in enumerate(zip(got, masks)):
                x0, y0, x1, y1 = box_pixels(r["bbox"], h, w)
                outside = np.ones((h, w), bool)
                outside[y0:y1, x0:x1] = False
                assert not np.any(m[outside] == 1), (crf, k)  # never foreground outside its box
                if k in (0, 1):  # matched (the dropped one too): the detection's mask, its spill ignored
                    assert r["matched"] == 1 and r["status"] == "kept" and r["source"] == "refine_round"
                    assert r["match_box_iou"] == 1.0 and r["crf_applied"] == float(crf)
                    if not crf:  # (DenseCRF may also clean the spill away)
                        assert np.array_equal(m[~outside], true[r["id"]][~outside])
                        assert np.any(m[outside] == IGNORE)
                elif k == 2:  # failed upstream: passed through
                    assert r["status"] == "failed" and r["matched"] == 0 and np.array_equal(m, prev[k])
                elif k == 3:  # a true mask: unchanged whatever the detections say
                    assert r["source"] == "gt" and r["status"] == "kept" and r["quality"] == 1.0
                    assert np.array_equal(m, prev[k]) and r["matched"] == 0
                else:  # no detection: the previous round's mask, and the reason says so
                    assert r["matched"] == 0 and np.array_equal(m, prev[k])
                    assert "previous round's mask is kept" in r["reason"]
    with Artifact(tmp_path / "round2-False.h5") as a:
        assert a.params["input_stage"] == "merge_drop" and a.method == "match-detections"
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(RoundsError, match=r"bad.json: detection \[0\] lacks category_id, score, segmentation"):
        run_refine_round(tmp_path / "bad.json", tmp_path / "prev.h5", tmp_path / "x.h5")


def test_background_outside_box_and_bad_crf_settings(demo, tmp_path):
    im, rows, _ = _previous(demo, tmp_path / "prev.h5")
    h, w = im["height"], im["width"]
    full = np.ones((h, w), np.uint8)  # a detection claiming the whole image
    r = rows[0]
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": im["id"], "category_id": r["category_id"],
                                                     "bbox": r["bbox"], "score": 0.9, "segmentation": rle_encode(full)}]))
    run_refine_round(tmp_path / "dets.json", tmp_path / "prev.h5", tmp_path / "out.h5",
                     RefineRoundSettings(crf=False, background_outside_box=True))
    with Artifact(tmp_path / "out.h5") as a:
        m = a.masks(im["id"])[0]
    assert m.sum() == box_mask(r["bbox"], h, w).sum() and not np.any(m == IGNORE)
    with pytest.raises(SettingsError, match="refine_round: crf_settings: crf: unknown key 'iters'"):
        RefineRoundSettings(crf_settings={"iters": 3})


def test_round_folders_and_figures(tmp_path):
    assert round_dir(tmp_path, 1) == tmp_path and round_dir(tmp_path, 3) == tmp_path / "round3"
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate/pseudo_masks.json").write_text(json.dumps({"miou": 0.7, "instances": 10}))
    (tmp_path / "evaluate/model.json").write_text(json.dumps({"segm_AP": 0.1, "abo": 0.5}))
    (tmp_path / "round2/evaluate").mkdir(parents=True)
    (tmp_path / "round2/evaluate/model.json").write_text(json.dumps({"segm_AP": 0.2}))
    figs = round_figures(tmp_path)
    assert [f["round"] for f in figs] == [1, 2]
    assert figs[0]["masks_miou"] == 0.7 and figs[0]["model_segm_AP"] == 0.1 and figs[0]["train_matched"] is None
    assert figs[1]["masks_miou"] is None and figs[1]["model_segm_AP"] == 0.2 and figs[1]["train_matched"] is None
    assert len(round_figures(tmp_path, 3)) == 3


ROUND_ONE = {"demo_data", "ingest", "grabcut", "mcg", "agree", "validity", "select", "merge_drop", "export",
             "evaluate_masks", "retrain", "predict", "evaluate_model"}
ROUND_RULES = {"refine_round", "round_merge_drop", "round_export", "round_evaluate_masks", "round_retrain",
               "round_predict", "round_evaluate_model"}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A work folder with the demo data ingested (the rest of the DAG is known from there)."""
    wd = tmp_path_factory.mktemp("rounds-wf")
    write_config(wd)
    snakemake(wd, "--cores", "2", "results/ingest/manifest.json")
    return wd


def _plan(wd, over: dict) -> dict[str, int]:
    write_config(wd, deep_update({"workflow": {"retrain": True}}, over))
    return job_stats(snakemake(wd, "-n", "--cores", "2").stdout)


def test_dry_run_plans_the_rounds(ingested):
    on_training = {"workflow": {"test_annotations": "", "test_images": ""}}  # the model is tested on its training images
    one = _plan(ingested, on_training)
    assert one["retrain"] == 1 and not set(one) & ROUND_RULES and "round_predict_train" not in one
    two = _plan(ingested, {**on_training, "retrain": {"rounds": 2}})
    assert {k: two[k] for k in ROUND_RULES} == {"refine_round": 2, "round_merge_drop": 2, "round_export": 1,
                                                 "round_evaluate_masks": 1, "round_retrain": 1, "round_predict": 1,
                                                 "round_evaluate_model": 1}
    assert two["retrain"] == 1 and two["merge_drop"] == 2  # round 1 as today
    assert "round_predict_train" not in two  # the test set is the training images: round 1's predictions serve
    three = _plan(ingested, {**on_training, "retrain": {"rounds": 3}})
    assert three["round_retrain"] == 2 and three["refine_round"] == 4 and three["retrain"] == 1
    held_out = _plan(ingested, {"retrain": {"rounds": 2}})  # the default: the demo's held-out scenes
    assert held_out["round_predict_train"] == 1 and held_out["round_predict"] == 1
    _plan(ingested, {**on_training, "retrain": {"rounds": 2}})
    out = snakemake(ingested, "-n", "--cores", "2", "results/round2/refine_round/s00000.h5").stdout
    assert "results/merge_drop/s00000.h5" in out and "results/retrain/predictions.json" in out
    p = snakemake(ingested, "-n", "results/round1/retrain/latest.pth", check=False)
    assert p.returncode != 0  # round 1 has no round folder: its files stay where they always were


@pytest.mark.slow
@pytest.mark.mmdet
def test_two_rounds_on_demo_data(tmp_path):
    """The smallest real run: 4 images in 2 shards, 2 rounds of 2 CPU iterations at 128 px; then a change of a
    round-2 setting replans round 2 only, and a third round replans nothing of rounds 1 and 2."""
    wd = tmp_path / "wf"
    small = {"workflow": {"retrain": True}, "retrain": {"cpu": {**CPU_PROFILE, "max_iters": 2, "scale": 128}, "rounds": 2},
             "predict": {"score_thr": 0.0}, "refine_round": {"min_score": 0.0, "match_iou": 0.1}}
    write_config(wd, small)
    snakemake(wd, "--cores", "2", timeout=1800)
    res = wd / "results"
    for p in ("retrain/latest.pth", "round2/retrain/latest.pth", "round2/export/pseudo.json",
              "round2/evaluate/model.json", "round2/evaluate/pseudo_masks.json", "evaluate/model.json"):
        assert (res / p).is_file(), p
    assert not (res / "round1").exists()
    shards = sorted((res / "round2/refine_round").glob("*.h5"))
    assert len(shards) == 2
    matched = 0
    for p in shards:
        with Artifact(p, stage="refine_round") as a:
            for image_id in a.image_ids:
                im = a.image(image_id)
                for r, m in zip(a.records(image_id), a.masks(image_id)):
                    x0, y0, x1, y1 = box_pixels(r["bbox"], im["height"], im["width"])
                    outside = np.ones(m.shape, bool)
                    outside[y0:y1, x0:x1] = False
                    assert not np.any(m[outside] == 1), r["id"]
                    matched += int(r["matched"])
                    assert r["matched"] == 1 or "previous round's mask is kept" in r["reason"] \
                        or r["status"] in ("failed", "ignored")
    figs = round_figures(res, 2)
    assert [f["round"] for f in figs] == [1, 2]
    assert all(f["masks_miou"] is not None and f["model_segm_AP"] is not None for f in figs), figs
    assert figs[1]["train_matched"] == pytest.approx(matched / sum(1 for _ in _rows(shards)))

    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    (wd / "config.yaml").write_text(yaml.safe_dump(deep_update(cfg, {"refine_round": {"match_iou": 0.2}}), sort_keys=False))
    planned = job_stats(snakemake(wd, "-n", "--cores", "2").stdout)
    assert "refine_round" in planned and planned.get("round_retrain") == 1 and not set(planned) & ROUND_ONE, planned
    (wd / "config.yaml").write_text(yaml.safe_dump(deep_update(cfg, {"retrain": {"rounds": 3}}), sort_keys=False))
    planned = job_stats(snakemake(wd, "-n", "--cores", "2").stdout)
    assert planned.get("round_retrain") == 1 and planned.get("refine_round") == 2, planned  # round 3's only
    assert not set(planned) & ROUND_ONE, planned
    assert "results/round3/retrain/latest.pth" in snakemake(wd, "-n", "--cores", "2").stdout


def _rows(paths):
    for p in paths:
        with Artifact(p) as a:
            yield from (r for r in a.records() if r.get("source") != "gt")
