"""The annotation job: COCO with polygon pre-annotations that pycocotools (and, where installed, Datumaro's
COCO importer and Label Studio's converter) read back with every id, box, class and mask."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO

from annotation_data import pseudo_artifact
from pseudomask.annotation.job import JobError, annotation_job, box_segmentation, mask_segmentation
from pseudomask.annotation.polygons import drop_threshold, shows_box
from pseudomask.masks import box_mask, mask_iou, rle_decode, segmentation_mask
from pseudomask.merge_drop import MergeDropSettings
from pseudomask.registry import STAGES

CHOSEN = [3, 1, 5]


@pytest.fixture(scope="module")
def job(demo, tmp_path_factory):
    """Job of images 3, 1, 5 of the demo's true masks; instance 1 failed (no mask: its box outline), 2 a crowd
    region."""
    tmp = tmp_path_factory.mktemp("job")
    art = pseudo_artifact(demo, tmp / "md.h5", quality=lambda a: 0.25, status={1: "failed", 2: "ignored"})
    choice = tmp / "choice.json"
    choice.write_text(json.dumps({"chosen": [{"image_id": i} for i in CHOSEN]}))
    out, listing = tmp / "job.json", tmp / "images.txt"
    stage = STAGES["annotation_job"]
    summary = stage(stage.resolve({}), choice=str(choice), masks=[str(art)], out=str(out), image_list=str(listing))
    data = json.loads((demo / "annotations.json").read_text())
    return out, listing, summary, data, art


def _truth(data: dict) -> dict[int, dict]:
    return {a["id"]: a for a in data["annotations"] if a["image_id"] in CHOSEN}


def test_every_instance_but_crowd_regions_is_in_the_job_with_its_ids_and_box(job):
    out, listing, summary, data, _ = job
    j = json.loads(out.read_text())
    assert [im["id"] for im in j["images"]] == CHOSEN
    assert {(c["id"], c["name"]) for c in j["categories"]} == {(c["id"], c["name"]) for c in data["categories"]}
    truth = _truth(data)
    assert {a["id"] for a in j["annotations"]} == set(truth) - {2}
    for a in j["annotations"]:
        t = truth[a["id"]]
        assert a["image_id"] == t["image_id"] and a["category_id"] == t["category_id"] and a["bbox"] == t["bbox"]
        assert a["quality"] == (None if a["id"] == 1 else 0.25)
    failed = next(a for a in j["annotations"] if a["id"] == 1)
    assert failed["segmentation"] == box_segmentation(failed["bbox"]) and failed["status"] == "failed"
    assert {a["id"] for a in j["annotations"] if a["pre_annotation"] == "box"} == {1}  # take_back reads it
    assert all(a["pre_annotation"] == "mask" for a in j["annotations"] if a["id"] != 1)
    assert summary["box_only"] == 1 and summary["images"] == 3
    paths = listing.read_text().splitlines()
    assert [p.rsplit("/", 1)[1] for p in paths] == [im["file_name"] for im in j["images"]]
    assert all(shutil.os.path.exists(p) for p in paths)


def test_pycocotools_reads_the_masks_back(job):
    out, _, _, data, _ = job
    coco = COCO(str(out))
    truth = _truth(data)
    assert sorted(coco.getImgIds()) == sorted(CHOSEN)
    for a in coco.loadAnns(coco.getAnnIds()):
        if a["id"] == 1:
            continue
        t = truth[a["id"]]
        iou = mask_iou(coco.annToMask(a), rle_decode(t["segmentation"]))
        assert iou >= 0.99, (a["id"], t["area"], iou)  # polygons along the pixel edges: exact up to bridges


def test_a_mask_of_several_parts_with_a_hole_is_one_polygon_that_keeps_them():
    m = np.zeros((60, 80), np.uint8)
    m[5:25, 5:25] = 1
    m[10:20, 10:20] = 0  # a hole
    m[30:55, 40:75] = 1  # a second part
    m[2, 70] = 1  # a one-pixel part
    one = mask_segmentation(m)
    assert len(one) == 1
    assert mask_iou(segmentation_mask(one, 60, 80), m) >= 0.99
    parts = mask_segmentation(m, single_polygon=False)
    assert len(parts) == 3
    assert mask_iou(segmentation_mask(parts, 60, 80), m) == 1.0
    assert mask_segmentation(np.zeros((5, 5), np.uint8)) == []


def test_the_box_rule_takes_the_artifacts_proxy_iou_else_the_masks_box():
    m = box_mask([0, 0, 10, 10], 20, 20)
    row = {"status": "kept", "bbox": [0.0, 0.0, 10.0, 10.5]}  # no proxy box IoU: the mask's box, IoU 0.952
    assert not shows_box(row, m, 0.9) and shows_box(row, m, 0.99)
    assert not shows_box({**row, "proxy_box_iou": float("nan")}, m, 0.9)
    assert shows_box({**row, "proxy_box_iou": 0.5}, m, 0.9) and not shows_box({**row, "proxy_box_iou": 1.0}, m, 0.99)
    assert shows_box({**row, "status": "dropped"}, m, 0.0) and shows_box({**row, "status": "invalid"}, m, 0.0)
    assert shows_box(row, np.zeros((20, 20), np.uint8), 0.0)  # an empty mask states no box
    default = MergeDropSettings().threshold
    assert drop_threshold("merge_drop", {"threshold": 0.5}) == 0.5
    assert drop_threshold("merge_drop", {}) == drop_threshold("boxcaseg", {"threshold": 0.5}) == default
    assert box_segmentation([1, 2, 3, 4]) == [[1.0, 2.0, 4.0, 2.0, 4.0, 6.0, 1.0, 6.0]]
    assert box_segmentation([1, 2, 0, 4]) == []


def test_an_image_no_artifact_holds_is_an_error(job):
    *_, art = job
    with pytest.raises(JobError, match=r"\[999\]"):
        annotation_job([1, 999], [art])


def test_datumaro_coco_importer_loads_ids_boxes_classes_and_polygons(job, tmp_path, demo):
    dm = pytest.importorskip("datumaro")
    out, _, _, data, _ = job
    (tmp_path / "annotations").mkdir()
    shutil.copy(out, tmp_path / "annotations/instances_default.json")
    (tmp_path / "images").mkdir()
    (tmp_path / "images/default").symlink_to(demo / "images")
    ds = dm.Dataset.import_from(str(tmp_path), "coco_instances")
    names = [c.name for c in ds.categories()[dm.AnnotationType.label]]
    truth = _truth(data)
    seen = set()
    for item in ds:
        image_id = item.attributes["id"]
        assert image_id in CHOSEN
        for a in item.annotations:
            t = truth[a.id]
            assert t["image_id"] == image_id
            assert names[a.label] == next(c["name"] for c in data["categories"] if c["id"] == t["category_id"])
            if a.type == dm.AnnotationType.bbox:
                assert [a.x, a.y, a.w, a.h] == t["bbox"]
                seen.add(a.id)
            elif a.type == dm.AnnotationType.polygon:
                back = segmentation_mask([list(a.points)], *item.media.size)
                want = box_mask(t["bbox"], *item.media.size) if a.id == 1 else rle_decode(t["segmentation"])
                assert mask_iou(back, want) >= 0.99  # the failed instance 1: its box outline
    assert seen == set(truth) - {2}


def test_label_studio_converter_loads_a_polygon_and_a_rectangle_per_instance(job, tmp_path):
    conv = pytest.importorskip("label_studio_converter.imports.coco")
    out, _, _, data, _ = job
    ls = tmp_path / "tasks.json"
    conv.convert_coco_to_ls(str(out), str(ls), image_root_url="/data/")
    tasks = json.loads(ls.read_text())
    assert len(tasks) == len(CHOSEN)
    results = [r for t in tasks for r in t["annotations"][0]["result"]]
    n = len(_truth(data)) - 1  # without the crowd region
    assert sum(r["type"] == "rectanglelabels" for r in results) == n
    assert sum(r["type"] == "polygonlabels" for r in results) == n  # the failed instance's is its box outline
