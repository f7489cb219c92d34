import json

import torch

from pseudomask.boxcaseg.train import settings_for_device, train
from pseudomask.dataset import read_shard
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    settings = settings_for_device(snakemake.params.train, snakemake.params.cpu_train, snakemake.params.device)
    datasets = [read_shard(p) for p in snakemake.input.shards]
    summary = train(datasets, snakemake.input.salient, snakemake.output.model, settings,
                    loss_log=snakemake.output.losses)
    print(json.dumps(summary))
