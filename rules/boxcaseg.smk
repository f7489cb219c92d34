# BoxCaseg (issue 6): joint training on all shards' boxes + the salient folder, then per-shard inference.
# GPU stages: they declare gpu=1 for cluster profiles and run on the CPU when there is none (device: auto),
# training then with the short `cpu_train` settings.


rule boxcaseg_train:
    input:
        shards=per_shard(f"{R}/ingest/shards/{{shard}}.h5"),
        # an unset dataset.salient shows up as this missing input, so the message says what to do
        salient=config["dataset"].get("salient") or "<set dataset.salient: BoxCaseg's salient-object folder>",
    output:
        model=f"{R}/boxcaseg/model.pt",
        losses=f"{R}/boxcaseg/losses.csv",
    params:
        train=config["boxcaseg"]["train"],
        cpu_train=config["boxcaseg"]["cpu_train"],
        device=config["boxcaseg"]["device"],
    log:
        f"{LOGS}/boxcaseg_train.log",
    threads: config["boxcaseg"]["threads"]
    resources:
        mem_mb=config["boxcaseg"]["mem_mb"],
        runtime=config["boxcaseg"]["train_runtime"],
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/boxcaseg_train.py"


rule boxcaseg_infer:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
        model=f"{R}/boxcaseg/model.pt",
    output:
        f"{R}/boxcaseg/{{shard}}.h5",
    params:
        infer=config["boxcaseg"]["infer"],
        device=config["boxcaseg"]["device"],
    log:
        f"{LOGS}/boxcaseg_infer/{{shard}}.log",
    threads: config["boxcaseg"]["threads"]
    resources:
        mem_mb=config["boxcaseg"]["mem_mb"],
        runtime=config["boxcaseg"]["infer_runtime"],
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/boxcaseg_infer.py"
