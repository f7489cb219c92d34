"""Box-agreement validity (hybrid networks): a mask is invalid when the IoU of its own box with the given box
is below 0.5. Invalid rates are reported for small (< 64x64 px) and large instances; with `ellipse`, invalid
masks are replaced by the box's inscribed ellipse, the paper's remedy."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .masks import box_agreement, ellipse_mask, is_small
from .settings import Settings, setting
from .loops import PASS_THROUGH, Provenance, run_artifact_stage
from .registry import mask_stages
from .store import Artifact


@dataclass(frozen=True)
class ValiditySettings(Settings):
    SECTION = "validity"
    min_iou: float = setting(0.5, "invalid when IoU(box of the mask, given box) is below this", minimum=0, maximum=1)
    ellipse: bool = setting(True, "replace invalid masks by the box's inscribed ellipse (status kept, replaced=1)")


def invalid_rates(box_ious: np.ndarray, small: np.ndarray, min_iou: float = 0.5) -> dict:
    """Invalid rate overall and for small / large instances (None where there are none)."""
    inv = np.asarray(box_ious) < min_iou
    small = np.asarray(small, bool)

    def rate(sel: np.ndarray) -> float | None:
        return float(inv[sel].mean()) if sel.any() else None

    every = np.ones(len(inv), bool)
    return {"instances": int(len(inv)), "invalid": int(inv.sum()), "invalid_rate": rate(every),
            "small64": int(small.sum()), "invalid_rate_small64": rate(small),
            "large64": int((~small).sum()), "invalid_rate_large64": rate(~small)}


def validity_rows(image: dict, records: list[dict], masks: np.ndarray, min_iou: float = 0.5,
                  ellipse: bool = False) -> tuple[list[dict], np.ndarray]:
    """One image of `validity`: rows with `box_iou` (NaN where not judged) and `replaced`, and the masks
    (invalid ones replaced by the inscribed ellipse with `ellipse`). Failed and ignored ones pass through."""
    masks = masks.copy()
    rows = []
    for k, r in enumerate(records):
        row = {key: r[key] for key in ("id", "category_id", "bbox", "status", "reason")}
        row.update(box_iou=np.nan, replaced=0.0)
        if r["status"] not in PASS_THROUGH:
            biou = box_agreement(masks[k], r["bbox"])
            row["box_iou"] = biou
            if biou < min_iou:
                why = f"box agreement IoU {biou:.3f} < {min_iou}"
                if ellipse:
                    masks[k] = ellipse_mask(r["bbox"], image["height"], image["width"])
                    row.update(status="kept", reason=f"{why}; replaced by the inscribed ellipse", replaced=1.0)
                else:
                    row.update(status="invalid", reason=why)
        rows.append(row)
    return rows, masks


def run_validity(src: str | os.PathLike, out: str | os.PathLike, min_iou: float = 0.5, ellipse: bool = False) -> Path:
    """Write a `validity` artifact: every instance with its `box_iou`, invalid ones flagged or replaced."""
    ious, small = [], []

    def per_image(image: dict, records: list[list[dict]], masks: list[np.ndarray]):
        rows, out_masks = validity_rows(image, records[0], masks[0], min_iou, ellipse)
        judged = [(row["box_iou"], r["bbox"]) for row, r in zip(rows, records[0]) if r["status"] not in PASS_THROUGH]
        ious.extend(b for b, _ in judged)
        small.extend(is_small(box) for _, box in judged)
        return rows, out_masks, None

    def rates() -> dict:
        return {"invalid_rates": json.dumps(invalid_rates(np.array(ious), np.array(small, bool), min_iou))}

    with Artifact(src, stage=[m for m in mask_stages() if m != "validity"]) as a:
        params = {"min_iou": min_iou, "ellipse": ellipse, "input_stage": a.stage}
        return run_artifact_stage([a], out, Provenance("validity", "box-agreement", params), per_image,
                                  final_attrs=rates)


def run_stage(s: ValiditySettings, *, masks: str, out: str, threads: int = 1) -> dict:
    """The `validity` stage (see pseudomask.registry)."""
    run_validity(masks, out, s.min_iou, s.ellipse)
    with Artifact(out) as a:
        return {"out": out, "status": a.status_counts(), **json.loads(a.attrs["invalid_rates"])}
