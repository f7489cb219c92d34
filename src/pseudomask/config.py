"""The workflow's configuration as a whole, derived from the stage registry and the settings dataclasses.

Layout: the folders (`results`, `logs`, `resources`), `dataset` (what to read), `workflow` (which stages run
and how they are wired), then one section per stage named after it, holding the stage's settings and a
`resources` subsection (threads, mem_mb, runtime; for a training stage also gpus and nodes) for the cluster,
which is not a parameter and never reruns a stage.

From here come `complete_config` (what the Snakefile and the CLI check a config with: unknown keys named with
the closest valid key, values checked, defaults filled), the JSON schema (`schemas/config.schema.yaml`), the
default `config.yaml` with every key's help as a comment, `pseudomask init`'s config, and
`docs/configuration.md`. `python -m pseudomask.config` rewrites the three generated files; a test
fails when one is stale. Also from here: each rule's params, threads and resources (`rule_params`,
`rule_resources`, through rules/common.smk) and, read back from rules/*.smk, the stage each rule runs
(`workflow_rules`: the Slurm profile's GPU rules and the README's stage table).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

from .settings import Settings, SettingsError, defaults, field_default, section_schema, setting, unknown_keys
from .registry import STAGES, Stage, mask_stages

SCHEMA_FILE = "schemas/config.schema.yaml"
CONFIG_FILE = "config.yaml"
DOCS_FILE = "docs/configuration.md"
README_FILE = "README.md"
GENERATED_BY = "python -m pseudomask.config"


@dataclasses.dataclass(frozen=True)
class Folders(Settings):
    """Top-level keys: where the run's files go."""

    SECTION = ""
    results: str = setting("results", "where stage artifacts go")
    logs: str = setting("logs", "one log file per rule (and shard)")
    resources: str = setting("resources", "generated inputs (the demo dataset)")


@dataclasses.dataclass(frozen=True)
class DatasetSettings(Settings):
    """What the run reads; the defaults are the demo dataset that rule demo_data renders."""

    SECTION = "dataset"
    annotations: str = setting("resources/demo/annotations.json", "COCO JSON, Pascal VOC folder, or CSV of image,tag")
    images: str = setting("resources/demo/images", "image folder (for VOC: the folder of JPEGImages)")
    supervision: str = setting("boxes", "which entry point of the pipeline runs: boxes | tags (image-level only)",
                               choices=("boxes", "tags"))
    ground_truth: str = setting("resources/demo/annotations.json", "COCO JSON with true masks, for evaluation "
                                                                   "only; \"\" = none")
    salient: str = setting("resources/demo/salient", "DUTS-style images/ + masks/ folder for BoxCaseg")
    strong: str = setting("", "true masks of some images (mixed supervision): COCO JSON with masks, or a text file "
                              "of image ids whose masks the annotations hold; they pass through every stage as "
                              "source gt and train the quality scorer; \"\" = none")


def _sources(exclude: tuple[str, ...]) -> tuple[str, ...]:
    # refine_round writes results/round<k>/, not results/<stage>/: it feeds only the rounds' own rules
    return tuple(s for s in mask_stages() if s not in exclude + ("refine_round",))


