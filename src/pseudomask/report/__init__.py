"""A self-contained HTML report of a results folder: what each stage did, and how good the pseudo masks are.

Sections: instance counts by status per stage; the drop curve over thresholds (BoxCaseg Table 8 shape:
drop rate, and with ground truth the mIoU of kept masks next to that of all masks), computed from the
merge_drop data; a histogram of proxy box IoU; mask quality per stage against ground truth when given;
predicted mask quality (histograms; with ground truth calibration, Spearman and drop curves by proxy box IoU
and by quality at equal keep rates; the lowest-quality kept masks to review first);
counts by category; sample images with every stage's overlay side by side; provenance. Every picture is a
base64 PNG inside the one HTML file, so the report can be mailed or opened offline.

`data` reads what is shown from the artifacts, `figures` draws the pictures, `sections` writes the HTML of
each section; this module holds the stage: its settings, `build_report` and `run_stage`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..files import write_text_atomic
from ..mask_metrics import GroundTruth
from ..merge_drop import THRESHOLDS
from ..settings import Settings, setting
from .data import STAGES, StageScores, find_artifacts, keep_rate_curves, lowest_quality
from .sections import (annotation_section, category_section, drop_section, evaluation_section,
                       mask_quality_section, page, provenance_section, quality_section, samples_section,
                       status_section, title)

__all__ = ["STAGES", "ReportSettings", "build_report", "keep_rate_curves", "lowest_quality", "run_stage"]


@dataclass(frozen=True)
class ReportSettings(Settings):
    SECTION = "report"
    samples: int = setting(4, "sample images shown stage by stage", minimum=0)
    thresholds: tuple[float, ...] = setting(list(THRESHOLDS), "drop-curve thresholds (BoxCaseg Table 8)")


def build_report(results: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
                 ground_truth: str | os.PathLike | None = None, samples: int = 4,
                 stages: Sequence[str] | None = None, thresholds: Sequence[float] = THRESHOLDS,
                 thumb_width: int = 320, reasons: int = 5, gallery: int = 8, cost: str | os.PathLike | None = None,
                 choice: str | os.PathLike | None = None,
                 evaluations: Sequence[str | os.PathLike] | None = None) -> Path:
    """Write the HTML report to `out`, of a results folder or of a list of artifacts (files or folders);
    `cost` and `choice` (annotation-cost and choose-images JSON) add the annotation section, `evaluations`
    (metrics JSONs of the evaluate stages) the evaluation section, by round."""
    files, where = find_artifacts(results, stages)
    gt = GroundTruth(ground_truth) if ground_truth else None
    score = StageScores(files, gt) if gt is not None else None
    md = files.get("merge_drop")
    ref = "merge_drop" if md else list(files)[-1]
    parts = [title(where, ground_truth), status_section(files, reasons), drop_section(md, score, thresholds)]
    if gt is not None:
        parts.append(mask_quality_section(files, gt, score))
    parts.append(samples_section(files, ref, samples, thumb_width))
    parts.append(quality_section(files, gt, score, gallery=gallery))
    if evaluations:
        parts.append(evaluation_section(evaluations))
    if cost or choice:
        parts.append(annotation_section(files, cost, choice, thumb_width))
    parts += [category_section(files[ref], ref), provenance_section(files)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(page(parts), out)


def run_stage(s: ReportSettings, *, artifacts: list[str], ground_truth: str | None, out: str,
              cost: str | None = None, choice: str | None = None, evaluations: list[str] | None = None,
              threads: int = 1) -> dict:
    """The `report` stage (see pseudomask.registry): of artifacts and folders of them, or of one results folder."""
    one = Path(artifacts[0]) if len(artifacts) == 1 else None
    where = str(one) if one is not None and (one / "ingest").is_dir() else list(artifacts)
    return {"out": str(build_report(where, out, ground_truth=ground_truth or None, samples=s.samples,
                                    thresholds=s.thresholds, cost=cost, choice=choice,
                                    evaluations=evaluations))}
