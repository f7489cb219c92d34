"""Take-back: an annotator's corrected COCO file (with masks) becomes the dataset's strong file.

The strong file is a COCO JSON in the dataset's ids: `images` (the dataset's records of the corrected
images), the dataset's `categories`, and `annotations` with `segmentation` whose ids are the dataset's
instance ids (what `dataset.strong` reads: the rows of its images become source "gt"). Tools renumber on
export (CVAT numbers images and annotations from 1, categories in label order), so nothing is matched by id
alone:

- an image by its id when the dataset has that id with the same file name, else by file name (full path,
  then base name when that is unique); its size must be the dataset's. An image the dataset does not know
  is skipped with the reason (`unknown_images`): it cannot become strong for this dataset. With
  `unknown_images: error` it is an error instead.
- a category by name (by id when the file has no categories);
- an annotation by its id when that is an instance of the same image whose box it overlaps by `match_iou`
  or better than any other instance of its class (else `id_box_mismatch`: a renumbered id), otherwise by
  box: the unmatched instance of the same category with the highest box IoU, at least `match_iou`
  (`matched_by_box`). An id that is no instance of the image is recorded (`unknown_instance_ids`) before
  the box is tried.

Conflicts are recorded in the report, never dropped silently:

- `box_changed`: the annotator's box has IoU < `box_iou` with the dataset's box; the annotator's box and
  mask go into the strong file, the old and new boxes into the report;
- `category_changed`: the annotator's class differs; the annotator's goes into the strong file;
- `deleted`: an instance of a corrected image (of the job, when the job is given) that no annotation
  matches; it is not in the strong file, so its image's other instances become true masks while it stays
  a box-only instance;
- `added`: an annotation that matches no instance; it gets a new id above the dataset's largest and is in
  the strong file, which ingest reads as a new instance of its image (source gt, reason "added by
  dataset.strong"); the dataset's own annotations do not have it, so a run without the strong file does not
  know it (the report gives its box and class);
- `no_mask`: an annotation without a usable mask (no segmentation, or an empty one) stays out of the strong
  file; its instance stays box-only;
- `box_not_edited` (with the job): an annotation matched to an instance whose job pre-annotation was its box
  outline (the job annotation's `pre_annotation` is `box`: its mask was not kept, or its box disagreed with
  the given one) and that comes back as that outline still (`polygons.is_box_outline` with the job's box:
  its points on the box's corners, or its mask IoU >= 0.99 with the filled box) stays out of the strong
  file: the annotator left the box as it was, which says nothing of the mask, so its instance stays
  box-only. An outline edited into another shape, a box of another extent (IoU < 0.99) included, is taken
  as a mask. Without the job a box-shaped mask is taken (it may be a real object's);
- `skipped_annotations`: unknown category, or a mask whose size is not the image's;
- `not_returned`: job images without any annotation in the corrections (not strong), and `not_in_job`:
  corrected images that were not in the job (taken all the same).

With `keep_strong` (the default) the strong images the dataset already has (its `dataset.strong`, as the
shards carry them) and that are not corrected now are kept in the new file (`kept_strong_images`), so that
pointing `dataset.strong` at each round's file adds the round's corrections to the earlier ones.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .. import __version__
from ..dataset import Dataset, load_dataset, strong_instances_coco
from ..errors import PseudomaskError, read_json
from ..files import write_json
from ..masks import box_iou, mask_box, rle_encode, segmentation_mask
from ..settings import Settings, setting
from .job import box_pre_annotated
from .polygons import is_box_outline


class TakeBackError(PseudomaskError, ValueError):
    """A corrections file that is not a COCO dataset, or an image unknown to the dataset (when an error)."""


@dataclass(frozen=True)
class TakeBackSettings(Settings):
    SECTION = "take_back"
    box_iou: float = setting(0.9, "a corrected box whose IoU with the dataset's box is below this is recorded as "
                                  "changed", minimum=0, maximum=1)
    match_iou: float = setting(0.5, "an annotation whose id is not an instance of its image is matched to the "
                                    "instance of its class with the highest box IoU, at least this",
                               minimum=0, maximum=1)
    unknown_images: str = setting("skip", "images of the corrections the dataset does not know: skip them "
                                          "(recorded in the report) or error", choices=("skip", "error"))
    keep_strong: bool = setting(True, "carry the dataset's current strong images (its dataset.strong) into the "
                                      "file, so that each round of corrections adds to the last")


def _base(name: str) -> str:
    return PurePosixPath(str(name).replace("\\", "/")).name


class _Index:
    """The dataset's images, instances and categories, looked up by id and by name."""

    def __init__(self, parts: Sequence[Dataset]):
        self.images = {int(im["id"]): im for p in parts for im in p.images}
        self.instances = {int(r["id"]): r for p in parts for r in p.instances}
        self.by_image: dict[int, list[dict]] = {}
        for r in self.instances.values():
            self.by_image.setdefault(int(r["image_id"]), []).append(r)
        self.categories = parts[0].categories if parts else []
        self.cat_by_name = {c["name"]: int(c["id"]) for c in self.categories}
        self.by_file = {str(im["file_name"]): i for i, im in self.images.items()}
        bases: dict[str, list[int]] = {}
        for i, im in self.images.items():
            bases.setdefault(_base(im["file_name"]), []).append(i)
        self.by_base = {b: ids[0] for b, ids in bases.items() if len(ids) == 1}
        self.max_id = max(self.instances, default=0)

    def image_of(self, im: Mapping[str, Any]) -> tuple[int | None, str]:
        """(dataset image id, how) of a corrected image record, or (None, why not)."""
        name = str(im.get("file_name", ""))
        i = im.get("id")
        if i is not None and int(i) in self.images and _base(self.images[int(i)]["file_name"]) == _base(name):
            return int(i), "id"
        if name in self.by_file:
            return self.by_file[name], "file_name"
        if _base(name) in self.by_base:
            return self.by_base[_base(name)], "base name"
        return None, f"no dataset image has id {i} with file {name!r}, nor that file name"


