from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("show", help="draw one image of an artifact with its boxes, masks and ignore regions")
    p.add_argument("file")
    p.add_argument("--image", type=int, required=True, help="image id")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--images", help="image folder (default: the one recorded in the artifact)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import PseudomaskError
    from ..images import write_image
    from ..store import Artifact
    from ..visualize import render_artifact_image

    with Artifact(args.file) as a:
        if args.image not in a.image_ids:
            raise PseudomaskError(f"{args.file}: no image {args.image} (it has {len(a.image_ids)} images, "
                                  f"ids {a.image_ids[:5]}...)")
        write_image(args.out, render_artifact_image(a, args.image, args.images))
    print(f"wrote {args.out}")
    return 0
