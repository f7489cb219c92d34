"""Ingest stage: load any supported input, split into shards, write one record per shard and a manifest."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .dataset import add_strong, load_dataset, shard, write_shard
from .dataset import FORMATS
from .files import write_json
from .settings import Settings, setting
from .loops import progress
from .store import file_digest


@dataclass(frozen=True)
class IngestSettings(Settings):
    SECTION = "ingest"
    format: str = setting("auto", "annotation format: auto (by file name), coco, voc, tags-csv", choices=FORMATS)
    shard_size: int = setting(500, "images per shard; a per-shard stage runs once per shard", minimum=1)
    partial_images: bool = setting(False, "keep the instances of images that decode only partly (a truncated "
                                          "JPEG or PNG: the missing part reads grey); off: they fail, naming "
                                          "the file")


def shard_name(i: int) -> str:
    return f"s{i:05d}"


def ingest(annotations: str | os.PathLike, images: str | os.PathLike | None, out_dir: str | os.PathLike,
           shard_size: int = 500, fmt: str = "auto", strong: str | os.PathLike | None = None,
           partial_images: bool = False) -> dict:
    """Write OUT/{shard}.h5 for every shard and OUT/manifest.json; return the manifest. `strong`
    (`dataset.strong`) gives true masks of some images, which the shards carry as source `gt`."""
    ds = load_dataset(annotations, images, fmt, partial_images)
    if strong:
        ds = add_strong(ds, strong, annotations)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {"shard_size": shard_size, "format": fmt, "partial_images": partial_images}
    shards = shard(ds, shard_size)
    digests = {str(annotations): file_digest(annotations)}  # once, not once per shard
    if strong:
        digests[str(strong)] = file_digest(strong)
    names = []
    for i, part in enumerate(progress(shards, desc="ingest", total=len(shards), unit="shard")):
        names.append(shard_name(i))
        write_shard(part, out / f"{names[-1]}.h5", params=params, inputs=digests)
    manifest = {
        "source": str(annotations), "images": len(ds.images), "instances": len(ds.instances),
        "supervision": "boxes" if ds.has_boxes else "tags", "shards": names,
        "status": dict(Counter(r["status"] for r in ds.instances)),
        "strong_images": len({r["image_id"] for r in ds.instances if r.get("source") == "gt"}),
        "strong_instances": len(ds.strong),
        "orientation": dict(Counter(im.get("orientation", "stored") for im in ds.images)),
        "damaged_images": [im["file_name"] for im in ds.images if im.get("damaged")],
    }
    write_json(manifest, out / "manifest.json", indent=1)
    return manifest


def run_stage(s: IngestSettings, *, annotations: str, images: str | None, manifest: str, shards: str,
              strong: str | None = None, threads: int = 1) -> dict:
    """The `ingest` stage (see pseudomask.registry): shard records in `shards`, the manifest at `manifest`."""
    m = ingest(annotations, images, shards, shard_size=s.shard_size, fmt=s.format, strong=strong,
               partial_images=s.partial_images)
    if Path(manifest).resolve() != (Path(shards) / "manifest.json").resolve():
        Path(manifest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(shards) / "manifest.json", manifest)
    return m
