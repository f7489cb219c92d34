from pseudomask.agree import run_agree
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    run_agree(snakemake.input.grabcut, snakemake.input.mcg, snakemake.output[0], snakemake.params.rest_of_box)
