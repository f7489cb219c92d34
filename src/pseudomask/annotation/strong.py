"""Which images are strong (have true masks given by the user): those the strong file (`dataset.strong`)
names, and those with rows of source "gt" in an artifact or a dataset."""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from ..dataset import strong_images


def strong_image_ids(path: str | os.PathLike | None) -> set[int]:
    """Image ids a strong file names (see `dataset.strong_images`); None or "" names none."""
    return set(strong_images(path)) if path else set()


def gt_images(rows: Iterable[Mapping]) -> set[int]:
    """Image ids of rows whose source is "gt" (true masks passed through the stages)."""
    return {int(r["image_id"]) for r in rows if r.get("source") == "gt"}
