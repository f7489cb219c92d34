import json

import numpy as np
import pytest

from pseudomask.dataset import DatasetError, check_box, load_coco, load_dataset, load_tags_csv, load_voc, read_shard, shard, write_shard
from pseudomask.images import write_image


@pytest.fixture()
def folder(tmp_path):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "images" / name, np.zeros((40, 60, 3), np.uint8))
    return tmp_path


def _coco(folder, anns, images=None, cats=None):
    data = {"images": images or [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
                                 {"id": 2, "file_name": "b.png", "width": 60, "height": 40}],
            "categories": cats or [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": anns}
    p = folder / "ann.json"
    p.write_text(json.dumps(data))
    return p


def _ann(i, bbox, cat=1, image=1):
    return {"id": i, "image_id": image, "category_id": cat, "bbox": bbox}


def test_coco_statuses_for_bad_boxes(folder):
    p = _coco(folder, [_ann(1, [5, 5, 10, 10]), _ann(2, [50, 30, 20, 20]), _ann(3, [70, 50, 5, 5]),
                       _ann(4, [5, 5, 0, 3]), _ann(5, [5, 5, -2, 3]), _ann(6, [1, 1, 5, 5], cat=9),
                       {**_ann(7, [1, 1, 5, 5]), "iscrowd": 1}])
    ds = load_coco(p, folder / "images")
    st = {r["id"]: (r["status"], r["reason"]) for r in ds.instances}
    assert st[1] == ("kept", "")
    assert st[2][0] == "kept" and "clipped" in st[2][1]
    assert [r["bbox"] for r in ds.instances if r["id"] == 2][0] == [50.0, 30.0, 10.0, 10.0]
    assert st[3][0] == "failed" and "outside" in st[3][1]
    assert st[4][0] == "failed" and "zero or negative" in st[4][1]
    assert st[5][0] == "failed" and "zero or negative" in st[5][1]
    assert st[6] == ("failed", "unknown category id 9")
    assert st[7] == ("ignored", "crowd annotation")
    assert len(ds.instances) == 7  # nothing lost


@pytest.mark.parametrize("bbox,size", [
    ([385.53, 60.03, 214.97, 297.16], (640, 426)),  # a COCO box: x + w - x != w in floating point
    ([0.1, 0.2, 59.9, 39.8], (60, 40)),               # touches the right and bottom borders
    ([12.34, 5.67, 47.66, 0.01], (60, 40)),
    ([-0.0004, 0.0, 60.0008, 40.0005], (60, 40)),     # past the border by float noise only
])
def test_box_inside_the_image_is_kept_unchanged(bbox, size):
    assert check_box(bbox, *size) == (bbox, "")


def test_non_integer_boxes_inside_the_image_are_not_clipped(folder):
    boxes = {1: [10.53, 3.03, 24.97, 29.16], 2: [0.25, 0.75, 59.75, 39.25], 3: [33.3, 11.1, 22.2, 28.9]}
    ds = load_coco(_coco(folder, [_ann(i, b) for i, b in boxes.items()]), folder / "images")
    assert {r["id"]: (r["status"], r["reason"], r["bbox"]) for r in ds.instances} == {
        i: ("kept", "", b) for i, b in boxes.items()}


def test_box_crossing_the_border_is_clipped_and_says_so(folder):
    ds = load_coco(_coco(folder, [_ann(1, [-2.5, 30.25, 20.75, 12.5]), _ann(2, [45.5, 0.5, 14.6, 10.0])]),
                   folder / "images")
    left, right = ds.instances
    assert left["status"] == "kept" and left["bbox"] == [0.0, 30.25, 18.25, 9.75]
    assert left["reason"] == "bbox [-2.5, 30.25, 20.75, 12.5] clipped to the 60x40 image"
    assert right["bbox"] == [45.5, 0.5, 14.5, 10.0] and "clipped to the 60x40 image" in right["reason"]


def test_missing_image_fails_its_instances_by_name(folder):
    images = [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
              {"id": 3, "file_name": "gone.png", "width": 60, "height": 40}]
    ds = load_coco(_coco(folder, [_ann(1, [1, 1, 5, 5], image=3)], images=images), folder / "images")
    assert ds.instances[0]["status"] == "failed" and "gone.png" in ds.instances[0]["reason"]


def test_corrupt_image_fails_its_instances(folder):
    (folder / "images" / "b.png").write_bytes(b"not a png")
    ds = load_coco(_coco(folder, [_ann(1, [1, 1, 5, 5], image=2)]), folder / "images")
    assert ds.instances[0]["status"] == "failed" and "b.png" in ds.instances[0]["reason"]


@pytest.mark.parametrize("anns,images,match", [
    ([_ann(1, [1, 1, 2, 2]), _ann(1, [1, 1, 2, 2])], None, "duplicate annotation id 1"),
    ([], [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], "duplicate image id 1"),
    ([_ann(1, [1, 1, 2, 2], image=5)], None, "annotation 1 refers to unknown image 5"),
    ([], [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}], "is 60x40 on disk"),
])
def test_coco_errors_name_file_and_record(folder, anns, images, match):
    p = _coco(folder, anns, images=images)
    with pytest.raises(DatasetError, match=match) as e:
        load_coco(p, folder / "images")
    assert str(p) in str(e.value)


def test_malformed_json_names_line(folder):
    p = folder / "bad.json"
    p.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match=r"bad.json: malformed JSON at line 2"):
        load_dataset(p, folder / "images")


