"""The two doors to a stage run the same code with the same defaults: every stage, run once by the workflow's
rule and once by its `pseudomask` subcommand with no settings options, writes equal outputs (same instances,
statuses, reasons, masks, maps and provenance).

Each door runs the whole chain in its own work folder with the same relative layout, so that content digests
(tests/workflow_run.py) compare the two folders file by file.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pseudomask.cli import main
from pseudomask.config import default_config, deep_update
from pseudomask.registry import STAGES
from pseudomask.retrain.mmdet_config import CPU_PROFILE
from workflow_run import digest, outputs, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.mmdet]

SCENES = 4  # the departures from the defaults: a small demo (the CLI gets it as --scenes), 2 held-out scenes,
SMALL_DEMO = {"demo_data": {"scenes": SCENES, "test_scenes": 2},  # the model tested on its training images
              "workflow": {"test_annotations": "", "test_images": ""}}
SHORT_RETRAIN = {"cpu": {**CPU_PROFILE, "max_iters": 2, "scale": 192}}  # and the CPU profile, shorter
GT = "resources/demo/annotations.json"
SHARD = "results/ingest/shards/s00000.h5"


def _workflow(wd, over: dict) -> dict[str, str]:
    cfg = deep_update(default_config(), deep_update(SMALL_DEMO, over))
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
    return [["demo-data", "--annotations", GT, "--scenes", str(SCENES), "--test-scenes", "2"],
            ["ingest", "--annotations", GT, "--images", "resources/demo/images", "--manifest",
             "results/ingest/manifest.json", "--shards", "results/ingest/shards"],
            ["mcg", "--shard", SHARD, "--out", "results/mcg/s00000.h5"]]


def test_every_box_stage_through_its_rule_and_its_cli_writes_equal_outputs(tmp_path, monkeypatch):
    rule = _workflow(tmp_path / "rule", {"retrain": SHORT_RETRAIN})
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({"retrain": SHORT_RETRAIN}))
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
         f"{r}/retrain/latest.pth", "--mmdet-config", f"{r}/retrain/mask_rcnn.py", "--config",
         str(tmp_path / "short.yaml")],
        ["predict", "--checkpoint", f"{r}/retrain/latest.pth", "--mmdet-config", f"{r}/retrain/mask_rcnn.py",
         "--images", "resources/demo/images", "--coco", f"{r}/export/pseudo.json", "--out",
         f"{r}/retrain/predictions.json"],
        ["evaluate-model", "--predictions", f"{r}/retrain/predictions.json", "--ground-truth", GT, "--out",
         f"{r}/evaluate/model.json"],
        ["annotation-cost", "--shards", SHARD, "--out", f"{r}/annotation/cost.json"],
        ["report", "--artifacts", "results/ingest/shards", *(f"{r}/{s}/s00000.h5" for s in
                                                              ("grabcut", "mcg", "agree", "validity", "boxcaseg",
                                                               "merge_drop")),
         "--ground-truth", GT, "--cost", f"{r}/annotation/cost.json", "--out", f"{r}/report/report.html"],
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
        ["evaluate-masks", "--pseudo", f"{r}/export/pseudo.json", "--ground-truth", GT, "--out",
         f"{r}/evaluate/pseudo_masks.json"],
        ["annotation-cost", "--shards", SHARD, "--out", f"{r}/annotation/cost.json"],
    ])
    assert "results/cam/s00000.h5" in rule
    assert sorted(cli) == sorted(rule)
    for k in rule:
        assert cli[k] == rule[k], k


def test_the_hybrid_stages_through_their_rules_and_their_clis_write_equal_outputs(tmp_path, monkeypatch):
    """retrain.recipe hybrid (a strict validity so that the demo has invalid masks, two training iterations);
    the CLI door starts from the rule door's export and validity artifacts."""
    short = SHORT_RETRAIN
    over = {"workflow": {"boxcaseg": False}, "validity": {"min_iou": 0.95}, "retrain": {"recipe": "hybrid"},
            "retrain_hybrid": short}
    cfg = deep_update(default_config(), deep_update(SMALL_DEMO, over))
    (tmp_path / "rule").mkdir()
    (tmp_path / "rule/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(tmp_path / "rule", "--cores", "2", timeout=1800)
    rule = {k: digest(p, tmp_path / "rule") for k, p in outputs(tmp_path / "rule").items()
            if k.startswith(("results/hybrid/", "results/evaluate/hybrid")) and "/work/" not in k}
    cli_wd = tmp_path / "cli"
    for rel in ("resources", "results/export", "results/validity", "results/grabcut"):
        shutil.copytree(tmp_path / "rule" / rel, cli_wd / rel)
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({"retrain_hybrid": short}))
    r, h = "results", "results/hybrid"
    monkeypatch.chdir(cli_wd)
    for argv in (
        ["hybrid-split", "--annotations", f"{r}/export/pseudo.json", "--validity", f"{r}/validity/s00000.h5",
         "--masks", f"{r}/grabcut/s00000.h5", "--large", f"{h}/large.json", "--small", f"{h}/small.json"],
        ["retrain-hybrid", "--large", f"{h}/large.json", "--small", f"{h}/small.json", "--images",
         "resources/demo/images", "--large-checkpoint", f"{h}/large/latest.pth", "--large-config",
         f"{h}/large/mask_rcnn.py", "--small-checkpoint", f"{h}/small/latest.pth", "--small-config",
         f"{h}/small/faster_rcnn.py", "--config", str(tmp_path / "short.yaml")],
        ["predict-hybrid", "--large-checkpoint", f"{h}/large/latest.pth", "--large-config", f"{h}/large/mask_rcnn.py",
         "--small-checkpoint", f"{h}/small/latest.pth", "--small-config", f"{h}/small/faster_rcnn.py", "--images",
         "resources/demo/images", "--coco", f"{r}/export/pseudo.json", "--out", f"{h}/predictions.json"],
        ["evaluate-hybrid", "--predictions", f"{h}/predictions.json", "--ground-truth", GT, "--out",
         f"{r}/evaluate/hybrid.json"]):
        assert main(argv) == 0, argv
    cli = {k: digest(p, cli_wd) for k, p in outputs(cli_wd).items()
           if k.startswith(("results/hybrid/", "results/evaluate/hybrid")) and "/work/" not in k}
    assert sorted(cli) == sorted(rule)
    assert {"results/evaluate/hybrid.json", "results/hybrid/predictions.json", "results/hybrid/small.json"} <= set(cli)
    for k in rule:
        assert cli[k] == rule[k], k


