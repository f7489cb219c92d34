"""The `mcg` stage: MCG-style (or precomputed MCG) proposals of every image, and for every box the
proposal with the highest IoU with the filled box as its mask (Li et al.; MCG's VOC-trained ranking is
not used for the choice).

Per image the artifact's map "proposals" holds the best `max_proposals` proposals by objectness (near
duplicates suppressed) plus every proposal chosen for a box; `proposal_id` indexes that list and
`proposal_iou` is the chosen proposal's IoU with the box. Images without boxes (tag-only data) get
their proposals too, for the CAM stage.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..crops import Crop
from ..dataset import Dataset, load_dataset
from ..images import ImageError, read_annotated_image
from ..masks import box_pixels
from ..loops import ImageResult, Provenance, run_mask_stage
from ..store import Artifact
from .matfile import MatFileError, read_mcg_mat
from .proposals import ProposalPool, proposal_params, proposal_pool

MIN_BOX = 2.0  # boxes narrower or lower than this (pixels) get no mask


def select_for_boxes(pool: ProposalPool, boxes: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(index into the pool, IoU with the filled box) of the best proposal for each xywh box; -1 and 0
    where no proposal overlaps the box. Ties go to the better-scored proposal."""
    h, w = pool.superpixels.shape
    n = pool.n
    if not len(boxes) or not len(pool):
        return np.full(len(boxes), -1, np.int64), np.zeros(len(boxes))
    cols, box_area = [], []
    for b in boxes:
        x0, y0, x1, y1 = box_pixels(b, h, w)
        cols.append(np.bincount(pool.superpixels[y0:y1, x0:x1].ravel(), minlength=n))
        box_area.append(max(x1 - x0, 0) * max(y1 - y0, 0))
    sums = pool.sums(np.stack(cols + [pool.areas()], 1))
    inter, area = sums[:, :-1], sums[:, -1:]
    iou = inter / np.maximum(area + np.array(box_area, np.float64)[None, :] - inter, 1.0)
    best = np.argmax(iou, axis=0)
    best_iou = iou[best, np.arange(len(boxes))]
    return np.where(best_iou > 0, best, -1), best_iou


def image_pool(rgb: np.ndarray | None, image: dict, params: dict, mat_dir: str | os.PathLike | None) -> ProposalPool:
    """The candidate pool of one image: computed from its pixels, or read from `<mat_dir>/<stem>.mat`."""
    if mat_dir:
        path = Path(mat_dir) / f"{Path(image['file_name']).stem}.mat"
        props = read_mcg_mat(path)
        if props.superpixels.shape != (image["height"], image["width"]):
            raise MatFileError(f"{path}: superpixels are {props.superpixels.shape[1]}x{props.superpixels.shape[0]}"
                               f", image {image['id']} is {image['width']}x{image['height']}")
        return ProposalPool.from_proposals(props)
    if rgb is None:
        rgb = read_annotated_image(image["path"], image)
    return proposal_pool(rgb, **params)


def image_result(rgb: np.ndarray | None, image: dict, records: list[dict], params: dict,
                 mat_dir: str | os.PathLike | None = None, clip: bool = True,
                 pool: ProposalPool | None = None, crops: bool = False) -> tuple[list[dict], dict]:
    """Per-record results ({mask, status, reason, proposal_id, proposal_iou}) and the image's maps.

    `pool` (optional) is the image's candidate pool when the caller already has it; with `crops` each mask is its
    `Crop` (memory then follows the boxes, not boxes x image size).
    """
    h, w = image["height"], image["width"]
    pool = image_pool(rgb, image, params, mat_dir) if pool is None else pool
    ranked = pool.ranked(int(params["max_proposals"]), float(params["nms"]))
    boxes = [r["bbox"] for r in records]
    tiny = [float(b[2]) < MIN_BOX or float(b[3]) < MIN_BOX for b in boxes]
    best, best_iou = select_for_boxes(pool, [b for b, t in zip(boxes, tiny) if not t])
    chosen = iter(zip(best.tolist(), best_iou.tolist()))
    picks = [None if t else next(chosen) for t in tiny]
    picked = [pk[0] for pk in picks if pk is not None and pk[0] >= 0]
    stored = np.union1d(ranked, np.array(picked, np.int64)).astype(np.int64)
    props = pool.proposals(stored)  # stored is sorted, so the list stays best score first
    position = {int(k): i for i, k in enumerate(stored)}
    results = []
    for rec, pick in zip(records, picks):
        bw, bh = float(rec["bbox"][2]), float(rec["bbox"][3])
        empty = Crop.of(np.zeros((0, 0), np.uint8)) if crops else np.zeros((h, w), np.uint8)
        if pick is None:
            results.append({"mask": empty, "status": "failed", "proposal_id": -1, "proposal_iou": 0.0,
                            "reason": f"box {bw:g}x{bh:g} px is smaller than {MIN_BOX:g} px: no proposal chosen"})
            continue
        k, iou = pick
        if k < 0:
            why = "no proposal overlaps the box" if len(pool) else "the image has no proposals (uniform or tiny)"
            results.append({"mask": empty, "status": "failed", "proposal_id": -1, "proposal_iou": 0.0,
                            "reason": why})
            continue
        pid = position[k]
        m = props.mask(pid)
        if clip:
            x0, y0, x1, y1 = box_pixels(rec["bbox"], h, w)
            m[:y0] = 0
            m[y1:] = 0
            m[:, :x0] = 0
            m[:, x1:] = 0
        results.append({"mask": Crop.of(m) if crops else m, "status": rec["status"], "reason": rec.get("reason", ""),
                        "proposal_id": pid, "proposal_iou": float(iou)})
    return results, {"proposals": props.to_map()}


