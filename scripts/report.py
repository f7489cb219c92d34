from pseudomask.logs import redirect_output
from pseudomask.report import build_report

with redirect_output(snakemake.log[0]):
    print(build_report(list(snakemake.input.artifacts) + [snakemake.input.ingest], snakemake.output[0],
                       ground_truth=snakemake.input.get("ground_truth") or None, samples=snakemake.params.samples,
                       thresholds=snakemake.params.thresholds))
