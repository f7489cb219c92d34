"""Peaks of class response maps and the peak stimulation layer of PRM (Zhou et al. 2018), used by WISE.

A peak is a local maximum within an r x r window. Ties are broken deterministically by raster order: a pixel
is a peak when no earlier pixel of its window (row-major) is >= it and no later pixel is > it, i.e. the first
maximum of its window is itself, so a flat plateau yields one peak (its first pixel) per window, not many.
As in PRM, peaks below the median of their map are discarded (the "median filter"), so that flat background
cannot produce peaks; the global maximum always survives, so every map has at least one peak.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def local_maxima(maps: torch.Tensor, win: int) -> torch.Tensor:
    """Bool (N, C, H, W): pixels that are the first maximum (raster order) of their win x win window."""
    if win < 1 or win % 2 == 0:
        raise ValueError(f"peak window must be a positive odd number, got {win}")
    r = win // 2
    h, w = maps.shape[-2:]
    padded = F.pad(maps, (r, r, r, r), value=float("-inf"))
    peak = torch.ones_like(maps, dtype=torch.bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            nb = padded[..., r + dy:r + dy + h, r + dx:r + dx + w]
            peak &= (maps > nb) if (dy, dx) < (0, 0) else (maps >= nb)
    return peak


def median_filter(maps: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """Keep only peaks at or above the median of their own map (PRM's peak filter)."""
    med = maps.flatten(-2).median(dim=-1).values[..., None, None]
    return peaks & (maps >= med)


def peak_stimulation(maps: torch.Tensor, win: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores (N, C) as the mean response at each map's peaks, and the bool peak map (N, C, H, W).

    The peak positions are constants of the forward pass, so the gradient reaches only the peaks: training
    stimulates the responses at object locations instead of over the whole map.
    """
    with torch.no_grad():
        peaks = median_filter(maps, local_maxima(maps, win))
    p = peaks.to(maps.dtype)
    scores = (maps * p).flatten(2).sum(-1) / p.flatten(2).sum(-1).clamp_min(1)
    return scores, peaks


def find_peaks(cam: np.ndarray, win: int, rel_threshold: float = 0.0, max_peaks: int | None = None) -> np.ndarray:
    """Peaks of one (H, W) map as rows (y, x, value), strongest first.

    Only peaks with value >= median + rel_threshold * (max - median) are kept: 0 keeps every median-filtered
    peak, 1 only the global maximum. The threshold is relative so that it does not depend on the scale of an
    untrained or differently trained classifier.
    """
    m = torch.as_tensor(np.asarray(cam, np.float32))[None, None]
    peaks = median_filter(m, local_maxima(m, win))[0, 0].numpy()
    ys, xs = np.nonzero(peaks)
    vals = np.asarray(cam, np.float64)[ys, xs]
    med, top = float(np.median(cam)), float(np.max(cam))
    keep = vals >= med + rel_threshold * (top - med)
    ys, xs, vals = ys[keep], xs[keep], vals[keep]
    order = np.lexsort((xs, ys, -vals))
    if max_peaks is not None:
        order = order[:max_peaks]
    return np.stack([ys[order], xs[order], vals[order]], 1) if len(order) else np.zeros((0, 3))
