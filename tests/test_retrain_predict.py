"""Prediction plumbing without a model: which images are predicted, and detections -> COCO results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pseudomask.masks import rle_decode
from pseudomask.retrain.mmdet_config import RetrainError
from pseudomask.retrain.predict import image_list, instances_to_results


def test_image_list_from_coco_or_folder(demo, tmp_path):
    gt = json.loads((demo / "annotations.json").read_text())
    ims = image_list(demo / "images", demo / "annotations.json")
    assert ims == [{"id": im["id"], "file_name": im["file_name"]} for im in gt["images"]]
    folder = tmp_path / "imgs"
    folder.mkdir()
    (tmp_path / "empty").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert image_list(folder) == [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"}]
    with pytest.raises(RetrainError, match="no image files"):
        image_list(tmp_path / "empty")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(RetrainError, match=r"bad.json: images\[0\] lacks 'id' or 'file_name'"):
        image_list(demo / "images", bad)


def test_instances_become_coco_results():
    from mmengine.structures import InstanceData

    masks = torch.zeros(2, 30, 40, dtype=torch.bool)
    masks[0, 5:10, 6:20] = True
    pred = InstanceData(bboxes=torch.tensor([[6.0, 5.0, 20.0, 10.0], [0.5, 1.0, 3.5, 4.0]]),
                        labels=torch.tensor([2, 0]), scores=torch.tensor([0.9, 0.2]), masks=masks)
    res = instances_to_results(7, pred, category_ids=[11, 12, 13])
    assert [r["category_id"] for r in res] == [13, 11] and [r["image_id"] for r in res] == [7, 7]
    assert res[0]["bbox"] == [6.0, 5.0, 14.0, 5.0] and res[1]["bbox"] == [0.5, 1.0, 3.0, 3.0]
    assert res[0]["score"] == pytest.approx(0.9) and res[0]["segmentation"]["size"] == [30, 40]
    assert np.array_equal(rle_decode(res[0]["segmentation"]), masks[0].numpy().astype(np.uint8))
    assert rle_decode(res[1]["segmentation"]).sum() == 0
    json.dumps(res)
