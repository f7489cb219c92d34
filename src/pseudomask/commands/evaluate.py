from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score pseudo masks (artifact or COCO JSON) or detector predictions against GT")
    p.add_argument("pred", help="artifact .h5, COCO dataset JSON of pseudo masks, or COCO results list")
    p.add_argument("--gt", required=True, help="COCO instances JSON with true masks")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the JSON object to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ..metrics import evaluate_pseudo, is_detection_results

    if is_detection_results(args.pred):
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
