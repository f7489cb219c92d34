import json

from pseudomask.logs import redirect_output
from pseudomask.merge_drop import merge_drop

with redirect_output(snakemake.log[0]):
    print(json.dumps(merge_drop(snakemake.input.masks, snakemake.output[0], threshold=snakemake.params.threshold)))
