"""The shared per-instance stage loop: every instance written, predict on usable ones, every_image maps."""

from __future__ import annotations

import json

import numpy as np

from pseudomask.dataset import load_coco
from pseudomask.images import write_image
from pseudomask.stage import run_mask_stage
from pseudomask.store import Artifact


def _dataset(tmp_path):
    """Image 1 with a kept and a 1-px box, image 2 without boxes, image 3 unreadable and without boxes."""
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images/a.png", np.full((20, 30, 3), 100, np.uint8))
    write_image(tmp_path / "images/b.png", np.full((20, 30, 3), 200, np.uint8))
    (tmp_path / "images/c.png").write_bytes(b"not a png")
    images = [{"id": i + 1, "file_name": f, "width": 30, "height": 20} for i, f in enumerate(["a.png", "b.png", "c.png"])]
    anns = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8]},
            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 0]}]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 1, "name": "x"}]}))
    return load_coco(tmp_path / "ann.json", tmp_path / "images", check_files=False)


def _predict(calls):
    def predict(rgb, recs, image=None):
        calls.append((None if image is None else image["id"], [r["id"] for r in recs]))
        results = [{"mask": np.ones(rgb.shape[:2], np.uint8), "status": "kept", "reason": ""} for _ in recs]
        return results, {"mean": np.array([rgb.mean()])}
    return predict


def test_predict_sees_usable_instances_and_every_instance_is_written(tmp_path):
    ds = _dataset(tmp_path)
    calls = []
    out = run_mask_stage(ds, tmp_path / "s.h5", _predict(calls), stage="grabcut", method="t", params={})
    assert calls == [(None, [7])]  # only image 1 has a usable instance
    with Artifact(out) as a:
        assert {r["id"]: r["status"] for r in a.records()} == {7: "kept", 8: "failed"}
        assert a.image_ids == [1, 2, 3]


def test_every_image_runs_predict_on_images_without_usable_instances(tmp_path, capsys):
    ds = _dataset(tmp_path)
    calls = []
    out = run_mask_stage(ds, tmp_path / "s.h5", _predict(calls), stage="mcg", method="t", params={},
                         every_image=True)
    assert calls == [(1, [7]), (2, [])]  # image 3 cannot be read: skipped, and said so
    assert "mcg: image 3 skipped" in capsys.readouterr().err
    with Artifact(out) as a:
        assert a.map("mean", 2)[0] == 200 and a.map("mean", 1)[0] == 100
