# Demo data and ingest (sharding is a checkpoint: the shard count is known once the dataset is read).


rule demo_data:
    output:
        annotations=f"{RESOURCES}/demo/annotations.json",
        images=directory(f"{RESOURCES}/demo/images"),
        salient=directory(f"{RESOURCES}/demo/salient"),
    params:
        images=config["demo"]["images"],
        seed=config["demo"]["seed"],
        size=[config["demo"]["width"], config["demo"]["height"]],
    log:
        f"{LOGS}/demo_data.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/demo_data.py"


checkpoint ingest:
    input:
        annotations=config["dataset"]["annotations"],
        images=config["dataset"]["images"],
    output:
        manifest=f"{R}/ingest/manifest.json",
        shards=directory(f"{R}/ingest/shards"),
    params:
        shard_size=config["dataset"]["shard_size"],
        format=config["dataset"]["format"],
    log:
        f"{LOGS}/ingest.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/ingest.py"
