# MCG-style proposals (issue 3): per image a ranked proposal list (also for images without boxes: the CAM
# stage picks from it), per box the proposal with the highest IoU with the box.


rule mcg:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
    output:
        f"{R}/mcg/{{shard}}.h5",
    wildcard_constraints:
        shard=r"[^/.]+",
    params:
        mcg={k: v for k, v in config["mcg"].items() if k not in ("threads", "mem_mb", "runtime")},
    log:
        f"{LOGS}/mcg/{{shard}}.log",
    threads: config["mcg"].get("threads", 1)
    resources:
        mem_mb=config["mcg"].get("mem_mb", 2000),
        runtime=config["mcg"].get("runtime", 60),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/mcg.py"
