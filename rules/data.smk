# Demo data and ingest (sharding is a checkpoint: the shard count is known once the dataset is read).


rule demo_data:
    output:
        annotations=f"{RESOURCES}/demo/annotations.json",
        images=directory(f"{RESOURCES}/demo/images"),
        salient=directory(f"{RESOURCES}/demo/salient"),
    params:
        settings=settings("demo_data"),
    log:
        f"{LOGS}/demo_data.log",
    threads: res("demo_data", "threads")
    resources:
        mem_mb=res("demo_data", "mem_mb"),
        runtime=res("demo_data", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


checkpoint ingest:
    input:
        annotations=config["dataset"]["annotations"],
        images=config["dataset"]["images"],
        strong=config["dataset"]["strong"] or [],
    output:
        manifest=f"{R}/ingest/manifest.json",
        shards=directory(f"{R}/ingest/shards"),
    params:
        settings=settings("ingest"),
    log:
        f"{LOGS}/ingest.log",
    threads: res("ingest", "threads")
    resources:
        mem_mb=res("ingest", "mem_mb"),
        runtime=res("ingest", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