def _categories(data: Mapping[str, Any], index: _Index) -> dict[int, int | None]:
    """Corrected category id -> dataset category id (None: unknown)."""
    cats = data.get("categories") or []
    if not cats:
        return {c["id"]: c["id"] for c in index.categories}
    return {int(c["id"]): index.cat_by_name.get(str(c.get("name"))) for c in cats}


REPORT_LISTS = ("unknown_images", "unknown_instance_ids", "box_changed", "category_changed", "deleted", "added",
                "no_mask", "box_not_edited", "skipped_annotations", "not_returned", "not_in_job", "matched_by_box",
                "id_box_mismatch")
NOTES = {"added": "added instances are in the strong file with new ids; ingest adds them to their images as true "
                  "masks, but the dataset's own annotations do not have them",
         "deleted": "deleted instances stay box-only instances of the dataset",
         "box_changed": "the strong file has the annotator's box and mask",
         "box_not_edited": "box outlines the job gave and the annotator returned as they were are not masks: their "
                           "instances stay box-only"}

# an annotation with its mask (None: none given) and dataset category
_Read = tuple[dict, np.ndarray | None, int]
# an annotation, the dataset instance it matched (None: added), its mask and dataset category
_Matched = tuple[dict, dict | None, np.ndarray | None, int]


