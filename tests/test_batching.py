"""GPU stages batch across images (BoxCaseg inference, CAM peaks, Mask R-CNN prediction): on the demo scenes,
on CPU, a batch of 4 with images read ahead by loader threads gives the masks of a batch of 1."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch

from pseudomask.dataset import load_dataset
from pseudomask.loops import read_ahead
from pseudomask.store import Artifact

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _same_artifacts(a_path, b_path, columns=(), atol=1e-5):
    with Artifact(a_path) as a, Artifact(b_path) as b:
        assert a.image_ids == b.image_ids
        assert list(a.instances["id"]) == list(b.instances["id"]) and len(a.instances["id"]) > 0
        assert list(a.instances["status"]) == list(b.instances["status"])
        assert list(a.instances["reason"]) == list(b.instances["reason"])
        for c in columns:
            np.testing.assert_allclose(np.asarray(a.instances[c], float), np.asarray(b.instances[c], float),
                                       atol=atol, equal_nan=True, err_msg=c)
        for i in a.image_ids:
            assert np.array_equal(a.masks(i), b.masks(i)), f"image {i}"
        return {k: np.asarray(v) for k, v in a.instances.items()}


def test_read_ahead_keeps_order_and_stays_within_its_window():
    calls, lock = [], threading.Lock()

    def fn(x):
        with lock:
            calls.append(x)
        return x * x

    it = read_ahead(fn, range(20), workers=2, ahead=3)
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert len(calls) <= 5 + 3  # never more than `ahead` items beyond what was consumed
    assert list(it) == [x * x for x in range(5, 20)]
    assert list(read_ahead(fn, range(4), workers=0)) == [0, 1, 4, 9]


@pytest.fixture(scope="module")
def boxcaseg_model(tmp_path_factory):
    pytest.importorskip("mmdet.models")
    from pseudomask.boxcaseg.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet18_w16").eval()
    model.iou_head_trained = True  # a random head still predicts a number: the column and quality must carry it
    return save_checkpoint(tmp_path_factory.mktemp("bc") / "model.pt", model, settings={"crop_size": 32})


@pytest.mark.mmdet
def test_boxcaseg_batches_crops_of_several_images(boxcaseg_model, demo, tmp_path):
    from pseudomask.boxcaseg.infer import infer

    images = tmp_path / "images"
    shutil.copytree(demo / "images", images)
    gt = json.loads((demo / "annotations.json").read_text())
    broken = gt["images"][2]
    (images / broken["file_name"]).write_bytes(b"not an image")  # its instances must fail, not vanish
    gt["annotations"].append({**gt["annotations"][0], "id": 99999, "bbox": [5000.0, 5000.0, 10.0, 10.0]})
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(gt))
    ds = load_dataset(ann, images)
    one, four = tmp_path / "b1.h5", tmp_path / "b4.h5"
    infer(ds, boxcaseg_model, one, batch_size=1, threshold=0.5, device="cpu", loader_workers=0)
    infer(ds, boxcaseg_model, four, batch_size=4, threshold=0.5, device="cpu", loader_workers=2)
    cols = _same_artifacts(one, four, columns=("score", "iou_head", "quality"))
    status = cols["status"].astype(str)
    assert set(status) >= {"kept", "failed"} and len(cols["id"]) == len(gt["annotations"])
    broken_rows = cols["image_id"] == broken["id"]
    assert broken_rows.any() and (status[broken_rows] == "failed").all()
    k = list(cols["id"]).index(99999)  # failed upstream (outside the image): passed through, not predicted
    assert status[k] == "failed" and "outside" in str(cols["reason"][k])
    done = status != "failed"
    q, head = cols["quality"].astype(float), cols["iou_head"].astype(float)
    assert np.isfinite(head[done]).all() and np.array_equal(q[done], head[done])  # quality = the head's IoU
    with Artifact(four) as a:
        assert sum(a.masks(i).sum() for i in a.image_ids) > 0  # some foreground, so the comparison means something
        assert a.attrs["quality_predictor"] == "boxcaseg-iou-head"  # the provenance names the quality's source


@pytest.fixture(scope="module")
def cam_setup(demo, demo_dataset, tmp_path_factory):
    from pseudomask.cam.train import CamTrainSettings, train_classifier
    from pseudomask.masks import box_mask, segmentation_mask
    from pseudomask.proposals import Proposals
    from pseudomask.store import ArtifactWriter

    work = tmp_path_factory.mktemp("cam")
    model = work / "model.pt"
    train_classifier(demo_dataset, model, CamTrainSettings(iters=20, save_every=1000, backbone="tiny", batch_size=8,
                                                        input_size=96, optimizer="adam", lr=3e-3, levels=[-2, -1]))
    gt = json.loads((demo / "annotations.json").read_text())
    rng = np.random.default_rng(1)
    props = work / "mcg.h5"
    with ArtifactWriter(props, stage="mcg", method="test", categories=demo_dataset.categories) as w:
        for im in demo_dataset.images:
            h, wd = im["height"], im["width"]
            anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
            masks = [segmentation_mask(a["segmentation"], h, wd) for a in anns]
            masks += [box_mask(a["bbox"], h, wd) for a in anns] + [np.ones((h, wd), np.uint8)]
            w.add_image(im, maps={"proposals": Proposals.from_masks(np.stack(masks),
                                                                    rng.uniform(0.1, 1, len(masks))).to_map()})
    return model, props


@pytest.mark.slow
def test_cam_backbone_batches_images(cam_setup, demo_dataset, tmp_path):
    from pseudomask.cam.extract import extract_peaks
    from pseudomask.cam.settings import CamSettings

    model, props = cam_setup
    cat = demo_dataset.categories[0]["name"]
    for name, s in (("b1", CamSettings(batch_size=1, loader_workers=0, stuff_classes=[cat])),
                    ("b4", CamSettings(batch_size=4, loader_workers=2, stuff_classes=[cat]))):
        extract_peaks(demo_dataset, model, tmp_path / f"{name}.h5", props, s)
    # a batched convolution rounds differently (responses differ by ~1e-6): the masks, proposals and scores
    # agree; a peak's pixel may move to a neighbour whose upsampled response ties with it within that rounding
    cols = _same_artifacts(tmp_path / "b1.h5", tmp_path / "b4.h5",
                           columns=("cam_score", "class_score", "proposal_id", "stuff"), atol=1e-4)
    assert (cols["status"].astype(str) == "kept").sum() > 0
    with Artifact(tmp_path / "b1.h5") as a, Artifact(tmp_path / "b4.h5") as b:
        same = [np.isclose(np.asarray(a.instances[c], float), np.asarray(b.instances[c], float), equal_nan=True)
                for c in ("peak_y", "peak_x")]
        assert np.mean(same[0] & same[1]) >= 0.9
    with Artifact(tmp_path / "b1.h5") as a, Artifact(tmp_path / "b4.h5") as b:
        for i in a.image_ids:
            for k, v in (a.map("cam", i) or {}).items():
                np.testing.assert_allclose(v.astype(float), b.map("cam", i)[k].astype(float), atol=2e-3)


@pytest.mark.slow
@pytest.mark.mmdet
def test_mask_rcnn_prediction_batches_images(demo, tmp_path):
    pytest.importorskip("mmdet")
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from pseudomask.retrain import modules  # noqa: F401  registers the custom modules
    from pseudomask.retrain.mmdet_config import CONFIG_NAME, RetrainSettings, build_config, write_config
    from pseudomask.retrain.predict import predict

    gt = json.loads((demo / "annotations.json").read_text())
    gt = {**gt, "images": gt["images"][:5]}  # 5 images: a batch of 4 and a batch of 1
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    cfg_path = write_config(build_config(demo / "annotations.json", demo / "images", tmp_path / "work",
                                         RetrainSettings(scale=128, max_per_img=20)), tmp_path / CONFIG_NAME)
    cfg = Config.fromfile(str(cfg_path))
    init_default_scope("mmdet")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = tmp_path / "latest.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, ckpt)
    one, s1 = predict(ckpt, demo / "images", coco=ann, device="cpu", batch_size=1, score_thr=0.0)
    four, s4 = predict(ckpt, demo / "images", coco=ann, device="cpu", batch_size=4, score_thr=0.0,
                       loader_workers=2)
    assert s1["images"] == s4["images"] == 5 and len(one) > 0
    assert [(r["image_id"], r["category_id"]) for r in one] == [(r["image_id"], r["category_id"]) for r in four]
    np.testing.assert_allclose([r["bbox"] for r in one], [r["bbox"] for r in four], atol=0.05)
    np.testing.assert_allclose([r["score"] for r in one], [r["score"] for r in four], atol=1e-4)
    assert [r["segmentation"] for r in one] == [r["segmentation"] for r in four]
