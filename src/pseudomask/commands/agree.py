from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("agree", help="GrabCut ∩ MCG agreement: foreground where both agree, ignore where they differ")
    p.add_argument("grabcut", help="grabcut artifact (.h5)")
    p.add_argument("mcg", help="mcg artifact of the same shard (.h5)")
    p.add_argument("--out", required=True)
    p.add_argument("--rest-of-box", default="background", choices=["background", "ignore"],
                   help="label of box pixels both call background (default background)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..agree import run_agree
    from ..summary import artifact_summary

    run_agree(args.grabcut, args.mcg, args.out, args.rest_of_box)
    print(f"wrote {args.out}: {artifact_summary(args.out)['status']}")
    return 0
