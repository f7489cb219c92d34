"""Precomputed MCG proposals from the authors' MATLAB code (`im2mcg`, saved with `save(..., '-v7')`).

Fields read: `superpixels` (H x W, 1-based labels), `labels` (cell array, one vector of 1-based superpixel
ids per candidate) and `scores` (one per candidate), either at the top level of the file or inside a
`candidates` struct. A file holding `masks` (H x W x R logical) instead of labels is read too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import PseudomaskError
from ..proposals import Proposals


class MatFileError(PseudomaskError, ValueError):
    """A .mat file that is missing, unreadable, or lacks MCG's fields; the message names the file."""


def _fields(data: dict) -> dict:
    """The file's variables, or those of its `candidates` struct."""
    if "superpixels" not in data and "candidates" in data:
        c = np.asarray(data["candidates"]).reshape(-1)
        if c.size and c.dtype.names:
            return {k: c[0][k] for k in c.dtype.names}
    return data


def _vector(x) -> np.ndarray:
    return np.asarray(x).reshape(-1)


def read_mcg_mat(path: str | os.PathLike) -> Proposals:
    """Proposals of one image from an MCG .mat file (0-based superpixels and ids, file order kept)."""
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise MatFileError(f"{p}: MCG .mat file not found")
    try:
        data = loadmat(str(p), squeeze_me=False, struct_as_record=True)
    except NotImplementedError:
        raise MatFileError(f"{p}: MATLAB v7.3 (HDF5) .mat files are not read; re-save it with save(..., '-v7')") \
            from None
    except Exception as e:  # scipy raises MatReadError, ValueError, IndexError... on damaged files
        raise MatFileError(f"{p}: cannot read .mat file ({type(e).__name__}: {e})") from None
    f = _fields(data)
    if "superpixels" not in f or not ("labels" in f or "masks" in f):
        found = sorted(k for k in f if not k.startswith("__"))
        raise MatFileError(f"{p}: expected MCG fields superpixels, labels (or masks) and scores; found {found}")
    sp = np.asarray(f["superpixels"])
    if sp.ndim != 2:
        raise MatFileError(f"{p}: superpixels has shape {sp.shape}, expected (height, width)")
    if "labels" in f:
        raw = f["labels"]
        cells = list(raw.reshape(-1)) if raw.dtype == object else [row for row in np.atleast_2d(raw)]
        regions = [_vector(c).astype(np.int64) for c in cells]
        n = int(sp.max(initial=0))
        for i, r in enumerate(regions):
            if r.size and (r.min() < 1 or r.max() > n):
                raise MatFileError(f"{p}: candidate {i + 1} refers to superpixel {int(r.max())} outside 1..{n}")
        scores = _vector(f["scores"]).astype(np.float32) if "scores" in f else np.zeros(len(regions), np.float32)
        if len(scores) != len(regions):
            raise MatFileError(f"{p}: {len(scores)} scores for {len(regions)} candidates")
        if sp.min(initial=1) < 1:
            raise MatFileError(f"{p}: superpixel labels must start at 1 (MATLAB indexing)")
        return Proposals.from_regions(sp.astype(np.int64) - 1, [r - 1 for r in regions], scores)
    masks = np.asarray(f["masks"]).astype(bool)
    if masks.ndim == 2:
        masks = masks[..., None]
    masks = np.moveaxis(masks, -1, 0)
    if masks.shape[1:] != sp.shape:
        raise MatFileError(f"{p}: masks of shape {masks.shape[1:]} do not match superpixels {sp.shape}")
    scores = _vector(f["scores"]).astype(np.float32) if "scores" in f else np.zeros(len(masks), np.float32)
    if len(scores) != len(masks):
        raise MatFileError(f"{p}: {len(scores)} scores for {len(masks)} masks")
    return Proposals.from_masks(masks, scores)


def write_mcg_mat(path: str | os.PathLike, props: Proposals) -> Path:
    """Write proposals in MCG's .mat layout (1-based superpixels and labels), e.g. for MATLAB tools."""
    from scipy.io import savemat

    cells = np.empty((len(props), 1), dtype=object)
    for i in range(len(props)):
        cells[i, 0] = (props.region(i).astype(np.float64) + 1).reshape(-1, 1)
    savemat(str(path), {"superpixels": props.superpixels.astype(np.uint32) + 1, "labels": cells,
                        "scores": props.scores.astype(np.float64).reshape(-1, 1)}, do_compression=True)
    return Path(path)
