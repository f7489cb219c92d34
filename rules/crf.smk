# DenseCRF (DeepLab's parameters) of the masks of workflow.crf_source, per shard: results/crf/<shard>.h5. It runs
# when crf_source is set; use its masks downstream with e.g. workflow.merge_drop_source: crf.


rule crf:
    input:
        masks=mask_artifact(config["workflow"]["crf_source"])
        if config["workflow"]["crf_source"]
        else "<set workflow.crf_source: the mask stage whose masks crf refines>",
    output:
        out=mask_artifact("crf"),
    params:
        **stage_params("crf"),
    log:
        f"{LOGS}/crf/{{shard}}.log",
    threads: stage_threads("crf")
    resources:
        **stage_resources("crf"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
