from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score pseudo masks (artifact or COCO JSON), panoptic output or detector "
                                        "predictions against GT")
    p.add_argument("pred", help="artifact .h5, COCO dataset JSON of pseudo masks, COCO panoptic JSON (PNGs in the "
                                "folder of the same name without .json), or COCO results list")
    p.add_argument("--gt", required=True, help="COCO instances JSON with true masks, or COCO panoptic JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the JSON object to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    """Detections: COCO AP, AP^r, ABO. Pseudo masks: id-matched mIoU and invalid rates, or for tag-only masks
    AP^r, ABO and COCO AP; both with PQ. A panoptic prediction or panoptic ground truth: PQ, SQ, RQ."""
    import json
    from pathlib import Path

    from ..mask_metrics import evaluate_panoptic, evaluate_pseudo, is_detection_results

    panoptic = evaluate_panoptic(args.pred, args.gt)
    if panoptic is not None:
        result = {"kind": "panoptic", **panoptic}
    elif is_detection_results(args.pred):
        from ..detection_metrics import evaluate_detections

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
