"""Pseudo masks out of the pipeline as one COCO instances JSON that pycocotools and MMDetection read.

Every instance of every input shard becomes one annotation with the ground truth's annotation and image
ids, nothing is left out. Besides the COCO keys (`segmentation` as compressed RLE of the foreground,
`area`, `bbox`, `iscrowd`) each annotation carries:

- `status`, `reason`: the instance's status in the exported stage (kept, dropped, invalid, failed, ignored);
- `mask_ignore`: true unless status is kept; the box and class still train, the mask does not;
- `proxy_box_iou`: IoU(box of the mask, GT box), null when the mask was not judged (failed, ignored);
- `source`: the stage whose masks were refined (e.g. "grabcut");
- `ignore_segmentation`: RLE of the mask's ignore (255) pixels, only when it has any.

Instances without a mask (failed, or empty after merging) have an empty RLE and `mask_ignore` true; their
`area` is then the box area so that loaders that skip zero-area annotations keep the box. Crowd regions
(status ignored) are exported with `iscrowd` 1, every other annotation with `iscrowd` 0. Rows of the CAM stage
also carry `cam_score` (the ranking score of a tag-only mask) and `stuff` (a Grad-CAM stuff region).

With `panoptic` the same instances are also written as COCO panoptic segmentation (`pseudomask.panoptic`):
a JSON with `segments_info` (id, category_id, iscrowd, area, bbox, instance_ids) per image, categories with
`isthing` (0 for stuff categories and CAM stuff classes), and one RGB id PNG per image in the folder of the
same name without `.json`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from . import __version__
from .errors import PseudomaskError
from .files import write_json
from .loops import progress
from .crops import MaskStack
from .masks import crop_agreement
from .merge_drop import JUDGED
from .panoptic import default_panoptic_path, image_panoptic, is_stuff_row, png_name, write_panoptic
from .settings import Settings, setting
from .registry import mask_stages
from .store import IGNORE, Artifact



@dataclass(frozen=True)
class ExportSettings(Settings):
    """Every instance of every input artifact is written; `panoptic` adds the COCO panoptic files."""

    SECTION = "export"
    panoptic: bool = setting(False, "also write COCO panoptic segmentation (RGB id PNGs and a JSON with "
                                    "segments_info): kept things, stuff regions, ignore and mask-ignored pixels VOID")


def sparse_rle(mask: np.ndarray, span: Sequence[int] | None = None) -> dict:
    """COCO compressed RLE (counts as str) of a (H,W) bool mask whose True pixels lie inside `span`
    (x0, y0, x1, y1; None for empty). Works on the span only, so small objects in large images are cheap;
    the result is byte-identical to pycocotools' encode."""
    h, w = mask.shape
    if span is None:
        return crop_rle(np.zeros((0, 0), bool), 0, 0, h, w)
    x0, y0, x1, y1 = (int(v) for v in span)
    return crop_rle(mask[y0:y1, x0:x1], y0, x0, h, w)


