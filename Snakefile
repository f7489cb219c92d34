# pseudomask: pseudo instance masks from boxes or image-level tags.
# Stages: src/pseudomask/registry.py (README's stage table); keys: docs/configuration.md.
# Run: `make run` or `snakemake --cores all`.

from snakemake.utils import min_version, validate

from pseudomask.config import complete_config

min_version("8.20")


configfile: "config.yaml"


# unknown keys (with the closest valid key), types and ranges; then every missing key at its default
config.update(complete_config(config))
validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/box_priors.smk"
include: "rules/mcg.smk"
include: "rules/refine.smk"
include: "rules/retrain.smk"
include: "rules/hybrid.smk"
include: "rules/crf.smk"
include: "rules/rounds.smk"
include: "rules/boxcaseg.smk"
include: "rules/cam.smk"
include: "rules/report.smk"
include: "rules/annotation.smk"


rule all:
    input:
        final_targets,
    default_target: True
