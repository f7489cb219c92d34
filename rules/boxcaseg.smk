# BoxCaseg: joint training on all shards' boxes + the salient folder, then per-shard inference. GPU stages
# (their rules get gpu=1 from the registry, for cluster profiles); they run on the CPU when there is none,
# training then with the stage's short CPU profile (boxcaseg_train.cpu).


rule boxcaseg_train:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
        salient=config["dataset"]["salient"] or "<set dataset.salient: BoxCaseg's salient-object folder>",
    output:
        model=f"{R}/boxcaseg/model.pt",
        losses=f"{R}/boxcaseg/losses.csv",
    params:
        **stage_params("boxcaseg_train"),
    log:
        f"{LOGS}/boxcaseg_train.log",
    threads: stage_threads("boxcaseg_train")
    resources:
        **stage_resources("boxcaseg_train"),
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_stage.py"


rule boxcaseg:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
        model=f"{R}/boxcaseg/model.pt",
    output:
        out=mask_artifact("boxcaseg"),
    params:
        **stage_params("boxcaseg"),
    log:
        f"{LOGS}/boxcaseg/{{shard}}.log",
    threads: stage_threads("boxcaseg")
    resources:
        **stage_resources("boxcaseg"),
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_stage.py"
