"""BoxCaseg's refinement for any mask source: merge the masks of an image, then drop those that disagree.

Merge: a pixel that several masks of one image claim (value 1) is settled by the `rule` (`pseudomask.merge`):
by default nobody settles it (`none`: masks may overlap); BoxCaseg's `smaller_box` gives it to the instance with
the smallest box ("smaller object better") and background to the others. Ignore pixels (255, e.g. agreement's) are no claim: they stay 255 and never count as
foreground. Drop: proxy box IoU = IoU(tight box of the merged mask, GT box); a mask below the
threshold (or with IoU 0: empty, or outside its box) is *dropped*: status "dropped", `mask_ignore` 1, box,
class and mask kept, so Mask R-CNN still trains box and class but not the mask (BoxCaseg Sec. 3.4).

Instances with status kept or invalid take part (an invalid mask that the validity stage replaced by an
ellipse is judged like any other); failed and ignored ones pass through with `mask_ignore` 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .crops import MaskStack
from .errors import PseudomaskError
from .masks import box_iou
from .merge import RULES, box_score, colour_score, first_wins, merge, value_score
from .settings import Settings, setting
from .loops import Provenance, quality_scorer, read_artifact_image, run_artifact_stage
from .quality.features import SOURCES
from .registry import mask_stages
from .store import Artifact

JUDGED = ("kept", "invalid")
THRESHOLDS = (0.0, 0.75, 0.85, 0.90, 0.95)
CRITERIA = ("proxy_box_iou", "quality", "both")
_DROPS = {"proxy_box_iou": "proxy-box", "quality": "quality", "both": "proxy-box-and-quality"}


def method(rule: str, criterion: str) -> str:
    """The artifact's method name: e.g. smaller-box-merge+proxy-box-drop."""
    return f"{rule.replace('_', '-')}-merge+{_DROPS[criterion]}-drop"


def merge_score(rule: str, masks: MaskStack, rows: Sequence[Mapping[str, Any]],
                quality: Callable[[list[dict], MaskStack], np.ndarray] | None, rgb: np.ndarray | None):
    """The `pseudomask.merge` score of a rule for one image's masks; a true mask (source gt) above all."""
    boxes = np.array([r["bbox"] for r in rows], np.float64).reshape(-1, 4)
    if rule == "quality":
        if quality is None:
            raise PseudomaskError("merge rule quality needs a quality model")
        score = value_score(quality([dict(r) for r in rows], masks))
    elif rule == "colour":
        if rgb is None:
            raise PseudomaskError("merge rule colour needs the image")
        score = colour_score(rgb, masks, boxes)
    else:
        score = box_score(boxes)
    return first_wins(score, [r.get("source") == "gt" for r in rows])


