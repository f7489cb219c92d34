# CAM peaks: the image-level-tags entry point (WISE / PRM; Grad-CAM for stuff classes as in Li et al.). A tag
# classifier is trained on all shards, then per shard each tagged class's peaks pick MCG proposals. GPU stages:
# they declare gpu=1 for cluster profiles and run on CPU when there is none (profile cam_train.cpu).


rule cam_train:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
    output:
        model=f"{R}/cam/model.pt",
    params:
        settings=settings("cam_train"),
    log:
        f"{LOGS}/cam_train.log",
    threads: res("cam_train", "threads")
    resources:
        mem_mb=res("cam_train", "mem_mb"),
        runtime=res("cam_train", "runtime"),
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_stage.py"


rule cam:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
        model=f"{R}/cam/model.pt",
        proposals=mask_artifact("mcg"),
    output:
        out=mask_artifact("cam"),
    params:
        settings=settings("cam"),
    log:
        f"{LOGS}/cam/{{shard}}.log",
    threads: res("cam", "threads")
    resources:
        mem_mb=res("cam", "mem_mb"),
        runtime=res("cam", "runtime"),
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_stage.py"
