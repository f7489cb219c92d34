"""The shared stage loops: run_mask_stage (every instance written, predict on usable ones, every_image maps,
batches across images) and run_artifact_stage (every input instance written, in order, with the source's
images, tags, categories)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudomask.dataset import load_coco
from pseudomask.images import write_image
from pseudomask.loops import ImageResult, Provenance, run_artifact_stage, run_mask_stage
from pseudomask.store import Artifact, ArtifactError, ArtifactWriter


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
        return ImageResult(results, {"mean": np.array([rgb.mean()])})
    return predict


def test_predict_sees_usable_instances_and_every_instance_is_written(tmp_path):
    ds = _dataset(tmp_path)
    calls = []
    out = run_mask_stage(ds, tmp_path / "s.h5", Provenance("grabcut", "t"), _predict(calls))
    assert calls == [(None, [7])]  # only image 1 has a usable instance
    with Artifact(out) as a:
        assert {r["id"]: r["status"] for r in a.records()} == {7: "kept", 8: "failed"}
        assert a.image_ids == [1, 2, 3]


def test_every_image_runs_predict_on_images_without_usable_instances(tmp_path, capsys):
    ds = _dataset(tmp_path)
    calls = []
    out = run_mask_stage(ds, tmp_path / "s.h5", Provenance("mcg", "t"), _predict(calls), every_image=True)
    assert calls == [(1, [7]), (2, [])]  # image 3 cannot be read: skipped, and said so
    assert "mcg: image 3 skipped" in capsys.readouterr().err
    with Artifact(out) as a:
        assert a.map("mean", 2)[0] == 200 and a.map("mean", 1)[0] == 100


def test_a_batch_of_images_gives_the_artifact_of_one_image_at_a_time(tmp_path):
    ds = _dataset(tmp_path)
    batches = []

    def predict_batch(jobs):
        batches.append(len(jobs))
        return [_predict([])(rgb, recs) for rgb, recs in jobs]

    one = run_mask_stage(ds, tmp_path / "one.h5", Provenance("grabcut", "t"), _predict([]))
    batched = run_mask_stage(ds, tmp_path / "b.h5", Provenance("grabcut", "t", attrs={"x": "y"}),
                             predict_batch=predict_batch, batch_size=2, loader_workers=1)
    assert batches == [1]  # image 1 alone has usable instances
    with Artifact(one) as a, Artifact(batched) as b:
        assert repr(a.records()) == repr(b.records()) and b.attrs["x"] == "y"  # repr: a NaN quality equals itself
        assert all(np.array_equal(a.masks(i), b.masks(i)) for i in a.image_ids)
    with pytest.raises(TypeError, match="either predict or predict_batch"):
        run_mask_stage(ds, tmp_path / "c.h5", Provenance("grabcut", "t"), _predict([]), predict_batch=predict_batch)


@pytest.mark.parametrize("predict,error,match", [
    (lambda rgb, recs: ImageResult([]), ArtifactError, r"image 1: grabcut gave 0 results for 1 instances \[7\]"),
    (lambda rgb, recs: [], TypeError, r"image 1: grabcut returned a list, not an ImageResult"),
])
def test_predict_must_give_one_result_per_instance(tmp_path, predict, error, match):
    ds = _dataset(tmp_path)
    with pytest.raises(error, match=match):
        run_mask_stage(ds, tmp_path / "s.h5", Provenance("grabcut", "t"), predict)
    assert not (tmp_path / "s.h5").exists()


def _source(path, stage="grabcut", ids=(7, 8)):
    """Image 1 with instances `ids` and tag 2, image 2 without instances and with tag 1."""
    rows = [{"id": i, "category_id": 1, "bbox": [1, 1, 4, 4], "status": "kept", "reason": ""} for i in ids]
    cats = [{"id": 1, "name": "x"}, {"id": 2, "name": "y", "isthing": 0}]
    with ArtifactWriter(path, stage=stage, method="m", categories=cats, attrs={"image_root": "/data/img"}) as w:
        w.add_image({"id": 1, "file_name": "a.png", "width": 6, "height": 5}, rows,
                    np.ones((len(rows), 5, 6), np.uint8), tags=[2])
        w.add_image({"id": 2, "file_name": "b.png", "width": 6, "height": 5}, [], np.zeros((0, 5, 6), np.uint8),
                    tags=[1])
    return path


def _invert(image, records, masks):
    return [{**r, "status": "invalid", "reason": "r"} for r in records[0]], 1 - np.asarray(masks[0]), None


def test_artifact_stage_writes_the_sources_images_tags_and_categories(tmp_path):
    src = _source(tmp_path / "g.h5")
    out = run_artifact_stage([src], tmp_path / "o.h5", Provenance("validity", "t", {"p": 1}), _invert,
                             expect_stages=["grabcut"], final_attrs=lambda: {"done": "yes"})
    with Artifact(out, stage="validity") as a, Artifact(src) as s:
        assert a.image_ids == s.image_ids == [1, 2] and a.tags == s.tags == {1: [2], 2: [1]}
        assert a.categories == s.categories and a.attrs["image_root"] == "/data/img" and a.attrs["done"] == "yes"
        assert [r["id"] for r in a.records()] == [7, 8] and a.status_counts() == {"invalid": 2}
        assert not a.masks(1).any() and a.params == {"p": 1} and str(src) in a.inputs


@pytest.mark.parametrize("per_image,match", [
    (lambda im, recs, masks: (recs[0][:1], masks[0][:1], None), r"lose instances \[8\]"),
    (lambda im, recs, masks: (recs[0][::-1], masks[0], None), r"reorder instances \[7, 8\] as \[8, 7\]"),
])
def test_artifact_stage_must_write_every_input_instance_in_order(tmp_path, per_image, match):
    src = _source(tmp_path / "g.h5")
    with pytest.raises(ArtifactError, match=match) as e:
        run_artifact_stage([src], tmp_path / "o.h5", Provenance("validity", "t"), per_image)
    assert str(tmp_path / "o.h5") in str(e.value) and str(src) in str(e.value)
    assert not (tmp_path / "o.h5").exists()


def test_artifact_stage_checks_stages_and_that_sources_match(tmp_path):
    g, m = _source(tmp_path / "g.h5"), _source(tmp_path / "m.h5", stage="mcg", ids=(7, 9))
    with pytest.raises(ArtifactError, match=r"g.h5 and .*m.h5 do not hold the same images and instances"):
        run_artifact_stage([g, m], tmp_path / "o.h5", Provenance("agree", "t"), _invert)
    with pytest.raises(ArtifactError, match=r"a 'grabcut' artifact, expected one of \('mcg',\)"):
        run_artifact_stage([g], tmp_path / "o.h5", Provenance("agree", "t"), _invert, expect_stages=["mcg"])
    # without the check the first source's instances are the ones to write
    run_artifact_stage([g, m], tmp_path / "o.h5", Provenance("agree", "t"), _invert, check_same_instances=False)
    with Artifact(tmp_path / "o.h5") as a:
        assert [r["id"] for r in a.records()] == [7, 8]
