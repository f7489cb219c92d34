"""Dataset ingest: COCO JSON, Pascal VOC XML folders and image-level tags into one record, split into shards.

Errors that make the whole file untrustworthy (malformed JSON/XML, duplicate ids) raise DatasetError naming
the file and record. Problems of one instance or image (box outside the image, zero size, unknown category,
missing image) become that instance's status "failed" with a reason, so the run goes on and nothing is lost.
"""

from __future__ import annotations

import csv
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import PseudomaskError, read_json
from .images import ImageError, choose_orientation, probe_image
from .masks import mask_box, rle_decode, rle_encode, segmentation_mask
from .store import Artifact, ArtifactWriter

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class DatasetError(PseudomaskError, ValueError):
    """Input that cannot be ingested; the message names the file and the record."""


@dataclass
class Dataset:
    """The record every stage reads: categories, images (with tags) and box instances with a status."""

    categories: list[dict]
    images: list[dict]  # id, file_name, width, height, tags (list of category ids)
    instances: list[dict] = field(default_factory=list)  # id, image_id, category_id, bbox, status, reason
    image_root: Path = Path(".")
    source: str = ""
    strong: dict[int, dict] = field(default_factory=dict)  # instance id -> COCO RLE of its true mask (source gt)

    @property
    def has_boxes(self) -> bool:
        return bool(self.instances)

    def image_path(self, image: dict) -> Path:
        return self.image_root / image["file_name"]

    def instances_of(self, image_id: int) -> list[dict]:
        return [r for r in self.instances if r["image_id"] == image_id]

    def by_image(self) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for r in self.instances:
            out.setdefault(r["image_id"], []).append(r)
        return out

    def category_names(self) -> dict[int, str]:
        return {c["id"]: c["name"] for c in self.categories}


def _fail(record: dict, reason: str) -> dict:
    return {**record, "status": "failed", "reason": reason}


# how far (px) a box may reach past the image border and still count as inside: float noise of annotation
# tools and of x + w, not a clip
CLIP_EPS = 1e-3


def _clip_span(start: float, size: float, limit: float) -> tuple[float, float, bool]:
    """(start, size, clipped) of a span on [0, limit]; an edge moves only if it is past the border by more
    than CLIP_EPS, and an edge that does not move keeps its value exactly (no x + w - x round trip)."""
    lo_out, hi_out = start < -CLIP_EPS, start + size > limit + CLIP_EPS
    if not (lo_out or hi_out):
        return start, size, False
    lo = 0.0 if lo_out else start
    hi = limit if hi_out else start + size
    return lo, hi - lo, True


