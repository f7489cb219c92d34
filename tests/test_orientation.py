"""Phone photos and damaged files: one orientation rule for every reader (the annotation's size decides
whether the EXIF rotation applies), and images that decode only partly fail their instances by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from pseudomask.boxcaseg.data import BOX, JointDataset, SalientFolder, box_items
from pseudomask.dataset import DatasetError, load_dataset, read_shard, write_shard
from pseudomask.dataset_config import init_config
from pseudomask.grabcut import run_grabcut
from pseudomask.images import exif_transpose, probe_image, read_annotated_image, read_image, write_image
from pseudomask.ingest import ingest
from pseudomask.masks import mask_iou, rle_encode
from pseudomask.retrain.mmdet_config import RetrainSettings, build_config, write_config
from pseudomask.store import Artifact
from pseudomask.summary import artifact_summary, format_summary

W, H = 160, 100  # the photo as displayed (landscape); stored turned, with EXIF orientation 6
BOX_D = (30, 20, 60, 50)  # the object's box in displayed coordinates (xywh)


def displayed_photo() -> tuple[np.ndarray, np.ndarray]:
    """(RGB (H, W, 3), object mask (H, W)): a red ellipse on a grey, textured background."""
    yy, xx = np.mgrid[:H, :W]
    x, y, w, h = BOX_D
    obj = ((xx - (x + w / 2 - 0.5)) / (w / 2)) ** 2 + ((yy - (y + h / 2 - 0.5)) / (h / 2)) ** 2 <= 1
    rgb = np.full((H, W, 3), 90, np.uint8) + (np.random.default_rng(0).integers(0, 30, (H, W, 1))).astype(np.uint8)
    rgb[obj] = (220, 30, 30)
    return rgb, obj.astype(np.uint8)


def to_stored(a: np.ndarray) -> np.ndarray:
    """The pixels a camera stores for a displayed image with EXIF orientation 6 (its inverse)."""
    return np.ascontiguousarray(np.rot90(a, 1))


def save_with_orientation(path, stored_rgb: np.ndarray, orientation: int = 6) -> None:
    im = Image.fromarray(stored_rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", quality=95, exif=exif)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


@pytest.fixture
def phone(tmp_path):
    """One photo file under two names, annotated as displayed (`turned.jpg`) and as stored (`stored.jpg`):
    a COCO file with the true masks; returns (annotations, images, {file: true mask in its annotation})."""
    rgb, obj = displayed_photo()
    images = tmp_path / "images"
    images.mkdir()
    for name in ("turned.jpg", "stored.jpg"):
        save_with_orientation(images / name, to_stored(rgb))
    truth = {"turned.jpg": obj, "stored.jpg": to_stored(obj)}
    coco = {"categories": [{"id": 1, "name": "thing"}], "images": [], "annotations": []}
    for i, (name, m) in enumerate(truth.items(), start=1):
        coco["images"].append({"id": i, "file_name": name, "width": m.shape[1], "height": m.shape[0]})
        rle = rle_encode(m)
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1, "bbox": tight_box(m),
                                    "area": int(m.sum()), "iscrowd": 0, "segmentation": rle})
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco))
    return ann, images, truth


def test_exif_transpose_is_pils_for_every_orientation(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (7, 11, 3), dtype=np.uint8)
    for o in range(1, 9):
        im = Image.fromarray(rgb)
        exif = im.getexif()
        exif[0x0112] = o
        im.save(tmp_path / f"{o}.png", exif=exif)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"{o}.png")))
        assert np.array_equal(exif_transpose(rgb, o), expected), o
        assert np.array_equal(read_image(tmp_path / f"{o}.png", "exif"), expected), o
        assert np.array_equal(read_image(tmp_path / f"{o}.png"), rgb), o  # as stored


def test_a_rotated_photo_is_read_the_way_its_annotation_describes_it_by_every_reader(phone, tmp_path):
    ann, images, truth = phone
    assert read_image(images / "turned.jpg").shape[:2] == (W, H)  # stored turned: the test exercises a rotation
    ds = load_dataset(ann, images)
    assert {im["file_name"]: im["orientation"] for im in ds.images} == {"turned.jpg": "exif", "stored.jpg": "stored"}
    assert all(r["status"] == "kept" for r in ds.instances)
    shard = write_shard(ds, tmp_path / "s0.h5")
    assert artifact_summary(shard)["turned_images"] == ["turned.jpg"]  # what `pseudomask inspect` shows
    assert "1 images read turned by their EXIF orientation" in format_summary(artifact_summary(shard))
    ds = read_shard(shard)
    assert {im["file_name"]: im["orientation"] for im in ds.images} == {"turned.jpg": "exif", "stored.jpg": "stored"}

    # grabcut: each mask on its object, in its annotation's frame
    with Artifact(run_grabcut(ds, tmp_path / "grabcut.h5", workers=1)) as a:
        for image_id in a.image_ids:
            im = a.image(image_id)
            assert im["orientation"] in ("exif", "stored")
            assert mask_iou(a.masks(image_id)[0], truth[im["file_name"]]) > 0.7, im

    # BoxCaseg's training crops: the object (red) fills the middle of its box crop
    salient = tmp_path / "salient"
    write_image(salient / "images" / "a.png", displayed_photo()[0])
    write_image(salient / "masks" / "a.png", displayed_photo()[1] * 255)
    data = JointDataset(box_items([ds]), SalientFolder(salient), crop_size=64, salient_resize=64)
    for i in range(2):
        item = data[(BOX, i, 0)]
        red = (item["image"][0] > 0.7) & (item["image"][1] < 0.3)
        assert red[28:36, 28:36].float().mean() > 0.9

    # predict's reader on a plain COCO record (no orientation key): decided by width and height
    coco = json.loads(ann.read_text())
    for im in coco["images"]:
        rgb = read_annotated_image(images / im["file_name"], im)
        red = (rgb[..., 0] > 180) & (rgb[..., 1] < 80)
        assert mask_iou(red.astype(np.uint8), truth[im["file_name"]]) > 0.9


def test_the_retrain_pipeline_samples_match_their_annotations(phone, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS

    import pseudomask.retrain.modules  # noqa: F401  registers LoadAnnotatedImage

    ann, images, truth = phone
    cfg = build_config(ann, images, tmp_path / "run", RetrainSettings(scale=160, flip=0.0).for_device("cpu"),
                       device="cpu")
    cfg = Config.fromfile(str(write_config(cfg, tmp_path / "run" / "mask_rcnn.py")))
    init_default_scope("mmdet")
    ds = DATASETS.build(cfg.train_dataloader.dataset)
    coco = {im["id"]: im for im in json.loads(ann.read_text())["images"]}
    assert len(ds) == 2
    for i in range(len(ds)):
        sample = ds[i]
        meta = sample["data_samples"]
        im = coco[meta.img_id]
        assert meta.ori_shape == (im["height"], im["width"])
        bgr = sample["inputs"].numpy()
        red = ((bgr[2] > 180) & (bgr[1] < 80)).astype(np.uint8)
        assert mask_iou(red, meta.gt_instances.masks.masks[0]) > 0.9, im["file_name"]


def test_an_annotation_that_fits_neither_way_is_refused_with_both_sizes(phone):
    ann, images, _ = phone
    coco = json.loads(ann.read_text())
    coco["images"][0].update(width=W + 1)
    ann.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=rf"image 1: .*turned.jpg: the image is {H}x{W} on disk \({W}x{H} turned "
                                           rf"by its EXIF orientation 6\), but {W + 1}x{H} in the annotations"):
        load_dataset(ann, images)


def truncated_copies(folder) -> None:
    """whole.png, and cut.jpg / cut.png: the first 60 % of a JPEG's and a PNG's bytes."""
    rgb = np.random.default_rng(2).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    write_image(folder / "whole.png", rgb)
    for ext in ("jpg", "png"):
        write_image(folder / f"full.{ext}", rgb)
        data = (folder / f"full.{ext}").read_bytes()
        (folder / f"cut.{ext}").write_bytes(data[:int(len(data) * 0.6)])
        (folder / f"full.{ext}").unlink()


def test_truncated_images_fail_their_instances_by_name_and_the_rest_is_kept(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    truncated_copies(images)
    assert probe_image(images / "cut.jpg", decode=True).damage and not probe_image(images / "whole.png", True).damage
    names = ("whole.png", "cut.jpg", "cut.png")
    coco = {"categories": [{"id": 1, "name": "thing"}],
            "images": [{"id": i, "file_name": n, "width": 160, "height": 120} for i, n in enumerate(names, 1)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 40]}
                            for i in range(1, 4)]}
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco))
    manifest = ingest(ann, images, tmp_path / "shards")
    assert manifest["damaged_images"] == ["cut.jpg", "cut.png"] and manifest["status"] == {"kept": 1, "failed": 2}
    ds = read_shard(tmp_path / "shards" / "s00000.h5")
    status = {r["image_id"]: (r["status"], r["reason"]) for r in ds.instances}
    assert status[1] == ("kept", "")
    for image_id, name in ((2, "cut.jpg"), (3, "cut.png")):
        assert status[image_id][0] == "failed"
        assert name in status[image_id][1] and "decodes only partly" in status[image_id][1]
    kept = ingest(ann, images, tmp_path / "kept", partial_images=True)
    assert kept["status"] == {"kept": 3}
    facts = init_config(ann, images, tmp_path / "config.yaml")
    assert facts["damaged"] == ["cut.jpg", "cut.png"] and facts["turned"] == 0
