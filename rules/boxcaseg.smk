# BoxCaseg: joint training on all shards' boxes + the salient folder, then per-shard inference. GPU stages:
# they declare gpu=1 for cluster profiles and run on the CPU when there is none, training then with the
# stage's short CPU profile (boxcaseg_train.cpu).


rule boxcaseg_train:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
        salient=config["dataset"]["salient"] or "<set dataset.salient: BoxCaseg's salient-object folder>",
    output:
        model=f"{R}/boxcaseg/model.pt",
        losses=f"{R}/boxcaseg/losses.csv",
    params:
        settings=settings("boxcaseg_train"),
    log:
        f"{LOGS}/boxcaseg_train.log",
    threads: res("boxcaseg_train", "threads")
    resources:
        mem_mb=res("boxcaseg_train", "mem_mb"),
        runtime=res("boxcaseg_train", "runtime"),
        gpu=1,
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
        settings=settings("boxcaseg"),
    log:
        f"{LOGS}/boxcaseg/{{shard}}.log",
    threads: res("boxcaseg", "threads")
    resources:
        mem_mb=res("boxcaseg", "mem_mb"),
        runtime=res("boxcaseg", "runtime"),
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_stage.py"
