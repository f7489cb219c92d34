# Box priors: fast GrabCut per box, GrabCut ∩ MCG agreement, box-agreement validity.


rule grabcut:
    input:
        shard=f"{R}/ingest/shards/{{shard}}.h5",
    output:
        out=mask_artifact("grabcut"),
    params:
        **stage_params("grabcut"),
    log:
        f"{LOGS}/grabcut/{{shard}}.log",
    threads: stage_threads("grabcut")
    resources:
        **stage_resources("grabcut"),
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
        **stage_params("agree"),
    log:
        f"{LOGS}/agree/{{shard}}.log",
    threads: stage_threads("agree")
    resources:
        **stage_resources("agree"),
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
        **stage_params("validity"),
    log:
        f"{LOGS}/validity/{{shard}}.log",
    threads: stage_threads("validity")
    resources:
        **stage_resources("validity"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
