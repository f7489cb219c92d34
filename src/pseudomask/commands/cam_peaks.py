from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("cam-peaks", help="CAM peaks of tagged classes -> proposal masks (WISE); Grad-CAM for stuff")
    p.add_argument("--tags", required=True, help="COCO JSON, CSV of image,tag, or an ingested shard (.h5)")
    p.add_argument("--images", help="image folder (not needed for a shard)")
    p.add_argument("--checkpoint", required=True, help="classifier written by `pseudomask cam-train`")
    p.add_argument("--proposals", help="artifact with map 'proposals' (the mcg stage's output); "
                   "default: compute MCG-style proposals on the fly")
    p.add_argument("--out", required=True, help="output artifact (.h5, stage 'cam')")
    p.add_argument("--select", choices=["sample", "best"], default="sample",
                   help="sample a proposal by objectness (WISE, default) or take the best one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-threshold", type=float, default=0.5,
                   help="keep peaks >= median + t * (max - median) of their class map (0..1)")
    p.add_argument("--max-peaks", type=int, default=10, help="per class and image")
    p.add_argument("--window", type=int, help="peak window (default: the one used in training)")
    p.add_argument("--stuff", nargs="*", default=[], metavar="NAME", help="category names of stuff classes")
    p.add_argument("--stuff-threshold", type=float, default=0.5, help="Grad-CAM threshold, fraction of its max")
    p.add_argument("--keep-duplicates", action="store_true", help="keep peaks that picked an already chosen proposal")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cam.extract import PeakSettings, extract_peaks
    from ..dataset import load_dataset
    from ..store import Artifact

    ds = load_dataset(args.tags, args.images)
    s = PeakSettings(select=args.select, seed=args.seed, peak_threshold=args.peak_threshold,
                     max_peaks=args.max_peaks, win=args.window, stuff_classes=args.stuff,
                     stuff_threshold=args.stuff_threshold, dedupe=not args.keep_duplicates, device=args.device)
    out = extract_peaks(ds, args.checkpoint, args.out, args.proposals, s, inputs=[args.tags])
    with Artifact(out) as a:
        print(f"{len(a.image_ids)} images, {len(a.instances.get('id', []))} instances "
              f"{a.status_counts()}; wrote {out}")
    return 0
