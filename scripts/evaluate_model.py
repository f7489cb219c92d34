import json

from pseudomask.detection_metrics import evaluate_to_file
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    print(json.dumps(evaluate_to_file(snakemake.input.ground_truth, snakemake.input.predictions, snakemake.output[0])))
