"""What an artifact holds, for `pseudomask inspect`: provenance, counts by status and category, sizes."""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any, Iterable

import numpy as np

from .store import Artifact


def reason_pattern(reason: str) -> str:
    """A reason with its numbers replaced by '#', so that reasons of one kind count together."""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", reason)


def reason_counts(statuses: Iterable[Any], reasons: Iterable[Any]) -> Counter:
    """Counts of (status, reason pattern) over the instances that carry a reason."""
    return Counter((str(s), reason_pattern(str(r))) for s, r in zip(statuses, reasons) if str(r))


def artifact_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Stage, method, parameters, provenance, counts by status and category, box-size distribution."""
    with Artifact(path) as a:
        inst = a.instances
        n = len(inst.get("id", []))
        names = {c["id"]: c["name"] for c in a.categories}
        status = inst.get("status", np.zeros(0, object))
        by_cat: dict[str, Counter] = {}
        for c, s in zip(inst.get("category_id", []), status):
            by_cat.setdefault(names.get(int(c), str(int(c))), Counter())[str(s)] += 1
        bbox = inst.get("bbox", np.zeros((0, 4)))
        area = bbox[:, 2] * bbox[:, 3] if n else np.zeros(0)
        reasons = reason_counts(status, inst.get("reason", []))
        extra = sorted(set(inst) - {"id", "image_id", "category_id", "bbox", "status", "reason"})
        turned = a.images.get("orientation", np.zeros(0, object))
        return {
            "path": str(path), "stage": a.stage, "method": a.method, "parameters": a.params,
            "package_version": a.version, "created": a.attrs.get("created"), "inputs": a.inputs,
            "images": len(a.image_ids), "turned_images": [str(f) for f, o in zip(a.images["file_name"], turned)
                                                          if o == "exif"], "instances": n, "tags": sum(len(v) for v in a.tags.values()),
            "status": a.status_counts(),
            "categories": {k: dict(v) for k, v in sorted(by_cat.items())},
            "sizes": {"small (<32^2)": int(np.sum(area < 32 ** 2)),
                      "medium": int(np.sum((area >= 32 ** 2) & (area < 96 ** 2))),
                      "large (>=96^2)": int(np.sum(area >= 96 ** 2)),
                      "under 64x64": int(np.sum(area < 64 * 64))},
            "box_area_quantiles": [float(q) for q in np.quantile(area, [0, 0.25, 0.5, 0.75, 1])] if n else [],
            "top_reasons": {f"{st}: {r}": c for (st, r), c in reasons.most_common(5)},
            "columns": extra, "maps": a.map_names(), "has_masks": a.has_masks(),
        }


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of `artifact_summary`."""
    lines = [f"{s['path']}", f"  stage {s['stage']}  method {s['method']}  pseudomask {s['package_version']}  "
             f"created {s['created']}", f"  parameters: {s['parameters']}"]
    for p, d in s["inputs"].items():
        lines.append(f"  input {p}  sha256:{d[:16]}")
    lines.append(f"  {s['images']} images, {s['instances']} instances, {s['tags']} image tags; masks: "
                 f"{'yes' if s['has_masks'] else 'no'}; maps: {', '.join(s['maps']) or 'none'}")
    if s["turned_images"]:
        lines.append(f"  {len(s['turned_images'])} images read turned by their EXIF orientation (the annotations' "
                     f"sizes are the turned ones): {', '.join(s['turned_images'][:5])}")
    lines.append("  status: " + ", ".join(f"{k} {v}" for k, v in s["status"].items()))
    for r, c in s["top_reasons"].items():
        lines.append(f"    {c:5d} x {r}")
    lines.append("  sizes: " + ", ".join(f"{k} {v}" for k, v in s["sizes"].items()))
    if s["box_area_quantiles"]:
        lines.append("  box area quantiles (0/25/50/75/100 %): " + " / ".join(f"{q:.0f}" for q in s["box_area_quantiles"]))
    if s["columns"]:
        lines.append("  extra columns: " + ", ".join(s["columns"]))
    lines.append("  by category:")
    for name, counts in s["categories"].items():
        lines.append(f"    {name:20s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
