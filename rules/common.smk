# Paths, shard discovery, each rule's stage, settings and resources, and the list of final targets. Functions
# only; rules live in the other files. Each rule names its stage once, in its params (stage_params); its
# threads and resources follow from the stage's config section and the registry (pseudomask.config).

import json

from pseudomask.config import rule_params, rule_resources

R = config["results"]
LOGS = config["logs"]
RESOURCES = config["resources"]


wildcard_constraints:
    shard=r"s\d+",
    round=r"[2-9]|[1-9]\d+",  # rounds 2.. (rules/rounds.smk); round 1 is the rules without it


def stage_params(stage):
    """A rule's params: `stage`, what scripts/run_stage.py runs, and `settings`, the stage's config section
    without resources (a change reruns the rule)."""
    return rule_params(config, stage)


def stage_threads(stage):
    """A rule's threads: its stage's resources.threads (x resources.gpus for a training stage: per node)."""
    return rule_resources(config, stage)["threads"]


def stage_resources(stage):
    """A rule's resources: its stage's mem_mb and runtime, and gpu=1 for a GPU stage of the registry; for a
    training stage with gpus or nodes > 1 the GPUs, tasks and nodes Slurm gives the job (docs/slurm.md)."""
    return {k: v for k, v in rule_resources(config, stage).items() if k != "threads"}


def shard_names():
    """Shard names from the ingest checkpoint's manifest (re-evaluated once ingest has run)."""
    manifest = checkpoints.ingest.get().output.manifest
    with open(manifest) as fh:
        return json.load(fh)["shards"]


def per_shard(pattern):
    """Input function: `pattern` (with {shard}) for every shard of the dataset."""

    def inner(wildcards):
        return expand(pattern, shard=shard_names())

    return inner


def mask_artifact(stage):
    """The per-shard artifact of a mask stage: every one writes results/<stage>/<shard>.h5."""
    return f"{R}/{stage}/{{shard}}.h5"


def supervision():
    return config["dataset"]["supervision"]


def ground_truth():
    return config["dataset"]["ground_truth"]


def strong_file():
    """dataset.strong as input files: the one file, or none."""
    return [config["dataset"]["strong"]] if config["dataset"]["strong"] else []


def scorer_model():
    """The quality model of select and merge_drop: scorer_train's, when the dataset has strong images."""
    return f"{R}/quality/scorer.json" if config["dataset"]["strong"] else []


def test_annotations():
    """The COCO JSON whose images the retrained model predicts: workflow.test_annotations, else the export."""
    return config["workflow"]["test_annotations"] or f"{R}/export/pseudo.json"


def rounds():
    """How many rounds of pseudo labels and Mask R-CNN run (retrain.rounds; rules/rounds.smk)."""
    return int(config["retrain"]["rounds"]) if config["workflow"]["retrain"] else 1


def round_dir(k):
    """Round k's folder: results itself for round 1, results/round<k> for the later rounds."""
    return R if int(k) == 1 else f"{R}/round{k}"


def this_round(path):
    """`path` (with {shard} where per shard) in the folder of the rule's round."""
    return f"{R}/round{{round}}/{path}"


def previous_round(path):
    """Input function: `path` (with {shard} where per shard) in the folder of the round before the rule's."""

    def inner(wildcards):
        return f"{round_dir(int(wildcards.round) - 1)}/{path.format(shard=wildcards.get('shard', ''))}"

    return inner


def round_shards(path):
    """Input function: `path` (with {shard}) of the rule's round, for every shard."""

    def inner(wildcards):
        return expand(this_round(path), shard=shard_names(), round=wildcards.round)

    return inner


def train_predictions(wildcards):
    """The previous round's detections on the training images: its test-set predictions when those are the
    training images (no workflow.test_annotations), else a prediction run of their own."""
    if not config["workflow"]["test_annotations"] and not config["workflow"]["test_images"]:
        return previous_round("retrain/predictions.json")(wildcards)
    return f"{R}/round{wildcards.round}/train_predictions.json"


def final_targets(wildcards):
    shards = shard_names()
    t = [f"{R}/ingest/manifest.json"]
    if supervision() == "boxes":
        for stage in ("grabcut", "mcg", "agree", "validity"):
            t += expand(mask_artifact(stage), shard=shards)
        if config["workflow"]["boxcaseg"]:
            t += expand(mask_artifact("boxcaseg"), shard=shards)
        t += expand(mask_artifact("select"), shard=shards)
    else:
        t += expand(mask_artifact("cam"), shard=shards)
    if config["workflow"]["crf_source"]:
        t += expand(mask_artifact("crf"), shard=shards)
    t += expand(mask_artifact("merge_drop"), shard=shards)
    t += [f"{R}/export/pseudo.json", f"{R}/report/report.html"]
    if config["workflow"]["annotate"]:
        t += [f"{R}/annotation/job.json"]
    if ground_truth():
        # boxes: id-matched mask quality; tags: the CAM masks as scored predictions (AP^r, ABO, COCO AP); both PQ
        t += [f"{R}/evaluate/pseudo_masks.json"]
    if config["workflow"]["retrain"] and config["retrain"]["recipe"] == "hybrid":
        # hybrid networks (rules/hybrid.smk): two branches fused by size instead of the one Mask R-CNN
        t += [f"{R}/hybrid/predictions.json"]
        if config["workflow"]["test_annotations"] or ground_truth():
            t += [f"{R}/evaluate/hybrid.json"]
    elif config["workflow"]["retrain"]:
        t += [f"{round_dir(rounds())}/retrain/predictions.json"]
        for k in range(2, rounds() + 1):  # every round's figures, for the report
            t += [f"{round_dir(k)}/evaluate/pseudo_masks.json"] if ground_truth() else []
        if config["workflow"]["test_annotations"] or ground_truth():
            t += [f"{round_dir(k)}/evaluate/model.json" for k in range(1, rounds() + 1)]
    return t
