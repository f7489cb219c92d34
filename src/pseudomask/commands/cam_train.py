from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("cam-train", help="train the tag classifier (CAM + peak stimulation) on image-level tags")
    p.add_argument("--tags", required=True, help="COCO JSON (with or without boxes; only image-level categories are "
                   "used), CSV of image,tag, or an ingested shard (.h5)")
    p.add_argument("--images", help="image folder (not needed for a shard)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt); <out>.partial holds resumable progress")
    p.add_argument("--backbone", default="auto", help="auto (resnet50 on GPU, resnet18 on CPU), tiny, or a name of "
                   "pseudomask.backbones (resnet18, resnet50, hrnetv2_w48, ...)")
    p.add_argument("--backbone-checkpoint", help="pretrained backbone weights (local file); default random init")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--input-size", type=int, default=448, help="images are resized to this square (pixels)")
    p.add_argument("--window", type=int, default=3, help="peak window r (odd, in class-map cells)")
    p.add_argument("--levels", type=int, nargs="+", default=[-1], help="backbone levels feeding the class maps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100, help="iterations between resumable snapshots")
    p.add_argument("--workers", type=int, default=0, help="image-loading processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--restart", action="store_true", help="ignore <out>.partial and train from the start")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cam.train import TrainSettings, train_classifier
    from ..dataset import load_dataset

    ds = load_dataset(args.tags, args.images)
    s = TrainSettings(backbone=args.backbone, backbone_checkpoint=args.backbone_checkpoint, iters=args.iters,
                      batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, input_size=args.input_size,
                      win=args.window, levels=args.levels, seed=args.seed, save_every=args.save_every,
                      workers=args.workers, device=args.device)
    r = train_classifier(ds, args.out, s, resume=not args.restart)
    h = r["history"]
    k = max(1, len(h) // 10)
    if h:
        print(f"{r['config']['backbone']}: {len(h)} iterations, loss {sum(h[:k]) / k:.4f} (first {k}) -> "
              f"{sum(h[-k:]) / k:.4f} (last {k}); wrote {args.out}")
    return 0
