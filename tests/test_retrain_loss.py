"""The ignore-aware mask loss (BoxCaseg's drop) and the path of the `mask_ignore` flag through MMDetection:
flagged instances leave the mask loss only; RPN, box and class losses see every instance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.mmdet

from mmdet.models.roi_heads.mask_heads import FCNMaskHead  # noqa: E402
from mmdet.models.task_modules.assigners import AssignResult  # noqa: E402
from mmdet.models.task_modules.samplers import SamplingResult  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.structures.mask import BitmapMasks  # noqa: E402
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from pseudomask.retrain.modules import IgnoreAwareFCNMaskHead  # noqa: E402

HEAD = dict(num_convs=1, in_channels=8, conv_out_channels=8, num_classes=3,
            loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))
TRAIN_CFG = ConfigDict(mask_size=28)
SIZE = 64


def _image(rng, boxes, flags):
    """One image's gt_instances (boxes, labels, random masks inside the boxes, mask_ignore flags)."""
    masks = np.zeros((len(boxes), SIZE, SIZE), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.6
    gt = InstanceData()
    gt.bboxes = torch.tensor(boxes, dtype=torch.float32)
    gt.labels = torch.arange(len(boxes)) % 3
    gt.masks = BitmapMasks(masks, SIZE, SIZE)
    if flags is not None:
        gt.mask_ignore = torch.tensor(flags, dtype=torch.bool)
    return gt


def _sampling(gt, assigned):
    """SamplingResult of priors = jittered GT boxes, prior k assigned to GT assigned[k] (0-based, -1 negative)."""
    idx = torch.tensor([max(a, 0) for a in assigned])
    priors = gt.bboxes[idx] + torch.tensor([[1.0, -1.0, 2.0, 1.0]])
    gt_inds = torch.tensor([a + 1 for a in assigned])
    labels = torch.where(gt_inds > 0, gt.labels[idx], torch.full_like(idx, -1))
    ar = AssignResult(len(gt.bboxes), gt_inds, torch.ones(len(assigned)), labels)
    pos = torch.nonzero(gt_inds > 0).flatten()
    neg = torch.nonzero(gt_inds == 0).flatten()
    return SamplingResult(pos, neg, priors, gt.bboxes, ar, torch.zeros(len(assigned), dtype=torch.uint8))


def _case(flags_a, flags_b):
    rng = np.random.default_rng(0)
    gts = [_image(rng, [(4, 4, 30, 34), (20, 10, 60, 50), (33, 40, 63, 63)], flags_a),
           _image(rng, [(0, 0, 40, 24), (10, 30, 50, 62)], flags_b)]
    assigned = [[0, 1, 2, 0, 1, -1], [1, -1, 0, 1]]
    srs = [_sampling(g, a) for g, a in zip(gts, assigned)]
    return gts, assigned, srs


def _loss(head, preds, srs, gts):
    return head.loss_and_target(preds, srs, gts, TRAIN_CFG)["loss_mask"]["loss_mask"]


def test_flagged_mask_loss_equals_loss_over_unflagged_only():
    torch.manual_seed(0)
    flags_a, flags_b = [False, True, False], [True, False]
    gts, assigned, srs = _case(flags_a, flags_b)
    n_pos = sum(a >= 0 for asg in assigned for a in asg)
    preds = torch.randn(n_pos, 3, 28, 28, requires_grad=True)
    loss = _loss(IgnoreAwareFCNMaskHead(**HEAD), preds, srs, gts)

    # reference: the stock FCN head on the positives whose instance is not flagged, and nothing else
    keep_rows, sub_srs, row = [], [], 0
    for gt, asg, flags in zip(gts, assigned, (flags_a, flags_b)):
        sub = [a if a < 0 or not flags[a] else -1 for a in asg]  # flagged positives become negatives
        for a in asg:
            if a >= 0:
                if not flags[a]:
                    keep_rows.append(row)
                row += 1
        sub_srs.append(_sampling(gt, sub))
    assert 0 < len(keep_rows) < n_pos
    ref = _loss(FCNMaskHead(**HEAD), preds[keep_rows], sub_srs, gts)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    # and it is not the unflagged loss over all positives
    full = _loss(FCNMaskHead(**HEAD), preds, srs, gts)
    assert abs(full.item() - loss.item()) > 1e-4
    # gradients reach only the kept rows
    loss.backward()
    grad_rows = preds.grad.abs().flatten(1).sum(1) > 0
    assert grad_rows.nonzero().flatten().tolist() == keep_rows


def test_all_flagged_gives_zero_loss_with_zero_gradient_and_no_flags_is_stock():
    gts, assigned, srs = _case([True] * 3, [True] * 2)
    n_pos = sum(a >= 0 for asg in assigned for a in asg)
    preds = torch.randn(n_pos, 3, 28, 28, requires_grad=True)
    loss = _loss(IgnoreAwareFCNMaskHead(**HEAD), preds, srs, gts)
    assert loss.item() == 0.0
    loss.backward()
    assert preds.grad is not None and float(preds.grad.abs().sum()) == 0.0

    gts, _, srs = _case(None, None)  # no flag at all: exactly the stock head
    preds = torch.randn(n_pos, 3, 28, 28)
    assert _loss(IgnoreAwareFCNMaskHead(**HEAD), preds, srs, gts).item() == pytest.approx(
        _loss(FCNMaskHead(**HEAD), preds, srs, gts).item(), rel=1e-6)


def test_detector_box_losses_unchanged_by_flags():
    """The whole Mask R-CNN (random init): flags change loss_mask only; all flagged makes it zero."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    from pseudomask.retrain.mmdet_config import RetrainSettings, model_config

    init_default_scope("mmdet")
    torch.manual_seed(0)
    model = MODELS.build(Config(dict(model=model_config(3, RetrainSettings(), None))).model)
    model.init_weights()
    model.train()
    rng = np.random.default_rng(1)
    boxes = [(8, 8, 40, 44), (30, 20, 90, 80), (70, 60, 120, 120)]
    img = torch.randn(1, 3, 128, 128)

    def losses(flags):
        gt = _image(rng, [(x0 // 2, y0 // 2, x1 // 2, y1 // 2) for x0, y0, x1, y1 in boxes], flags)
        gt = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32), labels=gt.labels,
                          masks=BitmapMasks(np.kron(gt.masks.masks, np.ones((1, 2, 2), np.uint8)), 128, 128),
                          **({"mask_ignore": gt.mask_ignore} if flags is not None else {}))
        sample = DetDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128), pad_shape=(128, 128),
                                             batch_input_shape=(128, 128), scale_factor=(1.0, 1.0)))
        sample.gt_instances = gt
        torch.manual_seed(123)
        rng.bit_generator.state = np.random.default_rng(1).bit_generator.state  # same masks every call
        out = model.loss(img, [sample])
        return {k: float(sum(v) if isinstance(v, list) else v) for k, v in out.items() if k.startswith("loss")}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors; on a shared 2-core CPU one thread is much faster than two spinning
    try:
        none, some, every = losses(None), losses([False, True, False]), losses([True, True, True])
    finally:
        torch.set_num_threads(threads)
    for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"):
        assert none[k] == some[k] == every[k], k
    assert none["loss_mask"] > 0 and some["loss_mask"] > 0 and some["loss_mask"] != none["loss_mask"]
    assert every["loss_mask"] == 0.0


def test_flags_travel_from_coco_json_to_gt_instances(demo, tmp_path):
    """PseudoCocoDataset -> LoadPseudoAnnotations -> PackPseudoDetInputs keeps each flag on its instance;
    crowd rows become ignored instances, failed rows are left out, mask-less rows keep their box."""
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS

    from pseudomask.retrain.mmdet_config import RetrainSettings, pipelines

    init_default_scope("mmdet")
    data = json.loads((demo / "annotations.json").read_text())
    anns = [a for a in data["annotations"] if a["image_id"] == 1]
    assert len(anns) >= 4
    for k, a in enumerate(anns):
        a["mask_ignore"] = k % 2 == 1
        a["status"] = "dropped" if a["mask_ignore"] else "kept"
    anns[0].update(status="failed", mask_ignore=True)
    anns[1].update(iscrowd=1, status="ignored")
    anns[2]["segmentation"] = []  # no mask: box still trains, mask flagged
    data["annotations"] = anns
    data["images"] = [im for im in data["images"] if im["id"] == 1]
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(data))
    train_pipeline, _ = pipelines(RetrainSettings(scale=320, flip=0.0))
    ds = DATASETS.build(dict(type="PseudoCocoDataset", ann_file=str(path), data_prefix=dict(img=str(demo / "images") + "/"),
                             metainfo=dict(classes=tuple(c["name"] for c in data["categories"])),
                             filter_cfg=dict(filter_empty_gt=True), pipeline=train_pipeline))
    assert len(ds) == 1
    sample = ds[0]["data_samples"]
    gt, ignored = sample.gt_instances, sample.ignored_instances
    expect = [a for a in anns if a["status"] != "failed" and not a.get("iscrowd")]
    assert gt.mask_ignore.tolist() == [bool(a["mask_ignore"]) or not a["segmentation"] for a in expect]
    assert gt.mask_ignore.tolist()[0] is True  # anns[2], mask-less
    assert gt.labels.tolist() == [a["category_id"] - 1 for a in expect]
    assert len(gt.masks) == len(expect) and gt.masks.masks[0].sum() == 0
    assert len(ignored.bboxes) == 1