def is_dropped(proxy_iou: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """The drop rule: below the threshold, or no overlap at all (an empty mask is never kept)."""
    p = np.asarray(proxy_iou, np.float64)
    out = (p < threshold) | (p <= 0)
    return bool(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class MergeDropSettings(Settings):
    SECTION = "merge_drop"
    threshold: float = setting(0.95, "masks whose proxy box IoU is below this are dropped (mask-ignored, box kept)",
                               minimum=0, maximum=1)
    criterion: str = setting("proxy_box_iou", "what drops a mask: proxy_box_iou (BoxCaseg), its predicted "
                                              "quality, or both (either one below its threshold)",
                             choices=CRITERIA)
    quality_threshold: float = setting(0.7, "with criterion quality or both: masks whose predicted quality is below "
                                            "this are dropped", minimum=0, maximum=1)
    model: str = setting("default", "quality model of the masks: \"default\" (shipped), a JSON file written by "
                                    "scripts/train_scorer.py, or \"none\" (then criterion proxy_box_iou and a rule "
                                    "other than quality)")
    rule: str = setting("none", "who gets a pixel several masks claim: the smaller box (BoxCaseg), the mask "
                                "of higher predicted quality, the mask whose colour model finds it more "
                                "foreground-like, nobody (ignore, 255), or no merge (none)", choices=tuple(RULES))


def merge_drop_image(masks: MaskStack | np.ndarray, rows: Sequence[Mapping[str, Any]],
                     s: MergeDropSettings = MergeDropSettings(), source: str = "",
                     quality: Callable[[list[dict], MaskStack], np.ndarray] | None = None, rgb: np.ndarray | None = None
                     ) -> tuple[MaskStack | np.ndarray, list[dict]]:
    """Merge then drop one image's masks by the settings `s` (a true mask, source gt, wins every overlap and is
    never dropped: see `pseudomask.loops.pass_true_masks`); returns merged masks (a stack for a stack, else an
    array) and rows with status, reason, `proxy_box_iou` (NaN when not judged), `mask_ignore` (1/0),
    `merge_lost_px` and `source`.

    `s.rule` settles contested pixels (`pseudomask.merge`; `quality` needs `quality`, `colour` the image `rgb`).
    `s.criterion` says what drops a mask: its proxy box IoU below `s.threshold`, its predicted quality below
    `s.quality_threshold` (`quality`), or either (`both`). `quality(rows, masks)` predicts the quality of masks
    (NaN: none; a mask without one is dropped under the quality criteria); the merged masks' sets `quality`."""
    rows = [dict(r) for r in rows]
    dense, masks = not isinstance(masks, MaskStack), MaskStack.from_masks(masks)
    if len(masks) != len(rows):
        masks = MaskStack.zeros(len(rows), *masks.shape[1:])
    active = np.array([r["status"] in JUDGED for r in rows], bool)
    if s.rule == "none":
        merged, lost, (span, has) = masks, np.zeros(len(rows), np.int64), masks.spans()
    else:
        merged, lost, span, has = merge(masks, merge_score(s.rule, masks, rows, quality, rgb), active,
                                        ignore=s.rule == "ignore")
    for k, r in enumerate(rows):
        r["source"] = r.get("source") or source
        r["merge_lost_px"] = int(lost[k])
    q = np.asarray(quality(rows, merged), np.float64) if quality is not None else np.full(len(rows), np.nan)
    for k, r in enumerate(rows):
        if quality is not None:
            r["quality"] = float(q[k])
        if not active[k]:
            r.update(proxy_box_iou=None, mask_ignore=1)
            continue
        x0, y0, x1, y1 = (float(v) for v in span[k])
        iou = box_iou([x0, y0, x1 - x0, y1 - y0] if has[k] else None, r["bbox"])
        prior = f"was {r['status']}: {r['reason']}" if r["status"] != "kept" else str(r.get("reason") or "")
        whys = []
        if not has[k]:
            whys.append("empty mask after merge" if np.any(masks.crop(k).data == 1) else "empty mask")
        elif iou <= 0:
            whys.append("mask box does not overlap the GT box")
        else:
            if s.criterion in ("proxy_box_iou", "both") and is_dropped(iou, s.threshold):
                whys.append(f"proxy box IoU {iou:.3f} < {s.threshold:g}")
            if s.criterion in ("quality", "both"):
                if not np.isfinite(q[k]):
                    whys.append("no predicted quality")
                elif q[k] < s.quality_threshold:
                    whys.append(f"predicted quality {q[k]:.3f} < {s.quality_threshold:g}")
        if whys:
            why = "; ".join(whys)
            r.update(status="dropped", reason="; ".join(s for s in (why, prior) if s), mask_ignore=1)
        else:
            r.update(status="kept", reason=prior, mask_ignore=0)
        r["proxy_box_iou"] = float(iou)
    return (np.asarray(merged) if dense else merged), rows


def _per_image(s: MergeDropSettings, source: str, qsource: str, image_root: str, image: dict,
               records: list[list[dict]], masks: list[MaskStack]):
    """One image of the stage (module-level, so that worker processes can run it)."""
    scorer = quality_scorer(s.model)
    rgb = read_artifact_image(image_root, image) if scorer is not None or s.rule == "colour" else None

    def quality(rows: list[dict], stack: MaskStack) -> np.ndarray:
        if scorer is None:
            return np.full(len(rows), np.nan)
        return scorer.score_image(rgb, rows, stack, qsource)

    merged, rows = merge_drop_image(masks[0], records[0], s, source=source, quality=quality, rgb=rgb)
    return rows, merged, None


def merge_drop(src: str | os.PathLike, out: str | os.PathLike, s: MergeDropSettings = MergeDropSettings(),
               workers: int = 1) -> dict:
    """Run merge-and-drop with the settings `s` over one mask-source artifact and write a `merge_drop` artifact;
    returns a summary. The masks' `quality` is predicted by the scorer `s.model` names (see
    `pseudomask.loops.quality_scorer`)."""
    if quality_scorer(s.model) is None and "quality" in (s.criterion, s.rule):
        raise PseudomaskError(f"merge-drop criterion {s.criterion!r} with rule {s.rule!r} needs a quality model, "
                              f"not model {s.model!r}")
    with Artifact(src, stage=[m for m in mask_stages() if m != "merge_drop"]) as a:
        origin = {"source_stage": a.stage, "source_method": a.method}
        qsource = a.stage if a.stage in SOURCES else str(a.attrs.get("quality_source", a.stage))
        per_image = partial(_per_image, s, a.stage, qsource, str(a.attrs.get("image_root") or ""))
        params = {"threshold": s.threshold, "criterion": s.criterion, "quality_threshold": s.quality_threshold,
                  "model": s.model, "rule": s.rule, **origin}
        run_artifact_stage([a], out, Provenance("merge_drop", method(s.rule, s.criterion), params, quality=s.model,
                                                attrs=origin), per_image, rescore=False, workers=workers)
    with Artifact(out, stage="merge_drop") as b:
        return summary(b)


def judged(artifact: Artifact) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids and proxy box IoUs of the instances merge-drop judged (status kept or dropped)."""
    inst = artifact.instances
    if "proxy_box_iou" not in inst:
        return np.zeros(0, np.int64), np.zeros(0)
    sel = np.isin(inst["status"], ("kept", "dropped")) & np.isfinite(inst["proxy_box_iou"])
    return inst["id"][sel].astype(np.int64), inst["proxy_box_iou"][sel].astype(np.float64)


def summary(artifact: Artifact) -> dict:
    """Counts by status, drop rate and mean proxy box IoU of a merge_drop artifact."""
    _, proxy = judged(artifact)
    dropped = int(np.sum(artifact.instances.get("status", np.zeros(0, object)) == "dropped"))
    return {"images": len(artifact.image_ids), "instances": int(len(artifact.instances.get("id", []))),
            "judged": int(len(proxy)), "status": artifact.status_counts(),
            "drop_rate": dropped / len(proxy) if len(proxy) else None,
            "mean_proxy_box_iou": float(proxy.mean()) if len(proxy) else None,
            "threshold": artifact.params.get("threshold"), "source_stage": artifact.params.get("source_stage"),
            "criterion": artifact.params.get("criterion", "proxy_box_iou"),
            "quality_threshold": artifact.params.get("quality_threshold"),
            "rule": artifact.params.get("rule", "smaller_box")}


def drop_curve(proxy_iou: Iterable[float], thresholds: Sequence[float] = THRESHOLDS,
               gt_iou: Iterable[float] | None = None) -> list[dict]:
    """BoxCaseg Table 8 from the data: per threshold the drop rate and, given each mask's IoU with its
    true mask, the mIoU of the kept masks next to that of all masks. The merge does not depend on the
    threshold, so one merge_drop output answers every threshold."""
    p = np.asarray(list(proxy_iou), np.float64)
    g = None if gt_iou is None else np.asarray(list(gt_iou), np.float64)
    if g is not None and len(g) != len(p):
        raise ValueError(f"{len(p)} proxy IoUs but {len(g)} mask IoUs")
    out = []
    for t in thresholds:
        drop = is_dropped(p, float(t)) if len(p) else np.zeros(0, bool)
        row: dict[str, Any] = {"threshold": float(t), "instances": int(len(p)), "kept": int(np.sum(~drop)),
                               "dropped": int(np.sum(drop)), "drop_rate": float(drop.mean()) if len(p) else None}
        if g is not None:
            row["miou_kept"] = float(g[~drop].mean()) if np.any(~drop) else None
            row["miou_all"] = float(g.mean()) if len(g) else None
        out.append(row)
    return out


def run_stage(s: MergeDropSettings, *, masks: str, out: str, scorer: str | None = None, threads: int = 1) -> dict:
    """The `merge_drop` stage (see pseudomask.registry); `scorer` (scorer-train's model) overrides `s.model`."""
    return {"out": out, **merge_drop(masks, out, replace(s, model=scorer) if scorer else s, workers=threads)}
