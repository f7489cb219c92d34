"""The annotation job: the chosen images as a COCO file whose annotations are the current pseudo masks, for a
person to correct in an annotation tool (CVAT's "COCO 1.0" import, Label Studio's COCO import, ...).

Each instance of a chosen image (crowd regions aside) is one annotation with the dataset's annotation, image
and category ids, its given `bbox`, and its mask as a polygon (`segmentation`: a list of polygons). Polygons
are what every importer loads as editable shapes: Datumaro's COCO importer (CVAT's "COCO 1.0") reads polygons
and RLE, but Label Studio's converter reads polygons only, and only an annotation's first one, so by default
a mask of several parts (or with holes) is one polygon joining them; `single_polygon: false` writes one per
part. The polygons run along the mask pixels' edges, so that pycocotools gives the mask back (`polygons`).
Both importers keep the box (Datumaro as a Bbox with the annotation's id, Label Studio as a rectangle beside
the polygon). The polygon is what the annotator edits, so it must not state a box other than the given one:
an instance whose mask is not kept (dropped, invalid, failed) or whose mask's box disagrees with the given box
(proxy box IoU below merge_drop's threshold: a mask the merge ate to a remnant, say) gets its box outline as
its polygon (`polygons.shows_box`); a box without area gets an empty `segmentation`. Besides the COCO keys
an annotation carries `quality` (predicted IoU) and `status` of the pseudo mask, and `pre_annotation`: `box`
where its polygon is its box outline (or it has none), else `mask`; importers ignore them. Take-back reads
`pre_annotation` from the job to tell a box outline the annotator left as it was from a mask. The image list
(one path per line) tells the tool which image files to load.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__
from ..errors import PseudomaskError
from ..files import write_json, write_text_atomic
from .polygons import box_outline, drop_threshold, outline, parts, shows_box
from ..settings import Settings, setting
from ..store import Artifact
from .choose import chosen_ids


class JobError(PseudomaskError, ValueError):
    """A chosen image that no artifact holds."""


@dataclass(frozen=True)
class AnnotationJobSettings(Settings):
    SECTION = "annotation_job"
    single_polygon: bool = setting(True, "one polygon per instance, a mask's parts joined (Label Studio's COCO "
                                         "import reads only the first polygon); false: one polygon per part")
    min_points: int = setting(3, "polygons with fewer points are left out of an instance's segmentation",
                              minimum=3)


def mask_segmentation(mask: np.ndarray, single_polygon: bool = True, min_points: int = 3) -> list[list[float]]:
    """COCO polygon segmentation of a mask (empty when the mask is): one joined polygon or one per part."""
    if not np.any(mask == 1):
        return []
    if single_polygon:
        poly = outline(mask)
        polys = [poly] if poly is not None else []
    else:
        polys = parts(mask)
    return [[round(float(v), 3) for v in p.reshape(-1)] for p in polys if len(p) >= min_points]


def box_segmentation(bbox: Sequence[float]) -> list[list[float]]:
    """COCO polygon segmentation of a box's outline (empty for a box without area)."""
    if float(bbox[2]) <= 0 or float(bbox[3]) <= 0:
        return []
    return [[round(float(v), 3) for v in box_outline(bbox).reshape(-1)]]


def box_pre_annotated(annotation: Mapping[str, Any]) -> bool:
    """Whether a job annotation's pre-annotation is its box outline (or nothing) rather than its pseudo mask:
    its `pre_annotation` is `box`."""
    return annotation.get("pre_annotation") == "box"


def instance_annotation(row: dict, mask: np.ndarray, image_id: int, threshold: float, single_polygon: bool = True,
                        min_points: int = 3) -> dict:
    """One COCO annotation with the given box and polygon segmentation: the box outline where the mask's would
    state another box (`polygons.shows_box` with the drop `threshold`), else the mask's (empty when it is);
    `pre_annotation` says which (`box` for the box outline or none, `mask` for the mask's polygons)."""
    bbox = [float(v) for v in row["bbox"]]
    boxed = shows_box(row, mask, threshold)
    polys = box_segmentation(bbox) if boxed else mask_segmentation(mask, single_polygon, min_points)
    boxed = boxed or not polys
    area = bbox[2] * bbox[3] if boxed else float(np.count_nonzero(mask == 1))
    q = row.get("quality")
    return {"id": int(row["id"]), "image_id": int(image_id), "category_id": int(row["category_id"]), "bbox": bbox,
            "area": area, "iscrowd": 0, "segmentation": polys,
            "quality": None if q is None or np.isnan(float(q)) else round(float(q), 6),
            "status": str(row["status"]), "pre_annotation": "box" if boxed else "mask"}


def annotation_job(image_ids: Sequence[int], artifacts: Sequence[str | os.PathLike], single_polygon: bool = True,
                   min_points: int = 3, description: str = "") -> tuple[dict, list[str]]:
    """(COCO job, image paths) of the given images from mask artifacts (every shard of merge_drop or select);
    JobError names a chosen image that none holds."""
    want = [int(i) for i in image_ids]
    images, annotations, paths = [], [], []
    categories = None
    with ExitStack() as stack:
        arts = [stack.enter_context(Artifact(p)) for p in artifacts]
        where = {i: a for a in arts for i in a.image_ids}
        missing = [i for i in want if i not in where]
        if missing:
            raise JobError(f"chosen image(s) {missing[:10]} are in none of the artifacts "
                           f"{[str(a.path) for a in arts][:4]}; were they chosen from the same dataset?")
        for image_id in want:
            a = where[image_id]
            if categories is None:
                categories = [{"id": c["id"], "name": c["name"], "supercategory": ""} for c in a.categories]
            im = a.image(image_id)
            images.append({"id": image_id, "file_name": str(im["file_name"]), "width": int(im["width"]),
                           "height": int(im["height"])})
            root = a.attrs.get("image_root") or ""
            paths.append(str(Path(root) / str(im["file_name"])) if root else str(im["file_name"]))
            rows, masks = a.records(image_id), a.masks(image_id)
            threshold = drop_threshold(a.stage, a.params)
            for k, r in enumerate(rows):
                if r["status"] == "ignored":
                    continue
                annotations.append(instance_annotation(r, masks[k], image_id, threshold, single_polygon,
                                                       min_points))
    job = {"info": {"description": description or "pseudomask annotation job: correct the pseudo masks",
                    "version": __version__, "date_created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
           "licenses": [], "images": images, "annotations": annotations, "categories": categories or []}
    return job, paths


def run_stage(s: AnnotationJobSettings, *, choice: str, masks: list[str], out: str, image_list: str | None,
              threads: int = 1) -> dict:
    """The `annotation_job` stage (see pseudomask.registry)."""
    job, paths = annotation_job(chosen_ids(choice), masks or [], s.single_polygon, s.min_points,
                                f"pseudomask annotation job of {Path(choice).name}: correct the pseudo masks")
    write_json(job, out)
    if image_list:
        write_text_atomic("".join(p + "\n" for p in paths), image_list)
    anns = job["annotations"]
    return {"out": out, "image_list": image_list, "images": len(job["images"]), "annotations": len(anns),
            "box_only": sum(box_pre_annotated(a) for a in anns)}
