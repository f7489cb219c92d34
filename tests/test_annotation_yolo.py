"""YOLO-seg export of the whole dataset, read back: every instance's class, mask (within polygon tolerance)
and box survive; the label files follow Ultralytics' rules; no export states a box other than the given one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from annotation_data import EATEN_SIZE, eaten_artifact, pseudo_artifact
from pseudomask.annotation.job import annotation_job
from pseudomask.annotation.polygons import box_outline, polygon_mask
from pseudomask.annotation.yolo import export_yolo, read_yolo
from pseudomask.export import export_coco
from pseudomask.masks import box_mask, mask_box, mask_iou, rle_decode
from pseudomask.registry import STAGES


@pytest.fixture(scope="module")
def exported(demo, tmp_path_factory):
    """The demo's true masks, instance 1 failed, 2 a crowd region, 3 dropped; exported by the stage."""
    tmp = tmp_path_factory.mktemp("yolo")
    art = pseudo_artifact(demo, tmp / "md.h5", status={1: "failed", 2: "ignored", 3: "dropped"})
    stage = STAGES["yolo_export"]
    summary = stage(stage.resolve({}), masks=[str(art)], out=str(tmp / "yolo"))
    return tmp / "yolo", summary, json.loads((demo / "annotations.json").read_text()), art


def _lines(folder, file_name):
    return [ln.split() for ln in (folder / "labels" / file_name).with_suffix(".txt").read_text().splitlines()]


def test_layout_data_yaml_and_ultralytics_label_rules(exported):
    folder, summary, data, _ = exported
    meta = yaml.safe_load((folder / "data.yaml").read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert meta["names"] == {i: c["name"] for i, c in enumerate(cats)}
    assert meta["category_ids"] == [c["id"] for c in cats] and meta["train"] == "images"
    assert summary["images"] == len(data["images"]) and summary["skipped_crowd"] == 1
    assert summary["written_box"] == 2  # the failed and the dropped instance
    for im in data["images"]:
        assert (folder / "images" / im["file_name"]).is_symlink()
        for parts in _lines(folder, im["file_name"]):
            # Ultralytics' verify_image_label: class, then >= 3 normalised (x, y) pairs
            xy = np.asarray(parts[1:], float)
            assert int(parts[0]) in meta["names"] and len(xy) >= 6 and len(xy) % 2 == 0
            assert xy.min() >= 0 and xy.max() <= 1


def test_read_back_keeps_every_class_mask_and_box(exported):
    folder, _, data, _ = exported
    back = {im["file_name"]: im for im in read_yolo(folder)["images"]}
    cats = sorted(c["id"] for c in data["categories"])
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and a["id"] != 2]
        labels = back[im["file_name"]]["labels"]
        assert len(labels) == len(anns)
        for a, (cls, poly) in zip(anns, labels):
            assert cats[cls] == a["category_id"]
            m = polygon_mask(poly, im["height"], im["width"])
            if a["id"] in (1, 3):  # failed, dropped: its box
                assert mask_iou(m, box_mask(a["bbox"], im["height"], im["width"])) == 1.0
                continue
            true = rle_decode(a["segmentation"])
            assert mask_iou(m, true) >= 0.99, a["id"]
            assert np.allclose(mask_box(m), mask_box(true), atol=1.0)


def test_not_kept_instances_can_be_boxes_or_left_out(exported, tmp_path):
    folder, _, data, art = exported
    image1 = [a for a in data["annotations"] if a["image_id"] == 1]
    res = export_yolo([art], tmp_path / "skip", not_kept="skip", copy=True)
    assert res["skipped_not_kept"] == 2  # failed 1 and dropped 3
    assert not (tmp_path / "skip/images" / data["images"][0]["file_name"]).is_symlink()
    n1 = len(_lines(tmp_path / "skip", data["images"][0]["file_name"]))
    assert n1 == len([a for a in image1 if a["id"] not in (1, 2, 3)])
    res = export_yolo([art], tmp_path / "box", not_kept="box")
    assert res["written_box"] == 2
    res = export_yolo([art], tmp_path / "mask", not_kept="mask")
    assert res["written_box"] == 1 and res["written_mask"] == res["instances"] - 2  # the failed one has no mask


def _extent(poly) -> np.ndarray:
    """x, y, w, h of a polygon's (N,2) points."""
    poly = np.asarray(poly, np.float64).reshape(-1, 2)
    return np.r_[poly.min(0), np.ptp(poly, 0)]


def _yolo_polygons(folder, ids) -> dict:
    """The normalised polygons of eaten_artifact's one label file by instance id (lines in row order)."""
    return {i: np.asarray(parts[1:], float).reshape(-1, 2) for i, parts in zip(ids, _lines(folder, "eaten.png"))}


def test_no_export_states_a_box_other_than_the_given_one(tmp_path):
    """A truck's mask eaten to a 1x1 remnant by the merge (dropped) and a kept mask whose box disagrees with
    the given box are their box outlines in YOLO and in the job; masks that agree are their mask outlines;
    COCO keeps the given box beside the mask."""
    art, boxes, masks = eaten_artifact(tmp_path / "md.h5")
    h, w = EATEN_SIZE
    scale = np.array([w, h, w, h], np.float64)
    summary = export_yolo([art], tmp_path / "yolo")
    yolo = _yolo_polygons(tmp_path / "yolo", boxes)
    job, _ = annotation_job([1], [art])
    pre = {a["id"]: a["segmentation"] for a in job["annotations"]}
    flag = {a["id"]: a["pre_annotation"] for a in job["annotations"]}
    coco = {a["id"]: a for a in export_coco([art])["annotations"]}
    assert summary["written_box"] == 2 and summary["written_mask"] == 3
    for i, box in boxes.items():
        assert coco[i]["bbox"] == box
        if i in (11, 14):  # the dropped remnant; the kept half of a box (proxy box IoU 0.5)
            assert np.allclose(yolo[i], box_outline(box) / [w, h], atol=1e-6)
            assert np.allclose(_extent(yolo[i]), np.asarray(box) / scale, atol=1e-6)
            assert len(pre[i]) == 1 and np.allclose(_extent(pre[i][0]), box) and flag[i] == "box"
        else:  # the mask's outline along its pixels' edges, 1/8 px inside: 15's 23 px of its box's 25
            expect = np.asarray(mask_box(masks[i])) + [0.125, 0.125, -0.25, -0.25]
            assert np.allclose(_extent(yolo[i]) * scale, expect, atol=1e-4)
            assert np.allclose(_extent(pre[i][0]), expect, atol=1e-3) and flag[i] == "mask"
    assert _extent(pre[15][0])[2] < boxes[15][2] - 2
    truck = coco[11]  # COCO: the remnant as the mask, mask-ignored, beside the given box
    assert truck["status"] == "dropped" and truck["mask_ignore"] and truck["area"] == 1


def test_not_kept_mask_writes_the_remnant_as_asked(tmp_path):
    """With not_kept: mask the dropped truck is its 1x1 remnant; a kept mask whose box disagrees is still its box."""
    art, boxes, _ = eaten_artifact(tmp_path / "md.h5")
    h, w = EATEN_SIZE
    export_yolo([art], tmp_path / "yolo", not_kept="mask")
    yolo = _yolo_polygons(tmp_path / "yolo", boxes)
    assert np.allclose(_extent(yolo[11]) * [w, h, w, h], [33.125, 26.125, 0.75, 0.75], atol=1e-4)
    assert np.allclose(yolo[14], box_outline(boxes[14]) / [w, h], atol=1e-6)