@dataclasses.dataclass(frozen=True)
class WorkflowSettings(Settings):
    """How the stages are wired: which optional stages run and which artifact feeds which stage."""

    SECTION = "workflow"
    boxcaseg: bool = setting(True, "train BoxCaseg and infer its masks (box supervision)")
    retrain: bool = setting(True, "retrain Mask R-CNN on the export, predict and evaluate")
    validity_input: str = setting("grabcut", "the mask stage whose masks validity checks",
                                  choices=_sources(("validity", "merge_drop")))
    merge_drop_source: str = setting("validity", "the mask stage whose masks merge-drop refines "
                                                 "(with supervision tags: cam)", choices=_sources(("merge_drop",)))
    select_sources: tuple[str, ...] = setting(("grabcut", "mcg", "agree"), "the mask stages whose masks select "
                                              "chooses among (boxcaseg: needs workflow.boxcaseg)")
    test_annotations: str = setting("resources/demo/test/annotations.json", "COCO JSON with true masks of held-out "
                                    "images to predict and evaluate on (the default: the demo's held-out scenes); "
                                    "\"\" = the training images against dataset.ground_truth")
    test_images: str = setting("resources/demo/test/images", "image folder of test_annotations; \"\" = "
                                                             "dataset.images")
    annotate: bool = setting(False, "choose images for a person to annotate (choose_images, annotation_job) and "
                                    "show them in the report")
    annotation_corrections: str = setting("annotation/corrected.json", "COCO JSON of the annotator's corrections "
                                          "of results/annotation/job.json, which take_back turns into "
                                          "results/annotation/strong.json")
    crf_source: str = setting("", "the mask stage whose masks crf refines (results/crf/; then e.g. merge_drop_source: "
                                  "crf); \"\" = crf does not run", choices=("",) + _sources(("crf", "merge_drop")))

    def check(self) -> None:
        allowed = _sources(("select", "merge_drop", "validity"))
        bad = [x for x in self.select_sources if x not in allowed]
        if bad or not self.select_sources:
            self.fail(f"select_sources: {bad or 'none given'}; choose from {', '.join(allowed)}")
        takes = {"validity_input": [self.validity_input], "merge_drop_source": [self.merge_drop_source],
                 "select_sources": list(self.select_sources)}
        wants = [k for k, v in takes.items() if "crf" in v]
        if wants and not self.crf_source:
            self.fail(f"{wants[0]} takes crf's masks: set crf_source to the mask stage crf refines")
        if "crf" in {"validity": takes["validity_input"], "select": takes["select_sources"]}.get(self.crf_source, []):
            self.fail(f"crf_source {self.crf_source} takes crf's masks itself: a cycle")


@dataclasses.dataclass(frozen=True)
class Resources(Settings):
    """Cluster resources of a stage's rule (Snakemake's threads and resources); not parameters."""

    SECTION = "resources"
    threads: int = setting(1, "CPU threads of each job (the stage's workers)", minimum=1)
    mem_mb: int = setting(2000, "memory per job (MB)", minimum=1)
    runtime: int = setting(30, "wall time per job (minutes; Slurm's time limit)", minimum=1)


@dataclasses.dataclass(frozen=True)
class TrainingResources(Resources):
    """A training stage's resources: also how many processes train it (torch.distributed, docs/slurm.md)."""

    gpus: int = setting(1, "processes per node, one per GPU (with device cpu: CPU processes); > 1 trains with "
                           "data parallelism; threads and mem_mb are per process", minimum=1)
    nodes: int = setting(1, "nodes of the job (> 1: one task per GPU under srun)", minimum=1)


def resources_class(stage: Stage) -> type:
    """The resources a stage's config section takes: a training stage also has gpus and nodes."""
    return TrainingResources if stage.distributed else Resources


SECTIONS: dict[str, type] = {"dataset": DatasetSettings, "workflow": WorkflowSettings}
# the default run's departures from the defaults: small shards, so that the demo shows sharding
DEMO = {"ingest": {"shard_size": 8}}


def _stage_defaults(stage: Stage) -> dict[str, Any]:
    return {**defaults(stage.settings_class()), "resources": {**defaults(resources_class(stage)), **stage.resources}}


def default_config() -> dict[str, Any]:
    """Every key at its default."""
    cfg: dict[str, Any] = defaults(Folders)
    cfg.update({name: defaults(cls) for name, cls in SECTIONS.items()})
    cfg.update({name: _stage_defaults(st) for name, st in STAGES.items()})
    return cfg


