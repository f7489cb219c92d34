"""The hybrid networks recipe (Liao et al.): two detectors for the pseudo masks that are valid and those that
are not, fused by object size at prediction.

- Split (`hybrid_split`): an instance's pseudo mask is *invalid* when the validity stage found its box
  agreement below `validity.min_iou` (the paper's 0.5; the one threshold of the split), or when the mask stage
  validity checked had to replace its result by a fallback (GrabCut's `fallback` 1: even the retry had box
  agreement below `grabcut.retry_min_box_iou`). True masks (`source` gt) are always valid. The large-object
  branch's COCO JSON holds every instance, the invalid ones with `mask_ignore` (box and class still train);
  the small-object branch's holds the boxes of the invalid instances only.
- Training (`retrain_hybrid`): Mask R-CNN with a PAFPN neck on the first, Faster R-CNN (same backbone, no mask
  head) on the second; the same knobs except the learning rate (the paper's 0.0075 against 0.005).
- Prediction (`predict_hybrid`): both detectors run on every image; detections smaller than `small_size`²
  px (box area) are taken from the small branch, larger ones from the large branch; a same-class pair across
  the branches whose boxes overlap at IoU >= `nms_iou` is one object: the branch that owns the pair's size
  (the mean of the two box areas) keeps it. Then, sequentially as the paper does, each kept small-branch box
  gets its mask from the project's GrabCut (with its ellipse fallback). One COCO results file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..devices import pick_device
from ..errors import PseudomaskError, read_json
from ..files import write_json
from ..grabcut import GrabCutSettings, grabcut_image
from ..images import ImageError, read_annotated_image
from ..loops import progress
from ..masks import box_areas, box_ious, is_small, rle_encode
from ..settings import Settings, cpu_profile, device_setting, field_default, setting
from ..store import Artifact
from .mmdet_config import (CPU_PROFILE, RetrainError, RetrainSettings, build_config, build_faster_rcnn_config,
                           list_scale)
from .predict import image_list, predict
from .train import train

SMALL_LR_FACTOR = 1.5  # the paper: 0.0075 for the small-object branch, 0.005 for the large one
PASS = ("failed", "ignored")  # no box to learn from (failed: no usable instance; ignored: crowd)


# ---------------------------------------------------------------------------------------------------- split

def invalid_instances(validity: Sequence[str | os.PathLike], masks: Sequence[str | os.PathLike] = ()
                      ) -> dict[int, str]:
    """{instance id: why its pseudo mask is invalid} from validity artifacts (box agreement below their
    `min_iou`) and, optionally, the artifacts validity checked (a `fallback` replacement)."""
    out: dict[int, str] = {}
    for path in validity:
        with Artifact(path, stage="validity") as a:
            min_iou = float(a.params.get("min_iou", 0.5))
            inst = a.instances
            if "box_iou" not in inst:
                raise PseudomaskError(f"{path}: a validity artifact without a box_iou column")
            for i, iou, status in zip(inst["id"], inst["box_iou"], inst["status"]):
                if str(status) not in PASS and np.isfinite(iou) and iou < min_iou:
                    out[int(i)] = f"box agreement IoU {float(iou):.3f} < {min_iou:g} (validity)"
    for path in masks:
        with Artifact(path) as a:
            inst = a.instances
            if "fallback" not in inst:
                continue
            for i, fb, status in zip(inst["id"], inst["fallback"], inst["status"]):
                if str(status) not in PASS and fb == 1 and int(i) not in out:
                    out[int(i)] = f"{a.stage} replaced its degenerate result by a fallback"
    return out


def split_coco(data: Mapping[str, Any], invalid: Mapping[int, str]) -> tuple[dict, dict]:
    """(large, small) COCO datasets of the two branches from an exported one.

    large: every annotation; an invalid one gets `mask_ignore` true (its box and class still train) and
    `hybrid_branch` "small"; small: only the invalid ones (not failed, not crowd, not source gt), boxes only
    (empty segmentation). Both keep every image and category."""
    large, small = [], []
    for a in data["annotations"]:
        a = dict(a)
        bad = (int(a["id"]) in invalid and a.get("source") != "gt" and a.get("status") not in PASS
               and not a.get("iscrowd"))
        a["hybrid_branch"] = "small" if bad else "large"
        if bad:
            a["mask_ignore"] = True
            a["hybrid_reason"] = invalid[int(a["id"])]
            small.append({k: v for k, v in a.items() if k != "ignore_segmentation"} | {"segmentation": []})
        large.append(a)
    base = {k: v for k, v in data.items() if k != "annotations"}
    return {**base, "annotations": large}, {**base, "annotations": small}


def split_summary(large: Mapping[str, Any], small: Mapping[str, Any]) -> dict:
    """Counts of the split: instances per branch, masks the large branch trains on, small / large by box."""
    inv = small["annotations"]
    return {"instances": len(large["annotations"]), "invalid": len(inv),
            "large_masks_trained": sum(not a.get("mask_ignore") and a.get("status") not in PASS
                                       for a in large["annotations"]),
            "invalid_small64": sum(is_small(a["bbox"]) for a in inv),
            "invalid_large64": sum(not is_small(a["bbox"]) for a in inv),
            "small_images": len({a["image_id"] for a in inv})}


@dataclass(frozen=True)
class HybridSplitSettings(Settings):
    """No settings: the threshold is validity's `min_iou`, read from the validity artifacts."""

    SECTION = "hybrid_split"


