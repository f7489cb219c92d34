from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("validity", help="box-agreement validity (IoU of the mask's box with the GT box)")
    p.add_argument("input", help="artifact of a mask stage (.h5)")
    p.add_argument("--out", required=True)
    p.add_argument("--min-iou", type=float, default=0.5)
    p.add_argument("--ellipse", action="store_true", help="replace invalid masks by the box's inscribed ellipse")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..store import Artifact
    from ..validity import run_validity

    run_validity(args.input, args.out, args.min_iou, args.ellipse)
    with Artifact(args.out) as a:
        print(f"wrote {args.out}: {a.status_counts()}; {json.loads(a.attrs['invalid_rates'])}")
    return 0