def take_back(corrections: str | os.PathLike, datasets: Sequence[Dataset], job: str | os.PathLike | None = None,
              s: TakeBackSettings = TakeBackSettings()) -> tuple[dict, dict]:
    """(strong COCO file, report) of corrected annotations against the dataset (see the module doc)."""
    data = _read_corrections(corrections)
    index = _Index(datasets)
    cat_map = _categories(data, index)
    sent, box_pre = _read_job(job) if job else (None, {})
    rep: dict[str, list] = {k: [] for k in REPORT_LISTS}
    image_map = _map_images(data, index, s, rep, corrections)
    anns_of = _annotations_by_image(data, image_map, rep, corrections)
    new_ids = itertools.count(index.max_id + 1)
    strong_images, strong_anns = [], []
    for did in sorted(set(image_map.values())):
        if sent is not None and did not in sent:
            rep["not_in_job"].append(did)
        anns = _take_image(did, anns_of.get(did, []), index, cat_map, sent, box_pre, s, rep, new_ids)
        if anns:
            strong_images.append({k: index.images[did][k] for k in ("id", "file_name", "width", "height")})
            strong_anns += anns
    taken = len(strong_images)
    if sent is not None:
        rep["not_returned"] = sorted(i for i in sent if i not in anns_of)
    if s.keep_strong:
        kept = strong_instances_coco(datasets, exclude_images={im["id"] for im in strong_images})
        strong_images += kept["images"]
        strong_anns += kept["annotations"]
        rep["kept_strong_images"] = [im["id"] for im in kept["images"]]
    strong = {"info": {"description": "pseudomask strong images (annotator's masks in the dataset's ids)",
                       "version": __version__, "date_created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "corrections": str(corrections)},
              "licenses": [], "images": strong_images, "annotations": sorted(strong_anns, key=lambda a: a["id"]),
              "categories": [{"id": c["id"], "name": c["name"]} for c in index.categories]}
    report = {"corrections": str(corrections), "job": str(job) if job else None,
              "strong_images": taken, "strong_annotations": len(strong_anns),
              "counts": {k: len(v) for k, v in rep.items()}, **rep, "notes": dict(NOTES)}
    return strong, report


def _read_corrections(corrections: str | os.PathLike) -> dict:
    data = read_json(corrections, TakeBackError, "corrected annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations", []), list):
        raise TakeBackError(f"{corrections}: not a COCO dataset (no 'images' list)")
    return data


def _read_job(job: str | os.PathLike) -> tuple[dict[int, set[int]], dict[int, list[float]]]:
    """(the images of an annotation job and the instance ids sent with each, the job's box of each instance
    whose pre-annotation was its box outline: `job.box_pre_annotated`)."""
    jd = read_json(job, TakeBackError, "annotation job")
    sent: dict[int, set[int]] = {int(im["id"]): set() for im in jd.get("images", [])}
    box_pre: dict[int, list[float]] = {}
    for a in jd.get("annotations", []):
        sent.setdefault(int(a["image_id"]), set()).add(int(a["id"]))
        if box_pre_annotated(a):
            box_pre[int(a["id"])] = [float(v) for v in a["bbox"]]
    return sent, box_pre


def _map_images(data: Mapping[str, Any], index: _Index, s: TakeBackSettings, rep: dict[str, list],
                corrections: str | os.PathLike) -> dict[int, int]:
    """Corrected image id -> dataset image id; the images the dataset does not know (or not at that size)
    go to `unknown_images`, or are an error with `unknown_images: error`."""
    image_map: dict[int, int] = {}
    for im in data["images"]:
        if "id" not in im:
            raise TakeBackError(f"{corrections}: an image record without 'id': {im}")
        did, how = index.image_of(im)
        if did is None:
            if s.unknown_images == "error":
                raise TakeBackError(f"{corrections}: image {im['id']} ({im.get('file_name')}): {how}")
            rep["unknown_images"].append({"image_id": im["id"], "file_name": im.get("file_name"), "reason": how})
            continue
        ds_im = index.images[did]
        size = (int(im.get("width") or ds_im["width"]), int(im.get("height") or ds_im["height"]))
        if size != (int(ds_im["width"]), int(ds_im["height"])):
            rep["unknown_images"].append({"image_id": im["id"], "file_name": im.get("file_name"),
                                          "reason": f"{size[0]}x{size[1]}, the dataset's image {did} is "
                                                    f"{ds_im['width']}x{ds_im['height']}"})
            continue
        if did in image_map.values():
            raise TakeBackError(f"{corrections}: images {im['id']} and another one are both dataset image {did}")
        image_map[int(im["id"])] = did
    return image_map


def _annotations_by_image(data: Mapping[str, Any], image_map: Mapping[int, int], rep: Mapping[str, list],
                          corrections: str | os.PathLike) -> dict[int, list[dict]]:
    """The corrected annotations per dataset image id (those of skipped images left out)."""
    anns_of: dict[int, list[dict]] = {}
    for a in data.get("annotations", []):
        if "image_id" not in a or "category_id" not in a:
            raise TakeBackError(f"{corrections}: annotation {a.get('id')} lacks 'image_id' or 'category_id'")
        cid = int(a["image_id"])
        if cid in image_map:
            anns_of.setdefault(image_map[cid], []).append(a)
        elif not any(u["image_id"] == cid for u in rep["unknown_images"]):
            raise TakeBackError(f"{corrections}: annotation {a.get('id')} refers to image {cid}, not in its images")
    return anns_of


