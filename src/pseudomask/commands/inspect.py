"""`pseudomask inspect`: summarise an HDF5 artifact."""

from __future__ import annotations

import json

from ..summary import artifact_summary, format_summary


def run(args) -> int:
    s = artifact_summary(args.file)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0
