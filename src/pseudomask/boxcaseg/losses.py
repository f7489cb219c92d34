"""BoxCaseg losses (Wang et al., CVPR 2021, Eq. 1-3).

MIL over row/column bags (BBTP's box tightness prior): every row and column crossing the box holds at least
one object pixel (positive bag), no row or column outside it holds any (negative bag); a bag's probability
is the max over its pixels. Plus 0.05 x an 8-neighbour smoothness term, and for salient images a pixel BCE
on the fused map S = alpha * S_a + (1 - alpha) * S_t. As in the authors' code (hustvl/BoxCaseg), S_a and S_t are
the heads' score maps (logits) and the sigmoid comes after the fusion: fusing probabilities instead lets a
transferred head that has not learnt yet (S_t ~ 0.5 everywhere) cap the fused map at alpha + 0.15.

All maps are (N, 1, H, W) logits; box supervision is given as a (N, 1, H, W) {0, 1} box mask, whose
row/column maxima are the bag labels (1 = positive bag, 0 = negative bag).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH_WEIGHT = 0.05


def bag_labels(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row labels (N, H), column labels (N, W)): 1 where the row/column crosses the box, else 0."""
    b = box.flatten(0, 1) if box.dim() == 4 else box
    return b.amax(dim=2), b.amax(dim=1)


def bag_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pooled bag scores: (per-row max (N, H), per-column max (N, W)); max commutes with the sigmoid."""
    s = logits.flatten(0, 1) if logits.dim() == 4 else logits
    return s.amax(dim=2), s.amax(dim=1)


def mil_bag_losses(logits: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean BCE over positive bags and over negative bags: two (N,) tensors (0 where none)."""
    rows, cols = bag_logits(logits)
    lr, lc = bag_labels(box.to(logits.dtype))
    s, y = torch.cat([rows, cols], 1), torch.cat([lr, lc], 1)
    bce = F.binary_cross_entropy_with_logits(s, y, reduction="none")
    pos, neg = y > 0.5, y <= 0.5
    pos_loss = (bce * pos).sum(1) / pos.sum(1).clamp(min=1)
    neg_loss = (bce * neg).sum(1) / neg.sum(1).clamp(min=1)
    return pos_loss, neg_loss


def mil_loss(logits: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Unary MIL term of Eq. 1 as a mean over all bags of each image, averaged over the batch."""
    rows, cols = bag_logits(logits)
    lr, lc = bag_labels(box.to(logits.dtype))
    return F.binary_cross_entropy_with_logits(torch.cat([rows, cols], 1), torch.cat([lr, lc], 1))


def smoothness(prob: torch.Tensor) -> torch.Tensor:
    """Eq. 2 as a mean: squared difference of each pixel's probability to its 8 neighbours (inside the map).

    The 8 directions come in opposite pairs with equal sums, so the mean over the 4 forward directions
    (right, down, down-right, down-left) equals the mean over all 8."""
    p = prob.flatten(0, 1) if prob.dim() == 4 else prob
    terms = [
        (p[:, :, 1:] - p[:, :, :-1]).pow(2).mean(),
        (p[:, 1:, :] - p[:, :-1, :]).pow(2).mean(),
        (p[:, 1:, 1:] - p[:, :-1, :-1]).pow(2).mean(),
        (p[:, 1:, :-1] - p[:, :-1, 1:]).pow(2).mean(),
    ]
    return torch.stack(terms).mean()


def weak_loss(logits: torch.Tensor, box: torch.Tensor, smooth_weight: float = SMOOTH_WEIGHT) -> torch.Tensor:
    """Eq. 1: MIL over row/column bags plus smooth_weight x the 8-neighbour smoothness of the probabilities."""
    return mil_loss(logits, box) + smooth_weight * smoothness(torch.sigmoid(logits))


def fused_logits(salient_logits: torch.Tensor, transferred_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * S_a + (1 - alpha) * S_t on the score maps: the map BoxCaseg is supervised on and predicts with."""
    return alpha * salient_logits + (1.0 - alpha) * transferred_logits


def fused_probability(salient_logits: torch.Tensor, transferred_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Foreground probability of the fused map: sigmoid(alpha * S_a + (1 - alpha) * S_t)."""
    return torch.sigmoid(fused_logits(salient_logits, transferred_logits, alpha))


def pixel_loss(salient_logits: torch.Tensor, transferred_logits: torch.Tensor, mask: torch.Tensor,
               alpha: float) -> torch.Tensor:
    """Eq. 3: pixel BCE of the fused map against the salient mask (mean over pixels)."""
    z = fused_logits(salient_logits, transferred_logits, alpha)
    return F.binary_cross_entropy_with_logits(z, mask.to(z.dtype))


def iou_target(pred_mask_prob: torch.Tensor, true_mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The IoU head's target, (N,): the squared IoU between the thresholded predicted mask and the true mask,
    detached (an image where both are empty counts as IoU 1). Squaring stretches the low IoUs, the ones that
    matter for finding bad masks (Bellver et al., Sec. 5)."""
    with torch.no_grad():
        p = (pred_mask_prob.flatten(1) >= threshold).float()
        t = (true_mask.flatten(1) > 0.5).float()
        inter = (p * t).sum(1)
        union = p.sum(1) + t.sum(1) - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return iou.pow(2)


def iou_loss(pred: torch.Tensor, pred_mask_prob: torch.Tensor, true_mask: torch.Tensor,
             threshold: float = 0.5) -> torch.Tensor:
    """L1 between the IoU head's prediction `pred` (N,) (a squared IoU in [0, 1]) and `iou_target`."""
    return F.l1_loss(pred.flatten(), iou_target(pred_mask_prob, true_mask, threshold).to(pred.dtype))
