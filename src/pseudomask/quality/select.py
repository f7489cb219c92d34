"""The `select` stage: per instance, the candidate mask with the highest predicted quality.

Candidates of a box: the mask of every configured source artifact (GrabCut, MCG, agreement, BoxCaseg, ...;
an instance a source failed or ignored gives no candidate from it), and cheap ones built here: `union` (the
union of the sources' foregrounds clipped to the box), the inscribed `ellipse` and the filled `box`. Each
candidate is scored by the quality scorer with the cross-source features (its IoU with the other sources'
masks of the same box), which only this stage has; the winner's mask, its `quality` and which candidate it
was (`selected`) are written, with a reason naming the runner-up. An instance without candidates (ignored,
failed everywhere, or an unreadable image) passes through with the first source's status and reason.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..crops import MaskStack
from ..errors import PseudomaskError
from ..masks import box_pixels, ellipse_mask
from ..settings import Settings, setting
from ..loops import PASS_THROUGH, Provenance, quality_scorer, read_artifact_image, run_artifact_stage
from ..registry import mask_stages
from ..store import Artifact
from .features import EXTRAS, instance_features

METHOD = "highest-predicted-quality"


@dataclass(frozen=True)
class SelectSettings(Settings):
    SECTION = "select"
    extras: tuple[str, ...] = setting(EXTRAS, "cheap candidates added to the sources' masks: union (of the "
                                              "sources' masks, clipped to the box), ellipse, box")
    model: str = setting("default", "quality model: \"default\" (shipped), or a JSON file written by "
                                    "scripts/train_scorer.py")

    def check(self) -> None:
        bad = [e for e in self.extras if e not in EXTRAS]
        if bad:
            self.fail(f"extras: unknown candidate(s) {bad}; choose from {', '.join(EXTRAS)}")
        if self.model == "none":
            self.fail("model: select needs a quality model (\"default\" or a JSON file)")


def instance_candidates(bbox: Sequence[float], h: int, w: int, rows: Mapping[str, Mapping[str, Any]],
                        masks: Mapping[str, np.ndarray], extras: Sequence[str] = EXTRAS
                        ) -> list[tuple[str, dict, np.ndarray]]:
    """(name, row, mask) of one box's candidates: each source whose row is usable, then the extras."""
    out = [(name, dict(rows[name]), np.asarray(masks[name], np.uint8)) for name in rows
           if rows[name]["status"] not in PASS_THROUGH and np.any(masks[name] == 1)]
    base = {k: v for k, v in next(iter(rows.values())).items() if k in ("id", "category_id", "bbox")}
    if "union" in extras and len(out) >= 2:
        u = np.zeros((h, w), np.uint8)
        x0, y0, x1, y1 = box_pixels(bbox, h, w)
        for _, _, m in out:
            u[y0:y1, x0:x1] |= (m[y0:y1, x0:x1] == 1).astype(np.uint8)
        out.append(("union", {**base, "status": "kept", "reason": ""}, u))
    if "ellipse" in extras:
        out.append(("ellipse", {**base, "status": "kept", "reason": ""}, ellipse_mask(bbox, h, w)))
    if "box" in extras:
        b = np.zeros((h, w), np.uint8)
        x0, y0, x1, y1 = box_pixels(bbox, h, w)
        b[y0:y1, x0:x1] = 1
        out.append(("box", {**base, "status": "kept", "reason": ""}, b))
    return out


def candidate_features(rgb: np.ndarray, bbox: Sequence[float], cands: Sequence[tuple[str, dict, np.ndarray]],
                       cross: bool = True) -> np.ndarray:
    """(C, len(FEATURES)) features of a box's candidates; `cross`: with the IoUs against the other sources'
    masks (the sources and `union`, not the box-shaped extras)."""
    real = [k for k, (n, _, _) in enumerate(cands) if n not in ("ellipse", "box")]
    feats = []
    for k, (name, row, m) in enumerate(cands):
        others = [cands[j][2] for j in real if j != k] if cross else None
        feats.append(instance_features(rgb, bbox, m, row, name, others or None))
    return np.asarray(feats, np.float64)


