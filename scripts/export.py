import json

from pseudomask.export import export_coco, export_summary
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    print(json.dumps(export_summary(export_coco(list(snakemake.input), snakemake.output[0]))))
