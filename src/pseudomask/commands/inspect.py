from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("inspect", help="summarise an HDF5 artifact: provenance, counts by status and category, sizes")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..summary import artifact_summary, format_summary

    s = artifact_summary(args.file)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0