def choose(names: Sequence[str], quality: np.ndarray, rank: np.ndarray | None = None) -> tuple[int, str]:
    """Index of the best candidate by `rank` (the scorer's choice model; default: the predicted quality;
    ties: the earlier candidate) and the reason recorded."""
    by_quality = rank is None
    rank = quality if by_quality else np.asarray(rank, np.float64)
    order = np.argsort(-rank, kind="stable")
    best = int(order[0])
    what = "highest predicted quality" if by_quality else "first by the choice model, predicted quality"
    why = f"{what} {quality[best]:.3f} of {len(names)} candidates"
    if len(order) > 1:
        nxt = int(order[1])
        why += f" (next: {names[nxt]} {quality[nxt]:.3f})"
    return best, why


def run_select(sources: Sequence[str | os.PathLike], out: str | os.PathLike, extras: Sequence[str] = EXTRAS,
               model: str = "default") -> dict:
    """Write a `select` artifact from mask artifacts of the same shard; returns a summary."""
    if not sources:
        raise PseudomaskError("select: no source artifacts given")
    scorer = quality_scorer(model)
    wins: dict[str, int] = {}
    allowed = [m for m in mask_stages() if m not in ("select", "merge_drop")]
    with ExitStack() as stack:
        arts = [stack.enter_context(Artifact(p, stage=allowed)) for p in sources]
        names = [a.stage for a in arts]
        if len(set(names)) != len(names):
            raise PseudomaskError(f"select: two sources of the same stage ({names}); give each stage once")

        def per_image(image: dict, records: list[list[dict]], masks: list[MaskStack]):
            h, w = int(image["height"]), int(image["width"])
            rgb = read_artifact_image(arts[0], image)
            rows, outm = [], MaskStack.zeros(len(records[0]), h, w)
            for k, first in enumerate(records[0]):
                row = {key: first[key] for key in ("id", "category_id", "bbox", "status", "reason")}
                row.update(selected="", quality=float("nan"), candidates=0.0)
                if first["status"] == "ignored" or rgb is None:
                    rows.append(row)
                    continue
                cands = instance_candidates(first["bbox"], h, w, {n: records[i][k] for i, n in enumerate(names)},
                                            {n: masks[i][k] for i, n in enumerate(names)}, extras)
                if not cands:
                    rows.append(row)
                    continue
                x = candidate_features(rgb, first["bbox"], cands)
                q = scorer.predict(x)
                best, why = choose([c[0] for c in cands], q, scorer.rank(x) if scorer.choice is not None else None)
                name, crow, m = cands[best]
                outm[k] = m
                prior = crow.get("reason") or ""
                row.update(status=crow["status"],
                           reason="; ".join(s for s in (f"{name}: {why}", prior) if s), selected=name,
                           quality=float(q[best]), candidates=float(len(cands)))
                wins[name] = wins.get(name, 0) + 1
                rows.append(row)
            return rows, outm, None

        params = {"sources": names, "extras": list(extras), "model": str(model)}
        run_artifact_stage(arts, out, Provenance("select", METHOD, params, quality=model), per_image, rescore=False)
    with Artifact(out, stage="select") as a:
        return {"out": str(out), "images": len(a.image_ids), "instances": int(len(a.instances.get("id", []))),
                "status": a.status_counts(), "selected": dict(sorted(wins.items())),
                "quality_predictor": a.attrs.get("quality_predictor"),
                "mean_quality": float(np.nanmean(a.instances["quality"])) if len(a.instances.get("id", [])) and
                np.isfinite(a.instances["quality"]).any() else None}


def run_stage(s: SelectSettings, *, masks: list[str], out: str, scorer: str | None = None, threads: int = 1) -> dict:
    """The `select` stage (see pseudomask.registry); `scorer` (scorer-train's model) overrides `s.model`."""
    return run_select(masks or [], out, extras=s.extras, model=scorer or s.model)
