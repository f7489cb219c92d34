"""`pseudomask init`: a complete config.yaml for a new dataset, from its annotations and image folder.

The dataset is loaded as ingest will load it (same errors, naming the file and the record) and its image
files are checked, so that a wrong path stops here rather than in the first job. Supervision, shard size, the
detector's epoch schedule and the optional stages follow from the data; every other key takes its default, and the file carries every key's
help as a comment.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from .config import complete_config, default_config, render_config
from .dataset import Dataset, add_strong, load_dataset
from .errors import PseudomaskError
from .files import write_text_atomic

SHARD_TARGET = 300  # images per shard: a job of minutes, a file of a few hundred MB
MIN_SHARDS = 4      # small datasets still give a laptop's cores parallel jobs
SHOW_MISSING = 5    # missing images named in a message
ONE_X_FROM = 10_000  # images from which the detector trains MMDetection's 1x (COCO 118k, VOC 10.6k); fewer: 2x


class InitError(PseudomaskError, ValueError):
    """A config that cannot be written: the message names the file or folder."""


def choose_shard_size(n_images: int) -> int:
    """`ingest.shard_size` for a dataset of `n_images`: about SHARD_TARGET images per shard, and at least
    MIN_SHARDS shards (one image each at most) for small datasets, so that e.g. 8 images give 4 shards of 2
    and 100 000 give 334 shards of 300."""
    n = max(int(n_images), 1)
    shards = max(math.ceil(n / SHARD_TARGET), min(MIN_SHARDS, n))
    return math.ceil(n / shards)


def choose_schedule(n_images: int) -> str:
    """`retrain.schedule` (and `retrain_hybrid`'s) for a dataset of `n_images`: MMDetection's 1x (12 epochs)
    from ONE_X_FROM images, 2x (24 epochs) for a smaller dataset, whose epochs are shorter: it takes twice
    the passes over its images."""
    return "1x" if int(n_images) >= ONE_X_FROM else "2x"


def missing_images(ds: Dataset) -> list[str]:
    """File names of the dataset's images that are not files under its image folder, in dataset order."""
    return [im["file_name"] for im in ds.images if not ds.image_path(im).is_file()]


def damaged_images(ds: Dataset) -> list[str]:
    """File names of the dataset's images whose pixels decode only partly (a truncated file), in order."""
    return [im["file_name"] for im in ds.images if im.get("damaged")]


def check_images(ds: Dataset, images: str | os.PathLike) -> list[str]:
    """The missing image files; InitError when none of the dataset's images exists."""
    if not ds.images:
        raise InitError(f"{ds.source}: the annotations list no images")
    missing = missing_images(ds)
    if len(missing) == len(ds.images):
        raise InitError(f"{ds.source}: none of its {len(ds.images)} image files is in {ds.image_root} "
                        f"(first: {', '.join(missing[:SHOW_MISSING])}); is {images} the right image folder?")
    return missing


def infer_supervision(ds: Dataset, given: str | None = None) -> str:
    """`boxes` if the dataset has boxes, else `tags`; a given `boxes` needs boxes in the dataset."""
    if given is None:
        return "boxes" if ds.has_boxes else "tags"
    if given not in ("boxes", "tags"):
        raise InitError(f"supervision must be 'boxes' or 'tags', got {given!r}")
    if given == "boxes" and not ds.has_boxes:
        raise InitError(f"{ds.source}: supervision 'boxes' asked for, but the annotations hold no boxes "
                        "(image-level tags only); use supervision 'tags'")
    return given


def _existing(path: str, what: str, folder: bool = False) -> str:
    """The absolute path of an input that must exist ("" stays ""), else InitError."""
    if not path:
        return ""
    p = Path(path)
    if not (p.is_dir() if folder else p.is_file()):
        raise InitError(f"{path}: {what} not found")
    return str(p.resolve())


def _salient(path: str) -> str:
    """The salient folder (DUTS-style images/ and masks/) as an absolute path, or ""."""
    p = _existing(path, "salient-object folder", folder=True)
    lacking = [sub for sub in ("images", "masks") if p and not (Path(p) / sub).is_dir()]
    if lacking:
        raise InitError(f"{path}: a salient-object folder holds images/ and masks/; it lacks {' and '.join(lacking)}/")
    return p


def dataset_config(ds: Dataset, annotations: str | os.PathLike, images: str | os.PathLike, *, supervision: str,
                   ground_truth: str = "", salient: str = "", strong: str = "") -> dict[str, Any]:
    """The complete config of a loaded dataset: defaults, with the dataset section, shard size, schedule and stage
    choices that follow from it (no salient set: no BoxCaseg; tags: merge-drop refines the CAM masks, merged by
    BoxCaseg's rule).
    Dataset paths are made absolute, so that the config reads the same data from any working folder."""
    cfg = default_config()
    cfg["dataset"] = {"annotations": str(Path(annotations).resolve()), "images": str(Path(images).resolve()),
                      "supervision": supervision, "ground_truth": ground_truth, "salient": salient,
                      "strong": strong}
    cfg["workflow"].update(test_annotations="", test_images="")  # not the demo's held-out scenes
    cfg["ingest"]["shard_size"] = choose_shard_size(len(ds.images))
    for section in ("retrain", "retrain_hybrid"):  # the GPU's schedule; the CPU profile keeps its short run
        cfg[section]["schedule"] = choose_schedule(len(ds.images))
    if not salient:
        cfg["workflow"]["boxcaseg"] = False
    if supervision == "tags":  # the merge rules were measured on box priors: CAM masks keep BoxCaseg's merge
        cfg["workflow"]["merge_drop_source"] = "cam"
        cfg["merge_drop"]["rule"] = "smaller_box"
    return cfg


def header(facts: dict[str, Any]) -> str:
    """The comment block at the top of the written config."""
    return (f"# pseudomask configuration written by `pseudomask init` for {facts['annotations']}:\n"
            f"# {facts['images']} images, {facts['instances']} instances, {facts['categories']} categories, "
            f"{facts['shards']} shards, supervision {facts['supervision']}.\n"
            "# Every key is optional (a missing key takes its default) and checked when the workflow starts; each\n"
            "# stage's section holds its settings and the resources of its rule. Reference: docs/configuration.md.")


def init_config(annotations: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike = "config.yaml",
                *, ground_truth: str = "", supervision: str | None = None, salient: str = "",
                strong: str = "", force: bool = False) -> dict[str, Any]:
    """Check a dataset and write its config to `out` (refused if `out` exists, unless `force`); returns the
    facts printed by the command: counts, the missing image files and the config written."""
    out = Path(out)
    if out.exists() and not force:
        raise InitError(f"{out}: already exists; pass --force to overwrite it")
    ds = load_dataset(annotations, images)
    missing = check_images(ds, images)
    supervision = infer_supervision(ds, supervision)
    strong = _existing(strong, "strong-annotation file")
    n_strong = len(add_strong(ds, strong, annotations).strong) if strong else 0  # ingest's checks, now
    cfg = dataset_config(ds, annotations, images, supervision=supervision,
                         ground_truth=_existing(ground_truth, "ground-truth annotation file"),
                         salient=_salient(salient), strong=strong)
    size = cfg["ingest"]["shard_size"]
    facts = {"out": str(out), "annotations": str(annotations), "images": len(ds.images),
             "instances": len(ds.instances), "categories": len(ds.categories),
             "shards": math.ceil(len(ds.images) / size), "shard_size": size, "supervision": supervision,
             "missing": len(missing), "missing_first": missing[:SHOW_MISSING], "strong": n_strong, "config": cfg,
             "damaged": damaged_images(ds), "turned": sum(im.get("orientation") == "exif" for im in ds.images)}
    text = render_config(cfg, header(facts))
    complete_config(yaml.safe_load(text))  # the workflow's check, before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(text, out)
    return facts


def format_facts(facts: dict[str, Any]) -> str:
    """What `pseudomask init` prints: the counts, the missing images and the command to run."""
    lines = [f"wrote {facts['out']}",
             f"  images      {facts['images']}",
             f"  instances   {facts['instances']}",
             f"  categories  {facts['categories']}",
             f"  shards      {facts['shards']} (up to {facts['shard_size']} images each)",
             f"  supervision {facts['supervision']}",
             f"  strong      {facts['strong']} instances with true masks",
             f"  missing     {facts['missing']} image files"
             + (f", first: {', '.join(facts['missing_first'])} (their instances will be failed)"
                if facts["missing"] else ""),
             f"  damaged     {len(facts['damaged'])} image files that decode only partly"
             + (f", first: {', '.join(facts['damaged'][:SHOW_MISSING])} (their instances will be failed unless "
                "ingest.partial_images)" if facts["damaged"] else ""),
             f"  turned      {facts['turned']} images read turned by their EXIF orientation (the annotations' "
             "sizes are the turned ones)"]
    if not facts["config"]["workflow"]["boxcaseg"] and facts["supervision"] == "boxes":
        lines.append("  BoxCaseg off: no salient-object folder given (--salient)")
    lines.append(f"run: snakemake --cores all --configfile {facts['out']}")
    return "\n".join(lines)
