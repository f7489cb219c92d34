"""BoxCaseg's IoU head: its target (squared IoU) and L1 loss, when it trains, checkpoints, and the artifact
column it writes; a short CPU training gives its rank correlation with the true IoU on held-out scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pseudomask.boxcaseg.losses import iou_loss, iou_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_iou_target_is_the_squared_iou_of_the_thresholded_prediction_and_the_loss_is_l1():
    true = torch.zeros(3, 1, 4, 4)
    true[:, :, :2, :] = 1  # 8 pixels
    prob = torch.zeros(3, 1, 4, 4)
    prob[0, :, :2, :] = 0.9  # exact: IoU 1
    prob[1, :, :1, :] = 0.6  # 4 of 8 inside: IoU 0.5
    prob[1, :, 3:, :] = 0.4  # below the threshold: ignored
    prob[2, :, 2:, :] = 0.8  # disjoint: IoU 0
    target = iou_target(prob, true)
    assert torch.allclose(target, torch.tensor([1.0, 0.25, 0.0]))
    assert iou_target(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0  # both empty
    pred = torch.tensor([0.5, 0.25, 0.3], requires_grad=True)
    loss = iou_loss(pred, prob.requires_grad_(), true)
    assert loss.item() == pytest.approx((0.5 + 0.0 + 0.3) / 3)
    loss.backward()
    assert prob.grad is None  # the target is detached
    assert torch.allclose(pred.grad, torch.tensor([-1.0, 0.0, 1.0]) / 3)  # L1: sign / N (0 at the kink)


def test_iou_on_follows_iou_start():
    from pseudomask.boxcaseg.settings import BoxcasegTrainSettings
    from pseudomask.boxcaseg.train import iou_on

    cfg = BoxcasegTrainSettings.from_mapping({"iters": 100, "iou_start": 0.5, "device": "cuda"})
    assert not iou_on(49, cfg) and iou_on(50, cfg) and iou_on(99, cfg)
    never = BoxcasegTrainSettings.from_mapping({"iters": 100, "iou_start": 1.0, "device": "cuda"})
    assert not any(iou_on(i, never) for i in range(100))


@pytest.fixture(scope="module")
def tiny_model():
    pytest.importorskip("mmdet.models")
    from pseudomask.boxcaseg.model import build_model

    torch.manual_seed(0)
    return build_model("resnet18_w16")


def _batch(n=4, size=32):
    g = torch.Generator().manual_seed(0)
    box = torch.zeros(n, 1, size, size)
    box[:, :, 4:28, 6:26] = 1
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 8:24, 10:22] = 1
    return {"image": torch.rand(n, 3, size, size, generator=g), "box": box, "mask": mask,
            "salient": torch.tensor([False, True, False, True][:n])}


def test_iou_loss_is_off_before_iou_start_and_trains_only_the_head_after(tiny_model):
    from pseudomask.boxcaseg.settings import BoxcasegTrainSettings
    from pseudomask.boxcaseg.train import train_step

    cfg = BoxcasegTrainSettings.from_mapping({"backbone": "resnet18_w16", "device": "cuda"})
    model = tiny_model.train()
    for on in (False, True):
        model.zero_grad(set_to_none=True)
        loss, parts = train_step(model, _batch(), cfg, torch.device("cpu"), iou=on)
        loss.backward()
        head = model.iou_head.fc.weight.grad
        if not on:
            assert parts["iou"] == 0.0 and head is None
            seg = model.salient_head.conv1.weight.grad.clone()
        else:
            assert parts["iou"] > 0 and head is not None and head.abs().sum() > 0
            # the head's inputs are detached: the segmentation gradients are those without the IoU term
            assert torch.allclose(model.salient_head.conv1.weight.grad, seg)
    model.eval()
    out = model(_batch()["image"], salient=_batch()["salient"], heads=("salient", "transferred", "iou"))
    assert out["iou"].shape == (2,) and bool(((out["iou"] >= 0) & (out["iou"] <= 1)).all())
    prob, q = model.predict_quality(_batch()["image"])
    assert prob.shape == (4, 32, 32) and q.shape == (4,)
    assert torch.allclose(prob, model.predict(_batch()["image"]))


def test_checkpoint_keeps_the_head_and_one_without_it_loads_untrained(tiny_model, tmp_path):
    from pseudomask import checkpoints
    from pseudomask.boxcaseg.model import STAGE, architecture, load_model, save_checkpoint

    save_checkpoint(tmp_path / "m.pt", tiny_model, {}, iou_head_trained=True)
    m = load_model(tmp_path / "m.pt")
    assert m.iou_head_trained and torch.equal(m.iou_head.fc.weight, tiny_model.iou_head.fc.weight)
    old = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("iou_head.")}
    checkpoints.save(tmp_path / "old.pt", stage=STAGE, settings={}, state=old, arch=architecture(tiny_model))
    assert not load_model(tmp_path / "old.pt").iou_head_trained


# --- a short CPU training on the demo data --------------------------------------------------------------

TINY = dict(backbone="resnet18_w16", iters=400, batch_size=8, crop_size=64, salient_resize=72, optimizer="adam",
            lr=3e-3, checkpoint_every=400, log_every=1000, workers=0, device="cpu", seed=0, iou_start=0.5)


@pytest.fixture(scope="module")
def trained(demo_dataset, tmp_path_factory):
    pytest.importorskip("mmdet.models")
    from pseudomask.boxcaseg.train import train
    from pseudomask.demo import write_salient_set

    sal = write_salient_set(tmp_path_factory.mktemp("salient"), 96, np.random.default_rng(1))
    out = tmp_path_factory.mktemp("boxcaseg_iou") / "model.pt"
    return out, train([demo_dataset], sal, out, TINY)


def test_the_loss_log_has_the_iou_term_from_iou_start_on(trained):
    import csv

    with open(trained[1]["loss_log"]) as fh:
        iou = [float(r["iou"]) for r in csv.DictReader(fh)]
    assert len(iou) == 400 and all(v == 0 for v in iou[:200]) and all(v > 0 for v in iou[200:])


def test_artifact_carries_the_head_prediction_and_names_it(trained, demo_shard, tmp_path):
    from pseudomask.dataset import load_dataset
    from pseudomask.boxcaseg.infer import infer
    from pseudomask.store import Artifact

    dst = tmp_path / "boxcaseg.h5"
    infer(load_dataset(demo_shard), trained[0], dst, device="cpu")
    with Artifact(dst, stage="boxcaseg") as a:
        assert a.params["iou_predictor"] == "boxcaseg-iou-head"
        q = np.asarray(a.instances["iou_head"], float)
        kept = np.isin(np.asarray(a.instances["status"]).astype(str), ["kept", "invalid"])
        assert kept.any() and np.isfinite(q[kept]).all() and ((q[kept] >= 0) & (q[kept] <= 1)).all()
        assert "quality" in a.instances  # the stage loop's own column stays


def test_head_rank_correlation_on_held_out_scenes(trained, tmp_path):
    """Prints the Spearman correlation of the head's IoU with the true IoU on 8 unseen scenes (no bound)."""
    from scipy.stats import spearmanr

    from pseudomask.boxcaseg.infer import infer_size, predict_boxes_quality
    from pseudomask.boxcaseg.model import load_model
    from pseudomask.dataset import load_dataset
    from pseudomask.demo import make_demo_data
    from pseudomask.images import read_image
    from pseudomask.masks import mask_iou, segmentation_mask

    held = tmp_path / "held"
    make_demo_data(held, n_images=8, seed=7, n_salient=0)
    ds = load_dataset(held / "annotations.json", held / "images")
    gt = {a["id"]: a for a in json.loads((held / "annotations.json").read_text())["annotations"]}
    model = load_model(trained[0])
    size = infer_size(model)
    pred, true = [], []
    for im in ds.images:
        recs = [r for r in ds.instances if r["image_id"] == im["id"] and r["status"] == "kept"]
        rgb = read_image(ds.image_path(im))
        h, w = rgb.shape[:2]
        probs, q = predict_boxes_quality(model, rgb, [r["bbox"] for r in recs], size)
        for r, p, v in zip(recs, probs, q):
            if p is not None:
                pred.append(v)
                g = segmentation_mask(gt[r["id"]]["segmentation"], h, w)
                true.append(mask_iou((p >= 0.5).astype(np.uint8), g))
    rho = spearmanr(pred, true).statistic
    mae = float(np.mean(np.abs(np.subtract(pred, true))))
    print(f"IoU head on {len(pred)} held-out instances: Spearman {rho:.3f}, MAE {mae:.3f}, "
          f"true IoU mean {np.mean(true):.3f}, predicted mean {np.mean(pred):.3f}")
    assert len(pred) > 5 and np.isfinite(pred).all()
