from pseudomask.dataset import load_dataset
from pseudomask.logs import redirect_output
from pseudomask.mcg import run_mcg

if __name__ == "__main__":  # run_mcg's worker processes are spawned: they must not rerun this body
    with redirect_output(snakemake.log[0]):
        params = dict(snakemake.params.mcg)
        mat_dir = params.pop("mat_dir", "") or None
        clip = params.pop("clip", True)
        run_mcg(load_dataset(snakemake.input.shard), snakemake.output[0], mat_dir=mat_dir, clip=clip,
                workers=snakemake.threads, inputs=[snakemake.input.shard], **params)
