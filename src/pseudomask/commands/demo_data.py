from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo-data", help="render the synthetic demo dataset (COCO JSON, images, salient set)")
    p.add_argument("out_dir")
    p.add_argument("--images", type=int, default=24, help="number of scenes (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    p.add_argument("--salient", type=int, default=None, help="salient images (default: 4 per scene)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import make_demo_data

    path = make_demo_data(args.out_dir, args.images, args.seed, tuple(args.size), args.salient)
    print(f"wrote {path}")
    return 0
