import numpy as np
import pytest

from pseudomask.agree import agree_masks, run_agree
from pseudomask.errors import PseudomaskError
from pseudomask.masks import box_mask
from pseudomask.store import IGNORE, Artifact, ArtifactError, ArtifactWriter

H, W = 40, 50
CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_disagreement_is_ignore_and_agreement_is_foreground():
    box = [5, 5, 20, 20]
    gc = box_mask([5, 5, 20, 20], H, W)[None]
    mcg = box_mask([5, 5, 10, 20], H, W)[None]  # MCG covers the left half only
    out, sem, inst = agree_masks(gc, mcg, [box], [2])
    out = np.asarray(out)
    assert np.all(out[0, 5:25, 5:15] == 1) and np.all(out[0, 5:25, 15:25] == IGNORE)
    assert out[0].sum() - 0 == 200 + 200 * IGNORE and np.all(out[0, :5] == 0)
    assert np.all(sem[5:25, 5:15] == 2) and np.all(sem[5:25, 15:25] == IGNORE) and sem[0, 0] == 0
    assert np.all(inst[5:25, 5:15] == 1) and np.all(inst[5:25, 15:25] == -1)


def test_rest_of_box_policy():
    box = [5, 5, 20, 20]
    small = box_mask([10, 10, 5, 5], H, W)[None]
    out = np.asarray(agree_masks(small, small, [box], [1])[0])
    assert out[0, 6, 6] == 0
    out = np.asarray(agree_masks(small, small, [box], [1], rest_of_box="ignore")[0])
    assert out[0, 6, 6] == IGNORE and out[0, 12, 12] == 1 and out[0, 0, 0] == 0
    with pytest.raises(PseudomaskError, match="rest_of_box"):
        agree_masks(small, small, [box], [1], rest_of_box="maybe")


def test_same_class_overlap_is_ignore_other_class_is_not_merged():
    a, b = [0, 0, 20, 20], [10, 10, 20, 20]
    m = np.stack([box_mask(a, H, W), box_mask(b, H, W)])
    out, sem, _ = agree_masks(m, m, [a, b], [1, 1])
    out = np.asarray(out)
    assert np.all(out[:, 10:20, 10:20] == IGNORE) and np.all(sem[10:20, 10:20] == IGNORE)
    out, sem, _ = agree_masks(m, m, [a, b], [1, 2])
    out = np.asarray(out)
    assert np.all(out[:, 10:20, 10:20] == 1)  # both instances keep it ...
    assert np.all(sem[10:20, 10:20] == IGNORE)  # ... but the class of the pixel is ambiguous


def _artifact(path, stage, masks, statuses=("kept", "kept")):
    rows = [{"id": i + 1, "category_id": 1, "bbox": [5 + 20 * i, 5, 15, 15], "status": s, "reason": "r" if s != "kept" else ""}
            for i, s in enumerate(statuses)]
    with ArtifactWriter(path, stage=stage, method="m", categories=CATS) as w:
        w.add_image({"id": 3, "file_name": "x.png", "width": W, "height": H}, rows, masks)
    return path


def test_run_agree_statuses_and_mismatch(tmp_path):
    gc = np.stack([box_mask([5, 5, 15, 15], H, W), box_mask([25, 5, 15, 15], H, W)])
    mcg = np.stack([box_mask([5, 5, 15, 15], H, W), np.zeros((H, W), np.uint8)])
    g = _artifact(tmp_path / "g.h5", "grabcut", gc, ("kept", "failed"))
    m = _artifact(tmp_path / "m.h5", "mcg", mcg)
    run_agree(g, m, tmp_path / "a.h5")
    a = Artifact(tmp_path / "a.h5", stage="agree")
    recs = a.records(3)
    assert [r["status"] for r in recs] == ["kept", "failed"] and recs[1]["reason"] == "r"
    assert recs[0]["agreed_fraction"] == 1.0
    assert a.map("semantic", 3).shape == (H, W)
    run_agree(_artifact(tmp_path / "g2.h5", "grabcut", np.stack([gc[0], gc[0]])), m, tmp_path / "b.h5")
    assert Artifact(tmp_path / "b.h5").records(3)[1]["status"] == "invalid"  # MCG has nothing there
    with pytest.raises(ArtifactError, match="expected one of \\('mcg',\\)"):
        run_agree(g, g, tmp_path / "c.h5")


def test_image_without_instances():
    empty = np.zeros((0, H, W), np.uint8)
    out, sem, inst = agree_masks(empty, empty, [], [])
    assert out.shape == (0, H, W) and not sem.any() and not inst.any()
