# The annotation loop (mask-guided selection): what the labels cost, which images a person should annotate
# (from merge_drop's predicted quality), the COCO job for the annotation tool, a YOLO-seg export, and the
# annotator's corrections taken back as a strong file. Not in `all`: ask for the files, e.g.
# `snakemake --cores 2 results/annotation/job.json` (docs/annotation.md).


rule annotation_cost:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
        strong=strong_file(),
    output:
        out=f"{R}/annotation/cost.json",
    params:
        **stage_params("annotation_cost"),
    log:
        f"{LOGS}/annotation_cost.log",
    threads: stage_threads("annotation_cost")
    resources:
        **stage_resources("annotation_cost"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule choose_images:
    input:
        masks=per_shard(mask_artifact("merge_drop")),
        strong=strong_file(),
        cost=f"{R}/annotation/cost.json",
    output:
        out=f"{R}/annotation/choice.json",
    params:
        **stage_params("choose_images"),
    log:
        f"{LOGS}/choose_images.log",
    threads: stage_threads("choose_images")
    resources:
        **stage_resources("choose_images"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule annotation_job:
    input:
        choice=f"{R}/annotation/choice.json",
        masks=per_shard(mask_artifact("merge_drop")),
    output:
        out=f"{R}/annotation/job.json",
        image_list=f"{R}/annotation/images.txt",
    params:
        **stage_params("annotation_job"),
    log:
        f"{LOGS}/annotation_job.log",
    threads: stage_threads("annotation_job")
    resources:
        **stage_resources("annotation_job"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule yolo_export:
    input:
        masks=per_shard(mask_artifact("merge_drop")),
    output:
        out=directory(f"{R}/annotation/yolo"),
    params:
        **stage_params("yolo_export"),
    log:
        f"{LOGS}/yolo_export.log",
    threads: stage_threads("yolo_export")
    resources:
        **stage_resources("yolo_export"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule take_back:
    input:
        corrections=config["workflow"]["annotation_corrections"],
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
        job=f"{R}/annotation/job.json",
    output:
        out=f"{R}/annotation/strong.json",
        report=f"{R}/annotation/take_back.json",
    params:
        **stage_params("take_back"),
    log:
        f"{LOGS}/take_back.log",
    threads: stage_threads("take_back")
    resources:
        **stage_resources("take_back"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