def _take_image(did: int, anns: Sequence[dict], index: _Index, cat_map: Mapping[int, int | None],
                sent: Mapping[int, set[int]] | None, box_pre: Mapping[int, list[float]], s: TakeBackSettings,
                rep: dict[str, list], new_ids: Iterator[int]) -> list[dict]:
    """The strong annotations of one corrected image: its annotations read, matched to the instances of the
    image (those sent with the job, when it is given) by id, then by box, the rest recorded."""
    ds_im = index.images[did]
    h, w = int(ds_im["height"]), int(ds_im["width"])
    pool = [r for r in index.by_image.get(did, []) if r["status"] != "ignored"
            and (sent is None or did not in sent or int(r["id"]) in sent[did])]
    free = {int(r["id"]): r for r in pool}
    read = [x for x in (_read_annotation(did, a, h, w, cat_map, rep) for a in anns) if x is not None]
    matched, later = _match_by_id(did, read, pool, free, s, rep)
    matched += _match_by_box(did, later, free, s, rep)
    for i, r in sorted(free.items()):
        rep["deleted"].append({"image_id": did, "instance_id": i, "bbox": r["bbox"],
                               "category_id": int(r["category_id"])})
    return _strong_annotations(did, matched, box_pre, s, rep, new_ids)


def _read_annotation(did: int, a: dict, h: int, w: int, cat_map: Mapping[int, int | None], rep: dict[str, list]
                     ) -> _Read | None:
    """(annotation, mask, dataset category) of a corrected annotation, or None (recorded in
    `skipped_annotations`): an unknown category, or a segmentation that is unreadable or not the image's size."""
    cat = cat_map.get(int(a["category_id"]))
    if cat is None:
        rep["skipped_annotations"].append({"image_id": did, "annotation_id": a.get("id"),
                                           "reason": f"unknown category {a['category_id']}"})
        return None
    try:
        seg = a.get("segmentation")
        if isinstance(seg, dict) and [int(v) for v in seg.get("size", [h, w])] != [h, w]:
            raise ValueError(f"mask size {seg.get('size')} is not the image's {[h, w]}")
        mask = segmentation_mask(seg, h, w) if seg else None
    except (ValueError, TypeError, KeyError, IndexError) as e:
        rep["skipped_annotations"].append({"image_id": did, "annotation_id": a.get("id"),
                                           "reason": f"unreadable segmentation ({e})"})
        return None
    return a, mask, cat


def _match_by_id(did: int, read: Sequence[_Read], pool: Sequence[dict], free: dict[int, dict], s: TakeBackSettings,
                 rep: dict[str, list]) -> tuple[list[_Matched], list[_Read]]:
    """(matched, left for matching by box) of an image's annotations: an id matches its instance unless the
    box overlaps it under `match_iou` and overlaps another instance of the class better (`id_box_mismatch`);
    an id that is no instance of the image goes to `unknown_instance_ids`. Matched instances leave `free`."""
    matched: list[_Matched] = []
    later: list[_Read] = []
    pool_ids = {int(r["id"]) for r in pool}
    for a, mask, cat in read:
        aid = a.get("id")
        if aid is not None and int(aid) in free:
            box, inst = _box(a, mask), free[int(aid)]
            iou = box_iou(box, inst["bbox"])
            better = [j for j, r in free.items() if j != int(aid) and int(r["category_id"]) == cat
                      and box_iou(box, r["bbox"]) > iou]
            if iou >= s.match_iou or not better:
                matched.append((a, free.pop(int(aid)), mask, cat))
                continue
            rep["id_box_mismatch"].append({"image_id": did, "annotation_id": int(aid), "box_iou": round(iou, 4),
                                           "better_instances": better})
        elif aid is not None and int(aid) not in pool_ids:
            rep["unknown_instance_ids"].append({"image_id": did, "annotation_id": int(aid)})
        later.append((a, mask, cat))
    return matched, later


