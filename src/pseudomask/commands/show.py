"""`pseudomask show`: draw one image of an artifact with its boxes, masks and ignore regions."""

from __future__ import annotations

from ..errors import PseudomaskError
from ..images import write_image
from ..store import Artifact
from ..visualize import render_artifact_image


def run(args) -> int:
    with Artifact(args.file) as a:
        if args.image not in a.image_ids:
            raise PseudomaskError(f"{args.file}: no image {args.image} (it has {len(a.image_ids)} images, "
                                  f"ids {a.image_ids[:5]}...)")
        write_image(args.out, render_artifact_image(a, args.image, args.images))
    print(f"wrote {args.out}")
    return 0
