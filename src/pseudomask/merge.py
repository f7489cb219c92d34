"""Who gets a pixel that several masks of one image claim: the merge rules.

Every rule gives each claimant a score, per mask or per pixel, and the highest score takes the pixel (a tie
goes to the earlier instance); the others get background there. `ignore` is the exception: a contested pixel
becomes ignore (255) for every claimant, so neither trains on it.

- `smaller_box`: the smallest box wins (BoxCaseg's "smaller object better");
- `quality`: the mask of higher predicted quality wins;
- `colour`: the mask whose colour model (a colour histogram of its own foreground against that of the rest of its
  box, as GrabCut's) finds the pixel more foreground-like wins, pixel by pixel;
- `ignore`: nobody wins;
- `none`: no merge at all; masks may overlap (Mask R-CNN trains each instance's mask on its own box).

A true mask (source `gt`) wins every overlap under every rule that gives the pixel to someone; under `ignore`
and `none` it shares it (the stage puts every true mask back as given: `loops.pass_true_masks`). Ignore
pixels (255) are no claim. Masks are
`MaskStack` crops; pairs are settled on the intersection of their foregrounds' spans.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .crops import Crop, MaskStack, span_intersection, span_overlaps

RULES = {"smaller_box": "the smaller box wins", "quality": "the mask of higher predicted quality wins",
         "colour": "the mask whose colour model finds the pixel more foreground-like wins",
         "ignore": "contested pixels become ignore for every claimant",
         "none": "no merge: every mask keeps the pixels it claims"}  # rule: what it does, in words
BINS = 16  # colour histogram bins per channel

# score(k, y0, x0, y1, x1) -> mask k's claim on the image window: a scalar or an (y1-y0, x1-x0) array
Score = Callable[[int, int, int, int, int], "float | np.ndarray"]


def merge_masks(masks: MaskStack | np.ndarray, boxes: np.ndarray, active: np.ndarray | None = None
                ) -> tuple[MaskStack | np.ndarray, np.ndarray]:
    """The `smaller_box` rule on boxes (K,4) xywh: returns the merged masks (a stack for a stack, else a
    (K,H,W) array) and, per instance, how many foreground pixels it lost. Ties go to the earlier instance."""
    merged, lost, _, _ = merge(MaskStack.from_masks(masks), box_score(boxes), active)
    return (merged if isinstance(masks, MaskStack) else np.asarray(merged)), lost


def box_score(boxes: np.ndarray) -> Score:
    """Smaller box, higher score."""
    area = np.asarray(boxes, np.float64).reshape(-1, 4)[:, 2:].prod(1)
    return lambda k, *_: -area[k]


def value_score(values: np.ndarray) -> Score:
    """A score per mask (predicted quality, say); NaN counts as lowest."""
    v = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf)
    return lambda k, *_: v[k]


def first_wins(score: Score, first: np.ndarray) -> Score:
    """`score`, with the masks where `first` is true (true masks) above every other."""
    first = np.asarray(first, bool)
    return lambda k, *w: np.inf if first[k] else score(k, *w)


def colour_score(rgb: np.ndarray, masks: MaskStack, boxes: np.ndarray) -> Score:
    """Per pixel, log p(colour | mask's foreground) - log p(colour | rest of its box), from each mask's own
    pixels (histograms of BINS^3 colours, add-one smoothed), computed on first use."""
    q = (np.asarray(rgb, np.int64) * BINS // 256) @ np.array([BINS * BINS, BINS, 1])
    h, w = q.shape
    models: dict[int, np.ndarray] = {}

    def model(k: int) -> np.ndarray:
        if k not in models:
            x, y, bw, bh = (int(round(v)) for v in boxes[k])
            y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + max(bh, 1), h), min(x + max(bw, 1), w)
            fg = masks.crop(k).window(y0, x0, y1, x1) == 1
            fg_h = np.bincount(q[y0:y1, x0:x1][fg], minlength=BINS ** 3) + 1.0
            bg_h = np.bincount(q[y0:y1, x0:x1][~fg], minlength=BINS ** 3) + 1.0
            models[k] = np.log(fg_h / fg_h.sum()) - np.log(bg_h / bg_h.sum())
        return models[k]

    return lambda k, y0, x0, y1, x1: model(k)[q[y0:y1, x0:x1]]


def merge(masks: MaskStack, score: Score, active: np.ndarray | None = None, ignore: bool = False):
    """Settle every contested pixel of the active masks (default all) by `score`, or make it ignore (255) for
    every claimant with `ignore`. Returns the merged masks, foreground pixels lost per mask, and the merged
    foregrounds' spans and which masks have any (see `MaskStack.spans`).

    Pairs are settled on their crops where their foregrounds' spans overlap, against the masks as given: a pixel's
    highest score beats every other claimant's, so pairwise equals the per-pixel rule.
    """
    lost = np.zeros(len(masks), np.int64)
    span, has = masks.spans()
    ok = (np.ones(len(masks), bool) if active is None else np.asarray(active, bool)) & has
    out: dict[int, np.ndarray] = {}  # the crops of the masks that lose pixels, copied before they change
    for a, b in zip(*np.nonzero(np.triu(span_overlaps(span) & ok[:, None] & ok[None, :], 1))):
        y0, x0, y1, x1 = _window(span[a], span[b])
        both = (masks.crop(a).window(y0, x0, y1, x1) == 1) & (masks.crop(b).window(y0, x0, y1, x1) == 1)
        if not both.any():
            continue
        a_wins = np.broadcast_to(score(a, y0, x0, y1, x1) >= score(b, y0, x0, y1, x1), both.shape)
        for k, taken in ((a, both if ignore else both & ~a_wins), (b, both if ignore else both & a_wins)):
            lost[k] += _take(masks.crop(k), out, k, (y0, x0, y1, x1), taken, 255 if ignore else 0)
    merged = masks.copy()
    for k, data in out.items():
        merged[k] = Crop(masks.crop(k).y, masks.crop(k).x, data)
    changed = np.flatnonzero(lost)
    if len(changed):
        span[changed], has[changed] = merged[changed].spans()
    return merged, lost, span, has


def _window(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """The (y0, x0, y1, x1) image window where two (x0, y0, x1, y1) spans meet."""
    x0, y0, x1, y1 = span_intersection(a, b)
    return y0, x0, y1, x1


def _take(crop: Crop, out: dict[int, np.ndarray], k: int, window: tuple[int, int, int, int], taken: np.ndarray,
          value: int) -> int:
    """Set mask k's still-foreground pixels where `taken` (in the image window) to `value`, on its copy in `out`;
    returns how many changed."""
    y0, x0, y1, x1 = window
    if k not in out:
        out[k] = crop.data.copy()
    region = out[k][y0 - crop.y:y1 - crop.y, x0 - crop.x:x1 - crop.x]  # a view: edits land in out[k]
    hit = taken & (region == 1)
    region[hit] = value
    return int(np.count_nonzero(hit))
