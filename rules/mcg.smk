# MCG-style proposals: per image a ranked proposal list (also for images without boxes: the CAM stage picks
# from it), per box the proposal with the highest IoU with the box.


rule mcg:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
    output:
        out=mask_artifact("mcg"),
    params:
        settings=settings("mcg"),
    log:
        f"{LOGS}/mcg/{{shard}}.log",
    threads: res("mcg", "threads")
    resources:
        mem_mb=res("mcg", "mem_mb"),
        runtime=res("mcg", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