def check_box(bbox: Any, width: int, height: int) -> tuple[list[float] | None, str]:
    """Validate a COCO box against its image: (box, "") or (clipped box, note) or (None, why not).

    A box inside the image (up to CLIP_EPS) is returned unchanged; only one that crosses a border is clipped."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, f"bbox {bbox!r} is not four numbers"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, f"bbox {bbox!r} has non-finite values"
    if w <= 0 or h <= 0:
        return None, f"bbox {bbox!r} has zero or negative size"
    cx, cw, clip_x = _clip_span(x, w, float(width))
    cy, ch, clip_y = _clip_span(y, h, float(height))
    if cw <= 0 or ch <= 0:
        return None, f"bbox {bbox!r} lies outside the {width}x{height} image"
    if clip_x or clip_y:
        return [cx, cy, cw, ch], f"bbox {bbox!r} clipped to the {width}x{height} image"
    return [x, y, w, h], ""


def _resolve_images(images: list[dict], image_root: Path, source: str, check_files: bool,
                    partial_images: bool = False) -> set[int]:
    """Fill missing sizes from files and set each image's `orientation` (`images.choose_orientation`); return
    ids of images whose file is missing, unreadable or (unless `partial_images`) decodes only partly."""
    bad: set[int] = set()
    for im in images:
        im.setdefault("orientation", "stored")
        if not check_files and im.get("width") and im.get("height"):
            continue
        path = image_root / im["file_name"]
        try:
            probe = probe_image(path, decode=True)
        except ImageError as e:
            im["error"] = str(e)
            im.setdefault("width", 0)
            im.setdefault("height", 0)
            bad.add(im["id"])
            continue
        try:
            im["orientation"] = choose_orientation(path, probe, (im.get("width"), im.get("height")))
        except ImageError as e:
            raise DatasetError(f"{source}: image {im['id']}: {e}") from None
        im["width"], im["height"] = (probe.width, probe.height) if im["orientation"] == "stored" \
            else probe.displayed_size()
        if probe.damage:
            im["damaged"] = probe.damage
            if not partial_images:
                im["error"] = probe.damage
                bad.add(im["id"])
    return bad


def load_coco(path: str | os.PathLike, image_root: str | os.PathLike, check_files: bool = True,
              partial_images: bool = False) -> Dataset:
    """Read a COCO instances JSON; annotations without bbox make it a tag-only dataset."""
    path = Path(path)
    data = read_json(path, DatasetError, "annotation file")
    if not isinstance(data, dict) or "images" not in data:
        raise DatasetError(f"{path}: not a COCO dataset (no 'images' list)")
    categories = []
    for i, c in enumerate(data.get("categories", [])):
        if "id" not in c or "name" not in c:
            raise DatasetError(f"{path}: categories[{i}] lacks 'id' or 'name'")
        categories.append({"id": int(c["id"]), "name": str(c["name"]), "isthing": int(c.get("isthing", 1))})
    _unique([c["id"] for c in categories], path, "category id")
    images = []
    for i, im in enumerate(data["images"]):
        if "id" not in im or "file_name" not in im:
            raise DatasetError(f"{path}: images[{i}] lacks 'id' or 'file_name'")
        images.append({"id": int(im["id"]), "file_name": str(im["file_name"]), "width": int(im.get("width") or 0),
                       "height": int(im.get("height") or 0), "tags": []})
    _unique([im["id"] for im in images], path, "image id")
    anns = data.get("annotations", [])
    _unique([a.get("id") for a in anns], path, "annotation id")
    root = Path(image_root)
    bad = _resolve_images(images, root, str(path), check_files, partial_images)
    by_id = {im["id"]: im for im in images}
    cat_ids = {c["id"] for c in categories}
    has_boxes = any("bbox" in a for a in anns)
    instances = []
    for i, a in enumerate(anns):
        if "id" not in a or "image_id" not in a or "category_id" not in a:
            raise DatasetError(f"{path}: annotations[{i}] lacks 'id', 'image_id' or 'category_id'")
        im = by_id.get(int(a["image_id"]))
        if im is None:
            raise DatasetError(f"{path}: annotation {a['id']} refers to unknown image {a['image_id']}")
        cat = int(a["category_id"])
        if not has_boxes:
            if cat not in cat_ids:
                raise DatasetError(f"{path}: tag annotation {a['id']} of image {im['id']} has unknown category {cat}")
            if cat not in im["tags"]:
                im["tags"].append(cat)
            continue
        rec = {"id": int(a["id"]), "image_id": im["id"], "category_id": cat, "bbox": [0.0] * 4,
               "status": "kept", "reason": ""}
        if a.get("iscrowd", 0):
            rec["bbox"] = [float(v) for v in a.get("bbox", [0, 0, 0, 0])]
            instances.append({**rec, "status": "ignored", "reason": "crowd annotation"})
            continue
        if cat not in cat_ids:
            instances.append(_fail(rec, f"unknown category id {cat}"))
            continue
        if im["id"] in bad:
            instances.append(_fail(rec, im["error"]))
            continue
        box, note = check_box(a.get("bbox"), im["width"], im["height"])
        if box is None:
            instances.append(_fail(rec, note))
            continue
        instances.append({**rec, "bbox": box, "reason": note})
        if cat not in im["tags"]:
            im["tags"].append(cat)
    return Dataset(categories, images, instances, root, str(path))


def load_voc(folder: str | os.PathLike, partial_images: bool = False) -> Dataset:
    """Read a Pascal VOC folder (Annotations/*.xml, JPEGImages/); boxes become 0-based COCO xywh."""
    folder = Path(folder)
    ann_dir = folder / "Annotations"
    if not ann_dir.is_dir():
        raise DatasetError(f"{folder}: no Annotations/ folder (expected a Pascal VOC layout)")
    files = sorted(ann_dir.glob("*.xml"))
    if not files:
        raise DatasetError(f"{ann_dir}: no XML annotation files")
    parsed = []
    names: set[str] = set()
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except ET.ParseError as e:
            raise DatasetError(f"{f}: malformed XML ({e})") from None
        objs = []
        for k, o in enumerate(root.findall("object")):
            name = (o.findtext("name") or "").strip()
            bb = o.find("bndbox")
            if not name or bb is None:
                raise DatasetError(f"{f}: object {k} lacks <name> or <bndbox>")
            try:
                vals = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (TypeError, ValueError):
                raise DatasetError(f"{f}: object {k} ({name}) has a non-numeric bndbox") from None
            objs.append((name, vals, int(o.findtext("difficult") or 0)))
            names.add(name)
        fname = root.findtext("filename") or f"{f.stem}.jpg"
        size = root.find("size")
        w = int(size.findtext("width") or 0) if size is not None else 0
        h = int(size.findtext("height") or 0) if size is not None else 0
        parsed.append((fname, w, h, objs))
    ordered = [c for c in VOC_CLASSES if c in names] + sorted(names - set(VOC_CLASSES))
    if set(names) <= set(VOC_CLASSES):
        ordered = list(VOC_CLASSES)
    categories = [{"id": i + 1, "name": n, "isthing": 1} for i, n in enumerate(ordered)]
    cat_of = {c["name"]: c["id"] for c in categories}
    images = [{"id": i + 1, "file_name": fn, "width": w, "height": h, "tags": []}
              for i, (fn, w, h, _) in enumerate(parsed)]
    root_dir = folder / "JPEGImages"
    bad = _resolve_images(images, root_dir, str(ann_dir), True, partial_images)
    instances = []
    next_id = 1
    for im, (_, _, _, objs) in zip(images, parsed):
        for name, (x0, y0, x1, y1), difficult in objs:
            rec = {"id": next_id, "image_id": im["id"], "category_id": cat_of[name],
                   "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1], "status": "kept", "reason": ""}
            next_id += 1
            if im["id"] in bad:
                instances.append(_fail(rec, im["error"]))
                continue
            box, note = check_box(rec["bbox"], im["width"], im["height"])
            if box is None:
                instances.append(_fail(rec, note))
                continue
            rec.update(bbox=box, reason=note or ("difficult" if difficult else ""))
            instances.append(rec)
            if rec["category_id"] not in im["tags"]:
                im["tags"].append(rec["category_id"])
    return Dataset(categories, images, instances, root_dir, str(ann_dir))


def load_tags_csv(path: str | os.PathLike, image_root: str | os.PathLike, partial_images: bool = False) -> Dataset:
    """Read a CSV of `image,tag` rows (tag = category name); a header row is optional."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except FileNotFoundError:
        raise DatasetError(f"{path}: tag file not found") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["image", "tag"]:
        rows = rows[1:]
    pairs = []
    for n, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"{path}: line {n}: expected 'image,tag', got {row!r}")
        pairs.append((row[0].strip(), row[1].strip()))
    names = sorted({t for _, t in pairs})
    categories = [{"id": i + 1, "name": n, "isthing": 1} for i, n in enumerate(names)]
    cat_of = {c["name"]: c["id"] for c in categories}
    images: dict[str, dict] = {}
    for fname, tag in pairs:
        im = images.setdefault(fname, {"id": len(images) + 1, "file_name": fname, "width": 0, "height": 0, "tags": []})
        if cat_of[tag] not in im["tags"]:
            im["tags"].append(cat_of[tag])
    image_list = list(images.values())
    bad = _resolve_images(image_list, Path(image_root), str(path), True, partial_images)
    if bad:
        first = next(im for im in image_list if im["id"] in bad)
        raise DatasetError(f"{path}: {len(bad)} tagged image(s) cannot be read, first: {first['error']}")
    return Dataset(categories, image_list, [], Path(image_root), str(path))


def _unique(ids: Iterable[Any], path: Path, what: str) -> None:
    seen: set = set()
    for i in ids:
        if i in seen:
            raise DatasetError(f"{path}: duplicate {what} {i}")
        seen.add(i)


FORMATS = ("auto", "coco", "voc", "tags-csv")


def load_dataset(annotations: str | os.PathLike, images: str | os.PathLike | None = None,
                 fmt: str = "auto", partial_images: bool = False) -> Dataset:
    """Load any supported input: COCO JSON, VOC folder, tags CSV, or an ingested shard (.h5); images that
    decode only partly fail their instances unless `partial_images`."""
    p = Path(annotations)
    if fmt == "auto":
        fmt = {".json": "coco", ".csv": "tags-csv", ".h5": "shard"}.get(p.suffix.lower(), "voc" if p.is_dir() else "")
    if fmt == "shard":
        ds = read_shard(p)
        return replace(ds, image_root=Path(images)) if images else ds
    if fmt == "voc":
        return load_voc(p, partial_images)
    if images is None:
        raise DatasetError(f"{p}: an image folder is needed for {fmt or 'this'} annotations")
    if fmt == "coco":
        return load_coco(p, images, partial_images=partial_images)
    if fmt == "tags-csv":
        return load_tags_csv(p, images, partial_images)
    raise DatasetError(f"{p}: unknown dataset format (expected .json, .csv, .h5 or a VOC folder)")


def shard(ds: Dataset, shard_size: int) -> list[Dataset]:
    """Split by image into datasets of at most `shard_size` images (at least one shard, even if empty)."""
    if shard_size < 1:
        raise DatasetError(f"shard_size must be at least 1, got {shard_size}")
    by_image = ds.by_image()
    out = []
    for s in range(0, max(len(ds.images), 1), shard_size):
        ims = ds.images[s:s + shard_size]
        insts = [r for im in ims for r in by_image.get(im["id"], [])]
        out.append(replace(ds, images=ims, instances=insts))
    return out


def write_shard(ds: Dataset, path: str | os.PathLike, params: dict | None = None,
                inputs: Sequence[str | os.PathLike] | dict[str, str] = ()) -> Path:
    """Write a dataset (shard) record as an `ingest` artifact; the true masks of strong instances (source
    `gt`) are its masks, every other row's mask is empty."""
    by_image = ds.by_image()
    with ArtifactWriter(path, stage="ingest", method="ingest", params=params or {}, inputs=inputs,
                        categories=ds.categories,
                        attrs={"image_root": str(Path(ds.image_root).resolve()), "source": ds.source}) as w:
        for im in ds.images:
            rows = [{"source": "", **r} for r in by_image.get(im["id"], [])]
            masks = None
            if any(r["id"] in ds.strong for r in rows):
                masks = np.zeros((len(rows), im["height"], im["width"]), np.uint8)
                for k, r in enumerate(rows):
                    if r["id"] in ds.strong:
                        masks[k] = rle_decode(ds.strong[r["id"]])
            w.add_image(im, rows, masks, tags=im.get("tags", []))
    return Path(path)


def read_shard(path: str | os.PathLike) -> Dataset:
    """Read an `ingest` artifact back into a Dataset."""
    with Artifact(path, stage="ingest") as a:
        images = []
        for i in a.image_ids:
            im = a.image(i)
            im["tags"] = a.tags.get(i, [])
            images.append(im)
        inst = [{**{k: r[k] for k in ("id", "image_id", "category_id", "bbox", "status", "reason")},
                 "source": str(r.get("source") or "")} for r in a.records()]
        strong: dict[int, dict] = {}
        gt_images = sorted({r["image_id"] for r in inst if r["source"] == "gt"})
        for image_id in gt_images:
            rows, masks = a.records(image_id), a.masks(image_id)
            strong.update({int(r["id"]): rle_encode(masks[k]) for k, r in enumerate(rows) if r.get("source") == "gt"})
        return Dataset(a.categories, images, inst, Path(a.attrs["image_root"]), str(a.attrs.get("source", path)),
                       strong)


def strong_images(path: str | os.PathLike) -> list[int]:
    """The image ids a `dataset.strong` file names: a COCO JSON's images, or a text file of ids."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return _coco_image_ids(read_json(p, DatasetError, "strong-annotation file"), p)
    ids = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            try:
                ids.append(int(line))
            except ValueError:
                raise DatasetError(f"{p}: line {n}: {line!r} is not an image id") from None
    return ids


def _coco_image_ids(data: Any, path: Path) -> list[int]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO dataset (no 'images' list)")
    return [int(im["id"]) for im in data["images"]]


def add_strong(ds: Dataset, path: str | os.PathLike, annotations: str | os.PathLike | None = None) -> Dataset:
    """`ds` with the true masks of `path` (`dataset.strong`) as its strong instances (source `gt`).

    `path` is a COCO JSON with masks (its images are the strong images; an annotation of a dataset
    instance gives that instance its true mask, box and category; an annotation with a new id adds an
    instance to its image) or a text file of image ids, whose masks are then those of the dataset's own
    COCO `annotations`. Instances of a strong image without a true mask stay box instances. An image or
    instance that does not fit the dataset raises DatasetError naming the file and the record."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        data = read_json(p, DatasetError, "strong-annotation file")
        image_ids = _coco_image_ids(data, p)
        anns = data.get("annotations", [])
    else:
        image_ids = strong_images(p)
        if annotations is None or Path(annotations).suffix.lower() != ".json":
            raise DatasetError(f"{p}: a list of strong image ids takes the masks of a COCO JSON dataset; "
                               f"{annotations or 'none'} is not one (give the strong masks as COCO JSON)")
        data = read_json(Path(annotations), DatasetError, "annotation file")
        want = set(image_ids)
        anns = [a for a in data.get("annotations", []) if int(a.get("image_id", -1)) in want]
    images = {im["id"]: im for im in ds.images}
    unknown = [i for i in image_ids if i not in images]
    if unknown:
        raise DatasetError(f"{p}: image {unknown[0]} is not an image of the dataset {ds.source}"
                           + (f" ({len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    strong_set = set(image_ids)
    cats = {c["id"] for c in ds.categories}
    by_id = {r["id"]: r for r in ds.instances}
    instances = [dict(r) for r in ds.instances]
    index = {r["id"]: k for k, r in enumerate(instances)}
    strong: dict[int, dict] = dict(ds.strong)
    for i, a in enumerate(anns):
        if "id" not in a or "image_id" not in a or "segmentation" not in a:
            raise DatasetError(f"{p}: annotations[{i}] lacks 'id', 'image_id' or 'segmentation'")
        ann_id, image_id = int(a["id"]), int(a["image_id"])
        if a.get("iscrowd", 0):
            continue
        if image_id not in strong_set:
            raise DatasetError(f"{p}: annotation {ann_id} refers to image {image_id}, which is not in its images")
        old = by_id.get(ann_id)
        if old is not None and old["image_id"] != image_id:
            raise DatasetError(f"{p}: annotation {ann_id} is on image {image_id}, but the dataset's instance "
                               f"{ann_id} is on image {old['image_id']}")
        cat = int(a.get("category_id", old["category_id"] if old else -1))
        if cat not in cats:
            raise DatasetError(f"{p}: annotation {ann_id} has unknown category {cat}")
        im = images[image_id]
        mask = segmentation_mask(a["segmentation"], im["height"], im["width"])
        if not mask.any():
            raise DatasetError(f"{p}: annotation {ann_id} (image {image_id}) has an empty mask")
        box = check_box(a["bbox"], im["width"], im["height"])[0] if "bbox" in a else None
        box = box or mask_box(mask)
        rec = {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": box, "status": "kept",
               "reason": "true mask (dataset.strong)" if old else "added by dataset.strong", "source": "gt"}
        if old is None:
            index[ann_id] = len(instances)
            instances.append(rec)
        else:
            instances[index[ann_id]] = rec
        strong[ann_id] = rle_encode(mask)
        if cat not in im["tags"]:
            im["tags"].append(cat)
    order = {im["id"]: k for k, im in enumerate(ds.images)}
    instances.sort(key=lambda r: order[r["image_id"]])  # stable: added instances after their image's own
    return replace(ds, instances=instances, strong=strong)


def strong_instances_coco(datasets: Sequence[Dataset], exclude_images: Iterable[int] = ()) -> dict:
    """The strong instances (source gt, with their true masks as COCO RLE) of datasets/shards as one COCO
    dataset of their images, leaving out `exclude_images`: the training data of scorer_train and what
    take-back carries into a new strong file."""
    skip = set(exclude_images)
    images, anns = [], []
    for ds in datasets:
        gt = [r for r in ds.instances if r.get("source") == "gt" and r["id"] in ds.strong and r["image_id"] not in skip]
        ids = {r["image_id"] for r in gt}
        images += [{k: im[k] for k in ("id", "file_name", "width", "height")} for im in ds.images if im["id"] in ids]
        anns += [{"id": int(r["id"]), "image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
                  "bbox": [float(v) for v in r["bbox"]], "iscrowd": 0,
                  "area": float(np.count_nonzero(rle_decode(ds.strong[r["id"]]))), "segmentation": ds.strong[r["id"]]}
                 for r in gt]
    cats = [{"id": c["id"], "name": c["name"]} for c in (datasets[0].categories if datasets else [])]
    return {"images": images, "categories": cats, "annotations": anns}


def to_coco(ds: Dataset) -> dict:
    """COCO dict of a dataset's boxes (no masks), for tools that read COCO."""
    return {
        "images": [{k: im[k] for k in ("id", "file_name", "width", "height")} for im in ds.images],
        "categories": [{"id": c["id"], "name": c["name"]} for c in ds.categories],
        "annotations": [{"id": r["id"], "image_id": r["image_id"], "category_id": r["category_id"],
                         "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
                        for r in ds.instances],
    }
