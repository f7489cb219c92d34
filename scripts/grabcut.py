from pseudomask.dataset import load_dataset
from pseudomask.grabcut import run_grabcut
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    run_grabcut(load_dataset(snakemake.input.shard), snakemake.output[0], dict(snakemake.params.grabcut),
                workers=snakemake.threads, inputs=[snakemake.input.shard])
