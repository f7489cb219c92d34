from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("ingest", help="read COCO / VOC / tags input and write shard records (HDF5)")
    p.add_argument("annotations", help="COCO JSON, Pascal VOC folder, or CSV of image,tag")
    p.add_argument("--images", help="image folder (not needed for VOC)")
    p.add_argument("--format", default="auto", choices=["auto", "coco", "voc", "tags-csv"])
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--out", required=True, help="output folder for shard files and manifest.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ingest import ingest

    manifest = ingest(args.annotations, args.images, args.out, shard_size=args.shard_size, fmt=args.format)
    print(f"{manifest['images']} images, {manifest['instances']} instances in {len(manifest['shards'])} shard(s); "
          f"by status: {manifest['status']}")
    return 0
