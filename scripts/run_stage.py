# Every rule's script: the stage the rule names in its params (params.stage) runs from the registry
# (pseudomask.registry) with the rule's ports, settings and threads, as `pseudomask <stage>` would.
from pseudomask.registry import run_rule

if __name__ == "__main__":  # worker processes are spawned: they must not rerun this body
    run_rule(snakemake)  # noqa: F821 - injected by Snakemake
