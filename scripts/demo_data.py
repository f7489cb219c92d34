from pseudomask.demo import make_demo_data
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    make_demo_data(snakemake.output.annotations.rsplit("/", 1)[0], snakemake.params.images, snakemake.params.seed,
                   tuple(snakemake.params.size))
