from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="write pseudo masks of merge_drop (or mask) artifacts as one COCO JSON")
    p.add_argument("inputs", nargs="+", help="artifacts (.h5), e.g. every shard of merge_drop")
    p.add_argument("--out", required=True, help="COCO instances JSON to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export import export_coco, export_summary

    s = export_summary(export_coco(args.inputs, args.out))
    print(f"{s['images']} images, {s['annotations']} annotations ({s['mask_ignore']} mask-ignored); "
          f"by status: {s['status']} -> {args.out}")
    return 0
