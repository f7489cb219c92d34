"""MMDetection modules for training on pseudo masks, registered on import (the generated config lists this
module in `custom_imports`).

BoxCaseg's "drop" keeps a low-quality pseudo mask's instance in the annotation, but excludes its mask from
the mask loss: the box and class still train RPN and the box head. The exported COCO JSON marks such
annotations with `mask_ignore: true`. The flag travels as follows:

- `PseudoCocoDataset` reads it per instance (and gives instances without a usable mask an empty mask with
  the flag set, so that MMDetection does not drop the whole instance);
- `LoadPseudoAnnotations` turns it into `results['gt_mask_ignore']`, aligned with boxes and masks;
- `PackPseudoDetInputs` packs it into `gt_instances.mask_ignore` next to bboxes, labels and masks;
- `IgnoreAwareFCNMaskHead` averages the mask loss over the positive proposals matched to instances whose
  flag is false only (zero, still connected to the graph, when there are none).
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch
from mmcv.transforms import BaseTransform, to_tensor
from mmdet.datasets import CocoDataset
from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.registry import DATASETS, MODELS, TRANSFORMS
from pycocotools import mask as mask_utils

from ..images import read_annotated_image

SKIPPED_STATUSES = ("failed",)


@DATASETS.register_module()
class PseudoCocoDataset(CocoDataset):
    """COCO dataset whose instances carry `mask_ignore` (exported pseudo labels); `status: failed` rows are
    left out, crowd rows are MMDetection's ignored instances as usual."""

    def parse_data_info(self, raw_data_info: dict) -> dict:
        img = raw_data_info["raw_img_info"]
        anns = [dict(a) for a in raw_data_info["raw_ann_info"] if a.get("status") not in SKIPPED_STATUSES]
        for a in anns:  # an instance without a usable mask still trains its box: empty mask, flagged
            if not a.get("segmentation"):
                empty = mask_utils.encode(np.zeros((img["height"], img["width"]), np.uint8, order="F"))
                a["segmentation"] = {"size": empty["size"], "counts": empty["counts"].decode("ascii")}
                a["mask_ignore"] = True
        info = super().parse_data_info({**raw_data_info, "raw_ann_info": anns})
        # super() keeps instances in order but skips some (outside the image, zero area, unknown class):
        # recompute the same filter to align the flags
        kept = [a for a in anns if _kept_by_coco(a, img, self.cat_ids)]
        if len(kept) != len(info["instances"]):
            raise ValueError(f"{self.ann_file}: image {img['img_id']}: instance filtering out of step")
        for inst, a in zip(info["instances"], kept):
            inst["mask_ignore"] = bool(a.get("mask_ignore", False))
        return info

    def filter_data(self) -> list:
        """CocoDataset's filter, and with filter_empty_gt also images left without a trainable instance
        (e.g. all of its instances failed), which CocoDataset's category index still lists."""
        infos = super().filter_data()
        if self.test_mode or not (self.filter_cfg or {}).get("filter_empty_gt", False):
            return infos
        return [d for d in infos if any(not i["ignore_flag"] for i in d["instances"])]


def _kept_by_coco(ann: dict, img: dict, cat_ids: list) -> bool:
    """The instance filter of CocoDataset.parse_data_info (mmdet 3.3), to align per-instance extras."""
    if ann.get("ignore", False):
        return False
    x1, y1, w, h = ann["bbox"]
    inter_w = max(0, min(x1 + w, img["width"]) - max(x1, 0))
    inter_h = max(0, min(y1 + h, img["height"]) - max(y1, 0))
    if inter_w * inter_h == 0 or ann["area"] <= 0 or w < 1 or h < 1:
        return False
    return ann["category_id"] in cat_ids


@TRANSFORMS.register_module()
class LoadAnnotatedImage(BaseTransform):
    """MMDetection's LoadImageFromFile (BGR uint8), but with the pixels the way the mask stages read them:
    turned by the EXIF orientation only where the annotation's width and height say so
    (`pseudomask.images.read_annotated_image`); an unreadable image raises ImageError naming the file."""

    def transform(self, results: dict) -> dict:
        rgb = read_annotated_image(results["img_path"], results)
        results["img"] = np.ascontiguousarray(rgb[..., ::-1])
        results["img_shape"] = results["ori_shape"] = rgb.shape[:2]
        return results


@TRANSFORMS.register_module()
class LoadPseudoAnnotations(LoadAnnotations):
    """LoadAnnotations plus `gt_mask_ignore` (bool per instance, False when the dataset has no flag)."""

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        results["gt_mask_ignore"] = np.array([bool(i.get("mask_ignore", False))
                                              for i in results.get("instances", [])], dtype=bool)
        return results


@TRANSFORMS.register_module()
class PackPseudoDetInputs(PackDetInputs):
    """PackDetInputs that also packs `gt_mask_ignore` as `gt_instances.mask_ignore`."""

    mapping_table = {**PackDetInputs.mapping_table, "gt_mask_ignore": "mask_ignore"}

    def transform(self, results: dict) -> dict:
        if "gt_mask_ignore" in results:
            results["gt_mask_ignore"] = np.asarray(results["gt_mask_ignore"], dtype=bool)
        return super().transform(results)


def positive_mask_ignore(sampling_results: list, batch_gt_instances: list) -> torch.Tensor:
    """Per positive proposal (in the mask head's order): whether its matched instance is mask-ignored."""
    flags = []
    for res, gt in zip(sampling_results, batch_gt_instances):
        inds = res.pos_assigned_gt_inds
        if "mask_ignore" in gt and len(gt.mask_ignore):
            flags.append(to_tensor(gt.mask_ignore).to(device=inds.device, dtype=torch.bool)[inds])
        else:
            flags.append(torch.zeros_like(inds, dtype=torch.bool))
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


@MODELS.register_module()
class IgnoreAwareFCNMaskHead(FCNMaskHead):
    """FCN mask head whose loss averages only over positive proposals matched to instances with
    `mask_ignore` false; the loss is zero (with a graph, so every rank backpropagates) when there are none."""

    def loss_and_target(self, mask_preds: torch.Tensor, sampling_results: List, batch_gt_instances: List,
                        rcnn_train_cfg) -> dict:
        mask_targets = self.get_targets(sampling_results=sampling_results, batch_gt_instances=batch_gt_instances,
                                        rcnn_train_cfg=rcnn_train_cfg)
        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        keep = ~positive_mask_ignore(sampling_results, batch_gt_instances).to(mask_preds.device)
        if mask_preds.size(0) == 0 or not bool(keep.any()):
            loss_mask = mask_preds.sum() * 0.0
        else:
            labels = torch.zeros_like(pos_labels) if self.class_agnostic else pos_labels
            loss_mask = self.loss_mask(mask_preds[keep], mask_targets[keep], labels[keep])
        return dict(loss_mask=dict(loss_mask=loss_mask), mask_targets=mask_targets)
