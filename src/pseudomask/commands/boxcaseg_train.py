from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("boxcaseg-train", help="train BoxCaseg on box annotations and a salient-object folder")
    p.add_argument("--coco", required=True, nargs="+", metavar="ANN",
                   help="COCO JSON (or ingested shard .h5) with boxes; several shards may be given")
    p.add_argument("--images", help="image folder of the COCO JSON (shards know theirs)")
    p.add_argument("--salient", required=True, help="salient-object folder with images/ and masks/ (matching stems)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--backbone", default="hrnetv2_w48",
                   help="hrnetv2_w48 (paper), hrnetv2_w18, hrnetv2_w18_small, resnet18/34/50, resnet18_w16, "
                        "timm:<name>")
    p.add_argument("--backbone-checkpoint", help="local state_dict of backbone weights (default: random init)")
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ratio", default="9:7", help="box:salient images per batch (default 9:7)")
    p.add_argument("--crop-size", type=int, default=288)
    p.add_argument("--salient-resize", type=int, default=320)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the salient head in the fused map")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", help="loss log CSV (default: <out stem>_losses.csv)")
    p.add_argument("--no-resume", action="store_true", help="ignore a resume state next to --out")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..boxcaseg.train import TrainConfig, train
    from ..dataset import load_dataset

    datasets = [load_dataset(a, args.images) for a in args.coco]
    cfg = TrainConfig.from_dict({
        "backbone": args.backbone, "backbone_checkpoint": args.backbone_checkpoint, "iters": args.iters,
        "batch_size": args.batch_size, "ratio": args.ratio, "crop_size": args.crop_size,
        "salient_resize": args.salient_resize, "alpha": args.alpha, "optimizer": args.optimizer, "lr": args.lr,
        "device": args.device, "workers": args.workers, "seed": args.seed})
    summary = train(datasets, args.salient, args.out, cfg, loss_log=args.log, resume=not args.no_resume)
    print(json.dumps(summary))
    return 0
