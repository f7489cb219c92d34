from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("merge-drop", help="BoxCaseg merge (smaller box wins) and drop (proxy box IoU) of a mask artifact")
    p.add_argument("input", help="mask artifact (.h5) of a mask stage: grabcut, mcg, agree, validity, boxcaseg, cam")
    p.add_argument("--out", required=True, help="output merge_drop artifact (.h5)")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="masks whose proxy box IoU is below this are dropped (mask-ignored) (default 0.95)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..merge_drop import merge_drop

    s = merge_drop(args.input, args.out, threshold=args.threshold)
    rate = "n/a" if s["drop_rate"] is None else f"{s['drop_rate']:.3f}"
    print(f"{s['images']} images, {s['instances']} instances, {s['judged']} judged; drop rate {rate} at threshold "
          f"{s['threshold']:g}; by status: {s['status']} -> {args.out}")
    return 0
