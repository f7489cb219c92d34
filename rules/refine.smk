# Merge-and-drop (BoxCaseg) of the configured mask source, COCO export, and pseudo-mask quality vs ground truth.


rule merge_drop:
    input:
        masks=mask_artifact(config["workflow"]["merge_drop_source"]),
        scorer=scorer_model(),
    output:
        out=mask_artifact("merge_drop"),
    params:
        settings=settings("merge_drop"),
    log:
        f"{LOGS}/merge_drop/{{shard}}.log",
    threads: res("merge_drop", "threads")
    resources:
        mem_mb=res("merge_drop", "mem_mb"),
        runtime=res("merge_drop", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule export:
    input:
        artifacts=per_shard(mask_artifact("merge_drop")),
    output:
        out=f"{R}/export/pseudo.json",
        **({"panoptic_json": f"{R}/export/pseudo_panoptic.json"} if settings("export")["panoptic"] else {}),
    params:
        settings=settings("export"),
    log:
        f"{LOGS}/export.log",
    threads: res("export", "threads")
    resources:
        mem_mb=res("export", "mem_mb"),
        runtime=res("export", "runtime"),
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
        settings=settings("evaluate_masks"),
    log:
        f"{LOGS}/evaluate_masks.log",
    threads: res("evaluate_masks", "threads")
    resources:
        mem_mb=res("evaluate_masks", "mem_mb"),
        runtime=res("evaluate_masks", "runtime"),
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
        settings=settings("select"),
    log:
        f"{LOGS}/select/{{shard}}.log",
    threads: res("select", "threads")
    resources:
        mem_mb=res("select", "mem_mb"),
        runtime=res("select", "runtime"),
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
        settings=settings("scorer_train"),
    log:
        f"{LOGS}/scorer_train.log",
    threads: res("scorer_train", "threads")
    resources:
        mem_mb=res("scorer_train", "mem_mb"),
        runtime=res("scorer_train", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
