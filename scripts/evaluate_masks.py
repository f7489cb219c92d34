import json

from pseudomask.export import write_json
from pseudomask.logs import redirect_output
from pseudomask.metrics import evaluate_pseudo

with redirect_output(snakemake.log[0]):
    result = evaluate_pseudo(snakemake.input.pseudo, snakemake.input.ground_truth)
    write_json(result, snakemake.output[0], indent=2)
    print(json.dumps(result))
