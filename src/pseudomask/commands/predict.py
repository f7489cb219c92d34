"""`pseudomask predict`: COCO results (RLE masks, boxes, scores) of a trained Mask R-CNN on a folder of images."""

from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("predict", help="run a trained Mask R-CNN and write COCO results (loadable by COCO.loadRes)")
    p.add_argument("--checkpoint", required=True, help="weights written by `pseudomask retrain` (latest.pth)")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--coco", help="COCO JSON whose images (ids, file names) to predict; default: every image "
                                  "file in --images, ids 1.. in name order")
    p.add_argument("--config", help="MMDetection config (default: mask_rcnn.py beside the checkpoint)")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--score-thr", type=float, help="lowest score kept (default: the config's, 0.05)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=2)
    p.set_defaults(func=run)


def run(args) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see commands/retrain.py
    from ..retrain.predict import predict, write_results

    results, summary = predict(args.checkpoint, args.images, coco=args.coco, config=args.config, device=args.device,
                               batch_size=args.batch_size, score_thr=args.score_thr)
    write_results(results, args.out)
    print(f"{summary['detections']} detections on {summary['images']} images -> {args.out}"
          + (f"; {len(summary['skipped'])} unreadable image(s) skipped" if summary["skipped"] else ""))
    return 0
