"""`pseudomask init`: check a dataset and write a complete config.yaml for it."""

from __future__ import annotations

from ..dataset_config import format_facts, init_config


def run(args) -> int:
    facts = init_config(args.annotations, args.images, args.out, ground_truth=args.ground_truth,
                        supervision=args.supervision, salient=args.salient, strong=args.strong,
                        force=args.force)
    print(format_facts(facts))
    return 0
