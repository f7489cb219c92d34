"""BoxCaseg inference (Wang et al., Sec. 3.4): crop each GT box, resize it to 320x320, predict the fused
salient + transferred probability, resize it back to the box and paste it into the full-resolution mask.
Crops of one image are batched; probabilities can be kept in the artifact (map "probability", uint8 0-255,
full image size, one dataset per instance id). A model trained on smaller crops (CPU runs) is applied at its
own crop size x 320/288 by default.

With a trained IoU head (see .model) each instance also gets `iou_head`, the head's predicted IoU of the fused
mask with the true mask (the square root of its squared-IoU output, in [0, 1]); the provenance parameters name
the predictor (`iou_predictor`: "boxcaseg-iou-head", or "none" for a model without a trained head).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..dataset import Dataset
from ..masks import box_pixels
from ..stage import run_mask_stage
from .model import HEADS, IOU_PREDICTOR, BoxCasegError, BoxCasegNet, load_model
from ..devices import pick_device
from .settings import InferSettings


def infer_size(model: BoxCasegNet, size: int | str = "auto") -> int:
    """Crop side for inference; "auto" = the training crop x 320/288 (the paper: 288 training, 320 inference)."""
    if size != "auto":
        return int(size)
    crop = int((getattr(model, "train_config", None) or {}).get("crop_size", 288))
    return int(round(crop * 320 / 288))


def predict_boxes(model: BoxCasegNet, rgb: np.ndarray, boxes: Sequence[Sequence[float]], size: int = 320,
                  batch_size: int = 16, device: str | torch.device = "cpu", head: str = "fused"
                  ) -> list[np.ndarray | None]:
    """Full-resolution float32 foreground probability (H, W) per COCO xywh box (0 outside the box), or None
    for a box that covers no pixel."""
    return predict_boxes_quality(model, rgb, boxes, size, batch_size, device, head, iou=False)[0]


def predict_boxes_quality(model: BoxCasegNet, rgb: np.ndarray, boxes: Sequence[Sequence[float]], size: int = 320,
                          batch_size: int = 16, device: str | torch.device = "cpu", head: str = "fused",
                          iou: bool = True) -> tuple[list[np.ndarray | None], list[float]]:
    """`predict_boxes` and, with `iou`, the IoU head's predicted IoU per box (NaN without one or for a box
    that covers no pixel)."""
    h, w = rgb.shape[:2]
    spans = [box_pixels(b, h, w) for b in boxes]
    todo = [i for i, (x0, y0, x1, y1) in enumerate(spans) if x1 > x0 and y1 > y0]
    out: list[np.ndarray | None] = [None] * len(boxes)
    quality = [float("nan")] * len(boxes)
    device = torch.device(device)
    for k in range(0, len(todo), batch_size):
        chunk = todo[k:k + batch_size]
        crops = np.stack([cv2.resize(rgb[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
                          for x0, y0, x1, y1 in (spans[i] for i in chunk)])
        x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255.0
        if iou:
            probs, q = model.predict_quality(x, head)
            for i, v in zip(chunk, q.float().cpu().tolist()):
                quality[i] = float(v)
        else:
            probs = model.predict(x, head)
        probs = probs.float().cpu().numpy()
        for i, p in zip(chunk, probs):
            x0, y0, x1, y1 = spans[i]
            full = np.zeros((h, w), np.float32)
            full[y0:y1, x0:x1] = cv2.resize(p, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
            out[i] = full
    return out, quality


def make_predict(model: BoxCasegNet, size: int = 320, batch_size: int = 16, threshold: float = 0.5,
                 keep_probabilities: bool = False, device: str | torch.device = "cpu", head: str = "fused"):
    """The per-image function `run_mask_stage` calls: masks, status and score per instance (+ maps)."""

    iou = bool(getattr(model, "iou_head_trained", False))

    def predict(rgb: np.ndarray, recs: list[dict]):
        probs, quality = predict_boxes_quality(model, rgb, [r["bbox"] for r in recs], size, batch_size, device,
                                               head, iou=iou)
        h, w = rgb.shape[:2]
        results, kept = [], {}
        for r, p, q in zip(recs, probs, quality):
            if p is None:
                results.append({"mask": np.zeros((h, w), np.uint8), "status": "failed",
                                "reason": f"box {list(r['bbox'])} covers no pixel", "score": 0.0,
                                **({"iou_head": float("nan")} if iou else {})})
                continue
            mask = (p >= threshold).astype(np.uint8)
            fg = mask.astype(bool)
            score = float(p[fg].mean()) if fg.any() else 0.0
            if fg.any():
                results.append({"mask": mask, "status": "kept", "reason": "", "score": score})
            else:
                results.append({"mask": mask, "status": "invalid", "reason": "BoxCaseg found no foreground in the box",
                                "score": score})
            if iou:
                results[-1]["iou_head"] = q
            if keep_probabilities:
                kept[str(int(r["id"]))] = np.round(p * 255).astype(np.uint8)
        return (results, {"probability": kept}) if keep_probabilities and kept else results

    return predict


def infer(ds: Dataset, checkpoint: str | os.PathLike, out: str | os.PathLike, size: int | str = "auto",
          batch_size: int = 16, threshold: float = 0.5, keep_probabilities: bool = False,
          device: str = "auto", head: str = "fused", inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write the BoxCaseg artifact (stage "boxcaseg") of a dataset or shard with a trained checkpoint."""
    dev = pick_device(device)
    model = load_model(checkpoint, dev)
    size = infer_size(model, size)
    if head not in HEADS:
        raise BoxCasegError(f"unknown BoxCaseg head {head!r}; choose one of {', '.join(HEADS)}")
    params: dict[str, Any] = {"checkpoint": str(checkpoint), "backbone": model.backbone.name, "alpha": model.alpha,
                              "size": size, "batch_size": batch_size, "threshold": threshold, "head": head,
                              "keep_probabilities": keep_probabilities,
                              "iou_predictor": IOU_PREDICTOR if model.iou_head_trained else "none"}
    predict = make_predict(model, size, batch_size, threshold, keep_probabilities, dev, head)
    return run_mask_stage(ds, out, predict, stage="boxcaseg", method="boxcaseg", params=params,
                          inputs=[*inputs, checkpoint])


def run_stage(s: InferSettings, *, shard: str, images: str | None, model: str, out: str, threads: int = 1) -> dict:
    """The `boxcaseg` stage (see pseudomask.stages)."""
    from ..dataset import load_dataset
    from ..store import Artifact

    torch.set_num_threads(threads)
    infer(load_dataset(shard, images), model, out, size=s.size, batch_size=s.batch_size, threshold=s.threshold,
          keep_probabilities=s.keep_probabilities, device=s.device, head=s.head, inputs=[shard])
    with Artifact(out) as a:
        return {"out": out, "images": len(a.image_ids), "status": a.status_counts()}
