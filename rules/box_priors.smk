# Box priors: fast GrabCut per box, GrabCut ∩ MCG agreement, box-agreement validity.


rule grabcut:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
    output:
        out=mask_artifact("grabcut"),
    params:
        settings=settings("grabcut"),
    log:
        f"{LOGS}/grabcut/{{shard}}.log",
    threads: res("grabcut", "threads")
    resources:
        mem_mb=res("grabcut", "mem_mb"),
        runtime=res("grabcut", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule agree:
    input:
        grabcut=mask_artifact("grabcut"),
        mcg=mask_artifact("mcg"),
    output:
        out=mask_artifact("agree"),
    params:
        settings=settings("agree"),
    log:
        f"{LOGS}/agree/{{shard}}.log",
    threads: res("agree", "threads")
    resources:
        mem_mb=res("agree", "mem_mb"),
        runtime=res("agree", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"


rule validity:
    input:
        masks=mask_artifact(config["workflow"]["validity_input"]),
    output:
        out=mask_artifact("validity"),
    params:
        settings=settings("validity"),
    log:
        f"{LOGS}/validity/{{shard}}.log",
    threads: res("validity", "threads")
    resources:
        mem_mb=res("validity", "mem_mb"),
        runtime=res("validity", "runtime"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
