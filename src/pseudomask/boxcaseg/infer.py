"""BoxCaseg inference (Wang et al., Sec. 3.4): crop each GT box, resize it to 320x320, predict the fused
salient + transferred probability, resize it back to the box and paste it into the full-resolution mask.
The crops of consecutive images share forward passes of `batch_size` crops, the images read ahead by
`loader_workers` threads (results do not depend on either); probabilities can be kept in the artifact (map "probability", uint8 0-255,
full image size, one dataset per instance id). A model trained on smaller crops (CPU runs) is applied at its
own crop size x 320/288 by default.

With a trained IoU head (see .model) each instance also gets `iou_head`, the head's predicted IoU of the fused
mask with the true mask (the square root of its squared-IoU output, in [0, 1]), which is also its `quality`
(a model without a trained head leaves `quality` to the stage loop's scorer); the provenance parameters name
the predictor (`iou_predictor`: "boxcaseg-iou-head", or "none" for a model without a trained head).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..dataset import Dataset, load_dataset
from ..crops import Crop
from ..masks import box_pixels
from ..loops import ImageResult, Provenance, run_mask_stage
from ..store import Artifact
from .model import HEADS, IOU_PREDICTOR, BoxCasegError, BoxCasegNet, load_model
from ..devices import autocast, pick_device
from .settings import BoxcasegSettings


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
    windows, quality = predict_images_quality(model, [(rgb, boxes)], size, batch_size, device, head, iou)[0]
    return [None if p is None else probability_frame(p, *rgb.shape[:2]) for p in windows], quality


def probability_frame(window: Crop, height: int, width: int) -> np.ndarray:
    """A box's probability window as a full (height, width) float32 frame (0 outside the box)."""
    full = np.zeros((height, width), np.float32)
    h, w = window.data.shape
    full[window.y:window.y + h, window.x:window.x + w] = window.data
    return full


