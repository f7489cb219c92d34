"""`pseudomask retrain`: train MMDetection Mask R-CNN on a COCO JSON of pseudo masks (mask_ignore honoured)."""

from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("retrain", help="train MMDetection Mask R-CNN on pseudo masks (COCO JSON with mask_ignore)")
    p.add_argument("--train", required=True, help="COCO JSON of pseudo masks (e.g. results/export/pseudo.json)")
    p.add_argument("--images", required=True, help="image folder of the training JSON")
    p.add_argument("--val", help="COCO JSON with true masks, evaluated at the end of training")
    p.add_argument("--val-images", help="image folder of --val")
    p.add_argument("--work-dir", required=True, help="run folder: generated config, logs, checkpoints, latest.pth")
    p.add_argument("--max-iters", type=int, help="training iterations (default 20)")
    p.add_argument("--scale", type=int, help="longest image side in pixels (default 320)")
    p.add_argument("--batch-size", type=int, help="images per iteration (default 2)")
    p.add_argument("--lr", type=float, help="SGD learning rate (default 0.01)")
    p.add_argument("--arch", choices=["r50", "r101"], help="backbone depth (default r50)")
    p.add_argument("--init-checkpoint", help="local .pth to start from (ImageNet ResNet or detector); default random")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=run)


def run(args) -> int:
    # OpenMP threads that spin while waiting are many times slower on a shared CPU; set before torch loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import json

    from ..retrain.config import RetrainSettings
    from ..retrain.train import train

    given = {"max_iters": args.max_iters, "scale": args.scale, "batch_size": args.batch_size, "lr": args.lr,
             "arch": args.arch, "init_checkpoint": args.init_checkpoint}
    settings = RetrainSettings.from_mapping({k: v for k, v in given.items() if v is not None})
    summary = train(args.train, args.images, args.work_dir, settings, val_json=args.val, val_images=args.val_images,
                    threads=args.threads)
    print(json.dumps(summary))
    print(f"checkpoint: {summary['checkpoint']}  config: {summary['config']}"
          + ("  (resumed)" if summary["resumed"] else ""))
    return 0
