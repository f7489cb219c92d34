import json

import torch

from pseudomask.cam.train import TrainSettings, train_classifier
from pseudomask.dataset import read_shard
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    result = train_classifier([read_shard(p) for p in snakemake.input.shards], snakemake.output.model,
                              TrainSettings.from_config(snakemake.params.cam))
    h = result["history"]
    print(json.dumps({"config": result["config"], "iterations": len(h), "first_loss": h[0] if h else None,
                      "last_loss": h[-1] if h else None}))
