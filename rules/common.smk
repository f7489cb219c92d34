# Paths, shard discovery and the list of final targets. Functions only; rules live in the other files.

import json
import os

R = config["results"]
LOGS = config["logs"]
RESOURCES = config["resources"]


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


def supervision():
    return config["dataset"]["supervision"]


def mask_source_path():
    """The per-shard artifact that feeds merge-drop, as chosen by config `merge_drop.source`."""
    return {
        "grabcut": f"{R}/grabcut/{{shard}}.h5",
        "mcg": f"{R}/mcg/{{shard}}.h5",
        "agreement": f"{R}/agree/{{shard}}.h5",
        "validity": f"{R}/validity/{{shard}}.h5",
        "boxcaseg": f"{R}/boxcaseg/{{shard}}.h5",
        "cam": f"{R}/cam/{{shard}}.h5",
    }[config["merge_drop"]["source"]]


def validity_input_path():
    """The per-shard artifact whose masks validity checks (config `validity.input`)."""
    stage = {"agreement": "agree"}.get(config["validity"]["input"], config["validity"]["input"])
    return f"{R}/{stage}/{{shard}}.h5"


def ground_truth():
    return config["dataset"].get("ground_truth") or ""


def final_targets(wildcards):
    shards = shard_names()
    t = [f"{R}/ingest/manifest.json"]
    if supervision() == "boxes":
        for stage in ("grabcut", "mcg", "agree", "validity"):
            t += expand(f"{R}/{stage}/{{shard}}.h5", shard=shards)
        if config["boxcaseg"]["enabled"]:
            t += expand(f"{R}/boxcaseg/{{shard}}.h5", shard=shards)
    else:
        t += expand(f"{R}/cam/{{shard}}.h5", shard=shards)
    t += expand(f"{R}/merge_drop/{{shard}}.h5", shard=shards)
    t += [f"{R}/export/pseudo.json", f"{R}/report/report.html"]
    if ground_truth() and supervision() == "boxes":
        # id-matched mask quality; tag-only instances have no GT ids (benchmarks/bench_cam.py scores them by AP^r)
        t += [f"{R}/evaluate/pseudo_masks.json"]
    if config["retrain"]["enabled"]:
        t += [f"{R}/retrain/predictions.json"]
        if config["retrain"].get("test_annotations") or ground_truth():
            t += [f"{R}/evaluate/model.json"]
    return t
