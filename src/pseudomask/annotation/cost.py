"""Annotation cost accounting: the mask-guided selection paper's Table 1 model, from the dataset's own counts.

Per image, with C the dataset's categories, P the classes present in the image and K its instances:

    tags          C x 1 s                       every class verified (present or absent)
    tags+counts   C x 1 s + P x 1.48 s          ... and the instances of each present class counted
    boxes         (C - P) x 1 s + K x 7 s       each absent class verified, one extreme-click box per instance
    masks         (C - P) x 1 s + K x 79 s      each absent class verified, one mask per instance

Drawing a box or a mask names its class, so the box and mask levels verify only the absent classes: this is
what gives the paper's 18.5 = 20 - 1.5 classes per VOC image, and with VOC's averages (C 20, P 1.5, K 2.8) the
four levels are Table 1's 20, 22.22, 38.1 and 239.7 s. The seconds are `annotation_cost`'s settings.

The run's labels: the weak images at the supervision's level (boxes; tags for a tag-only dataset) and the
strong images at the mask level, next to full masks for the whole dataset. A tag-only dataset has no instance
counts: its K is taken as P (one instance per present class), a lower bound, and `instances_known` is false.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..dataset import Dataset, load_dataset
from ..files import write_json
from ..settings import Settings, setting
from .strong import gt_images, strong_image_ids

LEVELS = ("tags", "tags_counts", "boxes", "masks")
HOUR_S = 3600.0


@dataclass(frozen=True)
class AnnotationCostSettings(Settings):
    """The cost model (seconds of one annotator), defaults from the paper's Table 1."""

    SECTION = "annotation_cost"
    class_s: float = setting(1.0, "seconds to verify one class in one image (tags: every category of the dataset; "
                                  "boxes and masks: the absent ones)", minimum=0)
    count_s: float = setting(1.48, "seconds to count the instances of one present class", minimum=0)
    box_s: float = setting(7.0, "seconds per box (extreme clicking)", minimum=0)
    mask_s: float = setting(79.0, "seconds per instance mask (also what choose-images prices an image at)",
                            minimum=0)
    day_hours: float = setting(8.0, "hours of one annotator-day", exclusive_minimum=0)


def level_seconds(categories: int, present: int, instances: int, model: AnnotationCostSettings = AnnotationCostSettings()
                  ) -> dict[str, float]:
    """Seconds of each level for one image (see the module doc)."""
    absent = max(int(categories) - int(present), 0)
    return {"tags": categories * model.class_s,
            "tags_counts": categories * model.class_s + present * model.count_s,
            "boxes": absent * model.class_s + instances * model.box_s,
            "masks": absent * model.class_s + instances * model.mask_s}


def image_counts(ds: Dataset) -> list[dict[str, Any]]:
    """Per image: id, present classes, instances (every box, crowd regions included) and whether the
    instance count is known (False for a tag-only dataset, whose count is its present classes)."""
    by_image = ds.by_image()
    out = []
    for im in ds.images:
        rows = by_image.get(im["id"], [])
        present = {int(r["category_id"]) for r in rows} | {int(t) for t in im.get("tags", [])}
        known = ds.has_boxes
        out.append({"image_id": int(im["id"]), "present": len(present),
                    "instances": len(rows) if known else len(present), "instances_known": known})
    return out


def days(seconds: float, model: AnnotationCostSettings = AnnotationCostSettings()) -> float:
    """Annotator-days of a number of seconds."""
    return seconds / (model.day_hours * HOUR_S)


def annotation_cost(datasets: Dataset | Sequence[Dataset], strong: Iterable[int] = (),
                    model: AnnotationCostSettings = AnnotationCostSettings()) -> dict[str, Any]:
    """The cost summary of a dataset (or its shards) whose `strong` image ids have true masks; images with
    rows of source "gt" count as strong too."""
    parts = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    strong_ids = set(int(i) for i in strong)
    categories = max((len(p.categories) for p in parts), default=0)
    counts = []
    for p in parts:
        strong_ids |= gt_images(p.instances)
        counts += image_counts(p)
    supervision = "boxes" if any(p.has_boxes for p in parts) else "tags"
    total = {k: 0.0 for k in LEVELS}
    strong_masks = weak = 0.0
    n_strong = 0
    for c in counts:
        s = level_seconds(categories, c["present"], c["instances"], model)
        for k in LEVELS:
            total[k] += s[k]
        if c["image_id"] in strong_ids:
            strong_masks += s["masks"]
            n_strong += 1
        else:
            weak += s[supervision]
    seconds = {"tags": total["tags"], "tags_counts": total["tags_counts"], "boxes": total["boxes"],
               "masks_strong": strong_masks, "run": weak + strong_masks, "full_masks": total["masks"]}
    n = len(counts)
    return {
        "model": model.to_dict(),
        "supervision": supervision,
        "images": n, "strong_images": n_strong, "categories": categories,
        "instances": sum(c["instances"] for c in counts),
        "present_classes": sum(c["present"] for c in counts),
        "instances_known": all(c["instances_known"] for c in counts),
        "per_image_s": {k: (total[k] / n if n else 0.0) for k in LEVELS},
        "seconds": seconds,
        "days": {k: days(v, model) for k, v in seconds.items()},
        "run_labels": f"{supervision} for {n - n_strong} weak images + masks for {n_strong} strong images",
        "run_vs_full_masks": seconds["run"] / seconds["full_masks"] if seconds["full_masks"] else None,
    }


def run_cost(shards: Sequence[str | os.PathLike], images: str | os.PathLike | None = None,
             strong: str | os.PathLike | None = None, settings: AnnotationCostSettings | Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """The cost summary of ingested shards (or a COCO JSON with its image folder) and a strong file: what the
    report shows."""
    model = settings if isinstance(settings, AnnotationCostSettings) else AnnotationCostSettings.from_mapping(settings or {})
    return annotation_cost([load_dataset(p, images) for p in shards], strong_image_ids(strong), model)


def run_stage(s: AnnotationCostSettings, *, shards: list[str], images: str | None, strong: str | None, out: str,
              threads: int = 1) -> dict:
    """The `annotation_cost` stage (see pseudomask.registry)."""
    res = run_cost(shards or [], images, strong, s)
    write_json(res, out, indent=1)
    return {"out": out, "seconds": res["seconds"], "days": res["days"]}
