"""GrabCut ∩ MCG agreement (Li et al., following SDI): label only the pixels both methods are sure of.

Inside a box a pixel is foreground where GrabCut and MCG both say foreground and ignore (255) where they
disagree; where both say background it is background, or ignore with `rest_of_box="ignore"` (the stricter
reading in which only agreed foreground is labelled inside a box). Where the foregrounds of two boxes of one
class overlap, the region is ignore: nothing tells which instance it belongs to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import PseudomaskError
from .masks import box_pixels
from .settings import Settings, setting
from .loops import PASS_THROUGH, Provenance, run_artifact_stage
from .store import IGNORE
from .summary import artifact_summary

REST_OF_BOX = ("background", "ignore")


@dataclass(frozen=True)
class AgreeSettings(Settings):
    SECTION = "agree"
    rest_of_box: str = setting("background", "label of box pixels both call background", choices=REST_OF_BOX)


def agree_masks(gc: np.ndarray, mcg: np.ndarray, boxes: Sequence[Sequence[float]], categories: Sequence[int],
                rest_of_box: str = "background") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Agreement of (K,H,W) GrabCut and MCG masks of one image's boxes.

    Returns per-instance masks (K,H,W) with 1/0/255, a semantic map (H,W) uint8 (category id, 0 background,
    255 ignore) and an instance map (H,W) int32 (index k+1, 0 background, -1 ignore).
    """
    if rest_of_box not in REST_OF_BOX:
        raise PseudomaskError(f"agree: rest_of_box must be one of {REST_OF_BOX}, got {rest_of_box!r}")
    k, h, w = gc.shape
    out = np.zeros((k, h, w), np.uint8)
    if k == 0:
        return out, np.zeros((h, w), np.uint8), np.zeros((h, w), np.int32)
    inbox = np.zeros((k, h, w), bool)
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = box_pixels(b, h, w)
        inbox[i, y0:y1, x0:x1] = True
    g, m = gc == 1, mcg == 1
    fg = g & m & inbox
    out[inbox & (g != m)] = IGNORE
    if rest_of_box == "ignore":
        out[inbox & ~g & ~m] = IGNORE
    out[fg] = 1
    cats = np.asarray(categories)
    for i in range(k):  # same-class overlaps of foreground become ignore in both instances
        for j in range(i + 1, k):
            if cats[i] == cats[j]:
                both = fg[i] & fg[j]
                if both.any():
                    out[i][both] = IGNORE
                    out[j][both] = IGNORE
    semantic = np.zeros((h, w), np.uint8)
    instance = np.zeros((h, w), np.int32)
    claims = (out == 1).sum(0)
    owner = np.argmax(out == 1, axis=0)
    single = claims == 1
    semantic[single] = cats[owner[single]]
    instance[single] = owner[single] + 1
    ignore = (claims > 1) | ((out == IGNORE).any(0) & ~single)
    semantic[ignore] = IGNORE
    instance[ignore] = -1
    return out, semantic, instance


def agree_rows(image: dict, records: list[list[dict]], masks: list[np.ndarray], rest_of_box: str = "background"
               ) -> tuple[list[dict], np.ndarray, dict[str, np.ndarray]]:
    """One image of `agree`: rows, masks and maps from the GrabCut and MCG records and masks of its boxes.
    An instance that either method failed or ignored passes through with that status and an empty mask."""
    ra, rb = records
    out, sem, inst = agree_masks(masks[0], masks[1], [r["bbox"] for r in ra], [r["category_id"] for r in ra],
                                 rest_of_box)
    rows = []
    for k, (x, y) in enumerate(zip(ra, rb)):
        row = {key: x[key] for key in ("id", "category_id", "bbox")}
        bad = x if x["status"] in PASS_THROUGH else (y if y["status"] in PASS_THROUGH else None)
        fg = int(np.count_nonzero(out[k] == 1))
        if bad is not None:
            out[k] = 0
            row.update(status=bad["status"], reason=bad["reason"])
        elif fg == 0:
            row.update(status="invalid", reason="GrabCut and MCG agree on no foreground pixel")
        else:
            row.update(status="kept", reason="")
        ign = int(np.count_nonzero(out[k] == IGNORE))
        row["agreed_fraction"] = fg / max(fg + ign, 1)
        rows.append(row)
    return rows, out, {"semantic": sem, "instance": inst}


def run_agree(grabcut: str | os.PathLike, mcg: str | os.PathLike, out: str | os.PathLike,
              rest_of_box: str = "background", workers: int = 1) -> Path:
    """Write an `agree` artifact from a grabcut and an mcg artifact of the same shard; `workers` processes
    share the images (see `run_artifact_stage`)."""
    return run_artifact_stage([grabcut, mcg], out, Provenance("agree", "grabcut-and-mcg", {"rest_of_box": rest_of_box}),
                              partial(agree_rows, rest_of_box=rest_of_box), expect_stages=("grabcut", "mcg"),
                              workers=workers)


def run_stage(s: AgreeSettings, *, grabcut: str, mcg: str, out: str, threads: int = 1) -> dict:
    """The `agree` stage (see pseudomask.registry)."""
    run_agree(grabcut, mcg, out, s.rest_of_box, workers=threads)
    return {"out": out, "status": artifact_summary(out)["status"]}
