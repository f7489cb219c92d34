"""Panoptic output and quality: PQ/SQ/RQ on hand-computed cases, instances -> one id map (overlaps, VOID,
stuff), and the COCO panoptic PNG/JSON round trip through `export --panoptic` and `evaluate`."""

import json

import numpy as np
import pytest

from pseudomask.cli import main
from pseudomask.export import ExportSettings, run_stage
from pseudomask.images import read_image
from pseudomask.mask_metrics import evaluate_panoptic, evaluate_pseudo
from pseudomask.panoptic import (PanopticError, PanopticFile, add_stats, default_panoptic_path, id_to_rgb,
                                 image_panoptic, panoptic_folder, pq_image, pq_summary, rgb_to_id)
from pseudomask.masks import box_mask, rle_encode
from pseudomask.store import ArtifactWriter


def _grid(rows: list[str]) -> np.ndarray:
    """An id map drawn as text: one digit per pixel, '.' = VOID (0)."""
    return np.array([[0 if c == "." else int(c) for c in r] for r in rows], np.int32)


def test_pq_of_a_hand_computed_case():
    gt = _grid(["1111333...",
                "1111333...",
                "2222333...",
                "2222333..."])
    gt_segs = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0},
               {"id": 3, "category_id": 2, "iscrowd": 0}]
    pred = _grid(["111.333344",
                  "111.333344",
                  "2255333344",
                  "2255333344"])
    pred_segs = [{"id": i, "category_id": c, "iscrowd": 0} for i, c in ((1, 1), (2, 1), (3, 2), (4, 1), (5, 1))]
    # cat 1: p1 ∩ g1 = 6, union 6 + 8 - 6 = 8 -> IoU 0.75 > 0.5: TP
    #        p2 ∩ g2 = 4, union 8 -> IoU 0.5, not > 0.5: p2 FP; p5 likewise FP; g2 FN
    #        p4 lies wholly on VOID (8 of 8 px > half): not a FP
    # cat 2: p3 ∩ g3 = 12, p3 ∩ VOID = 4 (column 7), union 16 + 12 - 12 - 4 = 12 -> IoU 1.0: TP
    stats = pq_image(gt, gt_segs, pred, pred_segs)
    assert stats[1] == {"tp": 1, "fp": 2, "fn": 1, "iou": pytest.approx(0.75)}
    assert stats[2] == {"tp": 1, "fp": 0, "fn": 0, "iou": pytest.approx(1.0)}
    s = pq_summary(stats, {1: 1, 2: 0})
    # cat 1: PQ = 0.75 / (1 + 0.5*2 + 0.5*1) = 0.3, SQ = 0.75, RQ = 1 / 2.5 = 0.4; cat 2 (stuff): 1, 1, 1
    assert s["pq_things"] == pytest.approx(0.3) and s["sq_things"] == pytest.approx(0.75)
    assert s["rq_things"] == pytest.approx(0.4)
    assert s["pq_stuff"] == s["sq_stuff"] == s["rq_stuff"] == pytest.approx(1.0)
    assert s["pq"] == pytest.approx(0.65) and s["sq"] == pytest.approx(0.875) and s["rq"] == pytest.approx(0.7)
    assert s["pq"] == pytest.approx(np.mean([0.75 * 0.4, 1.0]))  # PQ = SQ x RQ per class (eq. 5), then the mean
    assert (s["pq_tp"], s["pq_fp"], s["pq_fn"], s["pq_categories"]) == (2, 2, 1, 2)


def test_crowd_regions_absorb_predictions_of_their_class_only():
    gt = _grid(["111222",
                "111222"])
    gt_segs = [{"id": 1, "category_id": 1, "iscrowd": 1}, {"id": 2, "category_id": 2, "iscrowd": 0}]
    pred = _grid(["113222",
                  "113322"])
    # pred 1 (cat 1): 4 px, all on the crowd region of cat 1 (4/4 > 0.5): neither TP nor FP
    # pred 3 (cat 2): 3 px, 2 on the crowd, 1 on g2; pred 2 (cat 2): 5 px ∩ g2 = 5, union 5 + 6 - 5 = 6 -> 0.833
    segs = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 2, "iscrowd": 0},
            {"id": 3, "category_id": 2, "iscrowd": 0}]
    stats = pq_image(gt, gt_segs, pred, segs)
    assert 1 not in stats or stats[1] == {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0}  # a crowd is never a FN
    # pred 3 is of class 2: the crowd of class 1 does not absorb it (1 px on g2 of 3): a FP
    assert stats[2] == {"tp": 1, "fp": 1, "fn": 0, "iou": pytest.approx(5 / 6)}
    s = pq_summary(stats, {1: 1, 2: 1})
    assert s["pq"] == pytest.approx((5 / 6) / 1.5) and s["pq_categories"] == 1


