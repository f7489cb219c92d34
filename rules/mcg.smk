# MCG-style proposals: per image a ranked proposal list (also for images without boxes: the CAM stage picks
# from it), per box the proposal with the highest IoU with the box.


rule mcg:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
    output:
        out=mask_artifact("mcg"),
    params:
        **stage_params("mcg"),
    log:
        f"{LOGS}/mcg/{{shard}}.log",
    threads: stage_threads("mcg")
    resources:
        **stage_resources("mcg"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
