import json

import numpy as np
import pytest

from pseudomask.masks import box_mask, ellipse_mask
from pseudomask.store import Artifact, ArtifactError, ArtifactWriter
from pseudomask.validity import invalid_rates, run_validity

H, W = 120, 160


def _src(path, stage="grabcut"):
    boxes = [[10, 10, 80, 80], [100, 10, 20, 20], [100, 60, 30, 30]]
    masks = np.stack([box_mask([10, 10, 20, 20], H, W),  # large box, fragment mask: invalid
                      box_mask(boxes[1], H, W),           # small, exact: valid
                      np.zeros((H, W), np.uint8)])        # failed upstream
    rows = [{"id": i + 1, "category_id": 1, "bbox": b, "status": s, "reason": ""}
            for i, (b, s) in enumerate(zip(boxes, ["kept", "kept", "failed"]))]
    with ArtifactWriter(path, stage=stage, method="m", categories=[{"id": 1, "name": "a"}]) as w:
        w.add_image({"id": 1, "file_name": "x.png", "width": W, "height": H}, rows, masks)
    return path


def test_flags_invalid_and_reports_rates(tmp_path):
    run_validity(_src(tmp_path / "g.h5"), tmp_path / "v.h5")
    a = Artifact(tmp_path / "v.h5", stage="validity")
    recs = a.records(1)
    assert [r["status"] for r in recs] == ["invalid", "kept", "failed"]
    assert recs[0]["box_iou"] == pytest.approx(400 / 6400) and recs[1]["box_iou"] == 1.0
    assert np.isnan(recs[2]["box_iou"])
    rates = json.loads(a.attrs["invalid_rates"])
    assert rates["invalid_rate"] == 0.5 and rates["invalid_rate_large64"] == 1.0 and rates["invalid_rate_small64"] == 0.0


def test_ellipse_replaces_invalid(tmp_path):
    run_validity(_src(tmp_path / "g.h5"), tmp_path / "v.h5", ellipse=True)
    a = Artifact(tmp_path / "v.h5")
    r = a.records(1)[0]
    assert r["status"] == "kept" and r["replaced"] == 1.0 and "ellipse" in r["reason"]
    assert np.array_equal(a.masks(1)[0], ellipse_mask([10, 10, 80, 80], H, W))


def test_rejects_non_mask_stage(tmp_path):
    with pytest.raises(ArtifactError, match="'ingest' artifact"):
        run_validity(_src(tmp_path / "i.h5", stage="ingest"), tmp_path / "v.h5")


def test_invalid_rates_empty_groups():
    r = invalid_rates(np.array([0.2, 0.9]), np.array([True, True]))
    assert r["invalid_rate_small64"] == 0.5 and r["invalid_rate_large64"] is None