def _voc(folder, body):
    (folder / "Annotations").mkdir(exist_ok=True)
    (folder / "JPEGImages").mkdir(exist_ok=True)
    write_image(folder / "JPEGImages" / "x.jpg", np.zeros((40, 60, 3), np.uint8))
    (folder / "Annotations" / "x.xml").write_text(body)


def test_voc_boxes_become_zero_based(tmp_path):
    _voc(tmp_path, "<annotation><filename>x.jpg</filename><size><width>60</width><height>40</height></size>"
                   "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax>"
                   "</bndbox></object></annotation>")
    ds = load_dataset(tmp_path)
    assert ds.instances[0]["bbox"] == [0.0, 0.0, 10.0, 20.0]
    assert ds.category_names()[ds.instances[0]["category_id"]] == "dog"
    assert len(ds.categories) == 20


def test_malformed_voc_xml_names_file(tmp_path):
    _voc(tmp_path, "<annotation><object>")
    with pytest.raises(DatasetError, match=r"x.xml: malformed XML"):
        load_voc(tmp_path)


def test_tags_from_csv_and_from_coco_without_boxes(folder):
    csv = folder / "tags.csv"
    csv.write_text("image,tag\na.png,cat\na.png,dog\nb.png,dog\n")
    ds = load_tags_csv(csv, folder / "images")
    assert not ds.has_boxes and [im["tags"] for im in ds.images] == [[1, 2], [2]]
    p = _coco(folder, [{"id": 1, "image_id": 2, "category_id": 2}])
    ds = load_dataset(p, folder / "images")
    assert not ds.has_boxes and ds.images[1]["tags"] == [2]
    csv.write_text("a.png,cat,extra\n")
    with pytest.raises(DatasetError, match="tags.csv: line 2"):
        load_tags_csv(csv, folder / "images")


def test_shards_round_trip_through_hdf5(folder, tmp_path):
    ds = load_coco(_coco(folder, [_ann(1, [1, 1, 5, 5]), _ann(2, [70, 1, 5, 5], image=2)]), folder / "images")
    parts = shard(ds, 1)
    assert [len(p.images) for p in parts] == [1, 1]
    write_shard(parts[1], tmp_path / "s.h5")
    back = read_shard(tmp_path / "s.h5")
    assert back.images[0]["id"] == 2 and back.instances[0]["status"] == "failed"
    assert back.image_root == (folder / "images").resolve()
    with pytest.raises(DatasetError, match="shard_size"):
        shard(ds, 0)