def run_split(s: HybridSplitSettings, *, annotations: str, validity: list[str], masks: list[str] | None,
              large: str, small: str, threads: int = 1) -> dict:
    """The `hybrid_split` stage (see pseudomask.registry)."""
    data = read_json(annotations, PseudomaskError, "exported pseudo masks")
    if not isinstance(data, dict) or "annotations" not in data:
        raise PseudomaskError(f"{annotations}: not a COCO dataset (no 'annotations')")
    invalid = invalid_instances(validity, masks or ())
    ids = {int(a["id"]) for a in data["annotations"]}
    missing = sorted(set(invalid) - ids)
    if missing:
        raise PseudomaskError(f"{annotations}: validity judged instance(s) {missing[:5]} that the export lacks; "
                              "the validity artifacts and the export must come from one dataset")
    big, little = split_coco(data, invalid)
    write_json(big, large)
    write_json(little, small)
    return {"large": large, "small": small, **split_summary(big, little)}


# ------------------------------------------------------------------------------------------------- training

def _like(name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """A field with RetrainSettings' default, help and constraints (one definition), optionally overridden."""
    f = RetrainSettings.__dataclass_fields__[name]
    m = f.metadata
    return setting(field_default(f) if default is dataclasses.MISSING else default, help or m["help"],
                   choices=m["choices"], minimum=m["minimum"], maximum=m["maximum"],
                   exclusive_minimum=m["exclusive_minimum"], exclusive_maximum=m["exclusive_maximum"],
                   schema=m["schema"])


@dataclass(frozen=True)
class RetrainHybridSettings(Settings):
    """Both branches of the hybrid recipe (config section `retrain_hybrid:`): the knobs of `retrain:`, which the
    two branches share as in the paper, except the small branch's learning rate."""

    SECTION = "retrain_hybrid"
    arch: str = _like("arch")
    width: int = _like("width")
    channels: int = _like("channels")
    proposals: int = _like("proposals")
    rois: int = _like("rois")
    schedule: str = _like("schedule")
    init_checkpoint: str = _like("init_checkpoint")
    max_iters: int = _like("max_iters")
    batch_size: int = _like("batch_size")
    optimizer: str = _like("optimizer")
    lr: float = _like("lr", help="learning rate of the large-object branch at a total batch of lr_batch (the "
                                 "paper: 0.005 at 6)")
    lr_batch: int | None = _like("lr_batch")
    small_lr: float | None = setting(None, f"learning rate of the small-object branch; null = {SMALL_LR_FACTOR:g} x "
                                           "lr (the paper's 0.0075 against 0.005)", exclusive_minimum=0)
    clip_grad: float | None = _like("clip_grad")
    warmup_iters: int = _like("warmup_iters")
    lr_steps: tuple[float, ...] = _like("lr_steps")
    scale: Any = _like("scale")
    scale_jitter: float = _like("scale_jitter")
    flip: float = _like("flip")
    workers: int = _like("workers")
    checkpoint_interval: int = _like("checkpoint_interval")
    log_interval: int = _like("log_interval")
    seed: int = _like("seed")
    max_per_img: int = _like("max_per_img")
    neck: str = _like("neck", "pafpn", "neck of the large-object branch: pafpn (the paper's Enhanced-FPN, see "
                                       "docs/stages/retrain.md) | fpn; the small branch has an FPN")
    sync_bn: bool = _like("sync_bn")
    amp: bool = _like("amp")
    cpu: dict = cpu_profile(CPU_PROFILE)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str | None = None) -> "RetrainHybridSettings":
        return super().from_mapping(list_scale(values), where)

    def check(self) -> None:
        self.branch("large").check()

    def branch(self, which: str) -> RetrainSettings:
        """The RetrainSettings of one branch: "large" (Mask R-CNN, `neck`) or "small" (Faster R-CNN, FPN)."""
        own = {"small_lr", "neck"}
        common = list_scale({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in own})
        if which == "large":
            return RetrainSettings(**common, neck=self.neck, recipe="hybrid")
        if which == "small":
            lr = self.small_lr if self.small_lr is not None else SMALL_LR_FACTOR * self.lr
            return RetrainSettings(**{**common, "lr": float(lr)}, neck="fpn", recipe="hybrid")
        raise ValueError(f"branch is 'large' or 'small', got {which!r}")


