from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("grabcut", help="fast GrabCut from each box (crop, downscale, parallel, deterministic)")
    p.add_argument("--coco", required=True, help="COCO JSON, VOC folder, or an ingested shard (.h5)")
    p.add_argument("--images", help="image folder (default: the shard's)")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=0, help="threads (default: the cores available)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--margin", type=float, default=0.25, help="background margin as a fraction of the box side")
    p.add_argument("--max-side", type=int, default=200, help="crops are downscaled to this longer side")
    p.add_argument("--fallback", default="ellipse", choices=["ellipse", "box", "none"],
                   help="replacement of empty, fragment or invalid results")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dataset import load_dataset
    from ..grabcut import run_grabcut
    from ..summary import artifact_summary

    ds = load_dataset(args.coco, args.images)
    params = {"iterations": args.iterations, "margin": args.margin, "max_side": args.max_side,
              "fallback": args.fallback}
    run_grabcut(ds, args.out, params, workers=args.workers or None, inputs=[args.coco])
    print(f"wrote {args.out}: {artifact_summary(args.out)['status']}")
    return 0
