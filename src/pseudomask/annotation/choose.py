"""Which images a person should annotate: image scores from predicted mask quality, and the choice.

An image's score is the mean predicted `quality` of its instances (mask-guided selection, Bellver et al.):
crowd regions (status ignored) do not count, and an instance without a mask (failed, or empty) counts as 0
(it has no mask, so its IoU is 0). Images with true masks (rows of source "gt", or named by the strong file)
are never chosen, nor are images without instances (nothing to annotate).

`select_for_annotation` ranks the other images by the strategy, ties broken by image id:

- `beta`: score closest to beta first (the paper's criterion; its best beta grows with the number of images
  chosen, 0.3 for few and 0.5-0.6 for more);
- `lowest`: lowest score first (review the worst first);
- `random`: a seeded permutation (the paper's baseline);

and takes them in that order until `count` images are chosen or the budget is spent. An image costs one mask per
instance at the cost model's `mask_s` (79 s): the boxes and classes are known already, so nothing else is
paid; the pre-annotations may save time, which this upper bound does not count. An image that does not fit in
what is left of the budget is skipped (recorded) and the next ones are still tried.
"""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import PseudomaskError, read_json
from ..files import write_json
from ..settings import Settings, setting
from ..store import Artifact
from .cost import AnnotationCostSettings, days
from .strong import strong_image_ids

STRATEGIES = ("beta", "lowest", "random")


class ChooseError(PseudomaskError, ValueError):
    """Masks without predicted quality, or a choice that cannot be made."""


@dataclass(frozen=True)
class ChooseImagesSettings(Settings):
    SECTION = "choose_images"
    strategy: str = setting("beta", "beta (score closest to beta, the paper), lowest (lowest score first) or "
                                    "random (seeded baseline)", choices=STRATEGIES)
    beta: float = setting(0.4, "with strategy beta: the image score to choose closest to (the paper's best: "
                               "0.3 for few images, 0.5-0.6 for more)", minimum=0, maximum=1)
    count: int = setting(10, "images to choose at most (0 = no limit: the budget decides)", minimum=0)
    budget_s: float = setting(0.0, "annotation seconds to spend at most, an image costing mask_s per instance "
                                   "(0 = no budget: `count` decides)", minimum=0)
    seed: int = setting(0, "seed of strategy random")

    def check(self) -> None:
        if not self.count and not self.budget_s:
            self.fail("count and budget_s are both 0: give a number of images, a budget, or both")


def image_scores(artifacts: Sequence[str | os.PathLike | Artifact]) -> list[dict[str, Any]]:
    """One entry per image of the mask artifacts (e.g. every shard of merge_drop or select): image_id,
    file_name, score (NaN when no instance counts), instances (to annotate: every one but crowd regions),
    strong (has rows of source "gt")."""
    out: list[dict[str, Any]] = []
    with ExitStack() as stack:
        arts = [a if isinstance(a, Artifact) else stack.enter_context(Artifact(a)) for a in artifacts]
        for a in arts:
            inst = a.instances
            if len(inst.get("id", [])) and ("quality" not in inst or a.attrs.get("quality_predictor") == "none"):
                raise ChooseError(f"{a.path}: no predicted quality; choose images from a mask stage's artifact "
                                  "written with a quality model (e.g. merge_drop or select)")
            for image_id in a.image_ids:
                im = a.image(image_id)
                rows = a.records(image_id)
                strong = any(r.get("source") == "gt" for r in rows)
                q = [_quality(r) for r in rows if r["status"] != "ignored" and r.get("source") != "gt"]
                out.append({"image_id": int(image_id), "file_name": str(im["file_name"]),
                            "score": float(np.mean(q)) if q else float("nan"),
                            "instances": sum(r["status"] != "ignored" for r in rows), "strong": strong,
                            "artifact": str(a.path)})
    ids = [e["image_id"] for e in out]
    if len(set(ids)) != len(ids):
        raise ChooseError(f"image {next(i for i in ids if ids.count(i) > 1)} is in two artifacts; give each shard once")
    return out


def _quality(row: Mapping[str, Any]) -> float:
    """A row's predicted quality; no prediction (a failed or empty mask) counts as 0."""
    q = row.get("quality")
    return 0.0 if q is None or math.isnan(float(q)) else float(q)


def ranking(entries: Sequence[Mapping[str, Any]], strategy: str, beta: float = 0.4, seed: int = 0
            ) -> list[Mapping[str, Any]]:
    """The entries in the order the strategy takes them (ties by image id; NaN scores last)."""
    by_id = sorted(entries, key=lambda e: e["image_id"])
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(by_id))
        return [by_id[i] for i in order]

    def key(e: Mapping[str, Any]) -> tuple:
        s = e["score"]
        if math.isnan(s):
            return (1, 0.0, e["image_id"])
        return (0, round(abs(s - beta) if strategy == "beta" else s, 9), e["image_id"])  # 1e-9 apart: a tie

    if strategy not in ("beta", "lowest"):
        raise ChooseError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return sorted(by_id, key=key)


