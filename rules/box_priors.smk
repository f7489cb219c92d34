# Box priors (issue 3): fast GrabCut per box, GrabCut ∩ MCG agreement, box-agreement validity.


rule grabcut:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
    output:
        f"{R}/grabcut/{{shard}}.h5",
    params:
        grabcut={k: v for k, v in config["grabcut"].items() if k not in ("threads", "mem_mb", "runtime")},
    log:
        f"{LOGS}/grabcut/{{shard}}.log",
    threads: config["grabcut"]["threads"]
    resources:
        mem_mb=config["grabcut"]["mem_mb"],
        runtime=config["grabcut"]["runtime"],
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/grabcut.py"


rule agree:
    input:
        grabcut=f"{R}/grabcut/{{shard}}.h5",
        mcg=f"{R}/mcg/{{shard}}.h5",
    output:
        f"{R}/agree/{{shard}}.h5",
    params:
        rest_of_box=config["agree"]["rest_of_box"],
    log:
        f"{LOGS}/agree/{{shard}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/agree.py"


rule validity:
    input:
        masks=validity_input_path(),
    output:
        f"{R}/validity/{{shard}}.h5",
    params:
        min_iou=config["validity"]["min_iou"],
        ellipse=config["validity"]["ellipse"],
    log:
        f"{LOGS}/validity/{{shard}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/validity.py"
