from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("init", help="check a dataset and write a complete config.yaml for it (every key with "
                                    "its help as a comment)")
    p.add_argument("--annotations", required=True, help="COCO JSON, Pascal VOC folder, or CSV of image,tag")
    p.add_argument("--images", required=True, help="image folder (for VOC: the folder of JPEGImages)")
    p.add_argument("--ground-truth", default="", help="COCO JSON with true masks, for evaluation only")
    p.add_argument("--strong", default="", help="true masks of some images: COCO JSON, or a text file of image ids "
                                                "(mixed supervision; dataset.strong)")
    p.add_argument("--out", default="config.yaml", help="config file to write (default: config.yaml)")
    p.add_argument("--supervision", choices=("boxes", "tags"),
                   help="default: boxes if the annotations have boxes, else tags")
    p.add_argument("--salient", default="", help="DUTS-style images/ + masks/ folder for BoxCaseg "
                                                 "(none: BoxCaseg is off)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dataset_config import format_facts, init_config

    facts = init_config(args.annotations, args.images, args.out, ground_truth=args.ground_truth,
                        supervision=args.supervision, salient=args.salient, strong=args.strong,
                        force=args.force)
    print(format_facts(facts))
    return 0