def _annotation_count(path: str | os.PathLike) -> int:
    data = read_json(path, RetrainError, "training annotations")
    return len(data.get("annotations") or []) if isinstance(data, dict) else 0


def run_train(s: RetrainHybridSettings, *, large: str, small: str, images: str, large_checkpoint: str,
              large_config: str, small_checkpoint: str, small_config: str, threads: int = 1) -> dict:
    """The `retrain_hybrid` stage (see pseudomask.registry): the large branch, then the small one, each in its own
    MMEngine run folder (`work/` beside its checkpoint), each resumable as `retrain` is."""
    if not _annotation_count(small):
        raise RetrainError(f"{small}: no invalid instances, so the small-object branch has nothing to train on "
                           "(validity found every mask valid at its min_iou); use retrain.recipe mask_rcnn, or a stricter "
                           "validity.min_iou")
    out = {}
    for which, ann, ckpt, cfg, builder in (("large", large, large_checkpoint, large_config, build_config),
                                          ("small", small, small_checkpoint, small_config, build_faster_rcnn_config)):
        print(f"retrain_hybrid: training the {which}-object branch on {ann}")
        out[which] = train(ann, images, Path(ckpt).parent / "work", s.branch(which), out=ckpt, config_out=cfg,
                           threads=threads, builder=builder)
    return out


# ----------------------------------------------------------------------------------------------- prediction

