"""Helpers the benchmarks share. They run as scripts (`.venv/bin/python benchmarks/bench_x.py`), so this folder
is on sys.path and `from common import ...` finds this file.

Importing it also turns off the stages' progress bars (PSEUDOMASK_NO_PROGRESS), so import it before pseudomask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

os.environ.setdefault("PSEUDOMASK_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]


def coco_dev() -> Path:
    """The 64-image COCO development set: $PSEUDOMASK_COCO_DEV, else ../shared/data/coco-dev beside the checkout."""
    env = os.environ.get("PSEUDOMASK_COCO_DEV")
    return Path(env) if env else REPO.parent / "shared/data/coco-dev"


@contextlib.contextmanager
def work_folder(keep: str | os.PathLike | None, prefix: str) -> Iterator[Path]:
    """A benchmark's work folder: `keep` (made if missing, left in place), else a temporary one removed after."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def quietly(fn: Callable, *args: Any, log: Path, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) with its console output (MMEngine's) sent to a log file."""
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        return fn(*args, **kwargs)


def pin_one_core() -> str:
    """Pin this process to its first allowed core; says what it did."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to cpu {cpu}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"


def by_size(values: Sequence[float], sizes: Sequence[str], small64: Sequence[bool], width: int = 6) -> str:
    """Mean of `values` overall, by COCO size (small, medium, large) and by the 64x64 split, in columns."""
    v, sizes, s64 = np.asarray(values, float), np.asarray(sizes), np.asarray(small64, bool)
    parts = [f"{v.mean():.3f}"]
    for sel in [sizes == b for b in ("small", "medium", "large")] + [s64, ~s64]:
        parts.append(f"{v[sel].mean():.3f}" if sel.any() else "  -  ")
    return "  ".join(f"{p:>{width}s}" for p in parts)
