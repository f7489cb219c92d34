"""The annotation cost model (the paper's Table 1) on constructed datasets and through the stage."""

from __future__ import annotations

import json

import pytest

from pseudomask.annotation.cost import AnnotationCostSettings, annotation_cost, image_counts, level_seconds
from pseudomask.dataset import Dataset
from pseudomask.registry import STAGES


def _dataset(present: list[int], instances: list[int], categories: int = 20, boxes: bool = True,
             strong_rows: tuple[int, ...] = ()) -> Dataset:
    """Images whose k-th has present[k] classes and instances[k] boxes (tags only: no boxes)."""
    cats = [{"id": c + 1, "name": f"c{c + 1}", "isthing": 1} for c in range(categories)]
    images, rows = [], []
    for k, (p, n) in enumerate(zip(present, instances)):
        image_id = k + 1
        classes = [c + 1 for c in range(p)]
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 10, "height": 10, "tags": classes})
        for j in range(n if boxes else 0):
            rows.append({"id": len(rows) + 1, "image_id": image_id, "category_id": classes[j % p],
                         "bbox": [0.0, 0.0, 5.0, 5.0], "status": "kept", "reason": "",
                         "source": "gt" if image_id in strong_rows else ""})
    return Dataset(cats, images, rows)


# VOC's averages: 20 classes, 1.5 present classes and 2.8 objects per image
VOC = _dataset([1] * 5 + [2] * 5, [2, 2, 2, 2, 3, 3, 3, 3, 4, 4])


def test_voc_averages_give_table_1():
    res = annotation_cost(VOC)
    per = res["per_image_s"]
    assert per["tags"] == pytest.approx(20.0)
    assert per["tags_counts"] == pytest.approx(22.22)
    assert per["boxes"] == pytest.approx(38.1)
    assert per["masks"] == pytest.approx(239.7)
    assert res["images"] == 10 and res["instances"] == 28 and res["present_classes"] == 15


def test_one_image_by_hand_and_the_settings_change_it():
    assert level_seconds(5, 2, 3) == {"tags": 5.0, "tags_counts": 5 + 2 * 1.48, "boxes": 3 + 21.0,
                                      "masks": 3 + 3 * 79.0}
    m = AnnotationCostSettings(mask_s=100.0, class_s=2.0)
    assert level_seconds(5, 2, 3, m)["masks"] == 3 * 2.0 + 3 * 100.0


def test_the_run_pays_boxes_for_weak_images_and_masks_for_strong_ones():
    res = annotation_cost(VOC, strong=[1, 10])
    s = res["seconds"]
    assert res["strong_images"] == 2 and res["supervision"] == "boxes"
    strong = level_seconds(20, 1, 2)["masks"] + level_seconds(20, 2, 4)["masks"]
    assert s["masks_strong"] == pytest.approx(strong)
    assert s["run"] == pytest.approx(s["boxes"] - level_seconds(20, 1, 2)["boxes"] - level_seconds(20, 2, 4)["boxes"]
                                     + strong)
    assert s["full_masks"] == pytest.approx(2397.0)
    assert res["days"]["full_masks"] == pytest.approx(2397.0 / (8 * 3600))
    assert res["run_vs_full_masks"] == pytest.approx(s["run"] / s["full_masks"])


def test_rows_of_source_gt_make_an_image_strong():
    ds = _dataset([1, 2], [2, 3], strong_rows=(2,))
    assert annotation_cost(ds)["strong_images"] == 1
    assert annotation_cost(ds)["seconds"]["masks_strong"] == pytest.approx(level_seconds(20, 2, 3)["masks"])


def test_a_tag_only_dataset_counts_one_instance_per_present_class():
    ds = _dataset([1, 3], [0, 0], boxes=False)
    counts = image_counts(ds)
    assert [c["instances"] for c in counts] == [1, 3] and not counts[0]["instances_known"]
    res = annotation_cost(ds)
    assert res["supervision"] == "tags" and res["instances_known"] is False
    assert res["seconds"]["run"] == pytest.approx(res["seconds"]["tags"])


def test_the_stage_writes_the_json_with_a_strong_file(demo, demo_shard, tmp_path):
    data = json.loads((demo / "annotations.json").read_text())
    strong = tmp_path / "strong.txt"
    strong.write_text("# strong images\n1\n2\n")
    out = tmp_path / "cost.json"
    stage = STAGES["annotation_cost"]
    summary = stage(stage.resolve({}), shards=[str(demo_shard)], strong=str(strong), out=str(out))
    res = json.loads(out.read_text())
    assert summary["seconds"] == res["seconds"]
    assert res["images"] == len(data["images"]) and res["strong_images"] == 2
    assert res["instances"] == len(data["annotations"]) and res["categories"] == len(data["categories"])
    n1 = sum(a["image_id"] in (1, 2) for a in data["annotations"])
    assert res["seconds"]["masks_strong"] >= n1 * 79.0