def crop_rle(crop: np.ndarray, y: int, x: int, height: int, width: int) -> dict:
    """COCO compressed RLE of a height x width mask whose True pixels are those of the bool `crop` placed at
    (y, x), made from the crop alone; byte-identical to pycocotools' encode of the whole mask."""
    h, w, ch = height, width, crop.shape[0]
    xi, yi = np.divmod(np.flatnonzero(crop.T), ch) if crop.size else (np.zeros(0, np.int64),) * 2
    if not len(xi):
        return {"size": [h, w], "counts": mask_utils.frPyObjects({"size": [h, w], "counts": [h * w]}, h, w)[
            "counts"].decode("ascii")}
    g = (xi + x) * h + (yi + y)  # column-major, as COCO counts
    brk = np.flatnonzero(np.diff(g) != 1) + 1
    starts = g[np.r_[0, brk]]
    ends = g[np.r_[brk - 1, len(g) - 1]] + 1
    counts = np.empty(2 * len(starts) + 1, np.int64)
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[1::2] = ends - starts
    counts[-1] = h * w - ends[-1]
    if counts[-1] == 0:
        counts = counts[:-1]
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _number(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else round(f, 6)


def rows_and_masks(artifact: Artifact, image_id: int) -> tuple[list[dict], MaskStack]:
    """One image's instance rows and masks as crops (empty for an artifact without masks)."""
    im = artifact.image(image_id)
    h, w = int(im["height"]), int(im["width"])
    rows = artifact.records(image_id)
    masks = artifact.mask_stack(image_id) if artifact.has_masks() else MaskStack.zeros(0, h, w)
    if len(masks) != len(rows):
        masks = MaskStack.zeros(len(rows), h, w)
    return rows, masks


def annotations_of(artifact: Artifact, image_id: int, source: str,
                   loaded: tuple[list[dict], MaskStack] | None = None) -> list[dict]:
    """The COCO annotations of one image of an artifact (`loaded`: its rows_and_masks, if read already), each
    made from its mask's crop."""
    rows, masks = loaded or rows_and_masks(artifact, image_id)
    _, h, w = masks.shape
    fg, areas, ign = [], [], {}
    for k, c in enumerate(masks.crops):
        fg.append(crop_rle(c.data == 1, c.y, c.x, h, w))
        areas.append(int(np.count_nonzero(c.data == 1)))
        if c.data.size and c.data.max() == IGNORE:
            ign[k] = crop_rle(c.data == IGNORE, c.y, c.x, h, w)
    out = []
    for k, r in enumerate(rows):
        status = str(r["status"])
        bbox = [float(v) for v in r["bbox"]]
        proxy = _number(r["proxy_box_iou"]) if "proxy_box_iou" in r else (
            round(crop_agreement(masks.crop(k), bbox), 6) if status in JUDGED else None)
        area = float(areas[k])
        a = {
            "id": int(r["id"]), "image_id": int(image_id), "category_id": int(r["category_id"]), "bbox": bbox,
            "area": area if area > 0 else bbox[2] * bbox[3], "iscrowd": int(status == "ignored"),
            "segmentation": fg[k], "source": str(r.get("source") or source), "status": status,
            "reason": str(r.get("reason") or ""), "proxy_box_iou": proxy, "mask_ignore": status != "kept",
        }
        if k in ign:
            a["ignore_segmentation"] = ign[k]
        if _number(r.get("cam_score")) is not None:
            a["cam_score"] = _number(r["cam_score"])
        if _number(r.get("stuff")) is not None:
            a["stuff"] = bool(r["stuff"])
        out.append(a)
    return out


def export_coco(inputs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                panoptic: str | os.PathLike | None = None) -> dict:
    """COCO dataset of all instances of the given shards (merge_drop or any mask stage); written
    atomically to `out` when given. Shards must share categories and must not repeat image or annotation ids.
    `panoptic`: also write the COCO panoptic JSON there (and its PNG folder, `panoptic.panoptic_folder`)."""
    if not inputs:
        raise PseudomaskError("export: no input artifacts given")
    images: list[dict] = []
    annotations: list[dict] = []
    categories: list[dict] | None = None
    sources = []
    seen_images: dict[int, str] = {}
    seen_anns: dict[int, str] = {}
    pan_anns: list[dict] = []
    id_maps: dict[int, np.ndarray] = {}
    stuff_cats: set[int] = set()
    pngs: dict[str, int] = {}
    for path in inputs:
        with Artifact(path, stage=mask_stages()) as a:
            cats = [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in a.categories]
            if categories is None:
                categories, first = cats, path
            elif cats != categories:
                raise PseudomaskError(f"{path}: its categories differ from those of {first}; "
                                      "shards of one export must come from one dataset")
            source = str(a.attrs.get("source_stage") or a.stage)
            sources.append({"path": str(path), "stage": a.stage, "method": a.method, "parameters": a.params})
            for image_id in progress(a.image_ids, desc=f"export {Path(path).name}", total=len(a.image_ids)):
                if image_id in seen_images:
                    raise PseudomaskError(f"{path}: image {image_id} is also in {seen_images[image_id]}")
                seen_images[image_id] = str(path)
                im = a.image(image_id)
                images.append({"id": int(image_id), "file_name": str(im["file_name"]), "width": int(im["width"]),
                               "height": int(im["height"])})
                loaded = rows_and_masks(a, image_id)
                if panoptic is not None:
                    given = {c["id"] for c in cats if not c["isthing"]}
                    stuff_cats |= given | {int(r["category_id"]) for r in loaded[0] if is_stuff_row(r, given)}
                    ids, segments = image_panoptic(*loaded, stuff_categories=given)
                    name = png_name(str(im["file_name"]))
                    if name in pngs:
                        raise PseudomaskError(f"{path}: images {pngs[name]} and {image_id} would share the panoptic "
                                              f"PNG {name}; their file names differ only in the suffix")
                    pngs[name] = int(image_id)
                    id_maps[int(image_id)] = ids
                    pan_anns.append({"image_id": int(image_id), "file_name": name, "segments_info": segments})
                for ann in annotations_of(a, image_id, source, loaded):
                    if ann["id"] in seen_anns:
                        raise PseudomaskError(f"{path}: image {image_id}: annotation id {ann['id']} is also in "
                                              f"{seen_anns[ann['id']]}")
                    seen_anns[ann["id"]] = str(path)
                    annotations.append(ann)
    data = {
        "info": {"description": "pseudomask pseudo masks", "version": __version__,
                 "date_created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sources": sources},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories or [],
    }
    if panoptic is not None:
        pan = {"info": data["info"], "licenses": [], "images": images, "annotations": pan_anns,
               "categories": [{**c, "isthing": int(c["id"] not in stuff_cats)} for c in categories or []]}
        write_panoptic(pan, id_maps, panoptic)
    if out is not None:
        write_json(data, out)
    return data


def export_summary(data: dict) -> dict:
    """Counts of an exported dataset: images, annotations, by status, mask-ignored."""
    anns = data["annotations"]
    status: dict[str, int] = {}
    for a in anns:
        status[a["status"]] = status.get(a["status"], 0) + 1
    return {"images": len(data["images"]), "annotations": len(anns), "status": status,
            "mask_ignore": sum(bool(a["mask_ignore"]) for a in anns)}


def run_stage(s: ExportSettings, *, artifacts: list[str], out: str, panoptic_json: str | None = None,
              threads: int = 1) -> dict:
    """The `export` stage (see pseudomask.registry); with `panoptic` also the panoptic JSON at `panoptic_json`
    (default `panoptic.default_panoptic_path(out)`) and its PNG folder."""
    if panoptic_json and not s.panoptic:
        raise PseudomaskError(f"export: {panoptic_json} is written only with the setting panoptic "
                              "(--panoptic, or export.panoptic: true)")
    pan = (panoptic_json or default_panoptic_path(out)) if s.panoptic else None
    summary = {"out": out, **export_summary(export_coco(artifacts, out, pan))}
    if pan is not None:
        summary["panoptic_json"] = str(pan)
    return summary
