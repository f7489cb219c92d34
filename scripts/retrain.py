import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads stall shared CPUs

import json

from pseudomask.logs import redirect_output
from pseudomask.retrain.config import RetrainSettings
from pseudomask.retrain.train import train

with redirect_output(snakemake.log[0]):
    summary = train(snakemake.input.train, snakemake.input.images, snakemake.params.work_dir,
                    RetrainSettings.from_mapping(snakemake.params.settings), out=snakemake.output.checkpoint,
                    config_out=snakemake.output.config, threads=snakemake.threads)
    print(json.dumps(summary))
