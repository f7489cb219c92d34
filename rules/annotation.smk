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
        settings=settings("annotation_cost"),
    log:
        f"{LOGS}/annotation_cost.log",
    threads: res("annotation_cost", "threads")
    resources:
        mem_mb=res("annotation_cost", "mem_mb"),
        runtime=res("annotation_cost", "runtime"),
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
        settings=settings("choose_images"),
    log:
        f"{LOGS}/choose_images.log",
    threads: res("choose_images", "threads")
    resources:
        mem_mb=res("choose_images", "mem_mb"),
        runtime=res("choose_images", "runtime"),
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
        settings=settings("annotation_job"),
    log:
        f"{LOGS}/annotation_job.log",
    threads: res("annotation_job", "threads")
    resources:
        mem_mb=res("annotation_job", "mem_mb"),
        runtime=res("annotation_job", "runtime"),
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
        settings=settings("yolo_export"),
    log:
        f"{LOGS}/yolo_export.log",
    threads: res("yolo_export", "threads")
    resources:
        mem_mb=res("yolo_export", "mem_mb"),
        runtime=res("yolo_export", "runtime"),
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
        settings=settings("take_back"),
    log:
        f"{LOGS}/take_back.log",
    threads: res("take_back", "threads")
    resources:
        mem_mb=res("take_back", "mem_mb"),
        runtime=res("take_back", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