def select_for_annotation(entries: Sequence[Mapping[str, Any]], *, count: int = 0, budget_s: float = 0.0,
                          strategy: str = "beta", beta: float = 0.4, seed: int = 0, exclude: Iterable[int] = (),
                          mask_s: float = AnnotationCostSettings().mask_s) -> dict[str, Any]:
    """Choose images (see the module doc) from `image_scores` entries; `exclude` names strong images.
    Returns the chosen entries (with rank and cost_s) in choice order, the skipped ones with a reason, and the
    seconds spent."""
    if not count and not budget_s:
        raise ChooseError("give a number of images, a budget in seconds, or both")
    excluded = {int(i) for i in exclude}
    skipped: list[dict[str, Any]] = []
    pool = []
    for e in entries:
        why = ("strong image (has true masks)" if e.get("strong") or e["image_id"] in excluded else
               "no instance to annotate" if not e["instances"] else "")
        if why:
            skipped.append({"image_id": e["image_id"], "reason": why})
        else:
            pool.append(e)
    chosen: list[dict[str, Any]] = []
    spent = 0.0
    for e in ranking(pool, strategy, beta, seed):
        if count and len(chosen) >= count:
            break
        cost = e["instances"] * mask_s
        if budget_s and spent + cost > budget_s + 1e-9:
            skipped.append({"image_id": e["image_id"], "reason": f"costs {cost:g} s, {budget_s - spent:g} s left"})
            continue
        spent += cost
        chosen.append({**{k: v for k, v in e.items() if k != "strong"}, "rank": len(chosen) + 1, "cost_s": cost})
    return {"chosen": chosen, "skipped": sorted(skipped, key=lambda s: s["image_id"]), "spent_s": spent,
            "candidates": len(pool)}


def choose_images(artifacts: Sequence[str | os.PathLike], s: ChooseImagesSettings = ChooseImagesSettings(),
                  strong: str | os.PathLike | None = None, cost: str | os.PathLike | None = None,
                  out: str | os.PathLike | None = None) -> dict[str, Any]:
    """The choice of the `choose_images` stage as a JSON-able dict (written to `out` when given): settings,
    the cost model's mask seconds (from the annotation_cost JSON `cost`, else the paper's), the chosen images
    with their scores and costs, the skipped ones with reasons, and the budget spent."""
    if not artifacts:
        raise ChooseError("choose-images: no mask artifacts given")
    model = AnnotationCostSettings.from_mapping(read_json(cost, ChooseError, "annotation cost")["model"]) if cost else AnnotationCostSettings()
    entries = image_scores(artifacts)
    res = select_for_annotation(entries, count=s.count, budget_s=s.budget_s, strategy=s.strategy, beta=s.beta,
                                seed=s.seed, exclude=strong_image_ids(strong), mask_s=model.mask_s)
    scores = [e["score"] for e in entries if not math.isnan(e["score"])]
    data = {"strategy": s.strategy, "beta": s.beta if s.strategy == "beta" else None,
            "seed": s.seed if s.strategy == "random" else None, "count": s.count,
            "budget_s": s.budget_s or None, "mask_s": model.mask_s,
            "spent_s": res["spent_s"], "spent_days": days(res["spent_s"], model),
            "images": len(entries), "candidates": res["candidates"], "chosen_images": len(res["chosen"]),
            "mean_score_all": float(np.mean(scores)) if scores else None,
            "mean_score_chosen": float(np.mean([c["score"] for c in res["chosen"]])) if res["chosen"] else None,
            "chosen": res["chosen"], "skipped": res["skipped"],
            "artifacts": [str(p) for p in artifacts], "strong_file": str(strong) if strong else None}
    if out is not None:
        write_json(data, out, indent=1)
    return data


def chosen_ids(path: str | os.PathLike) -> list[int]:
    """The chosen image ids of a choose_images JSON, in choice order."""
    data = read_json(path, ChooseError, "choice of images")
    try:
        return [int(c["image_id"]) for c in data["chosen"]]
    except (KeyError, TypeError, ValueError):
        raise ChooseError(f"{path}: not a choose-images JSON (no 'chosen' list of image ids)") from None


def run_stage(s: ChooseImagesSettings, *, masks: list[str], strong: str | None, cost: str | None, out: str,
              threads: int = 1) -> dict:
    """The `choose_images` stage (see pseudomask.registry)."""
    d = choose_images(masks or [], s, strong, cost, out)
    return {"out": out, **{k: d[k] for k in ("strategy", "chosen_images", "candidates", "spent_s", "spent_days",
                                            "mean_score_all", "mean_score_chosen")}}