def deep_update(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def demo_config() -> dict[str, Any]:
    """The repository's config.yaml: the defaults with the demo's departures (DEMO)."""
    return deep_update(default_config(), DEMO)


def complete_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """`cfg` checked and completed with the defaults: an unknown key anywhere, a wrong type or a value out of
    range raises SettingsError naming the section and the key (and the closest valid key)."""
    cfg = dict(cfg or {})
    base = default_config()
    unknown_keys(cfg, base, "config")
    for key, value in cfg.items():
        if isinstance(base[key], dict) and not isinstance(value, Mapping):
            raise SettingsError(f"config: {key} must be a mapping of settings, got {value!r}")
    out = deep_update(base, {k: v for k, v in cfg.items() if isinstance(base[k], dict)})
    out.update({k: v for k, v in cfg.items() if not isinstance(base[k], dict)})
    Folders.from_mapping({k: out[k] for k in defaults(Folders)}, "config")
    for name, cls in SECTIONS.items():
        cls.from_mapping(cfg.get(name), name)
    for name, stage in STAGES.items():
        given = dict(cfg.get(name) or {})
        unknown_keys(given, [*defaults(stage.settings_class()), "resources"], name)
        res = given.pop("resources", None) or {}
        if not isinstance(res, Mapping):
            raise SettingsError(f"{name}.resources: must be a mapping of threads, mem_mb, runtime; got {res!r}")
        stage.settings_class().from_mapping(given, name)
        resources_class(stage).from_mapping(res, f"{name}.resources")
    return out


def stage_settings(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A stage's section without its resources and its wiring keys (the settings class's `WIRING`, e.g.
    retrain.rounds): the rule's `params` (a change reruns the stage)."""
    wiring = set(getattr(STAGES[name].settings_class(), "WIRING", ())) if name in STAGES else set()
    return {k: v for k, v in cfg[name].items() if k != "resources" and k not in wiring}


def rule_params(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A stage's rule `params`: the stage it runs (what scripts/run_stage.py reads) and its settings."""
    return {"stage": name, "settings": stage_settings(cfg, name)}


def rule_resources(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A stage's rule threads and resources: its section's `resources` (threads, mem_mb, runtime), and gpu=1
    where the registry marks the stage as a GPU stage; for a training stage with gpus or nodes > 1, what
    Snakemake's Slurm executor needs for it (`distributed_resources`)."""
    res = {k: int(v) for k, v in cfg[name]["resources"].items()}
    gpus, nodes = res.pop("gpus", 1), res.pop("nodes", 1)
    if gpus * nodes > 1:
        return {**res, **distributed_resources(res["threads"], res["mem_mb"], gpus, nodes)}
    return {**res, "gpu": 1} if STAGES[name].gpu else res


def distributed_resources(threads: int, mem_mb: int, gpus: int, nodes: int) -> dict[str, Any]:
    """The rule resources of a job of `gpus` processes per node on `nodes` nodes, `threads` CPUs and `mem_mb`
    each, for Snakemake's Slurm executor: threads and memory per node (x gpus); `gpu` (--gpus, the job's
    total); `tasks_per_gpu=0` (no --ntasks-per-gpu: one task that starts its processes itself); `cpus_per_gpu`;
    across nodes `tasks` (one per GPU) and `mpi="srun"` (the job runs once, on the first node, and starts its
    tasks with srun) with --ntasks-per-node. `nproc_per_node` and `nodes` tell the stage what to start
    (registry.run_rule)."""
    res: dict[str, Any] = {"threads": threads * gpus, "mem_mb": mem_mb * gpus, "gpu": gpus * nodes,
                           "tasks_per_gpu": 0, "cpus_per_gpu": threads, "nproc_per_node": gpus, "nodes": nodes}
    if nodes > 1:
        res.update(tasks=gpus * nodes, mpi="srun", slurm_extra=f"--ntasks-per-node={gpus}")
    return res


def config_schema() -> dict[str, Any]:
    """JSON schema of config.yaml, every section closed (`additionalProperties: false`)."""
    props: dict[str, Any] = {f.name: {"type": "string", "default": field_default(f), "description": f.metadata["help"]}
                             for f in dataclasses.fields(Folders)}
    props.update({name: section_schema(cls) for name, cls in SECTIONS.items()})
    for name, st in STAGES.items():
        res = section_schema(resources_class(st))
        for k, v in st.resources.items():
            res["properties"][k]["default"] = v
        props[name] = section_schema(st.settings_class(), {"resources": res})
        props[name]["description"] = st.help
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": f"pseudomask workflow configuration (config.yaml); generated by `{GENERATED_BY}` from "
                           "the settings dataclasses of the stage registry: do not edit",
            "type": "object", "additionalProperties": False, "properties": props}


def _flow(value: Any) -> str:
    """A value as one line of YAML flow style."""
    return yaml.safe_dump([value], default_flow_style=True, width=10 ** 6, allow_unicode=True, sort_keys=False).strip()[1:-1]


def _line(indent: str, key: str, value: Any, help_: str) -> str:
    text = f"{indent}{key}: {_flow(value)}"
    return f"{text:<40} # {help_}" if help_ else text


HEADER = f"""\
# pseudomask configuration. Every key is optional (a missing key takes its default) and checked when the
# workflow starts; each stage's section holds its settings and the resources of its rule.
# Reference: docs/configuration.md. This file is generated by `{GENERATED_BY}`."""


def render_config(cfg: Mapping[str, Any], header: str = HEADER) -> str:
    """`cfg` (complete) as YAML with every key's help as a comment, in the order of default_config()."""
    lines = [header, ""] if header else []
    for f in dataclasses.fields(Folders):
        lines.append(_line("", f.name, cfg[f.name], f.metadata["help"]))
    sections = [(n, c, c.__doc__.splitlines()[0]) for n, c in SECTIONS.items()]
    sections += [(n, st.settings_class(), st.help) for n, st in STAGES.items()]
    for name, cls, help_ in sections:
        lines += ["", f"{name + ':':<40} # {help_}"]
        for f in dataclasses.fields(cls):
            lines.append(_line("  ", f.name, cfg[name][f.name], f.metadata["help"]))
        if name in STAGES:
            lines.append(_line("  ", "resources", cfg[name]["resources"], "rule threads, memory (MB), wall time "
                               "(min)" + (", processes per node, nodes" if STAGES[name].distributed else "")))
    return "\n".join(lines) + "\n"


def _allowed(f: dataclasses.Field) -> str:
    m = f.metadata
    if m.get("choices"):
        return " \\| ".join(f"`{c}`" for c in m["choices"])
    parts = [f"{op} {m[k]}" for k, op in (("minimum", "≥"), ("exclusive_minimum", ">"), ("maximum", "≤"),
                                           ("exclusive_maximum", "<")) if m.get(k) is not None]
    return ", ".join(parts)


def _table(cls: type, values: Mapping[str, Any], prefix: str = "") -> list[str]:
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = _flow(values[f.name]).replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | `{default}` | {_allowed(f)} | {f.metadata['help'].replace('|', '/')} |")
    return rows


def config_docs() -> str:
    """docs/configuration.md: every section and key with its default, allowed values and meaning."""
    cfg = default_config()
    out = ["# Configuration", "",
           f"Generated by `{GENERATED_BY}` from the settings dataclasses of the stage registry "
           "(`src/pseudomask/registry.py`); a test fails when it is stale. Every key is optional: a missing key "
           "takes the default below, an unknown key stops the run naming the closest valid key. The CLI takes "
           "the same settings as options (`pseudomask <stage> --help`) or a section of a config file "
           "(`pseudomask <stage> --config my.yaml`).", "",
           "## Folders (top level)", "", *_table(Folders, cfg)]
    for name, cls in SECTIONS.items():
        out += ["", f"## `{name}`", "", cls.__doc__.splitlines()[0], "", *_table(cls, cfg[name])]
    for name, st in STAGES.items():
        out += ["", f"## `{name}`", "", f"{st.help}. Stage page: [stages/{name}.md](stages/{name}.md); "
                f"CLI: `pseudomask {st.command}`; one job {'per shard' if st.per_shard else 'per run'}"
                f"{'; asks for a GPU' if st.gpu else ''}.", ""]
        out += _table(st.settings_class(), cfg[name])
        res = cfg[name]["resources"]
        out += ["", f"`{name}.resources`: " + ", ".join(f"`{k}` {v}" for k, v in res.items())
                + (" (threads and MB per process, minutes, processes per node, nodes; see "
                   "[slurm.md](slurm.md#several-gpus))." if st.distributed else " (threads, MB, minutes).")]
    return "\n".join(out) + "\n"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rule of rules/*.smk: its file, the stage its params name (`stage_params("<stage>")`), and for a
    `use rule <base> as <name>` its base rule, whose stage it runs unless it names its own."""

    name: str
    file: str
    stage: str | None
    base: str | None = None


RULE_START = re.compile(r"^(?:(?:rule|checkpoint) (\w+)|use rule (\w+) as (\w+))\b", re.M)
STAGE_PARAMS = re.compile(r"\bstage_params\(\s*[\"'](\w+)[\"']\s*\)")


def workflow_rules(root: str | Path = ".") -> dict[str, Rule]:
    """{rule name: Rule} of the rules/*.smk of a checkout, in file order."""
    rules: dict[str, Rule] = {}
    for f in sorted(Path(root, "rules").glob("*.smk")):
        text = f.read_text()
        starts = list(RULE_START.finditer(text))
        for m, end in zip(starts, [n.start() for n in starts[1:]] + [len(text)]):
            stage = STAGE_PARAMS.search(text, m.end(), end)
            name = m.group(1) or m.group(3)
            rules[name] = Rule(name, f"rules/{f.name}", stage and stage.group(1), m.group(2))

    def stage_of(rule: Rule) -> str | None:
        return rule.stage or (stage_of(rules[rule.base]) if rule.base in rules else None)

    return {n: dataclasses.replace(r, stage=stage_of(r)) for n, r in rules.items()}


def gpu_rules(root: str | Path = ".") -> list[str]:
    """Every rule of a checkout (default: here) that runs a GPU stage of the registry, a `use rule` of one
    included: the Slurm profile's GPU rules (their `gpu=1` comes from the rule's resources)."""
    rules = workflow_rules(root)
    if not rules:
        raise FileNotFoundError(f"no rules/*.smk under {Path(root).resolve()}: run from the repository root")
    return [n for n, r in rules.items() if r.stage in STAGES and STAGES[r.stage].gpu]


def stage_tests(stage: Stage, root: str | Path = ".") -> list[str]:
    """The test files named after a stage: tests/test_<x>.py for x its name, its run module's dotted path
    with '_' for '.', or one part of that path (e.g. predict: test_retrain_predict.py, test_retrain.py)."""
    parts = stage.run.split(":")[0].split(".")
    names = dict.fromkeys([stage.name, "_".join(parts), *parts])
    return [f"tests/test_{n}.py" for n in names if Path(root, f"tests/test_{n}.py").exists()]


def stage_table(root: str | Path = ".") -> str:
    """The README's stage table: per stage its rule file, library module, tests and docs page (one hop each)."""
    files = {r.stage: r.file for r in reversed(workflow_rules(root).values()) if r.base is None}
    rows = ["| stage (CLI) | per | what it does | rule | library | tests | docs |", "|---|---|---|---|---|---|---|"]
    for name, st in STAGES.items():
        mod = st.module.replace(".", "/")
        mod = f"src/{mod}.py" if Path(root, f"src/{mod}.py").exists() else f"src/{mod}/"
        tests = ", ".join(f"[{Path(t).name}]({t})" for t in stage_tests(st, root)) or "—"
        rule = files.get(name, "?")
        rows.append(f"| `{name}` (`pseudomask {st.command}`) | {'shard' if st.per_shard else 'run'}"
                    f"{', GPU' if st.gpu else ''} | {st.help} | [{Path(rule).name}]({rule}) | "
                    f"[{st.module}]({mod}) | {tests} | [{name}.md](docs/stages/{name}.md) |")
    return "\n".join(rows) + "\n"


def generated_files() -> dict[str, str]:
    """{path relative to the repository: content} of every file made from the registry."""
    schema = yaml.safe_dump(config_schema(), sort_keys=False, width=120, allow_unicode=True)
    return {SCHEMA_FILE: f"# generated by `{GENERATED_BY}`: do not edit\n" + schema,
            CONFIG_FILE: render_config(demo_config()), DOCS_FILE: config_docs()}


TABLE_START, TABLE_END = "<!-- stage-table: generated -->\n", "<!-- /stage-table -->\n"


DOCS_INDEX = "docs/README.md"


def docs_stage_index() -> str:
    """docs/README.md's stage list: every stage's page and what it does, in pipeline order."""
    rows = ["| stage | what it does |", "|---|---|"]
    rows += [f"| [{name}](stages/{name}.md) | {st.help} |" for name, st in STAGES.items()]
    return "\n".join(rows) + "\n"


def readme_with_table(text: str, root: str | Path = ".", table: str | None = None) -> str:
    """README text with the block between the stage-table markers replaced by `table` (default:
    `stage_table()`)."""
    if TABLE_START not in text or TABLE_END not in text:
        return text
    head, rest = text.split(TABLE_START, 1)
    return head + TABLE_START + (stage_table(root) if table is None else table) + TABLE_END + rest.split(TABLE_END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated files (and the README's stage table) under a repository root (default: here)."""
    root = Path((argv or sys.argv[1:] or ["."])[0])
    for rel, text in generated_files().items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p}")
    readme = root / README_FILE
    if readme.exists():
        readme.write_text(readme_with_table(readme.read_text(), root))
    index = root / DOCS_INDEX
    if index.exists():
        index.write_text(readme_with_table(index.read_text(), root, docs_stage_index()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
