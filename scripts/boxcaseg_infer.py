import torch

from pseudomask.boxcaseg.infer import infer
from pseudomask.dataset import read_shard
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    infer(read_shard(snakemake.input.shard), snakemake.input.model, snakemake.output[0],
          device=snakemake.params.device, inputs=[snakemake.input.shard], **snakemake.params.infer)
