"""The two doors to a stage run the same code with the same defaults: every stage, run once by the workflow's
rule and once by its `pseudomask` subcommand with no settings options, writes equal outputs (same instances,
statuses, reasons, masks, maps and provenance).

Each door runs the whole chain in its own work folder with the same relative layout, so that content digests
(tests/workflow_run.py) compare the two folders file by file.
"""

from __future__ import annotations

import json

import pytest
import yaml

from pseudomask.cli import main
from pseudomask.configuration import default_config, deep_update
from pseudomask.stages import STAGES
from workflow_run import digest, outputs, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.mmdet]

SCENES = 4  # the one departure from the defaults: a small demo (the CLI gets it as --scenes)
GT = "resources/demo/annotations.json"
SHARD = "results/ingest/shards/s00000.h5"


def _workflow(wd, over: dict) -> dict[str, str]:
    cfg = deep_update(default_config(), deep_update({"demo_data": {"scenes": SCENES}}, over))
    wd.mkdir(parents=True)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(wd, "--cores", "2", timeout=1800)
    return _digests(wd)


def _digests(wd) -> dict[str, str]:
    """Content digests of the stages' outputs (not of MMEngine's own run folder, whose logs hold timings)."""
    return {k: digest(p, wd) for k, p in outputs(wd).items() if not k.startswith("results/retrain/work/")}


def _cli(wd, monkeypatch, calls: list[list[str]]) -> dict[str, str]:
    wd.mkdir(parents=True)
    monkeypatch.chdir(wd)
    for argv in calls:
        assert main(argv) == 0, argv
    return _digests(wd)


def _start() -> list[list[str]]:
    return [["demo-data", "--annotations", GT, "--scenes", str(SCENES)],
            ["ingest", "--annotations", GT, "--images", "resources/demo/images", "--manifest",
             "results/ingest/manifest.json", "--shards", "results/ingest/shards"],
            ["mcg", "--shard", SHARD, "--out", "results/mcg/s00000.h5"]]


def test_every_box_stage_through_its_rule_and_its_cli_writes_equal_outputs(tmp_path, monkeypatch):
    rule = _workflow(tmp_path / "rule", {})
    r = "results"
    cli = _cli(tmp_path / "cli", monkeypatch, _start() + [
        ["grabcut", "--shard", SHARD, "--out", f"{r}/grabcut/s00000.h5"],
        ["agree", "--grabcut", f"{r}/grabcut/s00000.h5", "--mcg", f"{r}/mcg/s00000.h5", "--out", f"{r}/agree/s00000.h5"],
        ["validity", "--masks", f"{r}/grabcut/s00000.h5", "--out", f"{r}/validity/s00000.h5"],
        ["boxcaseg-train", "--shards", SHARD, "--salient", "resources/demo/salient", "--model",
         f"{r}/boxcaseg/model.pt", "--losses", f"{r}/boxcaseg/losses.csv"],
        ["boxcaseg", "--shard", SHARD, "--model", f"{r}/boxcaseg/model.pt", "--out", f"{r}/boxcaseg/s00000.h5"],
        ["select", "--masks", *(f"{r}/{s}/s00000.h5" for s in ("grabcut", "mcg", "agree")), "--out",
         f"{r}/select/s00000.h5"],
        ["merge-drop", "--masks", f"{r}/validity/s00000.h5", "--out", f"{r}/merge_drop/s00000.h5"],
        ["export", "--artifacts", f"{r}/merge_drop/s00000.h5", "--out", f"{r}/export/pseudo.json"],
        ["evaluate-masks", "--pseudo", f"{r}/export/pseudo.json", "--ground-truth", GT, "--out",
         f"{r}/evaluate/pseudo_masks.json"],
        ["retrain", "--annotations", f"{r}/export/pseudo.json", "--images", "resources/demo/images", "--checkpoint",
         f"{r}/retrain/latest.pth", "--mmdet-config", f"{r}/retrain/mask_rcnn.py"],
        ["predict", "--checkpoint", f"{r}/retrain/latest.pth", "--mmdet-config", f"{r}/retrain/mask_rcnn.py",
         "--images", "resources/demo/images", "--coco", f"{r}/export/pseudo.json", "--out",
         f"{r}/retrain/predictions.json"],
        ["evaluate-model", "--predictions", f"{r}/retrain/predictions.json", "--ground-truth", GT, "--out",
         f"{r}/evaluate/model.json"],
        ["report", "--artifacts", "results/ingest/shards", *(f"{r}/{s}/s00000.h5" for s in
                                                              ("grabcut", "mcg", "agree", "validity", "boxcaseg",
                                                               "merge_drop")),
         "--ground-truth", GT, "--out", f"{r}/report/report.html"],
    ])
    stages = {k.split("/")[1] for k in rule}
    assert {"grabcut", "mcg", "agree", "validity", "boxcaseg", "select", "merge_drop", "export", "evaluate",
            "retrain", "ingest"} <= stages, sorted(rule)
    assert sorted(cli) == sorted(rule)
    for k in rule:
        assert cli[k] == rule[k], k
    assert (tmp_path / "rule/results/report/report.html").stat().st_size > 1000
    assert (tmp_path / "cli/results/report/report.html").stat().st_size > 1000
    ran = json.loads((tmp_path / "rule/results/ingest/manifest.json").read_text())
    assert ran["images"] == SCENES


def test_the_tag_stages_through_their_rules_and_their_clis_write_equal_outputs(tmp_path, monkeypatch):
    """The CAM branch (supervision: tags); the classifier is trained briefly through the same config section."""
    short = {"cam_train": {"backbone": "tiny", "iters": 30, "input_size": 96}}
    rule = _workflow(tmp_path / "rule", {"dataset": {"supervision": "tags"},
                                         "workflow": {"merge_drop_source": "cam", "retrain": False}, **short})
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(short))
    r = "results"
    cli = _cli(tmp_path / "cli", monkeypatch, _start() + [
        ["cam-train", "--shards", SHARD, "--model", f"{r}/cam/model.pt", "--config", str(tmp_path / "short.yaml")],
        ["cam", "--shard", SHARD, "--model", f"{r}/cam/model.pt", "--proposals", f"{r}/mcg/s00000.h5", "--out",
         f"{r}/cam/s00000.h5"],
        ["merge-drop", "--masks", f"{r}/cam/s00000.h5", "--out", f"{r}/merge_drop/s00000.h5"],
        ["export", "--artifacts", f"{r}/merge_drop/s00000.h5", "--out", f"{r}/export/pseudo.json"],
    ])
    assert "results/cam/s00000.h5" in rule
    assert sorted(cli) == sorted(rule)
    for k in rule:
        assert cli[k] == rule[k], k


def test_every_stage_is_covered_here():
    text = open(__file__).read()
    for stage in STAGES.values():
        assert f'"{stage.command}"' in text, stage.name
