import json
import os
import shutil

from pseudomask.ingest import ingest
from pseudomask.logs import redirect_output

with redirect_output(snakemake.log[0]):
    out = snakemake.output.shards
    manifest = ingest(snakemake.input.annotations, snakemake.input.images, out,
                      shard_size=snakemake.params.shard_size, fmt=snakemake.params.format)
    shutil.move(os.path.join(out, "manifest.json"), snakemake.output.manifest)
    print(json.dumps(manifest))
