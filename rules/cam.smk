# CAM peaks: the image-level-tags entry point (WISE / PRM; Grad-CAM for stuff classes as in Li et al.). A tag
# classifier is trained on all shards, then per shard each tagged class's peaks pick MCG proposals. GPU stages
# (their rules get gpu=1 from the registry, for cluster profiles); they run on CPU when there is none
# (profile cam_train.cpu).


rule cam_train:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
    output:
        model=f"{R}/cam/model.pt",
    params:
        **stage_params("cam_train"),
    log:
        f"{LOGS}/cam_train.log",
    threads: stage_threads("cam_train")
    resources:
        **stage_resources("cam_train"),
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
        **stage_params("cam"),
    log:
        f"{LOGS}/cam/{{shard}}.log",
    threads: stage_threads("cam")
    resources:
        **stage_resources("cam"),
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_stage.py"