def test_the_annotation_stages_through_their_rules_and_their_clis_write_equal_outputs(tmp_path, monkeypatch):
    """The annotation loop on merge_drop of GrabCut; the demo's true masks play the annotator's corrections."""
    r = "results"
    targets = [f"{r}/annotation/job.json", f"{r}/annotation/yolo", f"{r}/annotation/strong.json"]
    over = {"workflow": {"boxcaseg": False, "retrain": False, "merge_drop_source": "grabcut",
                         "annotation_corrections": GT}}
    wd = tmp_path / "rule"
    wd.mkdir(parents=True)
    cfg = deep_update(default_config(), deep_update(SMALL_DEMO, over))
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(wd, "--cores", "2", *targets, timeout=1800)
    rule = _digests(wd)
    md = f"{r}/merge_drop/s00000.h5"
    cli = _cli(tmp_path / "cli", monkeypatch, _start()[:2] + [
        ["grabcut", "--shard", SHARD, "--out", f"{r}/grabcut/s00000.h5"],
        ["merge-drop", "--masks", f"{r}/grabcut/s00000.h5", "--out", md],
        ["annotation-cost", "--shards", SHARD, "--out", f"{r}/annotation/cost.json"],
        ["choose-images", "--masks", md, "--cost", f"{r}/annotation/cost.json", "--out", f"{r}/annotation/choice.json"],
        ["annotation-job", "--choice", f"{r}/annotation/choice.json", "--masks", md, "--out",
         f"{r}/annotation/job.json", "--image-list", f"{r}/annotation/images.txt"],
        ["yolo-export", "--masks", md, "--out", f"{r}/annotation/yolo"],
        ["take-back", "--corrections", GT, "--shards", SHARD, "--job", f"{r}/annotation/job.json", "--out",
         f"{r}/annotation/strong.json", "--report", f"{r}/annotation/take_back.json"],
    ])
    assert {f"{r}/annotation/{f}.json" for f in ("cost", "choice", "job", "strong", "take_back")} <= set(rule)
    assert sorted(cli) == sorted(rule)
    for k in rule:
        assert cli[k] == rule[k], k
    for door in ("rule", "cli"):
        labels = sorted((tmp_path / door / r / "annotation/yolo/labels").glob("*.txt"))
        assert len(labels) == SCENES
    assert ((tmp_path / "rule" / r / "annotation/images.txt").read_text()
            .replace(str((tmp_path / "rule").resolve()), "") ==
            (tmp_path / "cli" / r / "annotation/images.txt").read_text().replace(str((tmp_path / "cli").resolve()), ""))


