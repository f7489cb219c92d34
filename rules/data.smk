# Demo data and ingest (sharding is a checkpoint: the shard count is known once the dataset is read).


rule demo_data:
    output:
        annotations=f"{RESOURCES}/demo/annotations.json",
        images=directory(f"{RESOURCES}/demo/images"),
        salient=directory(f"{RESOURCES}/demo/salient"),
        test_annotations=f"{RESOURCES}/demo/test/annotations.json",
        test_images=directory(f"{RESOURCES}/demo/test/images"),
    params:
        **stage_params("demo_data"),
    log:
        f"{LOGS}/demo_data.log",
    threads: stage_threads("demo_data")
    resources:
        **stage_resources("demo_data"),
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
        **stage_params("ingest"),
    log:
        f"{LOGS}/ingest.log",
    threads: stage_threads("ingest")
    resources:
        **stage_resources("ingest"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
