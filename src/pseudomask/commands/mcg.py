from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("mcg", help="MCG-style proposals per image; per box the proposal with the highest IoU with it")
    p.add_argument("--coco", required=True, help="COCO JSON (or an ingested shard .h5) with the boxes")
    p.add_argument("--images", help="image folder (optional for a shard)")
    p.add_argument("--out", required=True, help="output artifact (.h5), stage 'mcg'")
    p.add_argument("--mat-dir", default="", help="folder of precomputed MCG .mat files (<image stem>.mat)")
    p.add_argument("--no-clip", dest="clip", action="store_false", help="keep the parts of proposals outside their box")
    p.add_argument("--max-proposals", type=int, help="proposals stored per image (default 1000)")
    p.add_argument("--nms", type=float, help="near-duplicate suppression IoU for the stored list (default 0.9)")
    p.add_argument("--max-side", type=int, help="longer image side the proposals are computed at (default 640)")
    p.add_argument("--superpixel-scale", type=float, help="Felzenszwalb scale of the base superpixels (default 50)")
    p.add_argument("--workers", type=int, default=1, help="processes computing images in parallel")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dataset import load_dataset
    from ..mcg import run_mcg
    from ..store import Artifact

    ds = load_dataset(args.coco, args.images)
    params = {k: v for k, v in {"max_proposals": args.max_proposals, "nms": args.nms, "max_side": args.max_side,
                                "superpixel_scale": args.superpixel_scale}.items() if v is not None}
    out = run_mcg(ds, args.out, mat_dir=args.mat_dir or None, clip=args.clip, workers=args.workers,
                  inputs=[args.coco], **params)
    with Artifact(out, stage="mcg") as a:
        n_props = [len(a.map("proposals", i)["scores"]) for i in a.image_ids if a.map("proposals", i)]
        iou = a.instances.get("proposal_iou")
        kept = a.instances["status"] == "kept" if len(a.instances.get("status", [])) else []
        mean_iou = float(iou[kept].mean()) if iou is not None and len(iou) and kept.any() else float("nan")
        print(f"{len(a.image_ids)} images, {sum(n_props) / max(len(n_props), 1):.0f} proposals per image, "
              f"mean proposal-box IoU {mean_iou:.3f}; by status: {a.status_counts()} -> {out}")
    return 0