def test_the_crf_and_round_stages_through_their_rules_and_their_clis_write_equal_outputs(tmp_path, monkeypatch):
    """workflow.crf_source grabcut and retrain.rounds 2 (two training iterations per round); the CLI door makes
    its own round-1 artifacts (an artifact records its absolute image folder) and takes the rule door's
    round-1 model and predictions."""
    short = {"cpu": {**CPU_PROFILE, "max_iters": 2, "scale": 128}}  # the CPU profile, shorter
    over = {"workflow": {"boxcaseg": False, "crf_source": "grabcut"}, "retrain": {"rounds": 2, **short}}
    cfg = deep_update(default_config(), deep_update(SMALL_DEMO, over))
    (tmp_path / "rule").mkdir()
    (tmp_path / "rule/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(tmp_path / "rule", "--cores", "2", timeout=1800)
    mine = ("results/crf/", "results/round2/")
    rule = {k: digest(p, tmp_path / "rule") for k, p in outputs(tmp_path / "rule").items()
            if k.startswith(mine) and "/work/" not in k}
    cli_wd = tmp_path / "cli"
    for rel in ("resources", "results/retrain"):
        shutil.copytree(tmp_path / "rule" / rel, cli_wd / rel, ignore=shutil.ignore_patterns("work"))
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({"retrain": short}))
    r, r2 = "results", "results/round2"
    monkeypatch.chdir(cli_wd)
    for argv in (
        _start()[1],
        ["grabcut", "--shard", SHARD, "--out", f"{r}/grabcut/s00000.h5"],
        ["validity", "--masks", f"{r}/grabcut/s00000.h5", "--out", f"{r}/validity/s00000.h5"],
        ["merge-drop", "--masks", f"{r}/validity/s00000.h5", "--out", f"{r}/merge_drop/s00000.h5"],
        ["export", "--artifacts", f"{r}/merge_drop/s00000.h5", "--out", f"{r}/export/pseudo.json"],
        ["crf", "--masks", f"{r}/grabcut/s00000.h5", "--out", f"{r}/crf/s00000.h5"],
        ["refine-round", "--predictions", f"{r}/retrain/predictions.json", "--masks", f"{r}/merge_drop/s00000.h5",
         "--out", f"{r2}/refine_round/s00000.h5"],
        ["merge-drop", "--masks", f"{r2}/refine_round/s00000.h5", "--out", f"{r2}/merge_drop/s00000.h5"],
        ["export", "--artifacts", f"{r2}/merge_drop/s00000.h5", "--out", f"{r2}/export/pseudo.json"],
        ["evaluate-masks", "--pseudo", f"{r2}/export/pseudo.json", "--ground-truth", GT, "--out",
         f"{r2}/evaluate/pseudo_masks.json"],
        ["retrain", "--annotations", f"{r2}/export/pseudo.json", "--images", "resources/demo/images", "--checkpoint",
         f"{r2}/retrain/latest.pth", "--mmdet-config", f"{r2}/retrain/mask_rcnn.py", "--config",
         str(tmp_path / "short.yaml")],
        ["predict", "--checkpoint", f"{r2}/retrain/latest.pth", "--mmdet-config", f"{r2}/retrain/mask_rcnn.py",
         "--images", "resources/demo/images", "--coco", f"{r}/export/pseudo.json", "--out",
         f"{r2}/retrain/predictions.json"],
        ["evaluate-model", "--predictions", f"{r2}/retrain/predictions.json", "--ground-truth", GT, "--out",
         f"{r2}/evaluate/model.json"]):
        assert main(argv) == 0, argv
    cli = {k: digest(p, cli_wd) for k, p in outputs(cli_wd).items() if k.startswith(mine) and "/work/" not in k}
    assert {"results/crf/s00000.h5", f"{r2}/refine_round/s00000.h5", f"{r2}/evaluate/model.json"} <= set(rule)
    assert sorted(cli) == sorted(rule)
    for k in rule:
        assert cli[k] == rule[k], k


