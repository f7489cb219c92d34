"""DenseCRF refinement of a mask artifact (Krähenbühl & Koltun 2011, at DeepLab's parameters).

Li et al. (weakly/semi panoptic, sec. 3.4) post-process the network's output with DenseCRF "using the
parameters of Deeplab" to improve boundaries; users refine GrabCut and BoxCaseg masks the same way. Each
instance is refined on its own: a crop of its box grown by a margin, a two-label (background, foreground)
fully connected CRF whose unary comes from the source mask (`fg_confidence` on its foreground,
`bg_confidence` on its background, uniform on its ignore pixels) and whose pairwise terms are the
appearance (bilateral) and smoothness (Gaussian) kernels, solved by mean-field inference. The result is
clipped to the box (a tight box holds the whole object).

Defaults are DeepLab's (Chen et al.: v1, ICLR 2015, cross-validated w1 in 3..6, theta_alpha in 30..100,
theta_beta in 3..6 with w2 = theta_gamma = 3 and 10 mean-field iterations; the values below are those of
DeepLab v2's released VOC post-processing, bilateral w1 = 4, theta_alpha = 121, theta_beta = 5, Gaussian
w2 = 3, theta_gamma = 3, 10 iterations, as reproduced by the public DeepLab ports).

Needs the `pydensecrf2` package (`pip install pydensecrf2`, a project dependency; it compiles with a C++
compiler); without it the stage stops with an error naming the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .crops import MaskStack
from .errors import PseudomaskError
from .masks import box_pixels
from .settings import Settings, setting
from .loops import PASS_THROUGH, Provenance, read_artifact_image, run_artifact_stage
from .registry import mask_stages
from .store import IGNORE, Artifact

IGNORE_MODES = ("resolve", "keep")
PACKAGE = "pydensecrf2"


class CrfError(PseudomaskError):
    """DenseCRF cannot run (the package is missing)."""


@dataclass(frozen=True)
class CrfSettings(Settings):
    """DenseCRF parameters (DeepLab's) and the unary built from the source mask (config section `crf:`)."""

    SECTION = "crf"
    iterations: int = setting(10, "mean-field iterations (DeepLab: 10)", minimum=1)
    bilateral_weight: float = setting(4.0, "w1, weight of the appearance (bilateral) kernel (DeepLab: 4)", minimum=0)
    bilateral_xy: float = setting(121.0, "theta_alpha, its spatial std in px (DeepLab: 121)", exclusive_minimum=0)
    bilateral_rgb: float = setting(5.0, "theta_beta, its colour std (DeepLab: 5)", exclusive_minimum=0)
    gaussian_weight: float = setting(3.0, "w2, weight of the smoothness (Gaussian) kernel (DeepLab: 3)", minimum=0)
    gaussian_xy: float = setting(3.0, "theta_gamma, its spatial std in px (DeepLab: 3)", exclusive_minimum=0)
    fg_confidence: float = setting(0.8, "unary: probability of foreground on the source mask's foreground",
                                   exclusive_minimum=0.5, exclusive_maximum=1)
    bg_confidence: float = setting(0.8, "unary: probability of background on the source mask's background "
                                        "(ignore pixels: uniform)", exclusive_minimum=0.5, exclusive_maximum=1)
    margin: float = setting(0.25, "crop around the box: margin, fraction of the box side ...", minimum=0)
    min_margin: int = setting(10, "... but at least this many pixels", minimum=0)
    ignore: str = setting("resolve", "the source's ignore (255) pixels: resolve (the CRF labels them) or keep",
                          choices=IGNORE_MODES)


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise CrfError(f"the crf stage needs the {PACKAGE} package: pip install {PACKAGE} "
                       "(it compiles with a C++ compiler)") from None
    return dcrf


def foreground_probability(mask: np.ndarray, fg_confidence: float = 0.8, bg_confidence: float = 0.8) -> np.ndarray:
    """Per-pixel foreground probability of the unary: `fg_confidence` on foreground (1), 1 - `bg_confidence`
    on background (0), 0.5 on ignore (255)."""
    p = np.full(mask.shape, 1.0 - bg_confidence, np.float32)
    p[mask == 1] = fg_confidence
    p[mask == IGNORE] = 0.5
    return p


def dense_crf(rgb: np.ndarray, p_fg: np.ndarray, s: CrfSettings = CrfSettings()) -> np.ndarray:
    """Two-label DenseCRF of an RGB crop (H,W,3) given its foreground probabilities (H,W): the (H,W)
    posterior probability of foreground after `s.iterations` mean-field steps."""
    dcrf = _densecrf()
    h, w = p_fg.shape
    p = np.clip(p_fg.astype(np.float32), 1e-6, 1 - 1e-6)
    unary = -np.log(np.stack([1.0 - p, p]).reshape(2, -1))
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if s.gaussian_weight > 0:
        d.addPairwiseGaussian(sxy=s.gaussian_xy, compat=s.gaussian_weight)
    if s.bilateral_weight > 0:
        d.addPairwiseBilateral(sxy=s.bilateral_xy, srgb=s.bilateral_rgb,
                               rgbim=np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), compat=s.bilateral_weight)
    q = np.asarray(d.inference(s.iterations), np.float32).reshape(2, h, w)
    return q[1] / np.maximum(q.sum(0), 1e-12)


