from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("boxcaseg-infer", help="predict a BoxCaseg mask in every box and write an artifact (HDF5)")
    p.add_argument("--coco", required=True, metavar="ANN", help="COCO JSON or ingested shard (.h5) with boxes")
    p.add_argument("--images", help="image folder of the COCO JSON (shards know theirs)")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by boxcaseg-train")
    p.add_argument("--out", required=True, help="artifact to write (.h5, stage 'boxcaseg')")
    p.add_argument("--size", default="auto",
                   help="box crops are resized to size x size; auto = training crop x 320/288 (320 for 288 crops)")
    p.add_argument("--head", default="fused", choices=["fused", "weak", "salient", "transferred"],
                   help="fused = alpha*salient + (1-alpha)*transferred (the paper); single heads for ablation")
    p.add_argument("--batch-size", type=int, default=16, help="crops per forward pass")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold")
    p.add_argument("--keep-probabilities", action="store_true",
                   help="also store each instance's probability map (uint8, map 'probability')")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..boxcaseg.infer import infer
    from ..dataset import load_dataset
    from ..store import Artifact

    ds = load_dataset(args.coco, args.images)
    size = args.size if args.size == "auto" else int(args.size)
    out = infer(ds, args.checkpoint, args.out, size=size, batch_size=args.batch_size, threshold=args.threshold,
                keep_probabilities=args.keep_probabilities, device=args.device, head=args.head, inputs=[args.coco])
    with Artifact(out) as a:
        print(f"{out}: {len(a.image_ids)} images, by status: {a.status_counts()}")
    return 0