def test_a_missing_prediction_is_all_false_negatives_and_a_perfect_one_is_one():
    gt = _grid(["1122", "1133"])
    segs = [{"id": i, "category_id": 1, "iscrowd": 0} for i in (1, 2, 3)]
    total = {}
    add_stats(total, pq_image(gt, segs, np.zeros_like(gt), []))
    assert pq_summary(total, {1: 1})["pq"] == 0.0 and total[1]["fn"] == 3
    same = pq_summary(pq_image(gt, segs, gt, segs), {1: 1})
    assert same["pq"] == same["sq"] == same["rq"] == 1.0
    with pytest.raises(PanopticError, match="4x2"):
        pq_image(gt, segs, np.zeros((3, 3), np.int32), [])


def test_rgb_id_encoding_and_paths(tmp_path):
    ids = np.array([[0, 1, 256, 1 + 2 * 256 + 3 * 65536]])
    rgb = id_to_rgb(ids)
    assert rgb[0, 3].tolist() == [1, 2, 3] and rgb[0, 2].tolist() == [0, 1, 0]
    assert np.array_equal(rgb_to_id(rgb), ids)
    assert panoptic_folder(tmp_path / "panoptic_val2017.json") == tmp_path / "panoptic_val2017"
    assert default_panoptic_path(tmp_path / "pseudo.json") == tmp_path / "pseudo_panoptic.json"


H, W = 40, 60


def _row(i, cat, bbox, status="kept", **kw):
    return {"id": i, "category_id": cat, "bbox": [float(v) for v in bbox], "status": status, "reason": "", **kw}


def _scene():
    """Rows and masks of one image: two overlapping things, a crowd, a dropped mask, ignore pixels, stuff."""
    big = box_mask([0, 0, 30, 20], H, W)           # thing 1: box 600 px
    small = box_mask([20, 10, 20, 20], H, W)       # thing 2: box 400 px, overlaps big on x 20..29, y 10..19
    crowd = box_mask([45, 0, 15, 10], H, W)
    dropped = box_mask([0, 30, 10, 10], H, W)
    ign = np.zeros((H, W), np.uint8)
    ign[20:25, 0:10] = 255                          # ignore pixels (agreement-style), on no foreground
    sky = np.zeros((H, W), np.uint8)
    sky[:, 40:] = 1                                 # stuff by the CAM flag; overlaps the crowd
    road = np.zeros((H, W), np.uint8)
    road[25:, :] = 1                                # stuff by category (isthing 0); overlaps dropped and things
    rows = [_row(1, 1, [0, 0, 30, 20]), _row(2, 1, [20, 10, 20, 20]),
            _row(3, 1, [45, 0, 15, 10], "ignored"), _row(4, 1, [0, 30, 10, 10], "dropped"),
            _row(5, 1, [0, 20, 10, 5]), _row(6, 2, [40, 0, 20, 40], stuff=1.0), _row(7, 3, [0, 25, 60, 15])]
    masks = np.stack([big, small, crowd, dropped, ign, sky, road])
    return rows, masks


