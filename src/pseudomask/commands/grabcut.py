from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("grabcut", help="fast GrabCut from each box (crop, downscale, parallel, deterministic)")
    p.add_argument("--coco", required=True, help="COCO JSON, VOC folder, or an ingested shard (.h5)")
    p.add_argument("--images", help="image folder (default: the shard's)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=0, help="threads (default: the cores available)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--margin", type=float, default=0.25, help="background margin as a fraction of the box side")
    p.add_argument("--min-margin", type=int, default=10, help="... but at least this many pixels")
    p.add_argument("--max-side", type=int, default=160, help="crops are downscaled to this longer side")
    p.add_argument("--min-side", type=int, default=80, help="small crops are upscaled to this longer side")
    p.add_argument("--core", type=float, default=0.2,
                   help="sure-foreground centre ellipse, fraction of the box (0: plain rect init)")
    p.add_argument("--no-clean", dest="clean", action="store_false",
                   help="keep GrabCut's raw output (no largest component, no hole filling)")
    p.add_argument("--min-box-iou", type=float, default=0.7,
                   help="results whose own box has a lower IoU with the given box get the fallback")
    p.add_argument("--fallback", default="ellipse", choices=["ellipse", "box", "none"],
                   help="replacement of empty, fragment or invalid results")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dataset import load_dataset
    from ..grabcut import run_grabcut
    from ..summary import artifact_summary

    ds = load_dataset(args.coco, args.images)
    params = {"iterations": args.iterations, "margin": args.margin, "min_margin": args.min_margin,
              "max_side": args.max_side, "min_side": args.min_side, "core": args.core, "clean": args.clean,
              "fallback": args.fallback, "min_box_iou": args.min_box_iou}
    run_grabcut(ds, args.out, params, workers=args.workers or None, inputs=[args.coco])
    print(f"wrote {args.out}: {artifact_summary(args.out)['status']}")
    return 0
