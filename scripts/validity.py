from pseudomask.logs import redirect_output
from pseudomask.validity import run_validity

with redirect_output(snakemake.log[0]):
    run_validity(snakemake.input.masks, snakemake.output[0], snakemake.params.min_iou, snakemake.params.ellipse)
