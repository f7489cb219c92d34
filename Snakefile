# pseudomask: pseudo instance masks from boxes or image-level tags.
# Stage graph, config keys and HDF5 layout: README.md.  Run: `make run` or `snakemake --cores all`.

from snakemake.utils import min_version, validate

min_version("8.20")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/box_priors.smk"
include: "rules/mcg.smk"
include: "rules/refine.smk"
include: "rules/retrain.smk"
include: "rules/boxcaseg.smk"
include: "rules/cam.smk"
include: "rules/report.smk"


rule all:
    input:
        final_targets,
    default_target: True