def crf_span(bbox: Sequence[float], height: int, width: int, margin: float, min_margin: int
             ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(crop span, box span) in pixels, end-exclusive: the box grown by the margin, clipped to the image."""
    x0, y0, x1, y1 = box_pixels(bbox, height, width)
    mx = max(int(round(margin * (x1 - x0))), min_margin)
    my = max(int(round(margin * (y1 - y0))), min_margin)
    return (max(x0 - mx, 0), max(y0 - my, 0), min(x1 + mx, width), min(y1 + my, height)), (x0, y0, x1, y1)


def refine_mask(rgb: np.ndarray, mask: np.ndarray, bbox: Sequence[float], s: CrfSettings = CrfSettings(),
                clip: bool = True) -> np.ndarray:
    """DenseCRF of one instance's (H,W) mask (1/0/255) on its box crop: (H,W) uint8, 1 where the CRF says
    foreground inside the box (`clip`) or inside the crop (else), 0 elsewhere; with `ignore: keep` the
    source's ignore pixels stay 255."""
    h, w = mask.shape
    (cx0, cy0, cx1, cy1), (x0, y0, x1, y1) = crf_span(bbox, h, w, s.margin, s.min_margin)
    out = np.zeros((h, w), np.uint8)
    if x1 <= x0 or y1 <= y0:
        return out
    crop = mask[cy0:cy1, cx0:cx1]
    q = dense_crf(rgb[cy0:cy1, cx0:cx1], foreground_probability(crop, s.fg_confidence, s.bg_confidence), s)
    out[cy0:cy1, cx0:cx1] = q > 0.5
    if clip:
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        out[~inside] = 0
    if s.ignore == "keep":
        out[mask == IGNORE] = IGNORE
    return out


def crf_rows(s: CrfSettings, image_root: str, image: dict, records: list[list[dict]],
             masks: list[MaskStack | np.ndarray]) -> tuple[list[dict], MaskStack, None]:
    """One image of `crf`: every instance with its refined mask; failed and ignored instances and true masks
    (source `gt`) pass through unchanged. Columns: `crf_applied` (1 when the CRF's mask is used) and
    `crf_changed` (fraction of the crop's pixels whose label changed)."""
    recs, src = records[0], masks[0]
    out = MaskStack.from_masks(src)  # a copy, held as crops
    rows = []
    todo = [k for k, r in enumerate(recs) if r["status"] not in PASS_THROUGH and r.get("source") != "gt"]
    rgb = read_artifact_image(image_root, image) if todo else None
    for k, r in enumerate(recs):
        row: dict[str, Any] = {key: r[key] for key in ("id", "category_id", "bbox", "status", "reason")}
        if r.get("source"):
            row["source"] = r["source"]
        row.update(crf_applied=0.0, crf_changed=np.nan)
        if k in todo:
            if rgb is None:
                row.update(status="failed", reason=f"image {image['file_name']} not readable under {image_root!r}")
                out[k] = 0
            elif not np.any(src[k] == 1) and not np.any(src[k] == IGNORE):
                row["reason"] = "; ".join(x for x in (r["reason"], "empty source mask: not refined") if x)
            else:
                new = refine_mask(rgb, src[k], r["bbox"], s)
                (cx0, cy0, cx1, cy1), _ = crf_span(r["bbox"], *src[k].shape, s.margin, s.min_margin)
                area = max((cx1 - cx0) * (cy1 - cy0), 1)
                if np.any(new == 1):
                    row.update(crf_applied=1.0, crf_changed=float(np.count_nonzero(new != src[k])) / area)
                    out[k] = new
                else:
                    why = "DenseCRF left no foreground pixel; the source mask is kept"
                    row["reason"] = "; ".join(x for x in (r["reason"], why) if x)
                    row["crf_changed"] = 0.0
        rows.append(row)
    return rows, out, None


def run_crf(src: str | os.PathLike, out: str | os.PathLike, s: CrfSettings = CrfSettings(), workers: int = 1) -> Path:
    """Write a `crf` artifact: every instance of the mask artifact `src`, refined by DenseCRF."""
    _densecrf()
    with Artifact(src, stage=[m for m in mask_stages() if m != "crf"]) as a:
        params = {**s.to_dict(), "input_stage": a.stage}
        per_image = partial(crf_rows, s, str(a.attrs.get("image_root") or ""))
        return run_artifact_stage([a], out, Provenance("crf", "densecrf", params, attrs={"source_stage": a.stage}),
                                  per_image, workers=workers)


def run_stage(s: CrfSettings, *, masks: str, out: str, threads: int = 1) -> dict:
    """The `crf` stage (see pseudomask.registry)."""
    run_crf(masks, out, s, workers=threads)
    with Artifact(out) as a:
        inst = a.instances
        applied = inst.get("crf_applied", np.zeros(0))
        return {"out": out, "status": a.status_counts(), "refined": int(np.nansum(applied)),
                "source_stage": a.attrs.get("source_stage")}


def settings_from(values: Mapping[str, Any] | None) -> CrfSettings:
    """CrfSettings from a mapping of its keys (another stage's `crf_settings`), the rest at the defaults."""
    return CrfSettings.from_mapping(dict(values or {}), "crf")
