# Merge-and-drop (BoxCaseg) of the configured mask source, COCO export, and pseudo-mask quality vs ground truth.


rule merge_drop:
    input:
        masks=mask_source_path(),
    output:
        f"{R}/merge_drop/{{shard}}.h5",
    params:
        threshold=config["merge_drop"]["threshold"],
    log:
        f"{LOGS}/merge_drop/{{shard}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/merge_drop.py"


rule export:
    input:
        per_shard(f"{R}/merge_drop/{{shard}}.h5"),
    output:
        f"{R}/export/pseudo.json",
    log:
        f"{LOGS}/export.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/export.py"


rule evaluate_masks:
    input:
        pseudo=f"{R}/export/pseudo.json",
        ground_truth=lambda wildcards: ground_truth(),
    output:
        f"{R}/evaluate/pseudo_masks.json",
    log:
        f"{LOGS}/evaluate_masks.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/evaluate_masks.py"
