# Merge-and-drop (BoxCaseg) of the configured mask source, COCO export, and pseudo-mask quality vs ground truth.


rule merge_drop:
    input:
        masks=mask_artifact(config["workflow"]["merge_drop_source"]),
        scorer=scorer_model(),
    output:
        out=mask_artifact("merge_drop"),
    params:
        **stage_params("merge_drop"),
    log:
        f"{LOGS}/merge_drop/{{shard}}.log",
    threads: stage_threads("merge_drop")
    resources:
        **stage_resources("merge_drop"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule export:
    input:
        artifacts=per_shard(mask_artifact("merge_drop")),
    output:
        out=f"{R}/export/pseudo.json",
        **({"panoptic_json": f"{R}/export/pseudo_panoptic.json"} if config["export"]["panoptic"] else {}),
    params:
        **stage_params("export"),
    log:
        f"{LOGS}/export.log",
    threads: stage_threads("export")
    resources:
        **stage_resources("export"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule evaluate_masks:
    input:
        pseudo=f"{R}/export/pseudo.json",
        ground_truth=ground_truth(),
    output:
        out=f"{R}/evaluate/pseudo_masks.json",
    params:
        **stage_params("evaluate_masks"),
    log:
        f"{LOGS}/evaluate_masks.log",
    threads: stage_threads("evaluate_masks")
    resources:
        **stage_resources("evaluate_masks"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule select:
    input:
        masks=[mask_artifact(s) for s in config["workflow"]["select_sources"]],
        scorer=scorer_model(),
    output:
        out=mask_artifact("select"),
    params:
        **stage_params("select"),
    log:
        f"{LOGS}/select/{{shard}}.log",
    threads: stage_threads("select")
    resources:
        **stage_resources("select"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule scorer_train:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
    output:
        model=f"{R}/quality/scorer.json",
    params:
        **stage_params("scorer_train"),
    log:
        f"{LOGS}/scorer_train.log",
    threads: stage_threads("scorer_train")
    resources:
        **stage_resources("scorer_train"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
