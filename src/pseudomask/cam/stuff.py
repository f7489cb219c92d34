"""Stuff classes from image tags (Li et al., weakly- and semi-supervised panoptic segmentation, sec. 3.3).

A stuff class (sky, road, ...) has one instance per image: its Grad-CAM heatmap thresholded at a fraction of its
maximum (50 % in the paper, up from Grad-CAM's 15 % for precision). Where the regions of two classes overlap,
the class whose thresholded region is smaller takes the pixel, so small or thin regions are not swallowed.
"""

from __future__ import annotations

import numpy as np


def stuff_regions(heatmaps: np.ndarray, rel_threshold: float = 0.5) -> np.ndarray:
    """Bool (K, H, W) non-overlapping regions from K heatmaps (K, H, W).

    Each map is thresholded at rel_threshold times its own maximum (strictly positive values only, so an
    all-zero map gives an empty region); overlaps go to the smaller region, ties to the earlier map.
    """
    heat = np.asarray(heatmaps, np.float64)
    if heat.ndim != 3:
        raise ValueError(f"heatmaps must be (K, H, W), got shape {heat.shape}")
    top = heat.reshape(len(heat), -1).max(1, initial=0.0) if heat.size else np.zeros(len(heat))
    raw = (heat >= rel_threshold * top[:, None, None]) & (heat > 0)
    out = np.zeros_like(raw)
    taken = np.zeros(heat.shape[1:], bool)
    for k in np.argsort(raw.reshape(len(raw), -1).sum(1), kind="stable"):
        out[k] = raw[k] & ~taken
        taken |= out[k]
    return out


def grad_cam(features, score):
    """Grad-CAM (Selvaraju et al.) of a scalar `score` w.r.t. `features` (1, K, h, w): (h, w) tensor.

    Channel weights are the spatially averaged gradients; the map is the ReLU of the weighted sum of channels.
    """
    import torch

    (grad,) = torch.autograd.grad(score, features, retain_graph=True)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * features).sum(1))[0].detach()