def fuse(large_boxes: np.ndarray, large_labels: np.ndarray, small_boxes: np.ndarray, small_labels: np.ndarray,
         size: float = 64, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """The hybrid fusion of one image's detections (xyxy boxes, labels): (indices of the large-branch results
    kept, indices of the small-branch results kept, duplicates removed), each index list ascending.

    Size routing: a large-branch result is kept when its box is at least size x size px (area), a small-branch
    one when it is smaller. Duplicates: a same-label pair across the branches with box IoU >= `iou` is one
    object; pairs are visited by decreasing IoU (ties: by large, then small index) and, when both are still
    kept, the branch owning the mean of the two box areas keeps its result and the other is removed."""
    lb = np.asarray(large_boxes, np.float64).reshape(-1, 4)
    sb = np.asarray(small_boxes, np.float64).reshape(-1, 4)
    keep_l = ~is_small(lb, size, "xyxy")
    keep_s = is_small(sb, size, "xyxy")
    li, si = np.flatnonzero(keep_l), np.flatnonzero(keep_s)
    ious = box_ious(lb[li], sb[si], "xyxy")
    same = np.asarray(large_labels)[li][:, None] == np.asarray(small_labels)[si][None, :]
    cand = np.argwhere((ious >= iou) & same)
    order = sorted(range(len(cand)), key=lambda k: (-ious[cand[k][0], cand[k][1]], cand[k][0], cand[k][1]))
    removed = 0
    la, sa = box_areas(lb, "xyxy"), box_areas(sb, "xyxy")
    for k in order:
        i, j = li[cand[k][0]], si[cand[k][1]]
        if not (keep_l[i] and keep_s[j]):
            continue
        if (la[i] + sa[j]) / 2 < float(size) * float(size):
            keep_l[i] = False
        else:
            keep_s[j] = False
        removed += 1
    return np.flatnonzero(keep_l), np.flatnonzero(keep_s), removed


def fuse_arrays(large: Mapping[str, np.ndarray], small: Mapping[str, np.ndarray], size: float = 64,
                iou: float = 0.5) -> dict[str, np.ndarray]:
    """`fuse` on two branches' arrays (dicts of `boxes` (N,4) xyxy, `scores`, `labels`, optionally `masks`
    (N,H,W)): the kept results of both, large branch first, as one dict of arrays plus `branch` (0 large,
    1 small)."""
    kl, ks, _ = fuse(large["boxes"], large["labels"], small["boxes"], small["labels"], size, iou)
    out = {}
    for key in ("boxes", "scores", "labels", "masks"):
        if key in large and key in small:
            out[key] = np.concatenate([np.asarray(large[key])[kl], np.asarray(small[key])[ks]])
    out["branch"] = np.r_[np.zeros(len(kl), np.int64), np.ones(len(ks), np.int64)]
    return out


def _arrays(results: Sequence[Mapping[str, Any]], label_of: Mapping[int, int]) -> dict[str, np.ndarray]:
    boxes = np.array([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                      for r in results], np.float64).reshape(-1, 4)
    return {"boxes": boxes, "labels": np.array([label_of[r["category_id"]] for r in results], np.int64),
            "scores": np.array([r["score"] for r in results], np.float64)}


def _by_image(results: Iterable[Mapping[str, Any]]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in results:
        out.setdefault(int(r["image_id"]), []).append(dict(r))
    return out


def fuse_results(large: Sequence[Mapping[str, Any]], small: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                 size: float = 64, iou: float = 0.5) -> tuple[list[dict], dict]:
    """COCO results of the two branches fused per image (see `fuse`); the small branch's have no mask yet.
    Each result gets `hybrid_branch` ("large" or "small"). Returns (results, counts)."""
    cats = sorted({int(r["category_id"]) for r in list(large) + list(small)})
    label_of = {c: k for k, c in enumerate(cats)}
    bl, bs = _by_image(large), _by_image(small)
    out: list[dict] = []
    counts = {"large_detections": len(large), "small_detections": len(small), "duplicates_removed": 0}
    for image_id in image_ids:
        rl, rs = bl.get(int(image_id), []), bs.get(int(image_id), [])
        al, as_ = _arrays(rl, label_of), _arrays(rs, label_of)
        kl, ks, removed = fuse(al["boxes"], al["labels"], as_["boxes"], as_["labels"], size, iou)
        counts["duplicates_removed"] += removed
        out += [{**rl[i], "hybrid_branch": "large"} for i in kl]
        out += [{**rs[j], "hybrid_branch": "small"} for j in ks]
    counts["from_large"] = sum(r["hybrid_branch"] == "large" for r in out)
    counts["from_small"] = len(out) - counts["from_large"]
    return out, counts


def grabcut_small(results: list[dict], images: str | os.PathLike, records: Mapping[int, dict], params) -> dict:
    """Give every small-branch result its mask: the project's GrabCut in its box (ellipse fallback as
    configured), image by image. Sets `segmentation` (RLE) in place; returns counts."""
    todo = _by_index_per_image(results)
    fallbacks, unreadable = 0, []
    for image_id, idx in progress(list(todo.items()), desc="predict_hybrid grabcut"):
        try:
            rgb = read_annotated_image(Path(images) / records[image_id]["file_name"], records[image_id])
        except ImageError as e:
            unreadable.append(str(e))
            for k in idx:
                results[k]["segmentation"] = None
            continue
        for k, res in zip(idx, grabcut_image(rgb, [results[k]["bbox"] for k in idx], params)):
            results[k]["segmentation"] = rle_encode(res["mask"])
            fallbacks += int(res.get("fallback", 0) == 1)
    return {"small_grabcut": sum(len(v) for v in todo.values()), "small_fallback": fallbacks,
            "grabcut_unreadable": unreadable}


def _by_index_per_image(results: Sequence[Mapping[str, Any]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for k, r in enumerate(results):
        if r["hybrid_branch"] == "small":
            out.setdefault(int(r["image_id"]), []).append(k)
    return out


@dataclass(frozen=True)
class PredictHybridSettings(Settings):
    """Prediction and fusion of the two branches (config section `predict_hybrid:`)."""

    SECTION = "predict_hybrid"
    small_size: int = setting(64, "detections whose box area is below small_size x small_size px come from the "
                                  "small-object branch, the others from the large-object branch", minimum=1)
    nms_iou: float = setting(0.5, "a same-class pair across the branches with box IoU at least this is one object: "
                                  "the branch owning the pair's mean box area keeps it", minimum=0, maximum=1)
    score_thr: float = setting(0.05, "lowest detection score kept (both branches)", minimum=0, maximum=1)
    batch_size: int = setting(2, "images per forward pass", minimum=1)
    grabcut: dict = setting({}, "grabcut settings of the small branch's masks over grabcut's defaults (fallback: "
                                "ellipse)")
    device: str = device_setting()

    def check(self) -> None:
        self.grabcut_params()

    def grabcut_params(self) -> GrabCutSettings:
        return GrabCutSettings.from_mapping(self.grabcut, f"{self.SECTION}.grabcut")


def predict_hybrid(large_checkpoint: str | os.PathLike, small_checkpoint: str | os.PathLike,
                   images: str | os.PathLike, coco: str | os.PathLike | None = None,
                   large_config: str | os.PathLike | None = None, small_config: str | os.PathLike | None = None,
                   settings: PredictHybridSettings | None = None, device: str | None = None
                   ) -> tuple[list[dict], dict]:
    """COCO results of the hybrid recipe on every image: both detectors, fusion, GrabCut of the small ones."""
    s = settings or PredictHybridSettings()
    ims = image_list(images, coco)
    large, s_large = predict(large_checkpoint, images, coco=coco, config=large_config, device=device,
                             batch_size=s.batch_size, score_thr=s.score_thr)
    small, s_small = predict(small_checkpoint, images, coco=coco, config=small_config, device=device,
                             batch_size=s.batch_size, score_thr=s.score_thr)
    results, counts = fuse_results(large, small, [im["id"] for im in ims], s.small_size, s.nms_iou)
    counts.update(grabcut_small(results, images, {im["id"]: im for im in ims}, s.grabcut_params()))
    results = [r for r in results if r.get("segmentation") is not None]
    summary = {"images": s_large["images"], "skipped": sorted(set(s_large["skipped"]) | set(s_small["skipped"])),
               "detections": len(results), **counts, "device": s_large["device"],
               "large_checkpoint": str(large_checkpoint), "small_checkpoint": str(small_checkpoint)}
    return results, summary


def run_predict(s: PredictHybridSettings, *, large_checkpoint: str, large_config: str | None, small_checkpoint: str,
                small_config: str | None, images: str, coco: str | None, out: str, threads: int = 1) -> dict:
    """The `predict_hybrid` stage (see pseudomask.registry)."""
    import torch  # lazy: the CLI imports this module's settings at start-up

    torch.set_num_threads(threads)
    results, summary = predict_hybrid(large_checkpoint, small_checkpoint, images, coco, large_config, small_config,
                                      s, device=str(pick_device(s.device)))
    write_json(results, out)
    return {"out": out, **summary}