def predict_images_quality(model: BoxCasegNet, items: Sequence[tuple[np.ndarray, Sequence[Sequence[float]]]],
                           size: int = 320, batch_size: int = 16, device: str | torch.device = "cpu",
                           head: str = "fused", iou: bool = True, amp: bool = False
                           ) -> list[tuple[list[Crop | None], list[float]]]:
    """Per (image, boxes): each box's float32 foreground probability over its pixel window (a `Crop`: the
    window's offset and values; None for a box that covers no pixel) and its predicted IoU. The crops of all
    images go through the network `batch_size` at a time, so that crops of consecutive images share a
    forward pass (in mixed precision on CUDA with `amp`)."""
    device = torch.device(device)
    spans, todo, out = [], [], []
    for n, (rgb, boxes) in enumerate(items):
        h, w = rgb.shape[:2]
        spans.append([box_pixels(b, h, w) for b in boxes])
        todo.extend((n, i) for i, (x0, y0, x1, y1) in enumerate(spans[-1]) if x1 > x0 and y1 > y0)
        out.append(([None] * len(boxes), [float("nan")] * len(boxes)))
    for k in range(0, len(todo), batch_size):
        chunk = todo[k:k + batch_size]
        crops = np.stack([cv2.resize(items[n][0][y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
                          for n, (x0, y0, x1, y1) in ((n, spans[n][i]) for n, i in chunk)])
        x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad(), autocast(device, amp):
            if iou:
                probs, q = model.predict_quality(x, head)
                for (n, i), v in zip(chunk, q.float().cpu().tolist()):
                    out[n][1][i] = float(v)
            else:
                probs = model.predict(x, head)
        probs = probs.float().cpu().numpy()
        for (n, i), p in zip(chunk, probs):
            x0, y0, x1, y1 = spans[n][i]
            out[n][0][i] = Crop(y0, x0, cv2.resize(p, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR))
    return out


def make_predict(model: BoxCasegNet, size: int = 320, batch_size: int = 16, threshold: float = 0.5,
                 keep_probabilities: bool = False, device: str | torch.device = "cpu", head: str = "fused"):
    """A per-image function of `run_mask_stage`: masks, status and score per instance (+ maps)."""
    batch = make_predict_batch(model, size, batch_size, threshold, keep_probabilities, device, head)
    return lambda rgb, recs: batch([(rgb, recs)])[0]


def make_predict_batch(model: BoxCasegNet, size: int = 320, batch_size: int = 16, threshold: float = 0.5,
                       keep_probabilities: bool = False, device: str | torch.device = "cpu", head: str = "fused",
                       amp: bool = False):
    """The function `run_mask_stage` calls on a group of images (its `predict_batch`): per image, masks, status
    and score per instance (+ maps). With a trained IoU head each instance also gets `iou_head` and, as its `quality`,
    the same predicted IoU (the stage loop keeps a method's own quality)."""

    iou = bool(getattr(model, "iou_head_trained", False))

    def image_results(rgb: np.ndarray, recs: list[dict], probs: list[Crop | None], quality: list) -> ImageResult:
        h, w = rgb.shape[:2]
        results, kept = [], {}
        for r, window, q in zip(recs, probs, quality):
            if window is None:
                results.append({"mask": Crop(0, 0, np.zeros((0, 0), np.uint8)), "status": "failed",
                                "reason": f"box {list(r['bbox'])} covers no pixel", "score": 0.0,
                                **({"iou_head": float("nan")} if iou else {})})
                continue
            p = window.data
            fg = p >= threshold
            mask = Crop(window.y, window.x, fg.astype(np.uint8))  # the stage's MaskStack keeps it tight
            score = float(p[fg].mean()) if fg.any() else 0.0
            if fg.any():
                results.append({"mask": mask, "status": "kept", "reason": "", "score": score})
            else:
                results.append({"mask": mask, "status": "invalid", "reason": "BoxCaseg found no foreground in the box",
                                "score": score})
            if iou:
                results[-1].update(iou_head=q, quality=q)
            if keep_probabilities:
                kept[str(int(r["id"]))] = np.round(probability_frame(window, h, w) * 255).astype(np.uint8)
        return ImageResult(results, {"probability": kept} if keep_probabilities and kept else None)

    def predict_batch(jobs: list[tuple[np.ndarray, list[dict]]]):
        preds = predict_images_quality(model, [(rgb, [r["bbox"] for r in recs]) for rgb, recs in jobs], size,
                                       batch_size, device, head, iou=iou, amp=amp)
        return [image_results(rgb, recs, probs, q) for (rgb, recs), (probs, q) in zip(jobs, preds)]

    return predict_batch


def infer(ds: Dataset, checkpoint: str | os.PathLike, out: str | os.PathLike, size: int | str = "auto",
          batch_size: int = 16, threshold: float = 0.5, keep_probabilities: bool = False,
          device: str = "auto", head: str = "fused", inputs: Sequence[str | os.PathLike] = (),
          loader_workers: int = 0, amp: bool = True) -> Path:
    """Write the BoxCaseg artifact (stage "boxcaseg") of a dataset or shard with a trained checkpoint: the box
    crops of consecutive images fill forward passes of `batch_size` crops, `loader_workers` threads reading
    the images ahead; mixed precision on CUDA with `amp`."""
    dev = pick_device(device)
    model = load_model(checkpoint, dev)
    size = infer_size(model, size)
    if head not in HEADS:
        raise BoxCasegError(f"unknown BoxCaseg head {head!r}; choose one of {', '.join(HEADS)}")
    params: dict[str, Any] = {"checkpoint": str(checkpoint), "backbone": model.backbone.name, "alpha": model.alpha,
                              "size": size, "batch_size": batch_size, "threshold": threshold, "head": head,
                              "keep_probabilities": keep_probabilities,
                              "iou_predictor": IOU_PREDICTOR if model.iou_head_trained else "none"}
    predict_batch = make_predict_batch(model, size, batch_size, threshold, keep_probabilities, dev, head, amp)
    provenance = Provenance("boxcaseg", "boxcaseg", params, [*inputs, checkpoint],
                            attrs={"quality_predictor": IOU_PREDICTOR} if model.iou_head_trained else {})
    return run_mask_stage(ds, out, provenance, predict_batch=predict_batch, batch_size=batch_size, weight=len,
                          loader_workers=loader_workers)


def run_stage(s: BoxcasegSettings, *, shard: str, images: str | None, model: str, out: str, threads: int = 1) -> dict:
    """The `boxcaseg` stage (see pseudomask.registry)."""
    torch.set_num_threads(threads)
    infer(load_dataset(shard, images), model, out, size=s.size, batch_size=s.batch_size, threshold=s.threshold,
          keep_probabilities=s.keep_probabilities, device=s.device, head=s.head, inputs=[shard],
          loader_workers=s.loader_workers, amp=s.amp)
    with Artifact(out) as a:
        return {"out": out, "images": len(a.image_ids), "status": a.status_counts()}