def _match_by_box(did: int, later: Sequence[_Read], free: dict[int, dict], s: TakeBackSettings,
                  rep: dict[str, list]) -> list[_Matched]:
    """Each annotation in turn matched to the free instance of its class with the highest box IoU, at least
    `match_iou` (`matched_by_box`; ties: the lower instance id), else to none (an added instance)."""
    matched: list[_Matched] = []
    for a, mask, cat in later:
        box = _box(a, mask)
        best = max(((box_iou(box, r["bbox"]), -int(i), i) for i, r in free.items()
                    if int(r["category_id"]) == cat), default=None)
        if best is not None and best[0] >= s.match_iou:
            inst = free.pop(best[2])
            rep["matched_by_box"].append({"image_id": did, "annotation_id": a.get("id"), "instance_id": best[2],
                                          "box_iou": round(best[0], 4)})
            matched.append((a, inst, mask, cat))
        else:
            matched.append((a, None, mask, cat))
    return matched


def _strong_annotations(did: int, matched: Sequence[_Matched], box_pre: Mapping[int, list[float]],
                        s: TakeBackSettings, rep: dict[str, list], new_ids: Iterator[int]) -> list[dict]:
    """The strong file's annotations of one image's matched annotations that have a mask (else `no_mask`) other
    than the box outline their instance was given and still is (`box_not_edited`): in the matched instance's
    id, or a new id (`added`); a changed box or class is recorded."""
    out = []
    for a, inst, mask, cat in matched:
        if mask is None or not np.any(mask == 1):
            rep["no_mask"].append({"image_id": did, "annotation_id": a.get("id"),
                                   "instance_id": int(inst["id"]) if inst else None})
            continue
        given = box_pre.get(int(inst["id"])) if inst else None
        if given is not None and is_box_outline(a["segmentation"], mask, given):
            rep["box_not_edited"].append({"image_id": did, "annotation_id": a.get("id"),
                                          "instance_id": int(inst["id"]), "bbox": given})
            continue
        box = _box(a, mask)
        if inst is None:
            iid = next(new_ids)
            rep["added"].append({"image_id": did, "instance_id": iid, "annotation_id": a.get("id"),
                                 "bbox": box, "category_id": cat})
        else:
            iid = int(inst["id"])
            iou = box_iou(box, inst["bbox"])
            if iou < s.box_iou:
                rep["box_changed"].append({"image_id": did, "instance_id": iid, "old_bbox": inst["bbox"],
                                           "new_bbox": box, "box_iou": round(iou, 4)})
            if cat != int(inst["category_id"]):
                rep["category_changed"].append({"image_id": did, "instance_id": iid,
                                                "old_category_id": int(inst["category_id"]), "new_category_id": cat})
        seg = a["segmentation"] if isinstance(a["segmentation"], list) else rle_encode(mask)
        out.append({"id": iid, "image_id": did, "category_id": cat, "bbox": box,
                    "area": float(np.count_nonzero(mask == 1)), "iscrowd": int(a.get("iscrowd", 0) or 0),
                    "segmentation": seg})
    return out


def _box(a: Mapping[str, Any], mask: np.ndarray | None) -> list[float] | None:
    """The annotator's box: the annotation's bbox, else its mask's."""
    b = a.get("bbox")
    if b and len(b) == 4:
        return [float(v) for v in b]
    return mask_box(mask) if mask is not None else None


def run_stage(s: TakeBackSettings, *, corrections: str, shards: list[str], images: str | None, job: str | None,
              out: str, report: str, threads: int = 1) -> dict:
    """The `take_back` stage (see pseudomask.registry)."""
    strong, rep = take_back(corrections, [load_dataset(p, images) for p in shards or []], job, s)
    write_json(strong, out)
    write_json(rep, report, indent=1)
    return {"out": out, "report": report, "strong_images": rep["strong_images"],
            "strong_annotations": rep["strong_annotations"],
            "conflicts": {k: v for k, v in rep["counts"].items() if v}}
