"""`pseudomask evaluate`: score pseudo masks, panoptic output or detections against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

from ..detection_metrics import evaluate_detections
from ..mask_metrics import evaluate_panoptic, evaluate_pseudo, is_detection_results


def run(args) -> int:
    """Detections: COCO AP, AP^r, ABO. Pseudo masks: id-matched mIoU and invalid rates, or for tag-only masks
    AP^r, ABO and COCO AP; both with PQ. A panoptic prediction or panoptic ground truth: PQ, SQ, RQ."""
    panoptic = evaluate_panoptic(args.pred, args.gt)
    if panoptic is not None:
        result = {"kind": "panoptic", **panoptic}
    elif is_detection_results(args.pred):
        result = {"kind": "detections", **evaluate_detections(args.gt, args.pred)}
    else:
        result = {"kind": "pseudo_masks", **evaluate_pseudo(args.pred, args.gt)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}")
    return 0
