"""YOLO-seg export of the whole dataset, read back: every instance's class, mask (within polygon tolerance)
and box survive; the label files follow Ultralytics' rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from annotation_data import pseudo_artifact
from pseudomask.annotation.polygons import polygon_mask
from pseudomask.annotation.yolo import export_yolo, read_yolo
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
    assert summary["written_box"] == 1  # the failed instance
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
            if a["id"] == 1:  # failed: its box
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
