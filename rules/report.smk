# The self-contained HTML report of a run: counts and reasons per stage, drop curve, quality, overlays. It is a
# Snakemake report() output: `snakemake --report report.zip` bundles it with the run's provenance.


rule report:
    input:
        # every per-shard artifact the run builds (mask stages, merge_drop) and the ingest shards
        artifacts=lambda wildcards: [f"{R}/ingest/shards"]
        + [t for t in final_targets(wildcards) if t.endswith(".h5")],
        ground_truth=lambda wildcards: ground_truth() or [],
        cost=f"{R}/annotation/cost.json",
        choice=f"{R}/annotation/choice.json" if config["workflow"]["annotate"] else [],
        evaluations=lambda wildcards: [t for t in final_targets(wildcards) if "/evaluate/" in t],
    output:
        out=report(f"{R}/report/report.html", category="Report", labels={"file": "pseudomask report"}),
    params:
        **stage_params("report"),
    log:
        f"{LOGS}/report.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/run_stage.py"