def test_the_strong_stages_through_their_rules_and_their_clis_write_equal_outputs(tmp_path, monkeypatch):
    """Mixed supervision: the true masks of two demo images (dataset.strong) train the quality scorer, which
    select and merge-drop then use."""
    strong = tmp_path / "strong.txt"
    strong.write_text("1\n3\n")
    over = {"dataset": {"strong": str(strong)}, "workflow": {"boxcaseg": False, "retrain": False,
                                                             "merge_drop_source": "select"},
            "scorer_train": {"min_instances": 4, "folds": 2}}
    rule = _workflow(tmp_path / "rule", over)
    (tmp_path / "scorer.yaml").write_text(yaml.safe_dump({"scorer_train": over["scorer_train"]}))
    r = "results"
    start = _start()
    start[1] += ["--strong", str(strong)]
    cli = _cli(tmp_path / "cli", monkeypatch, start + [
        ["grabcut", "--shard", SHARD, "--out", f"{r}/grabcut/s00000.h5"],
        ["agree", "--grabcut", f"{r}/grabcut/s00000.h5", "--mcg", f"{r}/mcg/s00000.h5", "--out", f"{r}/agree/s00000.h5"],
        ["validity", "--masks", f"{r}/grabcut/s00000.h5", "--out", f"{r}/validity/s00000.h5"],
        ["scorer-train", "--shards", SHARD, "--model", f"{r}/quality/scorer.json", "--config",
         str(tmp_path / "scorer.yaml")],
        ["select", "--masks", *(f"{r}/{s}/s00000.h5" for s in ("grabcut", "mcg", "agree")), "--scorer",
         f"{r}/quality/scorer.json", "--out", f"{r}/select/s00000.h5"],
        ["merge-drop", "--masks", f"{r}/select/s00000.h5", "--scorer", f"{r}/quality/scorer.json", "--out",
         f"{r}/merge_drop/s00000.h5"],
        ["export", "--artifacts", f"{r}/merge_drop/s00000.h5", "--out", f"{r}/export/pseudo.json"],
        ["evaluate-masks", "--pseudo", f"{r}/export/pseudo.json", "--ground-truth", GT, "--out",
         f"{r}/evaluate/pseudo_masks.json"],
        ["annotation-cost", "--shards", SHARD, "--strong", str(strong), "--out", f"{r}/annotation/cost.json"],
    ])
    assert {f"{r}/quality/scorer.json", f"{r}/select/s00000.h5"} <= set(rule)
    assert sorted(cli) == sorted(rule)
    for k in rule:
        assert cli[k] == rule[k], k
    pseudo = json.loads((tmp_path / "rule" / r / "export/pseudo.json").read_text())
    assert {a["image_id"] for a in pseudo["annotations"] if a["source"] == "gt"} == {1, 3}


def test_every_stage_is_covered_here():
    text = open(__file__).read()
    for stage in STAGES.values():
        assert f'"{stage.command}"' in text, stage.name