def test_instances_become_one_id_map():
    rows, masks = _scene()
    ids, segs = image_panoptic(rows, masks, stuff_categories={3})
    by_inst = {s["instance_ids"][0]: s for s in segs}
    big, small = by_inst[1], by_inst[2]
    # the smaller box wins the overlap
    assert (ids[10:20, 20:30] == small["id"]).all() and small["area"] == 400 and big["area"] == 600 - 100
    assert by_inst[3]["iscrowd"] == 1 and (ids[0:10, 45:60] == by_inst[3]["id"]).all()
    assert (ids[30:40, 0:10] == 0).all() and (ids[20:25, 0:10] == 0).all()  # dropped foreground, ignore: VOID
    assert 4 not in by_inst and 5 not in by_inst
    sky, road = by_inst[6], by_inst[7]
    assert sky["category_id"] == 2 and road["category_id"] == 3 and sky["iscrowd"] == road["iscrowd"] == 0
    # the smaller stuff region wins: sky (20 x 40 = 800) over road (60 x 15 = 900); things and the crowd over both
    assert (ids[25:40, 40:60] == sky["id"]).all()
    assert sky["area"] == 800 - 150 and (ids[25:40, 10:20] == road["id"]).all()
    # road: 60 x 15 less sky (20 x 15), thing 2 (20 x 5) and the dropped mask's VOID (10 x 10)
    assert road["area"] == 900 - 300 - 100 - 100
    for s in segs:
        fg = ids == s["id"]
        assert s["area"] == int(fg.sum())
        ys, xs = np.nonzero(fg)
        assert s["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                             float(ys.max() - ys.min() + 1)]
    assert len({s["id"] for s in segs}) == len(segs) and set(np.unique(ids)) == {0} | {s["id"] for s in segs}


def test_a_given_true_mask_is_a_thing_in_the_export_and_void_in_evaluation():
    rows, masks = _scene()
    rows[1]["source"] = "gt"
    ids, segs = image_panoptic(rows, masks, {3})
    given = next(s for s in segs if s["instance_ids"] == [2])
    assert given["area"] == 400  # a true mask wins the overlap even against a smaller box
    ids, segs = image_panoptic(rows, masks, {3}, given_void=True)
    assert all(s["instance_ids"] != [2] for s in segs) and (ids[10:30, 30:40] == 0).all()


def _artifact(path, rows, masks, cats):
    with ArtifactWriter(path, stage="grabcut", method="hand", categories=cats) as w:
        w.add_image({"id": 3, "file_name": "sub/a.jpg", "width": W, "height": H}, rows, masks)
    return path


CATS = [{"id": 1, "name": "thing"}, {"id": 2, "name": "sky"}, {"id": 3, "name": "road", "isthing": 0}]
GT_CATS = [{"id": 1, "name": "thing"}, {"id": 2, "name": "sky", "isthing": 0}, {"id": 3, "name": "road", "isthing": 0}]


def test_export_panoptic_round_trip(tmp_path):
    rows, masks = _scene()
    art = _artifact(tmp_path / "a.h5", rows, masks, CATS)
    summary = run_stage(ExportSettings(panoptic=True), artifacts=[str(art)], out=str(tmp_path / "x" / "pseudo.json"))
    pan_json = tmp_path / "x" / "pseudo_panoptic.json"
    assert summary["panoptic_json"] == str(pan_json)
    data = json.loads(pan_json.read_text())
    assert {c["id"]: c["isthing"] for c in data["categories"]} == {1: 1, 2: 0, 3: 0}
    (ann,) = data["annotations"]
    assert ann["image_id"] == 3 and ann["file_name"] == "sub/a.png"
    png = read_image(tmp_path / "x" / "pseudo_panoptic" / "sub" / "a.png")
    ids, segs = image_panoptic(rows, masks, {3})
    assert np.array_equal(rgb_to_id(png), ids)
    assert ann["segments_info"] == json.loads(json.dumps(segs))
    for s in ann["segments_info"]:
        assert set(s) >= {"id", "category_id", "iscrowd", "area", "bbox"}
    assert json.loads((tmp_path / "x" / "pseudo.json").read_text())["annotations"][0]["id"] == 1
    # read back as a panoptic source: PQ against itself is 1
    pf = PanopticFile(pan_json)
    assert pf.isthing == {1: 1, 2: 0, 3: 0} and pf.size(3) == (H, W)
    r = evaluate_panoptic(pan_json, pan_json)
    assert r["pq"] == r["pq_things"] == r["pq_stuff"] == 1.0 and r["pq_categories_stuff"] == 2
    # a rerun replaces the folder whole
    run_stage(ExportSettings(panoptic=True), artifacts=[str(art)], out=str(tmp_path / "x" / "pseudo.json"))
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["pseudo.json", "pseudo_panoptic",
                                                                  "pseudo_panoptic.json"]


def test_export_without_the_setting_writes_no_panoptic_and_refuses_the_port(tmp_path):
    rows, masks = _scene()
    art = _artifact(tmp_path / "a.h5", rows, masks, CATS)
    run_stage(ExportSettings(), artifacts=[str(art)], out=str(tmp_path / "pseudo.json"))
    assert not (tmp_path / "pseudo_panoptic.json").exists()
    with pytest.raises(Exception, match="--panoptic"):
        run_stage(ExportSettings(), artifacts=[str(art)], out=str(tmp_path / "p.json"),
                  panoptic_json=str(tmp_path / "p_pan.json"))


def test_png_with_an_unlisted_segment_is_an_error(tmp_path):
    rows, masks = _scene()
    art = _artifact(tmp_path / "a.h5", rows, masks, CATS)
    pan = tmp_path / "pan.json"
    run_stage(ExportSettings(panoptic=True), artifacts=[str(art)], out=str(tmp_path / "p.json"), panoptic_json=str(pan))
    data = json.loads(pan.read_text())
    data["annotations"][0]["segments_info"].pop()
    pan.write_text(json.dumps(data))
    with pytest.raises(PanopticError, match="does not list"):
        evaluate_panoptic(pan, pan)


def _gt_json(tmp_path, rows, masks, cats):
    """A COCO instances ground truth of the scene's things 1, 2 (1 cut where 2 overlaps it) and stuff 6, 7."""
    anns = []
    for r, m in zip(rows, masks):
        if r["id"] in (1, 2, 6, 7):
            mm = m.copy()
            if r["id"] == 1:
                mm[10:20, 20:30] = 0
            anns.append({"id": r["id"], "image_id": 3, "category_id": r["category_id"], "bbox": r["bbox"],
                         "area": int(mm.sum()), "iscrowd": 0, "segmentation": rle_encode(mm)})
    gt = {"images": [{"id": 3, "file_name": "sub/a.jpg", "width": W, "height": H}], "categories": cats,
          "annotations": anns}
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(gt))
    return p