def _error(image: dict, e: Exception) -> str:
    if isinstance(e, (ImageError, MatFileError)):
        return str(e)
    return f"image {image['id']} ({image['file_name']}): MCG proposals failed: {type(e).__name__}: {e}"


def predict_image(params: dict, mat_dir: str | None, clip: bool, rgb: np.ndarray, records: list[dict],
                  image: dict) -> ImageResult:
    """The per-image function of the stage (`pseudomask.loops.run_mask_stage`, every image): the records'
    results and the image's proposals; a failure fails the image's records (and is logged when it has none)."""
    try:
        return ImageResult(*image_result(rgb, image, records, params, mat_dir, clip, crops=True))
    except Exception as e:  # noqa: BLE001 - OpenCV, scipy and bad files raise many types; the stage goes on
        why = _error(image, e)
    h, w = image["height"], image["width"]
    return ImageResult([{"mask": np.zeros((h, w), np.uint8), "status": "failed", "reason": why, "proposal_id": -1,
                         "proposal_iou": 0.0} for _ in records], None, "" if records else f"no proposals: {why}")


def run_mcg(ds: Dataset, out: str | os.PathLike, *, mat_dir: str | os.PathLike | None = None, clip: bool = True,
            workers: int = 1, inputs: Sequence[str | os.PathLike] = (), **params: Any) -> Path:
    """Write the `mcg` artifact of a dataset (shard): per box the best proposal, per image its proposals.

    `params` are those of `proposals_for_image` (see `proposals.DEFAULTS`); `mat_dir` switches to
    precomputed MCG .mat files (method "mcg-mat"); `workers` processes share the images
    (`pseudomask.workers`: spawned, so a script calling this with workers > 1 keeps its body under
    `if __name__ == "__main__":`).
    """
    p = proposal_params(**params)
    mat = str(mat_dir) if mat_dir else None
    recorded = {**p, "clip": bool(clip), "mat_dir": mat or ""}
    return run_mask_stage(ds, out, Provenance("mcg", "mcg-mat" if mat else "mcg-style", recorded, inputs),
                          partial(predict_image, p, mat, bool(clip)), every_image=True, workers=workers)


def run_stage(s, *, shard: str, images: str | None, out: str, threads: int = 1) -> dict:
    """The `mcg` stage (see pseudomask.registry): `threads` worker processes compute images in parallel."""
    run_mcg(load_dataset(shard, images), out, mat_dir=s.mat_dir or None, clip=s.clip, workers=threads,
            inputs=[shard], **s.proposal_params())
    with Artifact(out, stage="mcg") as a:
        scores = (a.map("proposals", i, "scores") for i in a.image_ids)  # one image's at a time: bounded memory
        n = [len(sc) for sc in scores if sc is not None]
        kept = a.instances.get("status", np.zeros(0, object)) == "kept"
        iou = a.instances.get("proposal_iou", np.zeros(0))
        return {"out": out, "images": len(a.image_ids), "proposals_per_image": round(sum(n) / max(len(n), 1), 1),
                "mean_proposal_box_iou": round(float(iou[kept].mean()), 4) if kept.any() else None,
                "status": a.status_counts()}
