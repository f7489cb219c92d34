# Paths, shard discovery, settings and the list of final targets. Functions only; rules live in the other
# files. A stage's settings and resources come from its config section (pseudomask.configuration).

import json

from pseudomask.configuration import stage_resource, stage_settings

R = config["results"]
LOGS = config["logs"]
RESOURCES = config["resources"]


wildcard_constraints:
    shard=r"s\d+",


def settings(stage):
    """The stage's settings (its config section without resources): the rule's params."""
    return stage_settings(config, stage)


def res(stage, key):
    """One of the stage's cluster resources: threads, mem_mb or runtime."""
    return stage_resource(config, stage, key)


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


def test_annotations():
    """The COCO JSON whose images the retrained model predicts: workflow.test_annotations, else the export."""
    return config["workflow"]["test_annotations"] or f"{R}/export/pseudo.json"


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
    t += expand(mask_artifact("merge_drop"), shard=shards)
    t += [f"{R}/export/pseudo.json", f"{R}/report/report.html"]
    if ground_truth() and supervision() == "boxes":
        # id-matched mask quality; tag-only instances have no GT ids (benchmarks/bench_cam.py scores them by AP^r)
        t += [f"{R}/evaluate/pseudo_masks.json"]
    if config["workflow"]["retrain"]:
        t += [f"{R}/retrain/predictions.json"]
        if config["workflow"]["test_annotations"] or ground_truth():
            t += [f"{R}/evaluate/model.json"]
    return t
