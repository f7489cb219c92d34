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

from .crops import Crop, MaskStack, span_intersection, span_overlaps
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


def agree_masks(gc: MaskStack | np.ndarray, mcg: MaskStack | np.ndarray, boxes: Sequence[Sequence[float]],
                categories: Sequence[int], rest_of_box: str = "background"
                ) -> tuple[MaskStack, np.ndarray, np.ndarray]:
    """Agreement of the GrabCut and MCG masks (stacks or (K,H,W) arrays) of one image's boxes, computed box by
    box on the box's window, and on the intersection of two boxes for their overlap.

    Returns per-instance masks (a `MaskStack`, 1/0/255), a semantic map (H,W) uint8 (category id, 0 background,
    255 ignore) and an instance map (H,W) int32 (index k+1, 0 background, -1 ignore).
    """
    if rest_of_box not in REST_OF_BOX:
        raise PseudomaskError(f"agree: rest_of_box must be one of {REST_OF_BOX}, got {rest_of_box!r}")
    gc, mcg = MaskStack.from_masks(gc), MaskStack.from_masks(mcg)
    k, h, w = gc.shape
    spans = [box_pixels(b, h, w) for b in boxes]
    out, fg = [], []
    for i, (x0, y0, x1, y1) in enumerate(spans):
        g, m = gc.crop(i).window(y0, x0, y1, x1) == 1, mcg.crop(i).window(y0, x0, y1, x1) == 1
        o = np.zeros(g.shape, np.uint8)
        o[g != m] = IGNORE
        if rest_of_box == "ignore":
            o[~g & ~m] = IGNORE
        o[g & m] = 1
        out.append(o)
        fg.append(g & m)
    cats = np.asarray(categories)
    for i, j in same_class_overlaps(spans, cats):  # their overlapping foreground becomes ignore in both
        (ax0, ay0, _, _), (bx0, by0, _, _) = spans[i], spans[j]
        x0, y0, x1, y1 = span_intersection(spans[i], spans[j])
        both = fg[i][y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0] & fg[j][y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
        out[i][y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0][both] = IGNORE
        out[j][y0 - by0:y1 - by0, x0 - bx0:x1 - bx0][both] = IGNORE
    stack = MaskStack.zeros(k, h, w)
    for i, (x0, y0, _, _) in enumerate(spans):
        stack[i] = Crop(y0, x0, out[i])
    semantic, instance = agreement_maps(stack, cats)
    return stack, semantic, instance


def same_class_overlaps(spans: Sequence[tuple[int, int, int, int]], cats: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i < j) of boxes of one class whose (x0, y0, x1, y1) pixel spans intersect."""
    hit = span_overlaps(spans) & (cats[:, None] == cats[None, :])
    i, j = np.nonzero(np.triu(hit, 1))
    return list(zip(i.tolist(), j.tolist()))


def agreement_maps(masks: MaskStack, cats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semantic (H,W) uint8 and instance (H,W) int32 maps of agreed masks: a pixel one mask claims as foreground
    takes its class and index k+1; one claimed by several, or ignore in some mask and claimed by none, is ignore
    (255, -1)."""
    _, h, w = masks.shape
    claims = np.zeros((h, w), np.int32)
    owner = np.zeros((h, w), np.int32)  # k+1 of the first mask claiming the pixel
    ignored = np.zeros((h, w), bool)
    for k, c in enumerate(masks.crops):
        if not c.data.size:
            continue
        win = (slice(c.y, c.y + c.data.shape[0]), slice(c.x, c.x + c.data.shape[1]))
        one = c.data == 1
        claims[win] += one
        o = owner[win]
        o[one & (o == 0)] = k + 1
        ignored[win] |= c.data == IGNORE
    single = claims == 1
    semantic = np.zeros((h, w), np.uint8)
    instance = np.zeros((h, w), np.int32)
    if len(masks):
        semantic[single] = cats[owner[single] - 1]
    instance[single] = owner[single]
    ignore = (claims > 1) | (ignored & ~single)
    semantic[ignore] = IGNORE
    instance[ignore] = -1
    return semantic, instance


def agree_rows(image: dict, records: list[list[dict]], masks: list[MaskStack], rest_of_box: str = "background"
               ) -> tuple[list[dict], MaskStack, dict[str, np.ndarray]]:
    """One image of `agree`: rows, masks and maps from the GrabCut and MCG records and masks of its boxes.
    An instance that either method failed or ignored passes through with that status and an empty mask."""
    ra, rb = records
    out, sem, inst = agree_masks(masks[0], masks[1], [r["bbox"] for r in ra], [r["category_id"] for r in ra],
                                 rest_of_box)
    rows = []
    for k, (x, y) in enumerate(zip(ra, rb)):
        row = {key: x[key] for key in ("id", "category_id", "bbox")}
        bad = x if x["status"] in PASS_THROUGH else (y if y["status"] in PASS_THROUGH else None)
        fg = int(np.count_nonzero(out.crop(k).data == 1))
        if bad is not None:
            out[k] = Crop(0, 0, np.zeros((0, 0), np.uint8))
            row.update(status=bad["status"], reason=bad["reason"])
        elif fg == 0:
            row.update(status="invalid", reason="GrabCut and MCG agree on no foreground pixel")
        else:
            row.update(status="kept", reason="")
        ign = int(np.count_nonzero(out.crop(k).data == IGNORE))
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
