import torch

from pseudomask.cam.extract import PeakSettings, extract_peaks
from pseudomask.dataset import read_shard
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    extract_peaks(read_shard(snakemake.input.shard), snakemake.input.model, snakemake.output[0],
                  snakemake.input.proposals, PeakSettings.from_config(snakemake.params.cam),
                  inputs=[snakemake.input.shard])
