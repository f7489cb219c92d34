import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads stall shared CPUs

import torch

from pseudomask.logs import redirect_output
from pseudomask.retrain.predict import predict, write_results

with redirect_output(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    results, summary = predict(snakemake.input.checkpoint, snakemake.input.images, coco=snakemake.input.coco,
                               config=snakemake.input.config, score_thr=snakemake.params.score_thr)
    write_results(results, snakemake.output[0])
    print(summary)
