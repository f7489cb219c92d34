# The self-contained HTML report of a run: overlays per stage, proxy box IoU histogram, drop curve, counts.


rule report:
    input:
        # every per-shard artifact the run builds (mask stages, merge_drop) and the ingest shards
        artifacts=lambda wildcards: [t for t in final_targets(wildcards) if t.endswith(".h5")],
        ingest=f"{R}/ingest/shards",
        export=f"{R}/export/pseudo.json",
        ground_truth=lambda wildcards: ground_truth() or [],
    output:
        f"{R}/report/report.html",
    params:
        samples=config["report"]["samples"],
        thresholds=config["report"]["thresholds"],
    log:
        f"{LOGS}/report.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cv.yaml"
    script:
        "../scripts/report.py"
