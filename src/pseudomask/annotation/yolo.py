"""YOLO-seg export of the whole dataset (Ultralytics' layout) and a reader of it.

    <out>/images/<file_name>    the images (symlinks to the originals, or copies)
    <out>/labels/<file stem>.txt one line per instance: `class x1 y1 x2 y2 ...`, the mask's outline as a
                                 polygon with coordinates divided by the image width and height
    <out>/data.yaml              path, train and val (images), names {class: category name} and
                                 category_ids (class -> the dataset's category id)

Classes are the dataset's categories in id order, from 0. YOLO has one polygon per instance: a mask of several
parts or with holes is written as one polygon joining them, along the pixels' edges in COCO's continuous
coordinates (`polygons`), as Ultralytics' COCO conversion writes them. YOLO takes an instance's box from its
polygon's extent, so a polygon states a box: a kept mask is written unless its box disagrees with the given
box (proxy box IoU below merge_drop's threshold, `polygons.shows_box`), which is written as its box outline
instead. YOLO has no ignore label: crowd regions (status ignored) are left out, and `not_kept` says what becomes
of the others (dropped, invalid, failed): their mask as it is (`mask`, the box where it is empty; a mask the
merge ate states a wrong box), their box outline (`box`, the default), or nothing (`skip`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..errors import PseudomaskError
from ..files import write_text_atomic
from ..images import image_size, probe_image, read_image, write_image
from ..loops import progress
from ..settings import Settings, setting
from ..store import Artifact
from .polygons import box_outline, drop_threshold, outline, shows_box

NOT_KEPT = ("mask", "box", "skip")


class YoloError(PseudomaskError, ValueError):
    """A YOLO-seg folder or label line that cannot be read."""


@dataclass(frozen=True)
class YoloExportSettings(Settings):
    SECTION = "yolo_export"
    copy: bool = setting(False, "copy the images into images/ (default: symlinks to the originals)")
    not_kept: str = setting("box", "instances whose mask is not kept (dropped, invalid, failed): write their mask "
                                   "as it is (the box when empty), their box outline, or skip them", choices=NOT_KEPT)


def label_line(cls: int, poly: np.ndarray, width: int, height: int) -> str:
    xy = np.asarray(poly, np.float64) / [max(width, 1), max(height, 1)]
    return f"{cls} " + " ".join(f"{v:.6f}" for v in np.clip(xy, 0, 1).reshape(-1))


def _place_image(src: Path, dst: Path, copy: bool, image: dict) -> None:
    """A link to (or copy of) the image; a file the labels do not describe as YOLO trainers read it (an EXIF
    rotation tag where the annotations use the pixels as stored) is written anew, as the labels see it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if image.get("orientation", "stored") == "stored" and src.is_file() and probe_image(src).exif != 1:
        write_image(dst, read_image(src))
    elif copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def export_yolo(artifacts: Sequence[str | os.PathLike], out: str | os.PathLike, copy: bool = False,
                not_kept: str = YoloExportSettings().not_kept) -> dict[str, Any]:
    """Write the YOLO-seg folder `out` from mask artifacts (every shard of merge_drop, say); returns counts."""
    if not_kept not in NOT_KEPT:
        raise YoloError(f"yolo export: not_kept must be one of {NOT_KEPT}, got {not_kept!r}")
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    counts = {"images": 0, "instances": 0, "written_mask": 0, "written_box": 0, "skipped_crowd": 0,
              "skipped_not_kept": 0}
    categories = None
    with ExitStack() as stack:
        arts = [stack.enter_context(Artifact(p)) for p in artifacts]
        if not arts:
            raise YoloError("yolo export: no artifacts given")
        for a in arts:
            cats = sorted(int(c["id"]) for c in a.categories)
            if categories is None:
                categories, names = cats, {int(c["id"]): c["name"] for c in a.categories}
            elif cats != categories:
                raise YoloError(f"{a.path}: its categories differ from the first artifact's")
            cls_of = {c: i for i, c in enumerate(categories)}
            root = Path(a.attrs.get("image_root") or ".")
            threshold = drop_threshold(a.stage, a.params)
            for image_id in progress(a.image_ids, desc=f"yolo {a.path.name}", total=len(a.image_ids)):
                im = a.image(image_id)
                h, w, name = int(im["height"]), int(im["width"]), str(im["file_name"])
                _place_image(root / name, out / "images" / name, copy, im)
                lines = []
                masks = a.masks(image_id)
                for k, r in enumerate(a.records(image_id)):
                    counts["instances"] += 1
                    if r["status"] == "ignored":
                        counts["skipped_crowd"] += 1
                        continue
                    kept = r["status"] == "kept"
                    if not kept and not_kept == "skip":
                        counts["skipped_not_kept"] += 1
                        continue
                    as_box = (kept or not_kept == "box") and shows_box(r, masks[k], threshold)
                    poly = None if as_box else outline(masks[k])
                    if poly is None or len(poly) < 3:
                        poly = box_outline(r["bbox"])
                        counts["written_box"] += 1
                    else:
                        counts["written_mask"] += 1
                    lines.append(label_line(cls_of[int(r["category_id"])], poly, w, h))
                label = out / "labels" / Path(name).with_suffix(".txt")
                label.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic("".join(s + "\n" for s in lines), label)
                counts["images"] += 1
    data = {"path": str(out.resolve()), "train": "images", "val": "images",
            "names": {i: names[c] for i, c in enumerate(categories or [])},
            "category_ids": list(categories or [])}
    write_text_atomic(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), out / "data.yaml")
    return {"out": str(out), "classes": len(categories or []), **counts}


def read_yolo(folder: str | os.PathLike) -> dict[str, Any]:
    """A YOLO-seg folder back: names, category_ids and per image (file under images/) its width, height and
    labels as (class, (N,2) pixel polygon). Raises YoloError naming the file and line of a bad label."""
    folder = Path(folder)
    try:
        meta = yaml.safe_load((folder / "data.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise YoloError(f"{folder}: no readable data.yaml ({e})") from None
    names = {int(k): str(v) for k, v in (meta.get("names") or {}).items()}
    images = []
    img_dir = folder / "images"
    for p in sorted(q for q in img_dir.rglob("*") if q.is_file()):
        rel = p.relative_to(img_dir)
        w, h = image_size(p)
        labels = []
        lab = folder / "labels" / rel.with_suffix(".txt")
        text = lab.read_text() if lab.exists() else ""
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                cls, xy = int(parts[0]), np.asarray([float(v) for v in parts[1:]], np.float64)
            except ValueError:
                raise YoloError(f"{lab}: line {n}: not numbers") from None
            if cls not in names or len(xy) < 6 or len(xy) % 2:
                raise YoloError(f"{lab}: line {n}: class {cls} unknown or fewer than 3 points")
            labels.append((cls, xy.reshape(-1, 2) * [w, h]))
        images.append({"file_name": str(rel), "width": w, "height": h, "labels": labels})
    return {"names": names, "category_ids": [int(c) for c in meta.get("category_ids") or names], "images": images}


def run_stage(s: YoloExportSettings, *, masks: list[str], out: str, threads: int = 1) -> dict:
    """The `yolo_export` stage (see pseudomask.registry)."""
    return export_yolo(masks or [], out, copy=s.copy, not_kept=s.not_kept)
