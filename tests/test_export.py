"""COCO export of merge_drop artifacts: loads with pycocotools, round-trips against the HDF5, keeps every id."""

import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO

from pseudomask.errors import PseudomaskError
from pseudomask.export import export_coco
from pseudomask.masks import box_mask, rle_decode
from pseudomask.merge_drop import MergeDropSettings, merge_drop
from pseudomask.mask_metrics import evaluate_pseudo
from pseudomask.store import Artifact, ArtifactError, ArtifactWriter
from test_merge_drop import BOXCASEG, perturbed_gt_source

H, W = 50, 60
KEYS = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation", "source", "status",
        "reason", "proxy_box_iou", "mask_ignore"}


def _hand_made(path, image_id=1, ann0=1, categories=({"id": 1, "name": "a"},)):
    """grabcut-stage artifact: a kept mask with ignore pixels, a failed and a crowd (ignored) instance."""
    m = box_mask([5, 5, 20, 20], H, W)
    m[5:10, 5:25] = 255
    rows = [{"id": ann0, "category_id": 1, "bbox": [5.0, 10.0, 20.0, 15.0], "status": "kept", "reason": ""},
            {"id": ann0 + 1, "category_id": 1, "bbox": [0.0, 0.0, 0.0, 0.0], "status": "failed",
             "reason": "bbox [0, 0, -3, 4] has zero or negative size"},
            {"id": ann0 + 2, "category_id": 1, "bbox": [30.0, 30.0, 10.0, 10.0], "status": "ignored",
             "reason": "crowd annotation"}]
    with ArtifactWriter(path, stage="grabcut", method="hand", categories=list(categories)) as w:
        w.add_image({"id": image_id, "file_name": f"{image_id}.png", "width": W, "height": H}, rows,
                    np.stack([m, np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)]))
    return path


def test_round_trip_with_pycocotools(tmp_path, demo, demo_shard):
    src = perturbed_gt_source(demo, demo_shard, tmp_path / "agree.h5", stage="agree", ignore_ring=True)
    merge_drop(src, tmp_path / "md.h5", MergeDropSettings(**BOXCASEG))
    out = tmp_path / "export" / "pseudo.json"
    export_coco([tmp_path / "md.h5"], out)
    coco = COCO(str(out))
    gt = json.loads((demo / "annotations.json").read_text())
    assert sorted(coco.getAnnIds()) == sorted(a["id"] for a in gt["annotations"])
    assert sorted(coco.getImgIds()) == sorted(im["id"] for im in gt["images"])
    gt_image = {a["id"]: a["image_id"] for a in gt["annotations"]}
    n = 0
    with Artifact(tmp_path / "md.h5") as md:
        for image_id in md.image_ids:
            masks = md.masks(image_id)
            for k, r in enumerate(md.records(image_id)):
                a = coco.anns[r["id"]]
                assert KEYS <= set(a) and a["image_id"] == gt_image[r["id"]] == image_id
                assert np.array_equal(coco.annToMask(a), (masks[k] == 1).astype(np.uint8))
                assert np.array_equal(rle_decode(a["ignore_segmentation"]), (masks[k] == 255).astype(np.uint8))
                assert a["status"] == r["status"] and a["mask_ignore"] == (r["status"] != "kept")
                assert a["proxy_box_iou"] == pytest.approx(r["proxy_box_iou"], abs=1e-6)
                assert a["source"] == "agree" and a["iscrowd"] == 0 and a["bbox"] == r["bbox"]
                assert a["area"] == (masks[k] == 1).sum() > 0
                n += 1
    assert n == len(coco.anns) and any(a["mask_ignore"] for a in coco.anns.values())
    # the metrics read the export by annotation id: same mIoU as from the artifact
    assert evaluate_pseudo(out, demo / "annotations.json")["miou"] == pytest.approx(
        evaluate_pseudo(tmp_path / "md.h5", demo / "annotations.json")["miou"])


def test_failed_and_crowd_instances_stay_findable(tmp_path):
    data = export_coco([_hand_made(tmp_path / "g.h5")], tmp_path / "p.json")
    coco = COCO(str(tmp_path / "p.json"))
    kept, failed, crowd = (coco.anns[i] for i in (1, 2, 3))
    assert kept["mask_ignore"] is False and kept["area"] == 15 * 20 and "ignore_segmentation" in kept
    # not a merge_drop artifact: proxy box IoU is computed on export (fg box 5,10,20,15 = GT box)
    assert kept["proxy_box_iou"] == pytest.approx(1.0) and kept["source"] == "grabcut"
    assert failed["status"] == "failed" and failed["mask_ignore"] is True and failed["proxy_box_iou"] is None
    assert coco.annToMask(failed).sum() == 0 and failed["area"] == 0 and "zero or negative" in failed["reason"]
    assert crowd["iscrowd"] == 1 and crowd["mask_ignore"] is True and crowd["area"] == 100  # box area
    assert "ignore_segmentation" not in failed
    assert data["info"]["sources"][0]["stage"] == "grabcut"