def test_cli_export_panoptic_then_evaluate_against_instance_and_panoptic_ground_truth(tmp_path, capsys):
    rows, masks = _scene()
    art = _artifact(tmp_path / "a.h5", rows, masks, CATS)
    gt = _gt_json(tmp_path, rows, masks, GT_CATS)
    out = tmp_path / "pseudo.json"
    assert main(["export", "--artifacts", str(art), "--out", str(out), "--panoptic"]) == 0
    capsys.readouterr()
    pan = tmp_path / "pseudo_panoptic.json"
    assert main(["evaluate", "--gt", str(gt), str(pan), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kind"] == "panoptic"
    # GT id map, overlaps to the smaller box: big 500 px, small 400, sky 800 (box 800 < road's 900), road
    # 900 - 300 (sky) - 100 (small) = 500. Prediction: big and small match with IoU 1; sky 650 px, all in GT
    # sky (the crowd took 150): 650 / 800; road 400 px, all inside GT road: 0.8; the predicted crowd segment
    # is no prediction.
    assert r["pq_things"] == pytest.approx(1.0) and r["pq_stuff"] == pytest.approx((650 / 800 + 0.8) / 2)
    assert r["pq"] == pytest.approx((1.0 + 650 / 800 + 0.8) / 3)
    assert (r["pq_tp"], r["pq_fp"], r["pq_fn"]) == (4, 0, 0)
    # the same PQ from the artifact directly and from the exported instances JSON
    for pred in (art, out):
        e = evaluate_pseudo(pred, gt)
        assert e["pq"] == pytest.approx(r["pq"]) and e["pq_stuff"] == pytest.approx(r["pq_stuff"])
    # panoptic ground truth: the export of the GT itself
    gt_art = tmp_path / "gt.h5"
    keep = [k for k, rr in enumerate(rows) if rr["id"] in (1, 2, 6, 7)]
    _artifact(gt_art, [rows[k] for k in keep], masks[keep], CATS)
    assert main(["export", "--artifacts", str(gt_art), "--out", str(tmp_path / "gtx.json"), "--panoptic"]) == 0
    capsys.readouterr()
    gt_pan = tmp_path / "gtx_panoptic.json"
    assert main(["evaluate", "--gt", str(gt_pan), str(gt_pan), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pq"] == 1.0
    assert main(["evaluate", "--gt", str(gt_pan), str(art), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # GT panoptic: things merged as above (small takes the overlap), sky 800, road 900 - 300 - 100 = 500;
    # sky 650 / 800, road 400 / 500 (the dropped mask's 100 px are VOID in the prediction only)
    assert r["pq_things"] == pytest.approx(1.0) and r["pq_stuff"] == pytest.approx((650 / 800 + 0.8) / 2)


def test_overlapping_true_masks_go_to_the_smaller_box():
    from pseudomask.panoptic import segment_map

    person = box_mask([0, 0, 20, 30], H, W)
    tie = box_mask([8, 5, 4, 10], H, W)  # wholly inside the person's mask, as COCO draws them
    ids = segment_map([person, tie], [[0, 0, 20, 30], [8, 5, 4, 10]], (H, W))
    assert (ids == 2).sum() == 40 and (ids == 1).sum() == 600 - 40 and (ids[30:] == 0).all()
