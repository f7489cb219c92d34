"""Take-back: corrected COCO annotations become the strong file in the dataset's ids, every conflict reported."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from annotation_data import pseudo_artifact
from pseudomask.annotation.job import annotation_job, box_segmentation, mask_segmentation
from pseudomask.annotation.polygons import is_box_outline
from pseudomask.annotation.take_back import TakeBackError, TakeBackSettings, take_back
from pseudomask.dataset import add_strong, load_dataset
from pseudomask.masks import box_mask, mask_iou, rle_decode, rle_encode, segmentation_mask
from pseudomask.registry import STAGES

BOXED = (4, 14)  # instances of images 1 and 3 whose job pre-annotation is their box outline


@pytest.fixture(scope="module")
def base(demo):
    data = json.loads((demo / "annotations.json").read_text())
    return data, load_dataset(demo / "annotations.json", demo / "images")


def _corrections(data: dict, images=(1, 3)) -> dict:
    """The annotator returns the true masks of `images` (in the dataset's ids)."""
    c = copy.deepcopy(data)
    c["images"] = [im for im in c["images"] if im["id"] in images]
    c["annotations"] = [a for a in c["annotations"] if a["image_id"] in images]
    return c


def _job(data: dict, images=(1, 3, 5)) -> dict:
    return {"images": [im for im in data["images"] if im["id"] in images],
            "annotations": [{"id": a["id"], "image_id": a["image_id"]} for a in data["annotations"]
                            if a["image_id"] in images], "categories": data["categories"]}


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


@pytest.fixture(scope="module")
def boxed_job(demo, tmp_path_factory):
    """The real annotation job of images 1 and 3 of the demo's true masks, instance 4 dropped and 14 failed:
    both are pre-annotated as their box outlines."""
    tmp = tmp_path_factory.mktemp("boxed_job")
    art = pseudo_artifact(demo, tmp / "md.h5", status={4: "dropped", 14: "failed"})
    job, _ = annotation_job([1, 3], [art])
    path = tmp / "job.json"
    path.write_text(json.dumps(job))
    return path, {a["id"]: a for a in job["annotations"]}


def test_clean_corrections_become_the_strong_file_in_dataset_ids(base, tmp_path, demo):
    data, ds = base
    strong, rep = take_back(_write(tmp_path, "c.json", _corrections(data)), [ds],
                            _write(tmp_path, "job.json", _job(data)))
    want = [a for a in data["annotations"] if a["image_id"] in (1, 3)]
    assert [im["id"] for im in strong["images"]] == [1, 3]
    assert sorted(a["id"] for a in strong["annotations"]) == sorted(a["id"] for a in want)
    assert rep["not_returned"] == [5] and rep["counts"]["box_changed"] == 0 and not rep["deleted"]
    assert not rep["added"] and not rep["unknown_images"]
    # the lead's ingest reads it: the strong images' rows become true masks
    path = _write(tmp_path, "strong.json", strong)
    mixed = add_strong(ds, path)
    gt = {r["id"] for r in mixed.instances if r.get("source") == "gt"}
    assert gt == {a["id"] for a in want}
    for a in want[:3]:
        assert mask_iou(rle_decode(mixed.strong[a["id"]]), rle_decode(a["segmentation"])) == 1.0


def test_every_conflict_is_reported(base, tmp_path):
    data, ds = base
    c = _corrections(data)
    image1 = [a for a in c["annotations"] if a["image_id"] == 1]
    image3 = [a for a in c["annotations"] if a["image_id"] == 3]
    moved, deleted, nomask, renamed = image1[0], image1[1], image1[2], image3[0]
    h, w = 240, 320
    m = rle_decode(moved["segmentation"])
    m = np.roll(m, 12, axis=1)
    moved["segmentation"] = rle_encode(m)
    x, y, bw, bh = moved["bbox"]
    moved["bbox"] = [x + 12, y, bw, bh]
    c["annotations"].remove(deleted)
    nomask["segmentation"] = []
    renamed["id"] = 99999  # unknown to the dataset: matched by its box
    added = np.zeros((h, w), np.uint8)
    added[5:15, 5:30] = 1
    c["annotations"].append({"id": 123456, "image_id": 3, "category_id": 1, "bbox": [5, 5, 25, 10],
                             "segmentation": rle_encode(added), "iscrowd": 0})
    c["annotations"].append({"id": 7, "image_id": 1, "category_id": 77, "bbox": [0, 0, 5, 5], "segmentation": []})
    c["categories"].append({"id": 77, "name": "unicorn"})
    c["images"].append({"id": 555, "file_name": "nope.png", "width": 10, "height": 10})
    strong, rep = take_back(_write(tmp_path, "c.json", c), [ds], _write(tmp_path, "job.json", _job(data)))
    new_id = max(a["id"] for a in data["annotations"]) + 1
    assert [b["instance_id"] for b in rep["box_changed"]] == [moved["id"]]
    assert rep["box_changed"][0]["new_bbox"] == moved["bbox"]
    assert [d["instance_id"] for d in rep["deleted"]] == [deleted["id"]]
    assert [d["instance_id"] for d in rep["no_mask"]] == [nomask["id"]]
    assert rep["unknown_instance_ids"][0]["annotation_id"] == 99999
    renamed_was = next(a["id"] for a in data["annotations"] if a["image_id"] == 3)
    assert rep["matched_by_box"][0]["instance_id"] == renamed_was
    assert rep["added"] == [{"image_id": 3, "instance_id": new_id, "annotation_id": 123456,
                             "bbox": [5.0, 5.0, 25.0, 10.0], "category_id": 1}]
    assert rep["unknown_images"][0]["image_id"] == 555
    assert "unknown category 77" in rep["skipped_annotations"][0]["reason"]
    by_id = {a["id"]: a for a in strong["annotations"]}
    assert deleted["id"] not in by_id and nomask["id"] not in by_id and new_id in by_id
    assert by_id[moved["id"]]["bbox"] == moved["bbox"]
    assert mask_iou(segmentation_mask(by_id[moved["id"]]["segmentation"], h, w), m) == 1.0
    mixed = add_strong(ds, _write(tmp_path, "strong.json", strong))  # ingest takes the added instance too
    assert any(r["id"] == new_id and r["source"] == "gt" for r in mixed.instances)
    with pytest.raises(TakeBackError, match="nope.png"):
        take_back(tmp_path / "c.json", [ds], s=TakeBackSettings(unknown_images="error"))


def test_renumbered_export_matches_by_file_name_category_name_and_box(base, tmp_path):
    """As CVAT exports: images, annotations and categories numbered from 1, polygons, other file paths."""
    data, ds = base
    c = _corrections(data, images=(2, 4))
    cat_new = {cat["id"]: k + 1 for k, cat in enumerate(sorted(c["categories"], key=lambda x: x["name"]))}
    c["categories"] = [{"id": cat_new[cat["id"]], "name": cat["name"]} for cat in c["categories"]]
    img_new = {2: 1, 4: 2}
    for im in c["images"]:
        im["file_name"] = "task/frames/" + im["file_name"]
        im["id"] = img_new[im["id"]]
    from pseudomask.annotation.job import mask_segmentation

    for k, a in enumerate(c["annotations"]):
        a.update(id=k + 1, image_id=img_new[a["image_id"]], category_id=cat_new[a["category_id"]],
                 segmentation=mask_segmentation(rle_decode(a["segmentation"])))
    strong, rep = take_back(_write(tmp_path, "c.json", c), [ds])
    want = {a["id"]: a for a in data["annotations"] if a["image_id"] in (2, 4)}
    got = {a["id"]: a for a in strong["annotations"]}
    assert set(got) == set(want) and not rep["added"] and not rep["deleted"]
    for i, a in got.items():
        assert a["category_id"] == want[i]["category_id"] and a["image_id"] == want[i]["image_id"]
        iou = mask_iou(segmentation_mask(a["segmentation"], 240, 320), rle_decode(want[i]["segmentation"]))
        assert iou >= 0.99
    assert not rep["category_changed"] and not rep["box_changed"]


def test_the_stage_writes_the_strong_file_and_the_report(base, tmp_path, demo_shard):
    data, _ = base
    stage = STAGES["take_back"]
    out, report = tmp_path / "strong.json", tmp_path / "report.json"
    summary = stage(stage.resolve({}), corrections=str(_write(tmp_path, "c.json", _corrections(data))),
                    shards=[str(demo_shard)], out=str(out), report=str(report))
    assert summary["strong_images"] == 2
    assert json.loads(report.read_text())["strong_images"] == 2
    assert len(json.loads(out.read_text())["annotations"]) == summary["strong_annotations"]


def test_a_second_round_of_corrections_keeps_the_first_rounds_strong_images(base, tmp_path):
    data, ds = base
    first, _ = take_back(_write(tmp_path, "c1.json", _corrections(data, (1, 3))), [ds])
    round2 = add_strong(ds, _write(tmp_path, "s1.json", first))  # dataset.strong = round 1's file
    second, rep = take_back(_write(tmp_path, "c2.json", _corrections(data, (3, 5))), [round2])
    assert sorted(im["id"] for im in second["images"]) == [1, 3, 5]
    assert rep["kept_strong_images"] == [1] and rep["counts"]["kept_strong_images"] == 1
    want = {a["id"]: a for a in data["annotations"] if a["image_id"] in (1, 3, 5)}
    assert sorted(a["id"] for a in second["annotations"]) == sorted(want)
    again = add_strong(ds, _write(tmp_path, "s2.json", second))
    for a in second["annotations"]:
        im = next(i for i in data["images"] if i["id"] == a["image_id"])
        truth = segmentation_mask(want[a["id"]]["segmentation"], im["height"], im["width"])
        assert mask_iou(rle_decode(again.strong[a["id"]]), truth) == 1.0
    alone, rep = take_back(_write(tmp_path, "c3.json", _corrections(data, (5,))), [round2],
                           s=TakeBackSettings(keep_strong=False))
    assert [im["id"] for im in alone["images"]] == [5] and not rep.get("kept_strong_images")


def test_a_box_outline_returned_as_given_stays_box_only(base, boxed_job, tmp_path):
    """Box outlines the job gave and the tool returns untouched (4 as the job's polygon; 14 as the filled box's
    RLE under a renumbered id, as a tool exporting masks would) are not true masks: reported, left out of the
    strong file, box-only in the dataset. Without the job the same file takes them as masks filling the box."""
    data, ds = base
    job_path, job = boxed_job
    assert {i for i, a in job.items() if a["pre_annotation"] == "box"} == set(BOXED)
    assert job[4]["segmentation"] == box_segmentation(job[4]["bbox"])
    c = _corrections(data)
    by_id = {a["id"]: a for a in c["annotations"]}
    by_id[4].update(segmentation=job[4]["segmentation"], bbox=job[4]["bbox"])
    by_id[14].update(id=99999, segmentation=rle_encode(box_mask(job[14]["bbox"], 240, 320)), bbox=job[14]["bbox"])
    path = _write(tmp_path, "c.json", c)
    strong, rep = take_back(path, [ds], job_path)
    assert [(b["image_id"], b["instance_id"]) for b in rep["box_not_edited"]] == [(1, 4), (3, 14)]
    assert rep["box_not_edited"][1]["annotation_id"] == 99999 and rep["counts"]["box_not_edited"] == 2
    assert not rep["no_mask"] and not rep["deleted"] and not rep["added"]
    want = {a["id"] for a in data["annotations"] if a["image_id"] in (1, 3)} - set(BOXED)
    assert {a["id"] for a in strong["annotations"]} == want
    mixed = add_strong(ds, _write(tmp_path, "strong.json", strong))
    source = {r["id"]: r.get("source") for r in mixed.instances}
    assert all(source[i] != "gt" for i in BOXED) and all(source[i] == "gt" for i in want)
    plain, rep = take_back(path, [ds])  # without the job a box-shaped mask may be a real object's
    assert {a["id"] for a in plain["annotations"]} == want | set(BOXED) and not rep["box_not_edited"]


def test_a_box_outline_the_annotator_edited_is_a_true_mask(base, boxed_job, tmp_path):
    """4 redrawn as its object's shape and 14 as a smaller rectangle go into the strong file as drawn."""
    data, ds = base
    job_path, job = boxed_job
    c = _corrections(data)
    by_id = {a["id"]: a for a in c["annotations"]}
    truth4 = rle_decode(by_id[4]["segmentation"])
    by_id[4]["segmentation"] = mask_segmentation(truth4)
    smaller = [80.0, 4.0, 60.0, 50.0]  # inside 14's box [72, 0, 76, 64]
    by_id[14].update(segmentation=box_segmentation(smaller), bbox=smaller)
    strong, rep = take_back(_write(tmp_path, "c.json", c), [ds], job_path)
    assert not rep["box_not_edited"] and not rep["no_mask"]
    got = {a["id"]: a for a in strong["annotations"]}
    assert set(BOXED) <= set(got)
    assert mask_iou(segmentation_mask(got[4]["segmentation"], 240, 320), truth4) == 1.0
    assert mask_iou(segmentation_mask(got[14]["segmentation"], 240, 320), box_mask(smaller, 240, 320)) == 1.0
    assert got[14]["bbox"] == smaller


def test_the_box_outline_rule():
    """A box outline survives a tool's rounding, another start or direction and a rasterised return; a
    rectangle one pixel smaller all round, or a drawn shape inside the box, is an edit."""
    bbox, h, w = [10.0, 20.0, 30.0, 40.0], 80, 60
    filled = box_mask(bbox, h, w)
    assert is_box_outline(box_segmentation(bbox), filled, bbox)
    turned = [[40.04, 60.0, 40.0, 20.03, 10.0, 19.96, 10.0, 20.0, 9.95, 60.0]]  # reversed, the start repeated
    assert is_box_outline(turned, segmentation_mask(turned, h, w), bbox)
    assert is_box_outline(rle_encode(filled), filled, bbox)
    inner = box_segmentation([11.0, 21.0, 28.0, 38.0])
    assert not is_box_outline(inner, segmentation_mask(inner, h, w), bbox)
    triangle = [[10.0, 20.0, 40.0, 20.0, 10.0, 60.0]]
    assert not is_box_outline(triangle, segmentation_mask(triangle, h, w), bbox)