def test_many_shards_and_bad_inputs(tmp_path, demo_shard):
    a = _hand_made(tmp_path / "a.h5", image_id=1, ann0=1)
    b = _hand_made(tmp_path / "b.h5", image_id=2, ann0=10)
    data = export_coco([a, b])
    assert [im["id"] for im in data["images"]] == [1, 2] and len(data["annotations"]) == 6
    with pytest.raises(PseudomaskError, match="image 1 is also in"):
        export_coco([a, _hand_made(tmp_path / "c.h5", image_id=1, ann0=20)])
    with pytest.raises(PseudomaskError, match="annotation id 1 is also in"):
        export_coco([a, _hand_made(tmp_path / "d.h5", image_id=3, ann0=1)])
    with pytest.raises(PseudomaskError, match="categories differ"):
        export_coco([a, _hand_made(tmp_path / "e.h5", image_id=4, ann0=30, categories=({"id": 1, "name": "z"},))])
    with pytest.raises(ArtifactError, match="'ingest' artifact"):
        export_coco([demo_shard])
    with pytest.raises(PseudomaskError, match="no input"):
        export_coco([])
    assert not (tmp_path / "p.json").exists()


def test_empty_shard_exports_a_valid_empty_dataset(tmp_path):
    with ArtifactWriter(tmp_path / "md.h5", stage="merge_drop", method="x", categories=[{"id": 3, "name": "c"}]):
        pass
    p = subprocess.run([sys.executable, "-m", "pseudomask", "export", "--artifacts", str(tmp_path / "md.h5"), "--out",
                        str(tmp_path / "p.json")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["images"] == 0 and summary["annotations"] == 0
    coco = COCO(str(tmp_path / "p.json"))
    assert coco.getAnnIds() == [] and coco.getImgIds() == [] and coco.getCatIds() == [3]


def test_sparse_rle_is_byte_identical_to_pycocotools():
    from pycocotools import mask as mask_utils

    from pseudomask.export import sparse_rle
    from pseudomask.crops import MaskStack

    rng = np.random.default_rng(1)
    cases = [np.zeros((7, 5), bool), np.ones((7, 5), bool)]
    for _ in range(30):
        m = np.zeros((int(rng.integers(1, 30)), int(rng.integers(1, 30))), bool)
        y0, x0 = rng.integers(0, m.shape[0]), rng.integers(0, m.shape[1])
        m[y0:y0 + rng.integers(1, 12), x0:x0 + rng.integers(1, 12)] = True
        m &= rng.random(m.shape) < rng.choice([0.3, 1.0])  # holes, or a solid block
        cases.append(m)
    for m in cases:
        (span,), (has,) = MaskStack.from_masks(m[None]).spans()
        want = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert sparse_rle(m, span if has else None) == {"size": list(m.shape), "counts": want["counts"].decode()}


def test_panoptic_export_of_merge_drop_shards(tmp_path, demo, demo_shard):
    """merge_drop masks do not overlap: every kept instance is one thing segment with exactly its merged
    foreground; mask-ignored (dropped) foreground and ignore rings are VOID; the PNGs decode to that map."""
    from pseudomask.images import read_image
    from pseudomask.panoptic import panoptic_folder, rgb_to_id

    src = perturbed_gt_source(demo, demo_shard, tmp_path / "agree.h5", stage="agree", ignore_ring=True)
    merge_drop(src, tmp_path / "md.h5", MergeDropSettings(**BOXCASEG))
    pan = tmp_path / "pan.json"
    export_coco([tmp_path / "md.h5"], tmp_path / "pseudo.json", pan)
    data = json.loads(pan.read_text())
    assert all(c["isthing"] == 1 for c in data["categories"])
    kept = dropped = 0
    with Artifact(tmp_path / "md.h5") as md:
        assert sorted(a["image_id"] for a in data["annotations"]) == sorted(md.image_ids)
        for ann in data["annotations"]:
            ids = rgb_to_id(read_image(panoptic_folder(pan) / ann["file_name"]))
            masks = md.masks(ann["image_id"])
            rows = md.records(ann["image_id"])
            seg_of = {s["instance_ids"][0]: s for s in ann["segments_info"]}
            for k, r in enumerate(rows):
                if r["status"] == "kept":
                    s = seg_of[r["id"]]
                    assert np.array_equal(ids == s["id"], masks[k] == 1) and s["area"] == (masks[k] == 1).sum()
                    assert s["category_id"] == r["category_id"] and s["iscrowd"] == 0
                    kept += 1
                else:
                    assert r["id"] not in seg_of and (ids[masks[k] == 1] == 0).all()
                    dropped += r["status"] == "dropped"
                assert (ids[(masks[k] == 255) & ~(masks == 1).any(0)] == 0).all()
    assert kept and dropped
