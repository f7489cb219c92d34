"""The loop every per-instance mask stage shares: read each image, run a method on its usable instances,
carry every other instance through with its status, write one artifact with provenance and progress."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .dataset import Dataset
from .images import ImageError, read_image
from .store import ArtifactWriter

# predict(image RGB (H,W,3), usable instance records) -> one result per record:
#   {"mask": (H,W) uint8, "status": str, "reason": str, **numeric extras}
# optionally with a second return value: per-image maps for the artifact.
# With run_mask_stage(every_image=True) it is called as predict(rgb, records, image) for every readable
# image, records possibly empty, so that a method can store maps of images without usable instances.
Predict = Callable[..., Any]

PASS_THROUGH = ("failed", "ignored")


def usable(record: dict) -> bool:
    """Whether a method runs on this instance: everything but what an earlier stage failed or ignored."""
    return record["status"] not in PASS_THROUGH


def progress(items: Iterable, desc: str, total: int | None = None, unit: str = "img") -> Iterable:
    """tqdm to stderr (a rule's log), with sparse updates when stderr is not a terminal."""
    tty = sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=0.5 if tty else 10.0,
                disable=os.environ.get("PSEUDOMASK_NO_PROGRESS") == "1")


def run_mask_stage(
    ds: Dataset,
    out: str | os.PathLike,
    predict: Predict,
    *,
    stage: str,
    method: str,
    params: Mapping[str, Any],
    inputs: Sequence[str | os.PathLike] = (),
    usable: Callable[[dict], bool] = usable,
    every_image: bool = False,
) -> Path:
    """Run `predict` on each image's usable instances and write every instance to one artifact.

    `every_image` also runs it on images without usable instances (their maps, e.g. proposals of tag-only
    images) and passes the image record as a third argument."""
    by_image = ds.by_image()
    with ArtifactWriter(out, stage=stage, method=method, params=params, inputs=inputs,
                        categories=ds.categories, attrs={"image_root": str(Path(ds.image_root).resolve())}) as w:
        for im in progress(ds.images, desc=f"{stage}:{method}", total=len(ds.images)):
            recs = by_image.get(im["id"], [])
            h, w_ = im["height"], im["width"]
            masks = np.zeros((len(recs), h, w_), np.uint8)
            rows = [dict(r) for r in recs]
            todo = [i for i, r in enumerate(recs) if usable(r)]
            maps = None
            if todo or every_image:
                try:
                    rgb = read_image(ds.image_path(im))
                except ImageError as e:
                    for i in todo:
                        rows[i].update(status="failed", reason=str(e))
                    if not todo:
                        print(f"{stage}: image {im['id']} skipped: {e}", file=sys.stderr)
                    todo = []
                else:
                    args = (rgb, [recs[i] for i in todo]) + ((im,) if every_image else ())
                    result = predict(*args)
                    if isinstance(result, tuple):
                        result, maps = result
                    for i, res in zip(todo, result):
                        res = dict(res)
                        masks[i] = res.pop("mask")
                        rows[i].update(res)
            w.add_image(im, rows, masks, maps=maps, tags=im.get("tags", []))
    return Path(out)
